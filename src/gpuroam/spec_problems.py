"""A spec's validation errors said as people fix them: `path: what; fix`, one line each.

The line names the field (`resources.gpus[1]`), shows what was written (short, whatever its size or
depth) and what the field expects (its description), and for an unknown key the closest valid one.
It walks whichever section models the spec is made of, so it knows no field of its own.
"""

from __future__ import annotations

import difflib
import reprlib
from typing import get_args

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails


class FieldError(ValueError):
    """Raised by a validator to blame a field below the one it validates (pydantic cannot)."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def section(model: type[BaseModel], key: object) -> type[BaseModel] | None:
    """The section model under `key`, if `key` names one."""
    field = model.model_fields.get(key) if isinstance(key, str) else None
    kinds = (field.annotation, *get_args(field.annotation)) if field else ()  # an optional section too
    return next((kind for kind in kinds if isinstance(kind, type) and issubclass(kind, BaseModel)), None)


def _model_at(root: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in loc:
        model = section(model, part) if model else None
    return model


def _field_at(root: type[BaseModel], loc: tuple[str | int, ...]) -> FieldInfo | None:
    while loc and isinstance(loc[-1], int):  # an item's hint is its list's
        loc = loc[:-1]
    model = _model_at(root, loc[:-1]) if loc else None
    return model.model_fields.get(str(loc[-1])) if model else None


def _path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _short_repr() -> reprlib.Repr:
    shown = reprlib.Repr()
    shown.maxlevel, shown.maxstring, shown.maxother = 3, 40, 40
    shown.maxlist = shown.maxtuple = shown.maxdict = shown.maxset = shown.maxfrozenset = 4
    return shown


_SHORT = _short_repr()


def _show(value: object) -> str:
    """A short repr of what the user wrote. Bounded in depth and breadth: a YAML alias bomb or a list
    nested thousands deep is shown as `[[[...]]]`, not expanded (which would hang or recurse)."""
    if isinstance(value, int) and value.bit_length() > 192:  # repr() refuses ints past 4300 digits
        text = f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    elif isinstance(value, str | int | float | bool | None):
        text = repr(value)
    else:
        text = _SHORT.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def problem(error: ErrorDetails, root: type[BaseModel]) -> str:
    """One pydantic error of validating `root` as `path: what; fix`."""
    loc, kind = tuple(error["loc"]), error["type"]
    if kind == "value_error":
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, FieldError):
            loc += cause.loc
        return f"{_path(loc) or '(top level)'}: {cause}"
    where = _path(loc[:-1]) or "(top level)"
    if kind == "extra_forbidden":
        model = _model_at(root, loc[:-1])
        valid = list(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        fix = f"did you mean {close[0]!r}?" if close else f"valid fields there: {', '.join(valid)}"
        return f"unknown field {loc[-1]!r} under {where}; {fix}"
    if kind == "invalid_key":
        return f"{where}: key {_show(error['input'])} is not text; field names are words, e.g. 'name'"
    field = _field_at(root, loc)
    expected = f"; expected {field.description}" if field and field.description else ""
    if kind == "missing":
        return f"{_path(loc)}: required field is missing{expected}"
    if kind == "model_type":
        return f"{_path(loc)}: must be a mapping of fields (got {_show(error['input'])}){expected}"
    msg = error["msg"].replace("a valid tuple", "a list")
    return f"{_path(loc)}: {msg[:1].lower()}{msg[1:]} (got {_show(error['input'])}){expected}"
