"""POST /sdapi/v1/png-info: an image's generation parameters, read back as A1111 reads them.

`read_info` takes the PNG `parameters` text chunk (or an EXIF UserComment, as A1111 writes JPEG and
WebP) and the other text chunks; `parse_parameters` turns an infotext into A1111's `parameters`
mapping: the prompt, the negative prompt, each `Key: value` of the last line (values stay strings,
`WxH` sizes split into `-1`/`-2`), then the defaults A1111 fills in for keys an older image lacks.
"""

from __future__ import annotations

import json
import re
from typing import Any

from PIL import Image

# A key (a word character, then words, spaces, '-' or '/'), ':', and a value: a JSON string or up to the next comma.
_PAIR = re.compile(r'(?:^|(?<=,))\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
MAX_INFOTEXT = 65_536  # characters parsed; an A1111 infotext is a few hundred (a longer one is cut, not parsed whole)
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_NEGATIVE = "Negative prompt:"
_WEIGHTED = re.compile(r"\([^()]*:\s*[\d.]+\s*\)|\([^():]+\)|\[[^\[\]:|]+\]")  # (x:1.2), (x), [x]
_METADATA_ONLY = frozenset(
    {
        "jfif",
        "jfif_version",
        "jfif_unit",
        "jfif_density",
        "dpi",
        "exif",
        "loop",
        "background",
        "timestamp",
        "duration",
        "progressive",
        "progression",
        "icc_profile",
        "chromaticity",
        "photoshop",
    }
)
_USER_COMMENT = 0x9286  # EXIF UserComment: where A1111 puts the infotext of a JPEG or WebP

# What A1111 fills in when an image's infotext does not say (an older version, or a setting left default).
_DEFAULTS: tuple[tuple[str, object], ...] = (
    ("Clip skip", "1"),
    ("Hires resize-1", 0),
    ("Hires resize-2", 0),
    ("Hires sampler", "Use same sampler"),
    ("Hires schedule type", "Use same scheduler"),
    ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""),
    ("Hires negative prompt", ""),
    ("Mask mode", "Inpaint masked"),
    ("Masked content", "original"),
    ("Inpaint area", "Whole picture"),
    ("Masked area padding", 32),
    ("RNG", "GPU"),
    ("Schedule type", "Automatic"),
    ("Schedule max sigma", 0),
    ("Schedule min sigma", 0),
    ("Schedule rho", 0),
    ("VAE Encoder", "Full"),
    ("VAE Decoder", "Full"),
    ("FP8 weight", "Disable"),
)


def read_info(image: Image.Image) -> tuple[str, dict[str, Any]]:
    """The image's infotext and its other metadata (A1111's `info` and `items`)."""
    items = {key: value for key, value in image.info.items() if key not in _METADATA_ONLY}
    info = items.pop("parameters", "")
    try:
        comment = image.getexif().get_ifd(0x8769).get(_USER_COMMENT) if "exif" in image.info else None
    except Exception:  # noqa: BLE001 - a corrupt EXIF block is no comment, not a failed request
        comment = None
    if comment:
        info = _user_comment(comment) or info
    elif isinstance(image.info.get("comment"), bytes):  # a GIF's comment
        info = image.info["comment"].decode("utf-8", errors="replace")
    text_items = {str(key): value for key, value in items.items() if isinstance(value, str | int | float | bool)}
    return (info if isinstance(info, str) else ""), text_items


def _user_comment(raw: object) -> str:
    """EXIF UserComment: an 8-byte charset tag, then the text (UNICODE is UTF-16, as piexif writes it)."""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, bytes):
        return ""
    tag, body = raw[:8], raw[8:]
    if tag.startswith(b"UNICODE"):
        encoding = "utf-16-le" if body[:2] != b"\x00\x00" and body[1:2] == b"\x00" else "utf-16-be"
        return body.decode(encoding, errors="replace").rstrip("\x00")
    return body.decode("utf-8", errors="replace").rstrip("\x00")


def parse_parameters(infotext: str) -> dict[str, Any]:
    """A1111's parse of an infotext: the last line's pairs, then Prompt and Negative prompt, then defaults."""
    lines = infotext[:MAX_INFOTEXT].strip().split("\n")
    last = lines[-1] if lines else ""
    if len(_PAIR.findall(last)) >= 3:
        lines, pairs_line = lines[:-1], last
    else:
        pairs_line = ""
    prompt: list[str] = []
    negative: list[str] = []
    for line in (raw.strip() for raw in lines):
        if line.startswith(_NEGATIVE) or negative:
            negative.append(line[len(_NEGATIVE) :].strip() if line.startswith(_NEGATIVE) and not negative else line)
        else:
            prompt.append(line)
    parameters: dict[str, Any] = {}
    for key, value in _PAIR.findall(pairs_line):
        parameters.update(_pair(key.strip(), value))
    parameters["Prompt"] = "\n".join(prompt)
    parameters["Negative prompt"] = "\n".join(negative)
    for key, default in _DEFAULTS:
        parameters.setdefault(key, default)
    if _WEIGHTED.search(parameters["Prompt"]) or _WEIGHTED.search(parameters["Negative prompt"]):
        parameters.setdefault("Emphasis", "Original")
    parameters.setdefault("Refiner switch by sampling steps", False)
    return parameters


def _pair(key: str, value: str) -> dict[str, str]:
    value = value.strip()
    if value.startswith('"') and value.endswith('"') and len(value) > 1:
        try:
            value = str(json.loads(value))
        except ValueError:
            pass
    if not value:
        return {}  # A1111 skips a key with nothing after it
    size = _SIZE.match(value)
    if size:
        return {f"{key}-1": size[1], f"{key}-2": size[2]}
    return {key: value}
