"""Which replica a request should stick to: progress and interrupt must reach the job's replica.

An A1111 replica only knows its own jobs, so `GET /sdapi/v1/progress` answered by another
replica reports nothing. The gateway remembers where each generation went, by the job's id
when the client names one (`force_task_id` in the body, `id_task` in the query, or the
X-Gpuroam-Job header) and else by the client's cookie or identity. Generation requests are
placed by load; the cookie only makes a client's other requests prefer the replica that
served it last, while that replica is not saturated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from gpuroam.gateway.bounded import Bounded
from gpuroam.gateway.wire import Request

COOKIE = b"gpuroam_replica"
JOB_HEADER = b"x-gpuroam-job"
GENERATION_PATHS = frozenset({b"/sdapi/v1/txt2img", b"/sdapi/v1/img2img"})
JOB_PATHS = frozenset({b"/sdapi/v1/progress", b"/sdapi/v1/interrupt", b"/sdapi/v1/skip"})


@dataclass(frozen=True)
class Preference:
    replica: str
    strict: bool  # the request concerns a job on that replica: go there even when it is busy


class Affinity:
    def __init__(self, limit: int = 100_000) -> None:
        self._jobs = Bounded[str](limit)
        self._clients = Bounded[str](limit)

    def preference(self, request: Request, caller: str) -> Preference | None:
        path = request.path
        cookie = cookie_replica(request)
        if path in JOB_PATHS:
            job = job_id(request)
            replica = (job and self._jobs.get(job)) or cookie or self._clients.get(caller)
            return Preference(replica, strict=True) if replica else None
        return Preference(cookie, strict=False) if cookie else None

    def placed(self, request: Request, replica: str, caller: str) -> None:
        """A generation went to `replica`: its progress and interrupt must follow it there."""
        if request.path not in GENERATION_PATHS:
            return
        job = job_id(request)
        if job:
            self._jobs.put(job, replica)
        self._clients.put(caller, replica)


def job_id(request: Request) -> str | None:
    """The job a request names; `?id_task=` percent-decoded, as A1111's ids ("task(...)") reach us encoded."""
    value = request.header(JOB_HEADER) or unquote_to_bytes(request.query_param(b"id_task") or b"")
    if value:
        return value.decode("latin-1")
    if request.path in GENERATION_PATHS and b'"force_task_id"' in request.body:
        try:
            forced = json.loads(request.body).get("force_task_id")
        except (ValueError, AttributeError, RecursionError):  # not JSON, not an object, or nested too deep
            return None
        return forced if isinstance(forced, str) and forced else None
    return None


def cookie_replica(request: Request) -> str | None:
    value = request.cookie(COOKIE)
    return value.decode("latin-1") if value else None


def set_cookie(replica: str) -> bytes:
    return b"set-cookie: %s=%s; Path=/; HttpOnly; SameSite=Lax\r\n" % (COOKIE, replica.encode())
