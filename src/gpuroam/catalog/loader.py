"""Reading catalog YAML: the bundled gcp.yaml, optionally merged with a user file, checked on load."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import date, datetime
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from gpuroam.catalog.model import CONTINENTS, Catalog, GpuType, Offer, Region, SpotTerms

BUNDLED = "gcp.yaml"
SECTIONS = ("gpus", "regions", "spot")
GPU_FIELDS = ("memory_gib", "speed", "price", "counts", "price_uncertain")
REGION_FIELDS = ("city", "lat", "lon", "continent", "gpus", "spot")
SPOT_FIELDS = ("source", "as_of", "discount", "price_uncertain")

Data = dict[str, dict[str, Any]]


class CatalogError(ValueError):
    """A catalog file is wrong; the message names the file, the entry and how to fix it."""


def load_catalog(path: str | Path | None = None) -> Catalog:
    """The bundled GCP catalog, or the bundled one with the user file at `path` merged over it.

    Merge rule: `gpus` and `regions` entries are matched by name. A new name adds an entry, which
    must then be complete. A known name updates the bundled entry: mappings (the entry itself, a
    region's `gpus` and `spot`, and the `spot` section) merge key by key, so a user file gives only
    what it changes; any other value (a number, a string, `counts`) replaces the bundled one. Hence
    a user file can add regions, GPU types and offers, and change prices and speeds, but not remove
    anything; `gpu: null` in a region's `gpus` puts that offer back at the GPU's base price. A user
    file with Spot prices of its own says where they come from in `spot: {source, as_of}`. Errors
    in an entry the user file touches are reported against the user file.
    """
    if path is None:
        return _bundled()
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CatalogError(f"catalog {path}: cannot read it ({exc.strerror}); check the path") from exc
    user = _parse(str(path), text)

    def source(section: str, name: str) -> str:
        return str(path) if name in user[section] else BUNDLED

    return _build(_merge(_bundled_data(), user), source)


@lru_cache(maxsize=1)
def _bundled() -> Catalog:
    """Parsed and checked once per process: every placement decision reads it."""
    return _build(_bundled_data(), lambda section, name: BUNDLED)


def _bundled_data() -> Data:
    return _parse(BUNDLED, files("gpuroam.catalog").joinpath(BUNDLED).read_text())


def _parse(source: str, text: str) -> Data:
    """The file's two sections as name -> entry mappings; entries are checked after merging."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"catalog {source}: not valid YAML; fix the syntax: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CatalogError(f"catalog {source}: the top level must be a mapping with sections {', '.join(SECTIONS)}")
    for key in data:
        if key not in SECTIONS:
            raise CatalogError(f"catalog {source}: unknown section {key!r}; sections are {', '.join(SECTIONS)}")
    sections: Data = {}
    for section in SECTIONS:
        entries = data.get(section)
        if entries is None:
            entries = {}
        if not isinstance(entries, dict):
            raise CatalogError(f"catalog {source}: section {section!r} must be a mapping of names to entries")
        for name in entries:
            if not isinstance(name, str):
                raise CatalogError(f"catalog {source}: {section} entry {name!r} must be named by a string; quote it")
        sections[section] = entries
    return sections


def _merge(base: Any, over: Any) -> Any:
    """Mappings merge key by key, recursively; any other value in `over` replaces the one in `base`."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{key: _merge(base[key], value) if key in base else value for key, value in over.items()}}
    return over


def _build(data: Data, source: Callable[[str, str], str]) -> Catalog:
    """Check every entry (blaming the file `source` names for it) and give each offer its prices."""
    gpus = {
        name: _gpu(_Entry(source("gpus", name), "GPU", name, entry, GPU_FIELDS)) for name, entry in data["gpus"].items()
    }
    spot_sources = {source("spot", field) for field in data["spot"]} - {BUNDLED}
    terms = _spot_terms(_Entry(next(iter(spot_sources), BUNDLED), "section", "spot", data["spot"], SPOT_FIELDS))
    regions: dict[str, Region] = {}
    offers: dict[tuple[str, str], Offer] = {}
    for name, entry in data["regions"].items():
        checked = _Entry(source("regions", name), "region", name, entry, REGION_FIELDS)
        regions[name], prices = _region(checked, gpus)
        quoted = _quoted_spot_prices(checked, prices)
        for gpu in (gpu for gpu in gpus if gpu in prices):  # catalog order
            spot = quoted[gpu] if gpu in quoted else _derived(prices[gpu], terms.discount)
            offers[(name, gpu)] = Offer(name, gpu, prices[gpu], spot, spot_quoted=quoted.get(gpu) is not None)
    return Catalog(regions=regions, gpus=gpus, offers=offers, spot=terms)


def _gpu(entry: _Entry) -> GpuType:
    memory = entry.required("memory_gib", "memory_gib is the GPU's memory in GiB")
    if isinstance(memory, bool) or not isinstance(memory, int) or memory <= 0:
        raise entry.error(f"has memory_gib {memory!r}; memory_gib must be a positive integer")
    counts = entry.required("counts", "counts lists the GPUs per pod GKE Autopilot accepts, e.g. [1, 2, 4]")
    if (
        not isinstance(counts, list)
        or not counts
        or any(isinstance(n, bool) or not isinstance(n, int) or n <= 0 for n in counts)
        or len(set(counts)) != len(counts)
    ):
        raise entry.error(f"has counts {counts!r}; counts must list distinct positive GPUs per pod, e.g. [1, 2, 4]")
    uncertain = entry.fields.get("price_uncertain", False)
    if not isinstance(uncertain, bool):
        raise entry.error(f"has price_uncertain {uncertain!r}; write true or false")
    return GpuType(
        name=entry.name,
        memory_gib=memory,
        speed=entry.number("speed", lambda v: v > 0, "speed is relative to nvidia-tesla-t4 = 1.0 and must be > 0"),
        base_price=entry.number("price", lambda v: v >= 0, "price is USD per GPU-hour and must be >= 0"),
        counts=tuple(counts),
        price_uncertain=uncertain,
    )


def _region(entry: _Entry, gpus: dict[str, GpuType]) -> tuple[Region, dict[str, float]]:
    """The region, and the GPUs it offers at their price there (the GPU's base price where none is given)."""
    city = entry.required("city", "city is where the region is, as text")
    if not isinstance(city, str) or not city:
        raise entry.error(f"has city {city!r}; city is where the region is, as text")
    continent = entry.required("continent", f"continent is one of {', '.join(CONTINENTS)}")
    if continent not in CONTINENTS:
        raise entry.error(f"has continent {continent!r}; use one of {', '.join(CONTINENTS)}")
    offered = entry.fields.get("gpus", {})
    if not isinstance(offered, dict):
        raise entry.error(
            f"has gpus {offered!r}; write gpus as a mapping, e.g. {{nvidia-tesla-t4, nvidia-l4: 0.6}} "
            "(a bare name is offered at the GPU's base price)"
        )
    prices: dict[str, float] = {}
    for gpu, price in offered.items():
        if gpu not in gpus:
            raise entry.error(f"offers unknown GPU {gpu!r}; known GPUs: {', '.join(map(str, gpus))}")
        if price is not None and not _number_ok(price, lambda v: v >= 0):
            raise entry.error(f"prices {gpu} at {price!r}; a price is USD per GPU-hour and must be >= 0")
        prices[gpu] = gpus[gpu].base_price if price is None else float(price)
    region = Region(
        name=entry.name,
        city=city,
        lat=entry.number("lat", lambda v: -90 <= v <= 90, "lat is the city's latitude in degrees, -90 to 90"),
        lon=entry.number("lon", lambda v: -180 <= v <= 180, "lon is the city's longitude in degrees, -180 to 180"),
        continent=continent,
    )
    return region, prices


def _spot_terms(entry: _Entry) -> SpotTerms:
    """The `spot` section: where the Spot prices come from, the date they hold for, and the discount."""
    source = entry.required("source", "source says where the Spot prices come from, as text")
    if not isinstance(source, str) or not source.strip():
        raise entry.error(f"has source {source!r}; source says where the Spot prices come from, as text")
    as_of = entry.required("as_of", "as_of is the date the Spot prices hold for, e.g. 2026-12-07")
    if isinstance(as_of, str):
        try:
            as_of = date.fromisoformat(as_of)
        except ValueError:
            pass
    if not isinstance(as_of, date) or isinstance(as_of, datetime):
        raise entry.error(f"has as_of {as_of!r}; as_of is the date the Spot prices hold for, e.g. 2026-12-07")
    discount = entry.fields.get("discount")
    if discount is not None and not _number_ok(discount, lambda v: 0 <= v < 1):
        raise entry.error(
            f"has discount {discount!r}; discount is the fraction below on-demand, 0 to under 1 (0.6: 60% below), "
            "or null for no Spot price but those a region quotes"
        )
    uncertain = entry.fields.get("price_uncertain", False)
    if not isinstance(uncertain, bool):
        raise entry.error(f"has price_uncertain {uncertain!r}; write true or false")
    return SpotTerms(source.strip(), as_of, None if discount is None else float(discount), uncertain)


def _quoted_spot_prices(entry: _Entry, prices: dict[str, float]) -> dict[str, float | None]:
    """A region's `spot`: GPU -> its Spot price quoted there, or None for `false` (not offered as Spot)."""
    quoted = entry.fields.get("spot", {})
    if not isinstance(quoted, dict):
        raise entry.error(
            f"has spot {quoted!r}; write spot as a mapping of GPU to Spot price, e.g. {{nvidia-l4: 0.22}}"
        )
    spot: dict[str, float | None] = {}
    for gpu, price in quoted.items():
        if gpu not in prices:
            raise entry.error(f"has a Spot price for {gpu!r}, which it does not offer; add it to its gpus first")
        if price is not False and not _number_ok(price, lambda v: v >= 0):
            raise entry.error(
                f"has Spot price {price!r} for {gpu}; a Spot price is USD per GPU-hour >= 0, or false: not offered as Spot"
            )
        spot[gpu] = None if price is False else float(price)
    return spot


def _derived(price: float, discount: float | None) -> float | None:
    """The Spot price the discount gives an on-demand price, to 4 decimals as the catalog's prices are."""
    return None if discount is None else round(price * (1 - discount), 4)


def _number_ok(value: object, ok: Callable[[float], bool]) -> bool:
    """A finite int or float (YAML bools are ints in Python, and are not numbers here) that passes `ok`."""
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and ok(value)


class _Entry:
    """One `gpus` or `regions` entry under check, so that every error names file, entry and fix."""

    def __init__(self, source: str, kind: str, name: str, entry: object, fields: tuple[str, ...]) -> None:
        self.name = name
        self.where = f"catalog {source}: {kind} {name!r}"
        if not isinstance(entry, dict):
            raise self.error(f"must be a mapping with fields {', '.join(fields)}")
        for field in entry:
            if field not in fields:
                raise self.error(f"has unknown field {field!r}; fields are {', '.join(fields)}")
        self.fields: dict[str, Any] = entry

    def error(self, problem: str) -> CatalogError:
        return CatalogError(f"{self.where} {problem}")

    def required(self, field: str, hint: str) -> Any:
        if field not in self.fields:
            raise self.error(f"is missing {field!r}; add it: {hint}")
        return self.fields[field]

    def number(self, field: str, ok: Callable[[float], bool], rule: str) -> float:
        value = self.required(field, rule)
        if not _number_ok(value, ok):
            raise self.error(f"has {field} {value!r}; {rule}")
        return float(value)
