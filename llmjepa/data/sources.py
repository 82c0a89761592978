"""Where media and their text come from: the generated shapes world (images or clips with
sound), or scikit-learn's digits.

A source draws n items from a numpy Generator and returns their media per modality, the text that
goes with them (related, unrelated, pairwise comparisons), descriptive captions for retrieval, and
the labels kept for evaluation only (attributes per modality, per-patch object ids).
Deterministic per seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from llmjepa.data import text as text_gen
from llmjepa.data import world
from llmjepa.data.render import render_batch
from llmjepa.specs import DataSpec

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass
class Draw:
    media: dict[str, np.ndarray]  # modality -> (n, ...) float32: image (n, 3, S, S), video (n, 3, T, S, S), audio (n, 1, F, T)
    attributes: dict[str, dict[str, np.ndarray]]  # modality -> name -> (n,) class ids (evaluation only)
    patch_labels: np.ndarray  # (n, [T,] g, g) object id per patch, 0 = background (evaluation only)
    scenes: list  # source-specific descriptions, passed back to the text functions


class ShapesSource:
    """The generated world: 1-3 shapes on a textured background, captions and Q/A about them."""

    attributes = {"image": dict(world.ATTRIBUTES)}

    def __init__(self, spec: DataSpec):
        self.spec = spec

    def draw(self, rng: np.random.Generator, n: int) -> Draw:
        s = self.spec
        scenes = [world.sample_scene(rng, s.min_objects, s.max_objects) for _ in range(n)]
        images, labels = render_batch(scenes, s.image_size, s.patch_size, s.background_noise)
        attrs = [world.scene_attributes(sc) for sc in scenes]
        return Draw(
            media={"image": images.astype(np.float32)},
            attributes={"image": {k: np.array([a[k] for a in attrs]) for k in world.ATTRIBUTES}},
            patch_labels=labels,
            scenes=scenes,
        )

    def related(self, scene, rng, kind: str) -> str:
        return text_gen.related_text(scene, rng, kind)

    def caption(self, scene, rng) -> str:
        return text_gen.caption(scene, rng)

    def compare(self, a, b, rng) -> str:
        return text_gen.compare_text(a, b, rng)


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


class DigitsSource:
    """Real handwritten digits (scikit-learn's bundled 8x8 set), upscaled to the image size."""

    attributes = {"image": {"digit": 10}}

    def __init__(self, spec: DataSpec):
        if spec.image_size % 8:
            raise ValueError(f"digits need an image_size divisible by 8, got {spec.image_size}")
        self.spec = spec

    def draw(self, rng: np.random.Generator, n: int) -> Draw:
        imgs, labels = _digits()
        idx = rng.integers(0, len(imgs), n)
        k = self.spec.image_size // 8
        up = np.kron(imgs[idx], np.ones((k, k), np.float32))  # (n, S, S)
        g = self.spec.grid
        ink = up.reshape(n, g, self.spec.patch_size, g, self.spec.patch_size).mean((2, 4)) > 0.25
        return Draw(
            media={"image": np.repeat(up[:, None], 3, axis=1)},
            attributes={"image": {"digit": labels[idx]}},
            patch_labels=ink.astype(np.int64),
            scenes=[int(d) for d in labels[idx]],
        )

    def related(self, digit, rng, kind: str) -> str:
        if kind == "qa" or (kind == "mixed" and rng.random() < 0.5):
            return f"q: which digit is this? a: {NUMBER_WORDS[digit]}."
        return self.caption(digit, rng)

    def caption(self, digit, rng) -> str:
        return rng.choice(["a handwritten {}.", "the digit {}.", "this is a {}."]).format(NUMBER_WORDS[digit])

    def compare(self, a, b, rng) -> str:
        rel = "larger" if a > b else "smaller" if a < b else "equal"
        return f"the first digit is {rel} than the second." if rel != "equal" else "both digits are the same."


class ClipSource:
    """Clips of the world: objects move and bounce; with audio, each object sounds and each
    bounce makes a transient whose spectrogram frames align with the video frames."""

    def __init__(self, spec: DataSpec):
        from llmjepa.data import audio, video

        self.spec, self.audio, self.video = spec, audio, video
        self.with_audio = spec.modality == "audio_video"
        self.attributes = {"video": dict(video.CLIP_ATTRIBUTES)}
        if self.with_audio:
            self.attributes["audio"] = dict(audio.AUDIO_ATTRIBUTES)

    def draw(self, rng: np.random.Generator, n: int) -> Draw:
        s = self.spec
        clips = [self.video.sample_clip(rng, s.frames, s.min_objects, s.max_objects) for _ in range(n)]
        videos, labels = self.video.render_clips(clips, s.image_size, s.patch_size, s.background_noise)
        media = {"video": videos}
        attrs = {"video": _stack([self.video.clip_attributes(c) for c in clips])}
        if self.with_audio:
            media["audio"] = np.stack([self.audio.clip_audio(c, rng, s.n_mels, s.spec_per_frame) for c in clips])
            attrs["audio"] = _stack([self.audio.audio_attributes(c) for c in clips])
        return Draw(media=media, attributes=attrs, patch_labels=labels, scenes=clips)

    def related(self, clip, rng, kind: str) -> str:
        if self.with_audio and rng.random() < 0.5:
            return self.audio.audio_text(clip, rng)
        return self.video.motion_text(clip, rng)

    def caption(self, clip, rng) -> str:
        return self.video.clip_caption(clip, rng)

    def compare(self, a, b, rng) -> str:
        raise ValueError("clips have no comparison text: set data.pair_ratio to 0")


def _stack(rows: list[dict[str, int]]) -> dict[str, np.ndarray]:
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


SOURCES = {"shapes": ShapesSource, "digits": DigitsSource}


def make_source(spec: DataSpec):
    if spec.modality != "image":
        if spec.source != "shapes":
            raise ValueError(f"data.source {spec.source} has no {spec.modality}; use shapes")
        return ClipSource(spec)
    return SOURCES[spec.source](spec)
