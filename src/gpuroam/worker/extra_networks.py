"""A1111's extra-network tags in prompts: `<lora:name:weight>` and their kin.

A1111 removes every `<kind:arg:arg...>` tag from a positive prompt before the text encoder sees it,
whatever the kind, and activates the kinds it knows. `lora` (and its old alias `lyco`) is a LoRA:
`<lora:name>`, `<lora:name:w>` (text encoder and UNet at w), `<lora:name:te:unet>`, or named as
`te=`, `unet=`. Parsing is pure, so it is property-tested; which names exist is the library's
business (worker/library.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from gpuroam.worker.schemas import RequestError

TAG = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = ("lora", "lyco")
MAX_MULTIPLIER = 100.0  # far beyond any useful weight; keeps a typo from turning the image to NaN


@dataclass(frozen=True)
class NetworkUse:
    """One LoRA asked for in a prompt: its name (or alias) and the multipliers for each part."""

    name: str
    te: float = 1.0
    unet: float = 1.0


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt without its tags, the LoRAs it asks for (in prompt order), and the other kinds' tags."""

    text: str
    loras: tuple[NetworkUse, ...]
    other_kinds: tuple[str, ...]


def parse_prompt(prompt: str, field_name: str = "prompt") -> ParsedPrompt:
    """Strip every tag as A1111 does; a LoRA tag whose weights are not numbers is a 422 naming `field_name`."""
    loras: list[NetworkUse] = []
    others: list[str] = []

    def found(match: re.Match[str]) -> str:
        kind, args = match[1], match[2].split(":")
        if kind in LORA_KINDS:
            loras.append(_lora(args, match[0], field_name))
        else:
            others.append(kind)
        return ""

    return ParsedPrompt(TAG.sub(found, prompt), tuple(loras), tuple(others))


def _lora(args: list[str], tag: str, field_name: str) -> NetworkUse:
    positional = [arg for arg in args if len(arg.split("=")) != 2]
    named = dict(arg.split("=") for arg in args if len(arg.split("=")) == 2)
    te = _multiplier(positional[1], tag, field_name) if len(positional) > 1 else 1.0
    te = _multiplier(named["te"], tag, field_name) if "te" in named else te
    unet = _multiplier(positional[2], tag, field_name) if len(positional) > 2 else te
    unet = _multiplier(named["unet"], tag, field_name) if "unet" in named else unet
    return NetworkUse(name=positional[0].strip() if positional else "", te=te, unet=unet)


def _multiplier(text: str, tag: str, field_name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or abs(value) > MAX_MULTIPLIER:
        raise RequestError(
            field_name,
            f"{tag}: the weight {text.strip()!r} is not a number from -{MAX_MULTIPLIER:g} to {MAX_MULTIPLIER:g}; "
            "write <lora:name:0.8>, or <lora:name:te:unet> for separate text encoder and UNet weights",
        )
    return value
