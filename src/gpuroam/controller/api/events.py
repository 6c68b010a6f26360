"""The timeline: events after an id, and the same as server-sent events for the dashboard."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from gpuroam.controller.api.context import Context, check_filter
from gpuroam.controller.api.models import EventOut
from gpuroam.controller.store import Store
from gpuroam.records import Event

router = APIRouter()

# The events stream: how often it reads the store, how long it may stay quiet before a keep-alive
# comment, and how long one response lasts. Clients reconnect at once with Last-Event-ID, so
# nothing is lost; the bound means a stopping server never waits on an open dashboard (uvicorn
# waits for responses in flight before it exits).
EVENT_POLL_S = 0.5
EVENT_KEEPALIVE_S = 2.0
EVENT_STREAM_MAX_S = 5.0
EVENT_BATCH = 500
MAX_EVENT_ID = 2**63 - 1  # the events.id column is a 64-bit integer: larger ids overflowed the driver (a 500)


def event_view(event: Event) -> EventOut:
    return EventOut.model_validate(event)


@router.get("/api/v1/events")
def events(
    context: Context,
    after: int = Query(0, ge=0, le=MAX_EVENT_ID),
    service: str | None = None,
    limit: int = Query(500, ge=0),
) -> list[EventOut]:
    check_filter(service)
    found = context.store.list_events(after_id=after, service=service, limit=min(limit, 5000))
    return [event_view(e) for e in found]


@router.get("/api/v1/events/stream", response_class=StreamingResponse)
def events_stream(
    request: Request, context: Context, after: int = Query(0, ge=0, le=MAX_EVENT_ID), service: str | None = None
) -> StreamingResponse:
    """Server-sent events: every event after `after` (or the Last-Event-ID a reconnect sends), then new ones."""
    check_filter(service)
    start = resume_id(request.headers.get("last-event-id", ""), after)
    return StreamingResponse(
        _event_stream(context.store, request, start, service),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def resume_id(resume: str, default: int) -> int:
    """A reconnect's Last-Event-ID, if it is one we could have sent; else `default`. An id past the column's
    range broke the stream after its head went out, and str.isdigit() also accepts '²', which int() refuses."""
    resume = resume.strip()
    if resume.isascii() and resume.isdigit() and len(resume) <= 19 and int(resume) <= MAX_EVENT_ID:
        return int(resume)
    return default


async def _event_stream(store: Store, request: Request, after: int, service: str | None) -> AsyncIterator[str]:
    """Poll the store for events after the last one sent; each goes out with its id, its JSON as data."""
    last, started = after, time.monotonic()
    quiet_since = started
    yield "retry: 1000\n\n"  # for EventSource clients: reconnect after a second
    while True:
        found = await run_in_threadpool(store.list_events, after_id=last, service=service, limit=EVENT_BATCH)
        for event in found:
            last = event.id or last
            yield f"id: {event.id}\ndata: {event_view(event).model_dump_json()}\n\n"
        now = time.monotonic()
        if found:
            quiet_since = now
        elif now - quiet_since >= EVENT_KEEPALIVE_S:
            yield ": keep-alive\n\n"
            quiet_since = now
        if len(found) == EVENT_BATCH:
            continue  # catching up: read the next batch now
        if now - started >= EVENT_STREAM_MAX_S or await request.is_disconnected():
            return
        await asyncio.sleep(EVENT_POLL_S)
