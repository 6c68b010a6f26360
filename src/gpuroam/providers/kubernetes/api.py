"""Calls to a cluster's API, shared by the kubernetes and gke providers: what a call can raise,
how a failure reads in one line, and a raw response's JSON."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import urllib3
from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException

APPLY_PATCH = "application/apply-patch+yaml"
FIELD_MANAGER = "gpuroam"
API_FAILURES = (ApiException, urllib3.exceptions.HTTPError, OSError)  # what a call to a cluster can raise


def unreachable(error: Exception) -> bool:
    """A failure of the cluster's API (down, overloaded, no route), not a refusal of the request."""
    if isinstance(error, ApiException):
        return not error.status or error.status >= 500 or error.status == 429
    return isinstance(error, urllib3.exceptions.HTTPError | OSError)


def brief(error: Exception) -> str:
    """One line for a log or an event: an ApiException's str carries every response header."""
    if not isinstance(error, ApiException):
        return str(error)
    try:
        message = json.loads(error.body or "{}").get("message") or ""  # the API's Status object
    except (ValueError, AttributeError):
        message = ""
    return f"HTTP {error.status} {error.reason}" + (f": {message}" if message else "")


def response_json(response: Any) -> dict[str, Any]:
    """The body of a call made with `_preload_content=False`: the API's own JSON, camelCase keys.

    Read in full before the connection goes back to the pool: an unread body would be taken for
    the next response on that connection."""
    try:
        body: dict[str, Any] = json.loads(response.data or b"{}")
        return body
    finally:
        response.release_conn()


def read_secret(core: CoreV1Api, name: str, namespace: str, timeout_s: float) -> dict[str, str] | None:
    """A Secret's entries, decoded from base64 (entry name -> text); None when there is no such Secret.
    An entry that is not UTF-8 text is skipped: keys and names are text."""
    try:
        response = core.read_namespaced_secret(name, namespace, _preload_content=False, _request_timeout=timeout_s)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    entries: dict[str, str] = {}
    for entry, encoded in (response_json(response).get("data") or {}).items():
        try:
            entries[entry] = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, ValueError):
            continue
    return entries
