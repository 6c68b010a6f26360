"""The simulated world: which (region, GPU) pairs have capacity minute by minute, quotas, region
incidents, how launches go, and where demand comes from over the day.

Everything a run needs is drawn up front from one seeded numpy Generator, vectorised per run:
each pair's capacity is an alternating renewal process (in stock for an exponential time, then
out of stock for a lognormal one) on a one-minute grid, with three correlated layers on top:
GPU-type crunches (one GPU type short in many regions at once), regional droughts (a region has
no GPU of any type for a while; running replicas keep running) and regional incidents (a region
is lost: its replicas die and nothing launches there). Policies then act on the same world, so
their differences are theirs, not the dice's.

The numbers are assumptions, not measurements: WorldModel's defaults are what the docs and
bench/RESULTS.md state, and every figure the simulation gives is a figure about this model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from gpuroam.catalog import Catalog

if TYPE_CHECKING:
    from gpuroam.sim.spot_world import SpotLayer

MINUTE = 60.0
DAY_MIN = 24 * 60

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
Indices = npt.NDArray[np.intp]

# Demand: share of the service's traffic per continent, its UTC offset (for the local hour), and
# the region whose city stands for it when placement weighs distance to traffic.
CONTINENT_DEMAND = {
    "americas": (0.45, -6.0, "us-central1"),
    "europe": (0.30, 1.0, "europe-west3"),
    "asia": (0.18, 8.0, "asia-east1"),
    "middle-east": (0.03, 3.0, "me-west1"),
    "oceania": (0.04, 10.0, "australia-southeast1"),
}


@dataclass(frozen=True)
class WorldModel:
    """What the simulated clouds do. Times in minutes unless named otherwise."""

    # GPU type -> (fraction of time a pair is out of stock, median stockout episode in minutes).
    scarcity: Mapping[str, tuple[float, float]] = field(
        default_factory=lambda: {
            "nvidia-tesla-t4": (0.15, 45.0),
            "nvidia-l4": (0.30, 90.0),
            "nvidia-tesla-a100": (0.40, 120.0),
            "nvidia-a100-80gb": (0.45, 150.0),
            "nvidia-h100-80gb": (0.55, 180.0),
        }
    )
    stockout_sigma: float = 1.0  # lognormal sigma of stockout episodes (mean = median * 1.65)
    region_tightness_sigma: float = 0.4  # per-run lognormal factor on a region's stockout fraction
    max_stockout_fraction: float = 0.95
    crunch_every_h: float = 72.0  # per GPU type: a crunch starts on average this often
    crunch_median_min: float = 180.0
    crunch_share: float = 0.6  # share of the GPU type's regions out of stock during a crunch
    drought_every_h: float = 240.0  # per region: every GPU type out of stock at once
    drought_median_min: float = 120.0
    incident_every_h: float = 720.0  # per region: the region is lost (replicas die)
    incident_median_min: float = 60.0
    episode_sigma: float = 1.0  # lognormal sigma of crunches, droughts and incidents
    quota_zero_share: float = 0.10  # pairs where the project has no GPU quota: launches always fail
    quota_gpus: int = 8  # otherwise, GPUs of that type the project may hold in that region
    ready_min: tuple[float, float, float] = (2.0, 6.0, 15.0)  # launch to ready: triangular(min, mode, max)
    failure_report_s: tuple[float, float] = (15.0, 60.0)  # a failed scale-up is reported after U(a, b)
    silent_failure_share: float = 0.2  # stockouts reported by nothing: the pod stays pending
    replica_loss_every_h: float = 48.0  # a ready replica is lost (maintenance, node failure) this often
    demand_scale: float = 25.0  # images/min if every continent were at its daily peak at once
    image_s_t4: float = 4.0  # seconds per 512x512, 20-step image on a T4 (speed 1.0)
    latency_bound_s: float = 10.0

    def describe(self) -> dict[str, object]:
        """The assumptions, for JSON output and the docs."""
        return {
            "scarcity": {gpu: {"out_of_stock": f, "median_episode_min": m} for gpu, (f, m) in self.scarcity.items()},
            "stockout_sigma": self.stockout_sigma,
            "region_tightness_sigma": self.region_tightness_sigma,
            "crunch": {
                "every_h": self.crunch_every_h,
                "median_min": self.crunch_median_min,
                "share": self.crunch_share,
            },
            "drought": {"every_h": self.drought_every_h, "median_min": self.drought_median_min},
            "incident": {"every_h": self.incident_every_h, "median_min": self.incident_median_min},
            "quota_zero_share": self.quota_zero_share,
            "quota_gpus": self.quota_gpus,
            "ready_min_triangular": list(self.ready_min),
            "failure_report_s": list(self.failure_report_s),
            "silent_failure_share": self.silent_failure_share,
            "replica_loss_every_h": self.replica_loss_every_h,
            "demand_scale_images_per_min": self.demand_scale,
            "image_s_t4": self.image_s_t4,
            "latency_bound_s": self.latency_bound_s,
            "continents": {
                c: {"share": w, "utc_offset_h": o, "stands_for": r} for c, (w, o, r) in CONTINENT_DEMAND.items()
            },
        }


@dataclass(frozen=True)
class Layout:
    """The catalog as arrays: pairs, their regions and GPUs, prices, speeds, distances. Built once
    per process and shared by every run."""

    pairs: tuple[tuple[str, str], ...]
    index: Mapping[tuple[str, str], int]
    regions: tuple[str, ...]
    gpus: tuple[str, ...]
    pair_region: Indices  # [P] region index
    pair_gpu: Indices  # [P] GPU index
    price: Floats  # [P] USD per GPU-hour
    spot_price: Floats  # [P] USD per GPU-hour as Spot (NaN where the catalog has no Spot price)
    speed: Floats  # [P] relative to a T4
    origins: tuple[str, ...]  # continents
    origin_region: tuple[str, ...]  # the region standing for each continent
    rtt_s: Floats  # [origins, regions] round trip, seconds

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> Layout:
        pairs = tuple(sorted(catalog.offers))
        regions = tuple(catalog.regions)
        gpus = tuple(catalog.gpus)
        origins = tuple(c for c in CONTINENT_DEMAND if CONTINENT_DEMAND[c][2] in catalog.regions)
        origin_region = tuple(CONTINENT_DEMAND[c][2] for c in origins)
        distance = np.array([[catalog.distance_km(o, r) for r in regions] for o in origin_region])
        return cls(
            pairs=pairs,
            index={pair: i for i, pair in enumerate(pairs)},
            regions=regions,
            gpus=gpus,
            pair_region=np.array([regions.index(r) for r, _ in pairs]),
            pair_gpu=np.array([gpus.index(g) for _, g in pairs]),
            price=np.array([catalog.price(r, g) for r, g in pairs]),
            spot_price=np.array([_or_nan(catalog.offers[pair].spot_price) for pair in pairs]),
            speed=np.array([catalog.speed(g) for _, g in pairs]),
            origins=origins,
            origin_region=origin_region,
            # 20 ms of handshakes and edge, then fibre at about 100 km per ms of round trip.
            rtt_s=0.02 + distance / 100_000.0,
        )


def _or_nan(price: float | None) -> float:
    return math.nan if price is None else price


@dataclass
class World:
    """One run's draw: capacity per pair per minute, quotas, incidents and demand."""

    model: WorldModel
    layout: Layout
    minutes: int
    available: Bools  # [P, minutes] bool: a launch there would get a node
    quota: Indices  # [P] GPUs the project may hold
    incidents: list[tuple[float, int]]  # (second it starts, region index), sorted
    demand: Floats  # [origins, minutes] images per minute
    start_s: float  # when the service is created
    arrivals: Floats | None = None  # [origins, minutes] requests drawn around `demand` (sim.traces)
    spot: SpotLayer | None = None  # Spot capacity, quotas and preemptions (sim.spot_world); None: no Spot

    def _grid(self, spot: bool) -> Bools:
        if not spot:
            return self.available
        if self.spot is None:
            raise ValueError("this world has no Spot capacity: give it a Spot layer (gpuroam.sim.spot_world.with_spot)")
        return self.spot.available

    def has_capacity(self, pair: int, t: float, spot: bool = False) -> bool:
        return bool(self._grid(spot)[pair, min(int(t // MINUTE), self.minutes - 1)])

    def next_capacity(self, pair: int, t: float, until: float, spot: bool = False) -> float | None:
        """The first minute boundary at or after `t` (the minute `t` is in counts) with capacity, before `until`."""
        first = int(t // MINUTE)
        last = min(int(until // MINUTE) + 1, self.minutes)
        if first >= last:
            return None
        window = self._grid(spot)[pair, first:last]
        hit = int(np.argmax(window))
        if not window[hit]:
            return None
        return max(t, (first + hit) * MINUTE)

    def traffic(self, minute: int) -> dict[str, float]:
        """Where demand comes from this minute: the region standing for each continent -> share
        (none when no one asks: a sparse service's night)."""
        column = self.demand[:, min(minute, self.minutes - 1)]
        total = float(column.sum())
        if total <= 0:
            return {}
        return {r: round(float(d) / total, 2) for r, d in zip(self.layout.origin_region, column, strict=True)}


def demand_shape(local_hour: Floats) -> Floats:
    """A continent's demand over its local day, 0.25..1: low before dawn, peaking at 19:00."""
    wave = (1.0 + np.cos(2 * np.pi * (local_hour - 19.0) / 24.0)) / 2.0
    return 0.25 + 0.75 * wave**1.5


def demand_trace(model: WorldModel, layout: Layout, minutes: int) -> Floats:
    """Images per minute from each continent, minute 0 being 00:00 UTC."""
    hours = np.arange(minutes) / 60.0
    rows = []
    for continent in layout.origins:
        weight, offset, _ = CONTINENT_DEMAND[continent]
        rows.append(model.demand_scale * weight * demand_shape((hours + offset) % 24.0))
    return np.array(rows)


def renewal_available(
    rng: np.random.Generator, fraction: Floats, median: Floats, sigma: float, minutes: int, burn: int
) -> Bools:
    """[P, minutes] bool: each row alternates in stock (exponential) and out of stock (lognormal
    with `median`, `sigma`), out of stock `fraction` of the time; started `burn` minutes early so
    that minute 0 is drawn from the steady state."""
    mean_down = median * math.exp(sigma**2 / 2)
    mean_up = mean_down * (1.0 - fraction) / fraction
    cycle = float(np.min(mean_up + mean_down))
    count = int((minutes + burn) / cycle * 1.5) + 16
    pairs = len(fraction)
    up = rng.exponential(1.0, (pairs, count)) * mean_up[:, None]
    down = np.exp(rng.normal(0.0, sigma, (pairs, count))) * median[:, None]
    ends = np.cumsum(np.stack([up, down], axis=2).reshape(pairs, 2 * count), axis=1)
    grid = np.arange(minutes) + burn + 0.5
    out = np.empty((pairs, minutes), dtype=bool)
    for p in range(pairs):
        row = ends[p]
        while row[-1] < grid[-1]:  # rare: the draws did not cover the horizon; add more cycles
            more = np.stack(
                [rng.exponential(mean_up[p], count), np.exp(rng.normal(0.0, sigma, count)) * median[p]], axis=1
            )
            row = np.concatenate([row, row[-1] + np.cumsum(more.reshape(-1))])
        out[p] = np.searchsorted(row, grid, side="right") % 2 == 0
    return out


def episodes(
    rng: np.random.Generator, every_h: float, median_min: float, sigma: float, minutes: int
) -> list[tuple[float, float]]:
    """Poisson onsets over [-1 day, minutes) with lognormal durations: [(start, end)] in minutes."""
    span = minutes + DAY_MIN
    count = rng.poisson(span / (every_h * 60.0))
    starts = rng.uniform(-DAY_MIN, minutes, count)
    lengths = median_min * np.exp(rng.normal(0.0, sigma, count))
    return [(float(s), float(s + d)) for s, d in zip(starts, lengths, strict=True) if s + d > 0]


def cut(available: Bools, rows: Indices, start: float, end: float) -> None:
    """No capacity on `rows` over the minutes [start, end) touches."""
    a, b = max(0, math.floor(start)), min(available.shape[1], math.ceil(end))
    if a < b:
        available[np.ix_(rows, np.arange(a, b))] = False


def build_world(model: WorldModel, layout: Layout, rng: np.random.Generator, days: float) -> World:
    """One run's world: the service starts at a random time on day 0 and runs `days` days."""
    start_min = float(rng.uniform(0, DAY_MIN))
    minutes = math.ceil(start_min + days * DAY_MIN) + 1
    gpu_names = layout.gpus
    default = (0.3, 90.0)
    base = np.array([model.scarcity.get(gpu_names[g], default)[0] for g in layout.pair_gpu])
    median = np.array([model.scarcity.get(gpu_names[g], default)[1] for g in layout.pair_gpu])
    tightness = np.exp(rng.normal(0.0, model.region_tightness_sigma, len(layout.regions)))
    fraction = np.clip(base * tightness[layout.pair_region], 0.01, model.max_stockout_fraction)
    available = renewal_available(rng, fraction, median, model.stockout_sigma, minutes, burn=2 * DAY_MIN)
    sigma = model.episode_sigma
    for g in range(len(gpu_names)):
        rows = np.flatnonzero(layout.pair_gpu == g)
        for start, end in episodes(rng, model.crunch_every_h, model.crunch_median_min, sigma, minutes):
            cut(available, rows[rng.random(len(rows)) < model.crunch_share], start, end)
    incidents: list[tuple[float, int]] = []
    for r in range(len(layout.regions)):
        rows = np.flatnonzero(layout.pair_region == r)
        for start, end in episodes(rng, model.drought_every_h, model.drought_median_min, sigma, minutes):
            cut(available, rows, start, end)
        for start, end in episodes(rng, model.incident_every_h, model.incident_median_min, sigma, minutes):
            cut(available, rows, start, end)
            if start >= 0:
                incidents.append((start * MINUTE, r))
    quota = np.where(rng.random(len(layout.pairs)) < model.quota_zero_share, 0, model.quota_gpus)
    return World(
        model=model,
        layout=layout,
        minutes=minutes,
        available=available,
        quota=quota,
        incidents=sorted(incidents),
        demand=demand_trace(model, layout, minutes),
        start_s=start_min * MINUTE,
    )


# Named worlds. `typical`: the defaults above. `crunch`: GPUs short everywhere, as in a demand
# wave (every GPU type out of stock more often, a T4 three times as often, and for longer).
# `l4-shortage`: typical, but the service's first-choice GPU, the L4, out of stock nearly
# everywhere for most of the day (the case where hunting the first choice first costs most).
WORLDS: dict[str, WorldModel] = {
    "typical": WorldModel(),
    "crunch": WorldModel(
        scarcity={
            "nvidia-tesla-t4": (0.45, 120.0),
            "nvidia-l4": (0.65, 180.0),
            "nvidia-tesla-a100": (0.75, 240.0),
            "nvidia-a100-80gb": (0.80, 240.0),
            "nvidia-h100-80gb": (0.85, 300.0),
        },
    ),
    "l4-shortage": WorldModel(scarcity={**WorldModel().scarcity, "nvidia-l4": (0.95, 720.0)}),
}
