"""Where a service's replicas should run: pure decisions, no I/O and no clock (see `rules` for the rules).

plan(catalog, demand, capacity, replicas, now) -> Plan(launches, drains)
"""

from gpuroam.placement.inputs import (
    ON_DEMAND,
    SPOT,
    CapacityView,
    CatalogView,
    Demand,
    Drain,
    Launch,
    Pair,
    Plan,
    Slot,
    SlotKey,
    block_after_failure,
    needed_regions,
    quotas_for,
)
from gpuroam.placement.rules import plan

__all__ = [
    "ON_DEMAND",
    "SPOT",
    "CapacityView",
    "CatalogView",
    "Demand",
    "Drain",
    "Launch",
    "Pair",
    "Plan",
    "Slot",
    "SlotKey",
    "block_after_failure",
    "needed_regions",
    "plan",
    "quotas_for",
]
