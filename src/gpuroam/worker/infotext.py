"""The A1111 text that describes how an image was made (PNG chunk, `info.infotexts`)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from gpuroam import __version__
from gpuroam.worker.jobs import BatchKey
from gpuroam.worker.samplers import schedule_label


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def infotext(
    *,
    prompt: str,
    negative_prompt: str,
    key: BatchKey,
    seed: int,
    subseed: int,
    subseed_strength: float,
    batch_size: int,
    batch_pos: int,
    model_name: str,
    model_hash: str,
    more: Mapping[str, object] | None = None,
) -> str:
    """`more`: a feature's own fields (hires fix's, inpainting's), in A1111's order after the common ones."""
    fields: dict[str, object] = {
        "Steps": key.steps,
        "Sampler": key.sampler,
        # A1111 names the schedule by its label, and names none for the model's own (uniform) levels.
        "Schedule type": None if key.schedule in ("automatic", "uniform") else schedule_label(key.schedule),
        "CFG scale": _number(key.cfg_scale),
        "Seed": seed,
        "Size": f"{key.width}x{key.height}",
        "Model hash": model_hash,
        "Model": model_name,
        "Batch size": batch_size if batch_size > 1 else None,
        "Batch pos": batch_pos if batch_size > 1 else None,
        "Denoising strength": _number(key.denoising_strength) if key.mode != "txt2img" else None,
        "Variation seed": subseed if subseed_strength > 0 else None,
        "Variation seed strength": _number(subseed_strength) if subseed_strength > 0 else None,
        "Clip skip": key.clip_skip if key.clip_skip > 1 else None,
        "Eta": _number(key.eta) if key.eta is not None else None,
        "Tiling": "True" if key.tiling else None,
        **{name: _number(value) if isinstance(value, float) else value for name, value in (more or {}).items()},
        "Version": f"gpuroam {__version__}",
    }
    settings = ", ".join(f"{name}: {quoted(value)}" for name, value in fields.items() if value is not None)
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(settings)
    return "\n".join(lines)


def quoted(value: object) -> str:
    """A value as A1111 writes it: in JSON quotes when it holds a comma, a colon or a line break."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text
