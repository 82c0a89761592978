"""Tests of clip audio: synthesis, the mel filterbank, frame-aligned log-mels, texts and labels."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from llmjepa.data import audio
from llmjepa.data.audio import (
    AUDIO_ATTRIBUTES, FRAME_SECONDS, PITCH_HZ, PITCH_WORD, SAMPLE_RATE, SAMPLES_PER_FRAME, TIMBRE_WORD,
    audio_attributes, audio_text, bounce_frames, clip_audio, log_mel, mel_filterbank, synthesize,
)
from llmjepa.data.text import answer_span
from llmjepa.data.world import COLORS, SHAPES, SIZES, Obj, sample_scene

KINDS = ("left", "right", "top", "bottom", "object")


@dataclass(frozen=True)
class Clip:
    """Stand-in for a video clip: only the fields audio reads, plus positions."""

    objects: tuple
    bounces: tuple
    frames: int
    positions: np.ndarray


def _clip(objs, bounces=(), frames=8) -> Clip:
    objs = tuple(Obj(s, c, z, 0.5, 0.5, i) for i, (s, c, z) in enumerate(objs))
    return Clip(objs, tuple(bounces), frames, np.full((frames, len(objs), 2), 0.5))


def _random_clip(rng: np.random.Generator, frames: int = 8) -> Clip:
    scene = sample_scene(rng, 1, 3)
    n = len(scene.objects)
    bounces = tuple(
        (f, int(rng.integers(n)), KINDS[int(rng.integers(len(KINDS)))]) for f in range(frames) if rng.random() < 0.25
    )
    return Clip(scene.objects, bounces, frames, np.full((frames, n, 2), 0.5))


def _band_of(hz: float, fb: torch.Tensor, n_fft: int) -> int:
    """The mel filter giving most weight to the FFT bin nearest hz."""
    return int(fb[:, round(hz * n_fft / SAMPLE_RATE)].argmax())


# ---------------------------------------------------------------- waveform

def test_constants_tie_frames_to_samples():
    assert SAMPLE_RATE == 8000 and FRAME_SECONDS == 0.1 and SAMPLES_PER_FRAME == 800
    assert AUDIO_ATTRIBUTES == {"pitch": 3, "timbre": 6, "loud": 2, "bounces": 3}
    assert set(PITCH_WORD) == set(SHAPES) and set(TIMBRE_WORD) == set(COLORS)
    assert len(set(TIMBRE_WORD.values())) == len(COLORS) and len(set(PITCH_WORD.values())) == len(SHAPES)


@pytest.mark.parametrize("frames", [1, 2, 8, 13])
def test_waveform_length_dtype_and_range(frames):
    rng = np.random.default_rng(frames)
    loud = _clip(
        [("triangle", "yellow", "large"), ("square", "yellow", "large"), ("circle", "yellow", "large")],
        [(f, 0, "object") for f in range(frames)] + [(f, 1, "left") for f in range(frames)],
        frames,
    )
    for clip in (loud, _random_clip(rng, frames)):
        wave = synthesize(clip, rng)
        assert wave.shape == (frames * 800,) and wave.dtype == np.float32
        assert np.all(np.abs(wave) <= 1.0) and np.isfinite(wave).all()
        assert wave.std() > 0.02  # not silent


def test_same_seed_same_sound_other_seed_differs():
    clip = _random_clip(np.random.default_rng(0))
    a, b, c = synthesize(clip, 7), synthesize(clip, np.random.default_rng(7)), synthesize(clip, 8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.array_equal(clip_audio(clip, 3), clip_audio(clip, 3))
    assert np.array_equal(audio_text(clip, 3), audio_text(clip, 3))


def test_timbre_keeps_loudness_and_changes_the_spectrum():
    rms = {c: synthesize(_clip([("square", c, "large")]), 0).std() for c in COLORS}
    assert max(rms.values()) / min(rms.values()) < 1.1
    profiles = {c: log_mel(synthesize(_clip([("square", c, "large")]), 0)).mean(1) for c in COLORS}
    for i, a in enumerate(COLORS):
        for b in COLORS[i + 1 :]:
            assert (profiles[a] - profiles[b]).abs().max() > 0.5, (a, b)


# ---------------------------------------------------------------- mel filterbank

@pytest.mark.parametrize(
    "n_fft,n_mels,fmin,fmax", [(512, 16, 0.0, None), (256, 16, 0.0, None), (512, 24, 100.0, 3000.0)]
)
def test_mel_filters_are_triangles_rising_in_frequency_and_cover_the_band(n_fft, n_mels, fmin, fmax):
    fb = mel_filterbank(n_fft, n_mels, SAMPLE_RATE, fmin, fmax)
    assert fb.shape == (n_mels, n_fft // 2 + 1) and fb.dtype == torch.float32
    assert (fb >= 0).all() and (fb <= 1.0 + 1e-6).all()
    peaks = fb.argmax(1)
    assert (peaks[1:] > peaks[:-1]).all()
    top = fmax if fmax is not None else SAMPLE_RATE / 2
    mel = np.linspace(audio.hz_to_mel(fmin), audio.hz_to_mel(top), n_mels + 2)
    centres = audio.mel_to_hz(mel[1:-1])
    bin_hz = SAMPLE_RATE / n_fft
    assert np.all(np.abs(peaks.numpy() * bin_hz - centres) <= bin_hz)
    for row in fb:
        d = torch.diff(row[row > 0])
        # rises then falls: no rise after the first fall
        first_fall = int(torch.nonzero(d < -1e-7)[0]) if (d < -1e-7).any() else len(d)
        assert (d[first_fall:] <= 1e-7).all()
        assert row.max() > 0.5
    hz = torch.arange(n_fft // 2 + 1) * bin_hz
    inside = (hz > fmin) & (hz < top)
    assert (fb[:, inside].sum(0) > 0).all()
    assert (fb[:, ~inside] == 0).all()


# ---------------------------------------------------------------- log-mel and alignment

@pytest.mark.parametrize("frames", [1, 3, 8, 11])
@pytest.mark.parametrize("fpv", [1, 2, 4, 5])
def test_spectrogram_frames_equal_video_frames_times_fpv(frames, fpv):
    clip = _random_clip(np.random.default_rng(frames), frames)
    wave = synthesize(clip, 0)
    spec = log_mel(wave, frames_per_video_frame=fpv)
    assert spec.shape == (16, frames * fpv)
    assert log_mel(wave, n_fft=256, n_mels=8, frames_per_video_frame=fpv).shape == (8, frames * fpv)
    x = clip_audio(clip, 0, n_mels=12, frames_per_video_frame=fpv)
    assert x.shape == (1, 12, frames * fpv) and x.dtype == np.float32


def test_batched_log_mel_equals_one_by_one():
    rng = np.random.default_rng(1)
    waves = np.stack([synthesize(_random_clip(rng), rng) for _ in range(4)])
    batch = log_mel(waves)
    assert batch.shape == (4, 16, 16)
    for w, s in zip(waves, batch):
        torch.testing.assert_close(log_mel(w), s, atol=1e-4, rtol=1e-5)


def test_a_frame_sees_only_its_own_samples():
    """Sound inside hop j changes spectrogram frame j and no other frame, for several n_fft."""
    for n_fft, fpv in ((512, 2), (256, 2), (1024, 4), (512, 1)):
        hop = SAMPLES_PER_FRAME // fpv
        quiet = np.zeros(6 * SAMPLES_PER_FRAME, dtype=np.float32)
        base = log_mel(quiet, n_fft=n_fft, frames_per_video_frame=fpv)
        for j in (0, 3, 6 * fpv - 1):
            wave = quiet.copy()
            wave[j * hop : (j + 1) * hop] = np.random.default_rng(j).uniform(-0.5, 0.5, hop)
            spec = log_mel(wave, n_fft=n_fft, frames_per_video_frame=fpv)
            changed = torch.nonzero((spec - base).abs().amax(0) > 1e-5).flatten().tolist()
            assert changed == [j], (n_fft, fpv, j, changed)


def test_pure_440_tone_lands_in_its_mel_band():
    t = np.arange(8 * SAMPLES_PER_FRAME) / SAMPLE_RATE
    wave = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    spec = log_mel(wave)
    band = _band_of(440.0, mel_filterbank(audio.N_FFT, 16, SAMPLE_RATE), audio.N_FFT)
    energy = spec.mean(1)
    assert int(energy.argmax()) == band
    assert band not in (0, 15)
    others = torch.cat([energy[: band - 1], energy[band + 2 :]])  # away from the neighbours
    assert energy[band] > others.max() + 2.0


def test_a_bounce_sounds_in_exactly_its_video_frame():
    quiet = _clip([("circle", "blue", "large")])
    for k in (0, 3, 7):
        bounced = _clip([("circle", "blue", "large")], [(k, 0, "left")])
        for fpv in (1, 2, 4):
            a = log_mel(synthesize(quiet, 5), frames_per_video_frame=fpv)
            b = log_mel(synthesize(bounced, 5), frames_per_video_frame=fpv)
            rise = b - a
            own = list(range(k * fpv, (k + 1) * fpv))
            others = [j for j in range(8 * fpv) if j not in own]
            assert rise[:, others].abs().max() < 1e-5  # nothing before or after the bounce's frame
            if fpv <= 2:  # every spectrogram frame of the bounce's video frame, across the band
                for j in own:
                    assert int((rise[:, j] > 0.4).sum()) >= 8, (k, fpv, j, rise[:, j])
            assert int((rise[:, own[0]] > 1.0).sum()) >= 8


def test_pitch_rises_circle_square_triangle():
    fb = mel_filterbank(audio.N_FFT, 16, SAMPLE_RATE)
    peaks = []
    for shape in SHAPES:
        spec = log_mel(synthesize(_clip([(shape, "blue", "large")]), 0))
        peak = int(spec.mean(1).argmax())
        assert peak == _band_of(PITCH_HZ[shape], fb, audio.N_FFT)
        peaks.append(peak)
    assert peaks[0] < peaks[1] < peaks[2]
    assert PITCH_HZ["circle"] < PITCH_HZ["square"] < PITCH_HZ["triangle"] < 4 * PITCH_HZ["circle"]


@pytest.mark.parametrize("shape,color", [("circle", "red"), ("square", "blue"), ("triangle", "cyan")])
def test_large_objects_sound_louder(shape, color):
    small, large = (synthesize(_clip([(shape, color, z)]), 2) for z in SIZES)
    assert 1.8 < large.std() / small.std() < 2.2
    s, l = log_mel(small), log_mel(large)
    band = int(l.mean(1).argmax())
    assert (l[band] - s[band]).mean() > 0.35  # ~ log(4) / LOG_MEL_STD
    assert l.mean() > s.mean()


def test_fixed_normalisation_is_roughly_standard_and_keeps_loudness():
    rng = np.random.default_rng(11)
    spec = log_mel(np.stack([synthesize(_random_clip(rng), rng) for _ in range(64)]))
    assert abs(float(spec.mean())) < 0.3 and 0.7 < float(spec.std()) < 1.3
    # no per-example standardisation: halving a wave lowers its features
    w = synthesize(_random_clip(rng), 0)
    assert log_mel(w * 0.5).mean() < log_mel(w).mean() - 0.1


# ---------------------------------------------------------------- text and labels

def _texts(clip, n=300) -> set[str]:
    rng = np.random.default_rng(0)
    return {audio_text(clip, rng) for _ in range(n)}


def _check_style(texts):
    for t in texts:
        assert 15 <= len(t.encode()) <= 60, t
        assert re.fullmatch(r"[a-z ,.:?]+", t), t
        if t.startswith("q: "):
            assert answer_span(t) > 0


def test_texts_about_two_tones_are_all_correct():
    clip = _clip(
        [("circle", "red", "large"), ("triangle", "blue", "small")],
        [(2, 0, "left"), (5, 0, "object"), (5, 1, "object")],
    )
    expected = {
        "a loud low bright tone and a quiet high soft tone.",
        "i hear a loud low bright tone and a quiet high soft tone.",
        "q: how many bounces do you hear? a: two.",
        "q: how many tones do you hear? a: two.",
        "q: how many tones? a: two.",
        "q: which sounds louder? a: the large one.",
        "q: how does the low tone sound? a: bright.",
        "q: how does the high tone sound? a: soft.",
        "q: is the low tone loud or quiet? a: loud.",
        "q: is the high tone loud or quiet? a: quiet.",
        "q: is the bright tone low, middle or high? a: low.",
        "q: is the soft tone low, middle or high? a: high.",
    }
    got = _texts(clip)
    assert got <= expected, got - expected
    assert len(got) >= 8
    _check_style(got)


def test_texts_about_three_tones_of_one_size_are_all_correct():
    clip = _clip([("square", "green", "small"), ("square", "purple", "small"), ("triangle", "green", "small")])
    got = _texts(clip)
    allowed_q = {
        "q: how many bounces do you hear? a: zero.",
        "q: how many tones do you hear? a: three.",
        "q: how many tones? a: three.",
        "q: which sounds louder? a: they sound the same.",
        "q: how does the high tone sound? a: hollow.",
        "q: is the high tone loud or quiet? a: quiet.",
        "q: is the warm tone low, middle or high? a: middle.",
    }
    questions = {t for t in got if t.startswith("q: ")}
    assert questions <= allowed_q, questions - allowed_q
    assert len(questions) >= 5
    for t in got - questions:  # descriptions name every tone, front first, in the right words
        words = t.rstrip(".").removeprefix("i hear ").replace(",", "").split(" and ")
        assert len(words) == 2 and t.count("tone") == 3, t
        assert t.index("middle") < t.index("high"), t
    _check_style(got)


def test_single_tone_and_many_bounces():
    bounces = [(f, 0, KINDS[f % 4]) for f in range(8)] + [(9, 0, "left")]  # frame 9 is past the end
    clip = _clip([("triangle", "cyan", "large")], bounces)
    got = _texts(clip)
    assert "q: how many bounces do you hear? a: eight." in got
    assert not any("louder" in t for t in got)
    assert "q: is the ringing tone low, middle or high? a: high." in got
    _check_style(got)


def test_random_clips_give_well_formed_texts():
    rng = np.random.default_rng(4)
    texts = [audio_text(_random_clip(rng), rng) for _ in range(200)]
    _check_style(texts)
    assert len({t.split(" a: ")[0] for t in texts}) >= 10


def test_one_burst_per_frame_with_bounces():
    clip = _clip(
        [("circle", "red", "large"), ("square", "red", "small")],
        [(1, 0, "object"), (1, 1, "object"), (1, 0, "top"), (4, 1, "right"), (4, 0, "right"), (-1, 0, "left")],
    )
    assert bounce_frames(clip) == [1, 4]
    once = _clip([("circle", "red", "large"), ("square", "red", "small")], [(1, 0, "top"), (4, 1, "right")])
    assert np.array_equal(synthesize(clip, 3), synthesize(once, 3))


def test_audio_attributes_describe_the_front_object_and_clip_bounces():
    for n_bounces, label in ((0, 0), (1, 1), (2, 2), (5, 2)):
        clip = _clip(
            [("triangle", "purple", "small"), ("circle", "red", "large")],
            [(f, 0, "bottom") for f in range(n_bounces)],
        )
        got = audio_attributes(clip)
        assert got == {"pitch": 2, "timbre": COLORS.index("purple"), "loud": 0, "bounces": label}
    one_collision = _clip(
        [("square", "cyan", "large"), ("circle", "red", "small")], [(3, 0, "object"), (3, 1, "object"), (8, 0, "top")]
    )
    assert audio_attributes(one_collision) == {"pitch": 1, "timbre": COLORS.index("cyan"), "loud": 1, "bounces": 1}
    rng = np.random.default_rng(9)
    for _ in range(50):
        labels = audio_attributes(_random_clip(rng))
        assert set(labels) == set(AUDIO_ATTRIBUTES)
        assert all(0 <= labels[k] < AUDIO_ATTRIBUTES[k] for k in labels)
