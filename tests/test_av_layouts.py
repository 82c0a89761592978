"""Video and audio layouts: who sees whom in variants 1 and 2, shapes, positions, alignment."""

import numpy as np
import pytest
import torch

from helpers import tiny_spec
from llmjepa.data.layout import AUDIO, CONTEXT, MODALITIES, TARGET, VIDEO
from llmjepa.data.stream import ProbeSet, Stream
from llmjepa.model.attention import dense_mask
from llmjepa.train import build

AV = ["data.modality=audio_video", "data.patch_size=8", "data.text_ratio=1.0"]


def segments_of(batch, b=0):
    """{(role, modality): token index tensor} for example b."""
    out = {}
    for role in (CONTEXT, TARGET):
        for mod in (VIDEO, AUDIO):
            sel = ((batch.role[b] == role) & (batch.modality[b] == mod)).nonzero().flatten()
            if len(sel):
                out[(role, mod)] = sel
    return out


def sees(mask, q, k) -> bool:
    return bool(mask[q][:, k].any())


def test_variant_1_audio_context_sees_video_target_and_targets_see_no_context():
    batch = Stream(tiny_spec(*AV, "data.av_variant=1")).batch(0)
    mask = dense_mask(batch.segment, batch.role, batch.modality)[0, 0]
    s = segments_of(batch)
    assert sees(mask, s[(CONTEXT, AUDIO)], s[(TARGET, VIDEO)])
    assert not sees(mask, s[(TARGET, VIDEO)], s[(CONTEXT, AUDIO)]) and not sees(mask, s[(TARGET, VIDEO)], s[(CONTEXT, VIDEO)])
    assert not sees(mask, s[(TARGET, AUDIO)], s[(CONTEXT, AUDIO)]) and not sees(mask, s[(TARGET, AUDIO)], s[(CONTEXT, VIDEO)])
    assert sees(mask, s[(TARGET, AUDIO)], s[(TARGET, VIDEO)])
    # pairs stay within modality
    flat = batch.modality.flatten()
    assert torch.equal(flat[batch.pair_ctx[:, 0]], batch.pair_modality)


@pytest.mark.parametrize("within", [True, False])
def test_variant_2_no_context_sees_another_and_cross_pairs_exist(within):
    batch = Stream(tiny_spec(*AV, "data.av_variant=2", f"data.within_pairs={str(within).lower()}")).batch(0)
    mask = dense_mask(batch.segment, batch.role, batch.modality)[0, 0]
    s = segments_of(batch)
    assert not sees(mask, s[(CONTEXT, AUDIO)], s[(CONTEXT, VIDEO)])
    assert not sees(mask, s[(TARGET, VIDEO)], s[(CONTEXT, AUDIO)]) and not sees(mask, s[(TARGET, AUDIO)], s[(CONTEXT, VIDEO)])
    flat = batch.modality.flatten()
    kinds = {(MODALITIES[int(flat[c[0]])], MODALITIES[int(m)]) for c, m in zip(batch.pair_ctx, batch.pair_modality)}
    assert {("audio", "video"), ("video", "audio")} <= kinds
    assert (("video", "video") in kinds) == within and (("audio", "audio") in kinds) == within


def test_changing_the_audio_context_changes_nothing_outside_it():
    spec = tiny_spec(*AV, "data.av_variant=2")
    model, _ = build(spec)
    model.eval()
    batch = Stream(spec).batch(0)
    ctx = (batch.role[0] == CONTEXT) & (batch.modality[0] == AUDIO)
    before = model(batch).hidden
    audio = batch.media["audio"]
    n = audio.shape[0]
    batch.media["audio"] = torch.cat([audio, torch.randn_like(audio[:1])])
    per = spec.data.audio_grid[0] * spec.data.audio_grid[1]  # patches per audio item
    batch.media_index[0, ctx] = n * per + batch.media_index[0, ctx] % per
    after = model(batch).hidden
    outside = torch.ones_like(batch.role, dtype=torch.bool)
    outside[0] = ~ctx
    for h0, h1 in zip(before, after):
        assert torch.equal(h0[outside], h1[outside])
    assert not torch.allclose(before[-1][0, ctx], after[-1][0, ctx])


def test_tubelet_and_spectrogram_shapes_and_frame_alignment():
    spec = tiny_spec(*AV, "data.frames=8", "data.n_mels=16", "data.mel_patch=4")
    batch = Stream(spec).batch(0)
    assert tuple(batch.media["video"].shape[1:]) == (3, 8, 32, 32)
    assert tuple(batch.media["audio"].shape[1:]) == (1, 16, 16)  # 2 spectrogram frames per video frame
    model, _ = build(spec)
    v = model.patch_embed["video"](batch.media["video"])
    a = model.patch_embed["audio"](batch.media["audio"])
    assert v.shape[1] == 4 * 4 * 4  # 4 tubelets x 4 x 4
    assert a.shape[1] == 4 * 4  # 4 time patches (one per tubelet) x 4 mel patches
    tv = batch.coords[0, (batch.role[0] == TARGET) & (batch.modality[0] == VIDEO), 0]
    ta = batch.coords[0, (batch.role[0] == TARGET) & (batch.modality[0] == AUDIO), 0]
    assert set(tv.tolist()) == set(ta.tolist()) == {0.0, 1.0, 2.0, 3.0}
    # an audio patch's time coordinate is the tubelet its spectrogram frames fall in
    assert torch.equal(ta, torch.arange(4).repeat_interleave(4).float())


def test_video_context_masks_span_every_tubelet():
    spec = tiny_spec(*AV)
    batch = Stream(spec).batch(0)
    for b in range(batch.shape[0]):
        ctx = (batch.role[b] == CONTEXT) & (batch.modality[b] == VIDEO)
        t = batch.coords[b, ctx, 0]
        yx = batch.coords[b, ctx, 1:]
        per_t = [set(map(tuple, yx[t == k].tolist())) for k in range(4)]
        assert all(p == per_t[0] for p in per_t), "a 3-D block must cover the same place in every tubelet"


def test_shared_time_positions_versus_separate():
    shared = Stream(tiny_spec(*AV, "data.av_positions=shared_time")).batch(0)
    separate = Stream(tiny_spec(*AV, "data.av_positions=separate")).batch(0)
    for batch, same in ((shared, True), (separate, False)):
        vt = (batch.role[0] == TARGET) & (batch.modality[0] == VIDEO)
        at = (batch.role[0] == TARGET) & (batch.modality[0] == AUDIO)
        pv, pa = batch.position[0, vt], batch.position[0, at]
        tv, ta = batch.coords[0, vt, 0], batch.coords[0, at, 0]
        if same:  # audio at time t lies inside the video's position range of time t
            for t in range(4):
                assert pv[tv == t].min() <= pa[ta == t].min() and pa[ta == t].max() <= pv[tv == t].max()
        else:
            assert pa.min() > pv.max()


def test_audio_alone_and_partial_items_in_probe_sequences():
    spec = tiny_spec(*AV)
    probe = ProbeSet(spec)
    idx = np.arange(4)
    audio_only = probe.item_batch(idx, with_text=False, modalities=["audio"])
    assert set(audio_only.modality[audio_only.role == TARGET].tolist()) == {AUDIO}
    half = probe.item_batch(idx, with_text=False, modalities=["video"], keep=0.5)
    full = probe.item_batch(idx, with_text=False, modalities=["video"])
    n_half = int((half.role[0] == TARGET).sum())
    assert 0.3 * 64 <= n_half <= 0.7 * 64 and int((full.role[0] == TARGET).sum()) == 64


def test_low_resolution_images_keep_full_grid_coordinates():
    spec = tiny_spec()
    probe = ProbeSet(spec)
    half = probe.item_batch(np.arange(2), with_text=False, resolution=0.5)
    assert tuple(half.media["image"].shape[1:]) == (3, 16, 16)
    tgt = half.role[0] == TARGET
    assert int(tgt.sum()) == 16
    ys = sorted(set(half.coords[0, tgt, 1].tolist()))
    assert ys == [0.5, 2.5, 4.5, 6.5]  # centres of the 2x2 full-resolution patches each one covers
    model, _ = build(spec)
    assert model(half).hidden[-1].shape[:2] == half.shape


def test_cross_modal_pairs_predict_targets_of_another_grid():
    spec = tiny_spec(*AV, "data.av_variant=2", "data.within_pairs=false")
    model, predictor = build(spec)
    batch = Stream(spec).batch(0)
    pred = predictor(model(batch).hidden[-1], batch)
    flat = batch.modality.flatten()
    ctx_mod = flat[batch.pair_ctx[:, 0]]
    assert (ctx_mod != batch.pair_modality).all()  # every pair crosses modalities
    assert pred.shape == (*batch.pair_tgt.shape, spec.model.dim)
    # audio contexts (a 4 x 4 time-mel grid) predict video blocks through all 4 tubelets of a
    # 4 x 4 x 4 grid, with context and target sizes that differ
    coords = batch.coords.reshape(-1, 3)
    for row in (batch.pair_modality == VIDEO).nonzero().flatten():
        tgt = batch.pair_tgt[row][batch.pair_tgt_mask[row]]
        assert set(coords[tgt, 0].tolist()) == {0.0, 1.0, 2.0, 3.0}
    assert (batch.pair_ctx_mask.sum(1) != batch.pair_tgt_mask.sum(1)).any()
