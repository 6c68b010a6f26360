"""Chaos: take capacity away (a region, a GPU type), reclaim Spot replicas with a notice, and give capacity
back, on providers that simulate capacity."""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from gpuroam.controller.api.context import ApiContext, Context
from gpuroam.controller.api.models import ChaosOut
from gpuroam.providers.base import ChaosControls
from gpuroam.records import Event, EventKind

router = APIRouter()


class ChaosRequest(BaseModel):
    region: str | None = None
    gpu: str | None = None


def _controls(context: ApiContext) -> ChaosControls:
    provider = context.provider
    if not isinstance(provider, ChaosControls):
        raise HTTPException(
            400, f"the {provider.name} provider has no chaos controls (they exist for the local provider)"
        )
    return provider


def _record(context: ApiContext, body: ChaosRequest, what: str) -> None:
    event = Event(ts=time.time(), kind=EventKind.CHAOS, message=what, region=body.region, gpu=body.gpu)
    context.store.add_event(event)


@router.post("/api/v1/chaos/fail", response_model_exclude_none=True)
def fail(body: ChaosRequest, context: Context) -> ChaosOut:
    controls = _controls(context)
    try:
        if body.gpu:
            killed = controls.fail_gpu(body.gpu, region=body.region)
            where = f" in {body.region}" if body.region else " everywhere"
            what = f"{body.gpu} lost{where}; killed {len(killed)} replica(s)"
        elif body.region:
            killed = controls.fail_region(body.region)
            what = f"region {body.region} lost; killed {len(killed)} replica(s)"
        else:
            raise HTTPException(422, "say what fails: a region, a gpu, or both")
    except ValueError as error:
        raise HTTPException(422, str(error)) from error
    _record(context, body, what)
    return ChaosOut(message=what, killed=killed)


class PreemptRequest(BaseModel):
    region: str | None = Field(default=None, max_length=63)  # a cloud region name
    replica: str | None = Field(default=None, max_length=253)  # a replica id (a DNS name at most)
    notice_s: float = Field(default=30.0, ge=0, le=3600)


@router.post("/api/v1/chaos/preempt", response_model_exclude_none=True)
def preempt(body: PreemptRequest, context: Context) -> ChaosOut:
    controls = _controls(context)
    try:
        doomed = controls.preempt(region=body.region, replica=body.replica, notice_s=body.notice_s)
    except ValueError as error:
        raise HTTPException(422, str(error)) from error
    where = body.replica or (f"Spot in {body.region}" if body.region else "all Spot")
    what = f"preemption of {where}: {len(doomed)} replica(s) reclaimed in {body.notice_s:g} s"
    context.store.add_event(Event(ts=time.time(), kind=EventKind.CHAOS, message=what, region=body.region))
    return ChaosOut(message=what, killed=doomed)


@router.post("/api/v1/chaos/recover", response_model_exclude_none=True)
def recover(body: ChaosRequest, context: Context) -> ChaosOut:
    controls = _controls(context)
    try:
        restored = controls.recover(region=body.region, gpu=body.gpu)
    except ValueError as error:
        raise HTTPException(422, str(error)) from error
    what = f"capacity back: {', '.join(f'{g} in {r}' for r, g in restored) or 'nothing was taken away'}"
    _record(context, body, what)
    return ChaosOut(message=what, restored=restored)
