"""Regions as the provider offers them: GPUs, free slots, blocks, and where they are on the map."""

from __future__ import annotations

import time

from fastapi import APIRouter

from gpuroam.controller.api.context import Context
from gpuroam.controller.api.models import RegionGpuOut, RegionOut

router = APIRouter()


@router.get("/api/v1/regions")
def regions(context: Context) -> list[RegionOut]:
    now = time.time()
    blocks = {(b.region, b.gpu): b for b in context.store.list_blocks() if b.active(now)}
    out = []
    for name, gpus in sorted(context.provider.regions().items()):
        region = context.catalog.regions.get(name)
        offered = [
            RegionGpuOut(gpu=gpu, free=free, blocked_until=blocks[(name, gpu)].until if (name, gpu) in blocks else None)
            for gpu, free in sorted(gpus.items())
        ]
        out.append(
            RegionOut(
                name=name,
                lat=region.lat if region else None,
                lon=region.lon if region else None,
                city=region.city if region else None,
                gpus=offered,
            )
        )
    return out
