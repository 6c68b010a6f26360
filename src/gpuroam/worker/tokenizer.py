"""The CLIP BPE tokenizer that Stable Diffusion uses, built from merges shipped as package data.

No hub download: the vocabulary is derived from the merges exactly as OpenAI CLIP does it
(256 byte characters, the same with `</w>`, one entry per merge, then BOS and EOS).
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib.resources import files

from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LENGTH = 77


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte-to-printable-character table, in its order."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


@lru_cache(maxsize=1)
def clip_merges() -> tuple[tuple[str, str], ...]:
    raw = files("gpuroam.worker").joinpath("assets/clip-merges.txt.gz").read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").splitlines()[1:]
    return tuple(_merge_pair(line) for line in lines if line)


def _merge_pair(line: str) -> tuple[str, str]:
    left, right = line.split(" ", 1)
    return left, right


def clip_vocab() -> dict[str, int]:
    byte_chars = _bytes_to_unicode()
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(pair) for pair in clip_merges()]
    tokens += [BOS, EOS]
    return {token: index for index, token in enumerate(tokens)}


def clip_tokenizer(pad_token: str = EOS) -> CLIPTokenizer:
    """SD 1.x pads with EOS; SD 2.x (OpenCLIP) pads with "!"."""
    return CLIPTokenizer(
        vocab=clip_vocab(),
        merges=list(clip_merges()),  # type: ignore[arg-type]  # transformers types merges as strings; BPE takes pairs
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=pad_token,
        model_max_length=MAX_LENGTH,
    )
