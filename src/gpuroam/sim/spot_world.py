"""Spot capacity in the simulated world: where Spot can be had, and how it is taken back.

A World gets a Spot layer (`with_spot`), drawn from its own generator so that the on-demand
world, and every figure of the studies without Spot, stay as they were:

- **Spot is the provider's spare capacity**, so a (region, GPU) pair has Spot only while it has
  on-demand capacity (GCP: "Spot VMs are excess Compute Engine capacity, so their availability
  varies with usage"), and on top of that Spot has stockouts of its own: by default the world's
  own on-demand stockout table drawn a second time, independently, so Spot is out of stock about
  twice as often as on-demand (an assumption: no public per-GPU Spot stockout figures were found).
- **Preemptions** of a running Spot node: each node is reclaimed after an exponential time whose
  mean depends on its GPU type (`preempt_every_h`, an assumption; see SpotModel), and **waves**:
  a region's Spot nodes are all reclaimed at once (Poisson per region, `wave_every_h`), after
  which the region has no Spot capacity for a lognormal while (`wave_median_min`). Spot-and-Scoot
  (arXiv 2604.16457, 2,635 interruptions on AWS and Azure) found co-interruptions of one instance
  type in one zone within three minutes in over 92% of cases; the wave's rate and length are
  assumptions, and a wave here takes every GPU type of the region, harsher than per type and zone.
- **The notice**: a reclaimed node gets `notice_s` (GCP: about 30 s) before it is gone.
- **Quotas**: GCP keeps Spot (preemptible) GPU quotas apart from on-demand ones; drawn as the
  on-demand ones are (a share of pairs with none, the rest 8 GPUs).

Prices come from the catalog (`Catalog.spot_price`; the bundled ones are on-demand less 60%, the
low end of GCP's stated 60-91%). Every figure is a figure about this model, not a measurement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from gpuroam.sim.world import DAY_MIN, MINUTE, Bools, Floats, Indices, World, cut, episodes, renewal_available

NOTICE_S = 30.0  # GCP Spot VMs: the preemption notice (ACPI soft off), about 30 s


def _every_h() -> dict[str, float]:
    return {
        "nvidia-tesla-t4": 48.0,
        "nvidia-l4": 24.0,
        "nvidia-tesla-a100": 12.0,
        "nvidia-a100-80gb": 12.0,
        "nvidia-h100-80gb": 8.0,
    }


@dataclass(frozen=True)
class SpotModel:
    """What Spot does in the simulated clouds. Every rate is an assumption (the docstring of this
    module and bench/RESULTS.md say which figures anchor them); `scaled` gives the sensitivity rows.

    `preempt_every_h`: mean hours between preemptions of one Spot node, per GPU type. The order
    (L4 least, then A100, then H100) follows AWS's Spot Instance Advisor as reported for May 2025
    (share of instances interrupted over the trailing month: L4 under 5%, A100 5-10%, H100 10-20%);
    the levels are one to two orders of magnitude above what those monthly shares imply, on
    purpose: serving on Spot should be judged where Spot is hard, and the `low` row is nearer them.
    """

    preempt_every_h: Mapping[str, float] = field(default_factory=_every_h)
    default_every_h: float = 24.0  # a GPU type the table does not name
    wave_every_h: float = 72.0  # per region: every Spot node there reclaimed at once
    wave_median_min: float = 60.0  # then no Spot capacity in the region for this long (lognormal)
    wave_sigma: float = 1.0
    scarcity: Mapping[str, tuple[float, float]] | None = None  # Spot's own stockouts; None: the world's table again
    notice_s: float = NOTICE_S
    quota_zero_share: float = 0.10
    quota_gpus: int = 8

    def scaled(self, factor: float) -> SpotModel:
        """Preemptions and waves `factor` times as frequent."""
        return replace(
            self,
            preempt_every_h={gpu: hours / factor for gpu, hours in self.preempt_every_h.items()},
            default_every_h=self.default_every_h / factor,
            wave_every_h=self.wave_every_h / factor,
        )

    def describe(self) -> dict[str, object]:
        """The assumptions and where they come from, for JSON output."""
        return {
            "preempt_every_h": dict(self.preempt_every_h),
            "preempt_source": "assumption; order as AWS Spot Instance Advisor (May 2025): L4 < A100 < H100",
            "wave": {"every_h_per_region": self.wave_every_h, "no_spot_median_min": self.wave_median_min},
            "wave_source": "assumption; correlation per Spot-and-Scoot (arXiv 2604.16457): same type and zone "
            "reclaimed within 3 min in over 92% of cases",
            "stockouts": "only where on-demand has capacity (GCP: Spot is excess capacity), and "
            + ("this table" if self.scarcity else "the world's on-demand table drawn again, independently"),
            "scarcity": (
                {g: {"out_of_stock": f, "median_episode_min": m} for g, (f, m) in self.scarcity.items()}
                if self.scarcity
                else None
            ),
            "notice_s": self.notice_s,
            "notice_source": "GCP Spot VMs: about 30 s preemption notice",
            "quota_zero_share": self.quota_zero_share,
            "quota_gpus": self.quota_gpus,
            "prices": "the catalog's Spot prices (bundled: on-demand less 60%, the low end of GCP's 60-91%)",
        }


# The Spot models a study can name: `base` (the defaults above) and the sensitivity rows around it.
SPOT_MODELS: dict[str, SpotModel] = {
    "base": SpotModel(),
    "low": SpotModel().scaled(0.1),  # L4 every 240 h, a wave every 30 days per region
    "high": SpotModel().scaled(3.0),  # L4 every 8 h, a wave every day per region
}


@dataclass
class SpotLayer:
    """One run's Spot: capacity per pair per minute, quotas, preemption rates and waves."""

    model: SpotModel
    available: Bools  # [P, minutes]: a Spot launch there would get a node
    offered: Bools  # [P]: the catalog prices Spot there
    quota: Indices  # [P] Spot GPUs the project may hold
    mean_life_s: Floats  # [P] mean seconds from a Spot node's start to its preemption
    waves: list[tuple[float, int]]  # (second, region index): every Spot node in the region reclaimed, sorted

    @property
    def notice_s(self) -> float:
        return self.model.notice_s


def with_spot(world: World, model: SpotModel, rng: np.random.Generator) -> World:
    """`world` with a Spot layer drawn from `rng` (a generator of its own: the rest of the world
    is left as it was drawn)."""
    layout, base = world.layout, world.model
    offered = np.isfinite(layout.spot_price)
    table = model.scarcity or base.scarcity
    default = (0.3, 90.0)
    fraction = np.array([table.get(layout.gpus[g], default)[0] for g in layout.pair_gpu])
    median = np.array([table.get(layout.gpus[g], default)[1] for g in layout.pair_gpu])
    tightness = np.exp(rng.normal(0.0, base.region_tightness_sigma, len(layout.regions)))
    fraction = np.clip(fraction * tightness[layout.pair_region], 0.01, base.max_stockout_fraction)
    own = renewal_available(rng, fraction, median, base.stockout_sigma, world.minutes, burn=2 * DAY_MIN)
    available = world.available & own & offered[:, None]
    waves: list[tuple[float, int]] = []
    for r in range(len(layout.regions)):
        rows = np.flatnonzero(layout.pair_region == r)
        for start, end in episodes(rng, model.wave_every_h, model.wave_median_min, model.wave_sigma, world.minutes):
            cut(available, rows, start, end)
            if start >= 0:
                waves.append((start * MINUTE, r))
    quota = np.where(rng.random(len(layout.pairs)) < model.quota_zero_share, 0, model.quota_gpus)
    hours = np.array([model.preempt_every_h.get(layout.gpus[g], model.default_every_h) for g in layout.pair_gpu])
    layer = SpotLayer(model, available, offered, quota, hours * 3600.0, sorted(waves))
    return replace(world, spot=layer)
