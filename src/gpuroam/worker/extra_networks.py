"""A1111's extra-network tags in prompts: `<lora:name:weight>` and their kin.

A1111 removes every `<kind:arg:arg...>` tag from a positive prompt before the text encoder sees it,
whatever the kind, and activates the kinds it knows. `lora` (and its old alias `lyco`) is a LoRA:
`<lora:name>`, `<lora:name:w>` (text encoder and UNet at w), `<lora:name:te:unet>`, or named as
`te=`, `unet=`. Parsing is pure, so it is property-tested; which names exist is the library's
business (worker/library.py).

A name tagged twice counts once with its multipliers summed: each of A1111's tags adds its own change to
the weights, so two tags add up (A1111 merges each tag separately; here each name is merged once). Every
distinct name is a file merged into the weights for each batch, so a prompt names at most MAX_LORAS, and
a summed multiplier is bounded as a single one is.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from gpuroam.worker.schemas import RequestError

TAG = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = ("lora", "lyco")
MAX_MULTIPLIER = 100.0  # far beyond any useful weight; keeps a typo from turning the image to NaN
MAX_LORAS = 8  # distinct LoRAs per prompt: A1111 users rarely stack more than five


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

    text = TAG.sub(found, prompt)
    return ParsedPrompt(text, _summed(loras, field_name), tuple(others))


def _summed(loras: list[NetworkUse], field_name: str) -> tuple[NetworkUse, ...]:
    """One use per name, in first-mention order, its multipliers the sum of its tags'."""
    by_name: dict[str, NetworkUse] = {}
    for use in loras:
        seen = by_name.get(use.name)
        by_name[use.name] = use if seen is None else NetworkUse(use.name, seen.te + use.te, seen.unet + use.unet)
    if len(by_name) > MAX_LORAS:
        raise RequestError(
            field_name,
            f"the prompt names {len(by_name)} different LoRAs; at most {MAX_LORAS} are merged per prompt: "
            "remove some <lora:...> tags",
        )
    for use in by_name.values():
        if max(abs(use.te), abs(use.unet)) > MAX_MULTIPLIER:
            raise RequestError(
                field_name,
                f"<lora:{use.name[:128]}> is tagged with weights that add up to more than {MAX_MULTIPLIER:g}; "
                "the tags of one LoRA add up: tag it once, with a weight from "
                f"-{MAX_MULTIPLIER:g} to {MAX_MULTIPLIER:g}",
            )
    return tuple(by_name.values())


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
