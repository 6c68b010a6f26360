"""A1111's settings (GET/POST /sdapi/v1/options): all 329 keys A1111 1.10 answers with, at its defaults.

`assets/a1111_options.json` holds A1111's keys and default values as its API returns them on a fresh
install (an integer setting with a non-zero default comes back as a float there, as in A1111). POST
takes any of these keys, checked against the default's kind, and keeps it: clients that save and
restore settings get back what they set. The settings this worker acts on are checked against the
loaded model too: CLIP_stop_at_last_layers, eta_ddim and sd_model_checkpoint (which must name the
loaded model); eta_ancestral is range-checked and kept, but diffusers' ancestral samplers take no eta. A key A1111 does not have (an extension's, say) is ignored, as before: a
client written for a Web UI with extensions still works (A1111 itself answers such a key with a 500).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

MAX_TEXT = 4096  # characters of one string setting: settings are names and paths, not documents
MAX_ITEMS = 256  # items of one list setting


class OptionError(ValueError):
    """A setting that does not exist or has the wrong kind of value; `key` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@cache
def a1111_defaults() -> dict[str, Any]:
    """Every A1111 setting and its default, in A1111's order."""
    text = resources.files("gpuroam.worker").joinpath("assets/a1111_options.json").read_text(encoding="utf-8")
    defaults: dict[str, Any] = json.loads(text)
    return defaults


def is_setting(key: str) -> bool:
    return key in a1111_defaults()


def check_value(key: str, value: object) -> object:
    """`value` if it is of the kind of the A1111 setting `key`'s default (any number for a number)."""
    default = a1111_defaults()[key]
    if default is None:
        kinds: tuple[type, ...] = (str, int, float, bool, list, type(None))
    elif isinstance(default, bool):
        kinds = (bool,)
    elif isinstance(default, int | float):
        kinds = (int, float)
    else:
        kinds = (type(default),)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        wanted = " or ".join(sorted({kind.__name__ for kind in kinds} - {"NoneType"}) or ["null"])
        raise OptionError(key, f"{key} takes a {wanted} (its default is {default!r}); got {value!r}"[:300])
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise OptionError(key, f"{key} is {len(value)} characters long; at most {MAX_TEXT}")
    if isinstance(value, list) and (len(value) > MAX_ITEMS or not all(_plain(item) for item in value)):
        raise OptionError(key, f"{key} takes a list of at most {MAX_ITEMS} short strings or numbers")
    return value


def _plain(item: object) -> bool:
    return isinstance(item, int | float | bool) or (isinstance(item, str) and len(item) <= MAX_TEXT)


class WorkerOptions:
    """This worker's own settings (its port's single user, as in A1111): the defaults, and what was set."""

    def __init__(self) -> None:
        self._set: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self._set.get(key, a1111_defaults()[key])

    def update(self, values: Mapping[str, object]) -> None:
        """Keep already checked values."""
        self._set.update(values)

    def as_a1111(self, model_title: str | None, model_sha256: str | None) -> dict[str, Any]:
        """The whole set, as GET /sdapi/v1/options answers it; the model's title and hash are the loaded model's."""
        values = {**a1111_defaults(), **self._set}
        values["sd_model_checkpoint"] = model_title
        values["sd_checkpoint_hash"] = model_sha256 or ""
        return values
