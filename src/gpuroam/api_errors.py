"""422 answers that always render, for the worker's and the control plane's FastAPI apps.

FastAPI's default answer to a body that fails validation echoes the offending input. Python's
json.loads accepts what JSON cannot carry back out: NaN, Infinity and lone UTF-16 surrogates
("\\ud800"). Echoing those failed while rendering, which turned a client's mistake into a 500.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class EscapedJSONResponse(JSONResponse):
    """ASCII JSON: a lone surrogate goes out as the escape it came in as, instead of failing to encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


MAX_NESTING = 32  # lists and objects inside one input: deeper is not echoed back (clients would recurse)


def nested_items(value: Any) -> Iterator[tuple[Any, int]]:
    """Every item inside `value` (itself, dict keys and values, list items) with its depth; iterative,
    so no input is too deep to look at. Stop consuming when satisfied: nothing below is visited."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        yield item, depth
        if isinstance(item, dict | list | tuple):
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)


def _deeper_than(value: Any, limit: int) -> bool:
    return any(isinstance(item, dict | list | tuple) and depth >= limit for item, depth in nested_items(value))


def _without_inputs(errors: Sequence[Any]) -> list[dict[str, Any]]:
    return [{key: value for key, value in dict(e).items() if key not in ("input", "ctx")} for e in errors]


async def validation_error(_: Request, error: Exception) -> JSONResponse:
    """FastAPI's 422 (same shape: `{"detail": [{"type", "loc", "msg", "input", ...}]}`), rendered safely."""
    errors = list(error.errors()) if isinstance(error, RequestValidationError) else []
    errors = [
        {key: value for key, value in dict(e).items() if key != "input"}
        if _deeper_than(e.get("input"), MAX_NESTING)
        else e
        for e in errors
    ]
    try:
        return EscapedJSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)
    except (ValueError, RecursionError):  # NaN or Infinity in an input, or an input nested past the limit
        return EscapedJSONResponse({"detail": jsonable_encoder(_without_inputs(errors))}, status_code=422)


def install_validation_handler(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
