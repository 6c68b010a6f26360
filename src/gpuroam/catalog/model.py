"""What the catalog knows: GPU types, regions, and which region offers which GPU at what price."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

EARTH_RADIUS_KM = 6371.0
CONTINENTS = ("americas", "europe", "middle-east", "asia", "oceania")


@dataclass(frozen=True)
class GpuType:
    """A GKE accelerator type; `speed` is Stable Diffusion throughput relative to a T4 (= 1.0)."""

    name: str
    memory_gib: int
    speed: float
    base_price: float
    counts: tuple[int, ...]
    price_uncertain: bool


@dataclass(frozen=True)
class Region:
    """A cloud region, located by its city so that routing can prefer nearby capacity."""

    name: str
    city: str
    lat: float
    lon: float
    continent: str


@dataclass(frozen=True)
class SpotTerms:
    """Where the catalog's Spot prices come from. GCP changes Spot prices at most once a day, so they
    hold for a date; where no Spot price is quoted for an offer, it is the on-demand price less
    `discount` (None: no Spot price unless quoted). `price_uncertain` marks them all as estimates."""

    source: str
    as_of: date
    discount: float | None
    price_uncertain: bool


@dataclass(frozen=True)
class Offer:
    """A region offers a GPU type (no promise of capacity); `price` is USD per GPU-hour there on demand,
    `spot_price` as Spot (None: the catalog has none), quoted by the catalog or derived by SpotTerms."""

    region: str
    gpu: str
    price: float
    spot_price: float | None = None
    spot_quoted: bool = False


@dataclass(frozen=True)
class Catalog:
    """Read-only lookups over validated data; build one with `load_catalog`, which checks it.

    Lists come back in catalog order (regions and GPU types as the file lists them), so that
    callers see stable results. The bundled catalog is shared: do not mutate its dicts.
    """

    regions: dict[str, Region]
    gpus: dict[str, GpuType]
    offers: dict[tuple[str, str], Offer]
    spot: SpotTerms

    def offers_in(self, region: str) -> list[Offer]:
        """Every GPU type `region` offers, in GPU catalog order."""
        self._region(region)
        return [offer for (where, _), offer in self.offers.items() if where == region]

    def regions_offering(self, gpu: str) -> list[str]:
        """Every region that offers `gpu`, in region catalog order."""
        self._gpu(gpu)
        return [where for (where, what) in self.offers if what == gpu]

    def price(self, region: str, gpu: str) -> float:
        """USD per GPU-hour of `gpu` in `region`; KeyError when the region does not offer it."""
        offer = self.offers.get((region, gpu))
        if offer is None:
            self._region(region)
            self._gpu(gpu)
            raise KeyError(f"region {region!r} does not offer {gpu!r}; regions that do: {self.regions_offering(gpu)}")
        return offer.price

    def spot_price(self, region: str, gpu: str) -> float:
        """USD per GPU-hour of `gpu` as Spot in `region`; KeyError when the catalog has no Spot price for it."""
        self.price(region, gpu)  # the offer exists, or say which regions have one
        spot = self.offers[(region, gpu)].spot_price
        if spot is None:
            quote = f"regions: {{{region}: {{spot: {{{gpu}: PRICE}}}}}}"
            if self.spot.discount is None:
                why, fix = "none is quoted and spot.discount is unset", f"{quote}, or spot: {{discount: FRACTION}}"
            else:
                why, fix = f"its regions entry says spot: {{{gpu}: false}}", quote
            raise KeyError(
                f"the catalog has no Spot price for {gpu!r} in {region!r} ({why}); in a --catalog file, {fix}"
            )
        return spot

    def speed(self, gpu: str) -> float:
        """Relative Stable Diffusion throughput of `gpu` (nvidia-tesla-t4 = 1.0)."""
        return self._gpu(gpu).speed

    def speed_or_default(self, gpu: str) -> float:
        """`speed(gpu)`, or 1.0 (a T4's) for a GPU the catalog does not know (a label given by hand)."""
        return self.gpus[gpu].speed if gpu in self.gpus else 1.0

    def distance_km(self, region_a: str, region_b: str) -> float:
        """Great-circle distance between two regions' cities (haversine, Earth radius 6371 km)."""
        a, b = self._region(region_a), self._region(region_b)
        lat_a, lat_b = math.radians(a.lat), math.radians(b.lat)
        h = (
            math.sin((lat_b - lat_a) / 2) ** 2
            + math.cos(lat_a) * math.cos(lat_b) * math.sin(math.radians(b.lon - a.lon) / 2) ** 2
        )
        h = min(h, 1.0)
        # atan2 stays accurate near antipodes, where asin(sqrt(h)) loses precision.
        return 2 * EARTH_RADIUS_KM * math.atan2(math.sqrt(h), math.sqrt(1 - h))

    def nearest(self, region: str, candidates: list[str]) -> list[str]:
        """`candidates` sorted by distance from `region`, nearest first; ties keep their order."""
        return sorted(candidates, key=lambda candidate: self.distance_km(region, candidate))

    def _region(self, name: str) -> Region:
        if name not in self.regions:
            raise KeyError(f"unknown region {name!r}; known regions: {', '.join(self.regions)}")
        return self.regions[name]

    def _gpu(self, name: str) -> GpuType:
        if name not in self.gpus:
            raise KeyError(f"unknown GPU {name!r}; known GPUs: {', '.join(self.gpus)}")
        return self.gpus[name]
