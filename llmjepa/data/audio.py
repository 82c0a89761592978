"""Sound for video clips: each object hums, bounces click, and log-mel spectrograms align to frames.

Owns the sound of the synthetic world (pitch from shape, timbre from colour, loudness from size,
a short noise burst in every frame with a bounce), the mel filterbank and log-mel features written with plain
torch, the per-clip model input, short texts about what is heard, and the audio probe labels.

A clip is anything with `objects` (tuple of world.Obj, front first), `bounces` (tuple of
(frame, object_index, kind)), `frames` (T) and `positions` (T, n, 2); only the first three are used.

Alignment invariant: with `frames_per_video_frame = F`, the hop is SAMPLES_PER_FRAME / F samples and
spectrogram frame j is computed from samples of video frame j // F only, so a clip of T frames gives
exactly T * F spectrogram frames.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from llmjepa.data.world import COLORS, SHAPES, SIZES

SAMPLE_RATE = 8000
FRAME_SECONDS = 0.1  # one video frame
SAMPLES_PER_FRAME = round(SAMPLE_RATE * FRAME_SECONDS)  # 800

# ---------------------------------------------------------------- the sound of an object

# Fundamentals about 0.83 octave apart, none a harmonic of another (A3, G4, F5).
PITCH_HZ = {"circle": 220.0, "square": 392.0, "triangle": 698.0}
PITCH_WORD = {"circle": "low", "square": "middle", "triangle": "high"}

# Relative amplitudes of harmonics 1..6; each recipe is scaled to unit power below, so colour
# changes only the timbre, never the loudness.
TIMBRE = {
    "red": (1.0, 0.7, 0.5, 0.35, 0.25, 0.18),   # all harmonics, falling slowly
    "green": (1.0, 0.0, 0.33, 0.0, 0.2, 0.0),   # odd harmonics only
    "blue": (1.0, 0.1, 0.0, 0.0, 0.0, 0.0),     # nearly a pure tone
    "yellow": (0.5, 0.5, 0.6, 0.7, 0.8, 0.9),   # upper harmonics strongest
    "purple": (1.0, 0.8, 0.15, 0.0, 0.0, 0.0),  # the first two harmonics
    "cyan": (0.6, 0.0, 0.0, 1.0, 0.0, 0.5),     # fundamental, 4th and 6th
}
TIMBRE_WORD = {
    "red": "bright", "green": "hollow", "blue": "soft",
    "yellow": "buzzy", "purple": "warm", "cyan": "ringing",
}

AMPLITUDE = {"small": 0.06, "large": 0.12}  # per object, harmonics at unit power
LOUD_WORD = {"small": "quiet", "large": "loud"}

_MAX_HARMONIC_HZ = 0.45 * SAMPLE_RATE  # harmonics above this are left out (no aliasing)

BURST_AMPLITUDE = 0.6  # peak of the uniform noise; its std is 0.6 / sqrt(3)
BURST_DECAY_S = 0.025  # e-folding time of a bounce's noise burst
_BURST_FADE = 40  # samples of raised-cosine fade before the video frame ends
NOISE_STD = 0.003

# ---------------------------------------------------------------- features

N_FFT = 512
N_MELS = 16
FRAMES_PER_VIDEO_FRAME = 2
LOG_EPS = 1e-6
# Fixed normalisation of log-mel values: the mean and std over many sampled clips (n_fft=512,
# 16 mels, 2 frames per video frame). Not per example, so loudness stays in the features.
LOG_MEL_MEAN = -9.3
LOG_MEL_STD = 3.1

AUDIO_ATTRIBUTES: dict[str, int] = {"pitch": len(SHAPES), "timbre": len(COLORS), "loud": len(SIZES), "bounces": 3}

Rng = np.random.Generator | int


def _generator(rng: Rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


@functools.lru_cache(maxsize=None)
def _harmonics(shape: str, color: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows, amplitudes) of the audible harmonics: rows index harmonics 1..6 from 0, and the
    amplitudes are scaled so that the sum of these sinusoids has unit mean square."""
    k = np.arange(1, 7)
    amps = np.asarray(TIMBRE[color], dtype=np.float64)
    rows = np.flatnonzero((k * PITCH_HZ[shape] < _MAX_HARMONIC_HZ) & (amps > 0))
    amps = amps[rows] / math.sqrt(0.5 * float(np.sum(amps[rows] ** 2)))
    rows.flags.writeable = amps.flags.writeable = False
    return rows, amps


@functools.lru_cache(maxsize=16)
def _sinusoids(shape: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """sin and cos of harmonics 1..6 of the shape's pitch over n samples, (6, n) each, read-only."""
    t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
    arg = 2.0 * np.pi * PITCH_HZ[shape] * np.arange(1, 7)[:, None] * t[None, :]
    sin, cos = np.sin(arg), np.cos(arg)
    sin.flags.writeable = cos.flags.writeable = False
    return sin, cos


def bounce_frames(clip: Any) -> list[int]:
    """The frames, in order, that hold at least one bounce: each sounds one noise burst, since
    bounces within one frame (a corner, both objects of a collision) start at the same sample and
    cannot be told apart by ear. Entries outside the clip's frames are dropped."""
    return sorted({int(f) for f, _i, _k in clip.bounces if 0 <= int(f) < int(clip.frames)})


def _burst(rng: np.random.Generator) -> np.ndarray:
    """A decaying white-noise burst (uniform, so bounded) that fades out before its frame ends."""
    n = np.arange(SAMPLES_PER_FRAME)
    env = np.exp(-n / (BURST_DECAY_S * SAMPLE_RATE))
    env[-_BURST_FADE:] *= 0.5 + 0.5 * np.cos(np.linspace(0.0, np.pi, _BURST_FADE))
    return BURST_AMPLITUDE * env * rng.uniform(-1.0, 1.0, SAMPLES_PER_FRAME)


def synthesize(clip: Any, rng: Rng) -> np.ndarray:
    """Waveform of the clip: float32, (frames * SAMPLES_PER_FRAME,), values in [-1, 1].

    Every object sounds for the whole clip (random harmonic phases from `rng`); each frame with a
    bounce gets one noise burst, starting at its first sample and ending inside that frame.
    """
    rng = _generator(rng)
    frames = int(clip.frames)
    n = frames * SAMPLES_PER_FRAME
    wave = np.zeros(n, dtype=np.float64)
    for obj in clip.objects:
        rows, amps = _harmonics(obj.shape, obj.color)
        phases = rng.uniform(0.0, 2.0 * np.pi, size=len(rows))
        sin, cos = _sinusoids(obj.shape, n)
        # sin(w t + p) = sin(w t) cos(p) + cos(w t) sin(p)
        wave += AMPLITUDE[obj.size] * ((amps * np.cos(phases)) @ sin[rows] + (amps * np.sin(phases)) @ cos[rows])
    wave += NOISE_STD * rng.standard_normal(n)
    for frame in bounce_frames(clip):  # drawn last: bounces change nothing before them
        s = frame * SAMPLES_PER_FRAME
        wave[s : s + SAMPLES_PER_FRAME] += _burst(rng)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------- mel features

def hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_fft: int, n_mels: int, sample_rate: int, fmin: float = 0.0, fmax: float | None = None
) -> torch.Tensor:
    """Triangular HTK-mel filters, (n_mels, n_fft // 2 + 1), float32, peak weight 1 at each centre.

    Filter m rises linearly (in Hz) from edge m to edge m + 1 and falls to edge m + 2, where the
    n_mels + 2 edges are equally spaced in mel between fmin and fmax (default: Nyquist).
    """
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    if not 0.0 <= fmin < fmax <= sample_rate / 2.0:
        raise ValueError(f"need 0 <= fmin < fmax <= {sample_rate / 2}, got {fmin}, {fmax}")
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    bins = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (bins[None, :] - lo) / (mid - lo)
    fall = (hi - bins[None, :]) / (hi - mid)
    return torch.from_numpy(np.clip(np.minimum(rise, fall), 0.0, None)).float()


@functools.lru_cache(maxsize=32)
def _cached_filterbank(n_fft: int, n_mels: int) -> torch.Tensor:
    return mel_filterbank(n_fft, n_mels, SAMPLE_RATE)


@functools.lru_cache(maxsize=32)
def _hann(win: int) -> torch.Tensor:
    return torch.hann_window(win, periodic=False)


def spec_hop(frames_per_video_frame: int) -> int:
    if frames_per_video_frame < 1 or SAMPLES_PER_FRAME % frames_per_video_frame:
        raise ValueError(f"frames_per_video_frame must divide {SAMPLES_PER_FRAME}, got {frames_per_video_frame}")
    return SAMPLES_PER_FRAME // frames_per_video_frame


def log_mel(
    wave: np.ndarray | torch.Tensor,
    n_fft: int = N_FFT,
    hop: int | None = None,
    n_mels: int = N_MELS,
    frames_per_video_frame: int = FRAMES_PER_VIDEO_FRAME,
) -> torch.Tensor:
    """Normalised log-mel spectrogram, (n_mels, len // hop), or (B, n_mels, len // hop) for (B, len).

    hop defaults to SAMPLES_PER_FRAME / frames_per_video_frame (400 samples for 2); a hop given
    explicitly overrides that, and alignment with video frames is then the caller's. Framing is
    torch.stft with center=False on an explicitly padded signal: frame j's Hann window, of length
    min(n_fft, hop), sits centred inside samples [j * hop, (j + 1) * hop), so no frame sees samples
    of a neighbouring hop and the frame count is exactly len // hop (a trailing partial hop is
    dropped). Power is scaled by 1 / (sum of window)^2 (a unit sine gives a peak of about 1/4),
    passed through the mel filters, logged as log(x + 1e-6), then normalised with the fixed
    LOG_MEL_MEAN and LOG_MEL_STD.
    """
    hop = spec_hop(frames_per_video_frame) if hop is None else int(hop)
    x = torch.as_tensor(wave, dtype=torch.float32)
    batched = x.dim() == 2
    if not batched:
        x = x[None]
    n_spec = x.shape[-1] // hop
    if n_spec < 1:
        raise ValueError(f"need at least one hop ({hop} samples), got {x.shape[-1]}")
    x = x[:, : n_spec * hop]
    win = min(n_fft, hop)
    # torch.stft puts a shorter window in the middle of the n_fft frame, at offset (n_fft - win) // 2;
    # shift the signal so that offset lands at (hop - win) // 2 inside each hop.
    left = (n_fft - win) // 2 - (hop - win) // 2
    right = (n_spec - 1) * hop + n_fft - left - n_spec * hop
    x = torch.nn.functional.pad(x, (left, right))  # negative amounts crop
    window = _hann(win)
    spec = torch.stft(x, n_fft, hop_length=hop, win_length=win, window=window, center=False, return_complex=True)
    power = spec.real**2 + spec.imag**2
    power = power / float(window.sum()) ** 2
    mel = torch.matmul(_cached_filterbank(n_fft, n_mels), power)  # (B, n_mels, n_spec)
    out = (torch.log(mel + LOG_EPS) - LOG_MEL_MEAN) / LOG_MEL_STD
    return out if batched else out[0]


def clip_audio(
    clip: Any, rng: Rng, n_mels: int = N_MELS, frames_per_video_frame: int = FRAMES_PER_VIDEO_FRAME
) -> np.ndarray:
    """The model's audio input for one clip: (1, n_mels, frames * frames_per_video_frame) float32."""
    wave = synthesize(clip, rng)
    return log_mel(wave, n_mels=n_mels, frames_per_video_frame=frames_per_video_frame)[None].numpy()


# ---------------------------------------------------------------- text about sounds

MAX_LEN = 60
_NUMBERS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
)


def _number(n: int) -> str:
    return _NUMBERS[n] if n < len(_NUMBERS) else "many"


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _describe(objs, rng):
    """ "a loud low bright tone and a quiet high soft tone." with detail dropped until it fits."""
    for loud, timbre in ((True, True), (False, True), (False, False)):
        parts = []
        for o in objs:
            words = [LOUD_WORD[o.size]] if loud else []
            words += [PITCH_WORD[o.shape]] + ([TIMBRE_WORD[o.color]] if timbre else [])
            parts.append("a " + " ".join(words) + " tone")
        text = _pick(rng, ("", "i hear ")) + _join(parts) + "."
        if len(text) <= MAX_LEN:
            return text
    return _join(["a " + PITCH_WORD[o.shape] + " tone" for o in objs]) + "."


def _unique_by(objs, key):
    keys = [key(o) for o in objs]
    return [o for o, k in zip(objs, keys) if keys.count(k) == 1]


def _q_bounces(clip, objs, rng):
    return "how many bounces do you hear?", _number(len(bounce_frames(clip)))


def _q_tones(clip, objs, rng):
    return _pick(rng, ("how many tones do you hear?", "how many tones?")), _number(len(objs))


def _q_louder(clip, objs, rng):
    if len(objs) < 2:
        return None
    sizes = {o.size for o in objs}
    answer = "they sound the same" if len(sizes) == 1 else "the large one"
    return "which sounds louder?", answer


def _q_timbre(clip, objs, rng):
    c = _unique_by(objs, lambda o: o.shape)
    if not c:
        return None
    o = _pick(rng, c)
    return f"how does the {PITCH_WORD[o.shape]} tone sound?", TIMBRE_WORD[o.color]


def _q_loudness(clip, objs, rng):
    c = _unique_by(objs, lambda o: o.shape)
    if not c:
        return None
    o = _pick(rng, c)
    return f"is the {PITCH_WORD[o.shape]} tone loud or quiet?", LOUD_WORD[o.size]


def _q_pitch(clip, objs, rng):
    c = _unique_by(objs, lambda o: o.color)
    if not c:
        return None
    o = _pick(rng, c)
    return f"is the {TIMBRE_WORD[o.color]} tone low, middle or high?", PITCH_WORD[o.shape]


_QUESTIONS = (_q_bounces, _q_tones, _q_louder, _q_timbre, _q_loudness, _q_pitch)


def audio_text(clip: Any, rng: Rng) -> str:
    """A short lowercase text about what the clip sounds like: a description (one time in
    four) or a question with its answer, "q: ...? a: answer."."""
    rng = _generator(rng)
    objs = tuple(clip.objects)
    if rng.random() < 0.25:
        return _describe(objs, rng)
    for i in rng.permutation(len(_QUESTIONS)):
        got = _QUESTIONS[i](clip, objs, rng)
        if got is not None:
            return f"q: {got[0]} a: {got[1]}."
    raise AssertionError("the bounce count question always applies")


def audio_attributes(clip: Any) -> dict[str, int]:
    """Probe labels: pitch, timbre and loudness of the front object; frames with a bounce, clipped to 2."""
    front = clip.objects[0]
    return {
        "pitch": SHAPES.index(front.shape),
        "timbre": COLORS.index(front.color),
        "loud": SIZES.index(front.size),
        "bounces": min(len(bounce_frames(clip)), 2),
    }
