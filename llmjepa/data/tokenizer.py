"""Byte-level tokenizer: ids 0..255 are UTF-8 bytes, special tokens follow.

Owns the special token ids (padding, sequence boundaries and media boundaries), the
vocabulary size, and text <-> id conversion with specials shown as readable tags.
"""

from __future__ import annotations

from collections.abc import Iterable

PAD = 256
BOS = 257
EOS = 258
IMAGE_START = 259
IMAGE_END = 260
VIDEO_START = 261
VIDEO_END = 262
AUDIO_START = 263
AUDIO_END = 264
VOCAB_SIZE = 265

MEDIA_TOKENS: dict[str, tuple[int, int]] = {
    "image": (IMAGE_START, IMAGE_END),
    "video": (VIDEO_START, VIDEO_END),
    "audio": (AUDIO_START, AUDIO_END),
}

SPECIAL_NAMES: dict[int, str] = {PAD: "<pad>", BOS: "<bos>", EOS: "<eos>"}
SPECIAL_NAMES.update({start: f"<{m}>" for m, (start, _) in MEDIA_TOKENS.items()})
SPECIAL_NAMES.update({end: f"</{m}>" for m, (_, end) in MEDIA_TOKENS.items()})


def encode(text: str) -> list[int]:
    """The UTF-8 bytes of `text` as ids; never emits special tokens."""
    return list(text.encode("utf-8"))


def decode(ids: Iterable[int]) -> str:
    """Bytes decoded as UTF-8 (invalid sequences replaced), specials shown as tags like <bos>."""
    parts: list[str] = []
    run = bytearray()
    for i in ids:
        i = int(i)
        if 0 <= i < 256:
            run.append(i)
            continue
        if i not in SPECIAL_NAMES:
            raise ValueError(f"token id {i} is outside the vocabulary of {VOCAB_SIZE}")
        parts.append(run.decode("utf-8", errors="replace"))
        run.clear()
        parts.append(SPECIAL_NAMES[i])
    parts.append(run.decode("utf-8", errors="replace"))
    return "".join(parts)
