"""Regions as the provider offers them: GPUs, free slots, blocks, and where they are on the map."""

from __future__ import annotations

import time

from fastapi import APIRouter

from gpuroam.controller.api.context import Context
from gpuroam.controller.api.models import RegionGpuOut, RegionOut
from gpuroam.records import Capacity

router = APIRouter()


@router.get("/api/v1/regions")
def regions(context: Context) -> list[RegionOut]:
    now = time.time()
    blocks = {b.slot: b.until for b in context.store.list_blocks() if b.active(now)}
    spot = context.provider.spot_regions()
    out = []
    for name, gpus in sorted(context.provider.regions().items()):
        region = context.catalog.regions.get(name)
        offered = [
            RegionGpuOut(
                gpu=gpu,
                free=free,
                blocked_until=blocks.get((name, gpu, Capacity.ON_DEMAND)),
                spot=gpu in spot.get(name, {}),
                spot_free=spot.get(name, {}).get(gpu),
                spot_blocked_until=blocks.get((name, gpu, Capacity.SPOT)),
            )
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
