"""The bundled catalog matches the reference (/work/shared/reference/gcp-gpus.md), and user files merge over it."""

from __future__ import annotations

import tempfile
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuroam.catalog import CONTINENTS, CatalogError, load_catalog

# The reference's tables, transcribed by hand so that the test checks gcp.yaml against them.
REGIONS = {
    "us-central1": (41.26, -95.86, "americas"),
    "us-east1": (33.20, -80.01, "americas"),
    "us-east4": (39.04, -77.49, "americas"),
    "us-east5": (39.96, -83.00, "americas"),
    "us-west1": (45.60, -121.18, "americas"),
    "us-west2": (34.05, -118.24, "americas"),
    "us-west3": (40.76, -111.89, "americas"),
    "us-west4": (36.17, -115.14, "americas"),
    "northamerica-northeast1": (45.50, -73.57, "americas"),
    "northamerica-northeast2": (43.65, -79.38, "americas"),
    "southamerica-east1": (-23.55, -46.63, "americas"),
    "europe-west1": (50.45, 3.82, "europe"),
    "europe-west2": (51.51, -0.13, "europe"),
    "europe-west3": (50.11, 8.68, "europe"),
    "europe-west4": (53.44, 6.83, "europe"),
    "europe-west6": (47.37, 8.54, "europe"),
    "europe-west8": (45.46, 9.19, "europe"),
    "europe-west9": (48.86, 2.35, "europe"),
    "europe-central2": (52.23, 21.01, "europe"),
    "europe-north1": (60.57, 27.20, "europe"),
    "me-west1": (32.08, 34.78, "middle-east"),
    "me-central2": (26.43, 50.10, "middle-east"),
    "asia-east1": (24.05, 120.52, "asia"),
    "asia-east2": (22.32, 114.17, "asia"),
    "asia-northeast1": (35.68, 139.69, "asia"),
    "asia-northeast3": (37.57, 126.98, "asia"),
    "asia-south1": (19.08, 72.88, "asia"),
    "asia-southeast1": (1.34, 103.70, "asia"),
    "asia-southeast2": (-6.20, 106.85, "asia"),
    "australia-southeast1": (-33.87, 151.21, "oceania"),
}
OFFERED = {
    "nvidia-tesla-t4": "us-central1, us-east1, us-east4, us-west1, us-west2, us-west3, us-west4, "
    "northamerica-northeast1, southamerica-east1, europe-west1, europe-west2, europe-west3, europe-west4, "
    "europe-central2, me-west1, asia-east1, asia-east2, asia-northeast1, asia-northeast3, asia-south1, "
    "asia-southeast1, asia-southeast2, australia-southeast1",
    "nvidia-l4": "us-central1, us-east1, us-east4, us-west1, us-west4, northamerica-northeast1, "
    "northamerica-northeast2, europe-west1, europe-west2, europe-west3, europe-west4, europe-west6, me-central2, "
    "asia-east1, asia-northeast1, asia-northeast3, asia-south1, asia-southeast1",
    "nvidia-tesla-a100": "us-central1, us-east1, us-west1, us-west3, us-west4, europe-west4, me-west1, "
    "asia-northeast1, asia-northeast3, asia-southeast1",
    "nvidia-a100-80gb": "us-central1, us-east4, us-east5, europe-west4, asia-southeast1",
    "nvidia-h100-80gb": "us-central1, us-east4, us-east5, us-west1, us-west4, northamerica-northeast2, "
    "europe-west1, europe-west2, europe-west3, europe-west4, europe-west8, europe-west9, europe-north1, asia-east1, "
    "asia-northeast1, asia-northeast3, asia-south1, asia-southeast1, australia-southeast1",
}
# gpu: (base price, price uncertain, memory GiB, Autopilot counts, estimated speed)
GPUS = {
    "nvidia-tesla-t4": (0.35, False, 16, (1, 2, 4), 1.0),
    "nvidia-l4": (0.56, False, 24, (1, 2, 4, 8), 2.2),
    "nvidia-tesla-a100": (2.934, False, 40, (1, 2, 4, 8, 16), 5.0),
    "nvidia-a100-80gb": (3.9, True, 80, (1, 2, 4, 8), 5.5),
    "nvidia-h100-80gb": (11.0, True, 80, (1, 2, 4, 8), 9.0),
}
REGIONAL_PRICES = {
    ("europe-west4", "nvidia-tesla-t4"): 0.3675,
    ("australia-southeast1", "nvidia-tesla-t4"): 0.44,
    ("europe-west4", "nvidia-l4"): 0.588,
    ("asia-southeast1", "nvidia-l4"): 0.69,
}
CATALOG = load_catalog()


def test_bundled_regions_match_the_reference() -> None:
    assert list(CATALOG.regions) == list(REGIONS)
    for name, (lat, lon, continent) in REGIONS.items():
        region = CATALOG.regions[name]
        assert (region.name, region.lat, region.lon, region.continent) == (name, lat, lon, continent)
        assert region.city
        assert region.continent in CONTINENTS
    assert CATALOG.regions["us-central1"].city == "Council Bluffs, Iowa"


def test_bundled_offers_match_the_reference() -> None:
    assert list(CATALOG.gpus) == list(OFFERED)
    for gpu, regions in OFFERED.items():
        assert CATALOG.regions_offering(gpu) == [r for r in REGIONS if r in regions.split(", ")], gpu
    assert len(CATALOG.offers) == sum(len(regions.split(", ")) for regions in OFFERED.values())
    assert [o.gpu for o in CATALOG.offers_in("us-east5")] == ["nvidia-a100-80gb", "nvidia-h100-80gb"]


def test_bundled_gpu_types_and_prices() -> None:
    for name, (price, uncertain, memory, counts, speed) in GPUS.items():
        gpu = CATALOG.gpus[name]
        assert (gpu.name, gpu.base_price, gpu.price_uncertain) == (name, price, uncertain)
        assert (gpu.memory_gib, gpu.counts, CATALOG.speed(name)) == (memory, counts, speed)
    for (region, gpu), offer in CATALOG.offers.items():
        expected = REGIONAL_PRICES.get((region, gpu), GPUS[gpu][0])
        assert (offer.region, offer.gpu, offer.price) == (region, gpu, expected)
        assert CATALOG.price(region, gpu) == expected


def test_bundled_spot_prices_are_derived_at_the_low_end_of_the_references_discount() -> None:
    # The reference (elasticity.md) gives only "60-91% below on-demand" and no per-region list: every
    # bundled Spot price is 60% below its on-demand one, said so, dated, and marked uncertain.
    terms = CATALOG.spot
    assert (terms.discount, terms.price_uncertain, terms.as_of) == (0.6, True, date(2026, 12, 7))
    assert "assumed, not quoted" in terms.source
    assert "60-91%" in terms.source
    assert "elasticity.md" in terms.source
    for (region, gpu), offer in CATALOG.offers.items():
        assert not offer.spot_quoted
        assert offer.spot_price == CATALOG.spot_price(region, gpu) == pytest.approx(offer.price * 0.4)
        assert 0.09 * offer.price <= offer.spot_price <= 0.4 * offer.price + 1e-9, "within 60-91% below"
    assert CATALOG.spot_price("us-central1", "nvidia-l4") == 0.224
    assert CATALOG.spot_price("europe-west4", "nvidia-tesla-t4") == 0.147


def test_a_spot_price_of_a_pair_not_offered_says_which_regions_offer_it() -> None:
    with pytest.raises(KeyError, match="does not offer 'nvidia-l4'.*'us-central1'"):
        CATALOG.spot_price("us-west2", "nvidia-l4")


def test_bundled_catalog_is_cached() -> None:
    assert load_catalog() is CATALOG


def test_lookups_of_what_is_not_there_say_what_is() -> None:
    with pytest.raises(KeyError, match="does not offer 'nvidia-l4'.*'us-central1'"):
        CATALOG.price("us-west2", "nvidia-l4")
    with pytest.raises(KeyError, match="unknown region 'mars-1'.*us-central1"):
        CATALOG.offers_in("mars-1")
    with pytest.raises(KeyError, match="unknown GPU 'nvidia-x'.*nvidia-l4"):
        CATALOG.regions_offering("nvidia-x")


def test_distances_are_sane() -> None:
    assert 6500 < CATALOG.distance_km("us-central1", "europe-west4") < 8000
    assert 900 < CATALOG.distance_km("us-central1", "us-east4") < 1600
    for a in REGIONS:
        assert CATALOG.distance_km(a, a) == 0
        for b in REGIONS:
            assert CATALOG.distance_km(a, b) == pytest.approx(CATALOG.distance_km(b, a), rel=1e-12)
            assert 0 <= CATALOG.distance_km(a, b) <= 3.1416 * 6371


def test_nearest_orders_by_distance() -> None:
    candidates = ["asia-southeast1", "us-east4", "europe-west1", "europe-west4", "us-central1"]
    assert CATALOG.nearest("europe-west4", candidates) == [
        "europe-west4",
        "europe-west1",
        "us-east4",
        "us-central1",
        "asia-southeast1",
    ]
    assert CATALOG.nearest("australia-southeast1", ["us-west1", "asia-southeast1"]) == ["asia-southeast1", "us-west1"]
    assert CATALOG.nearest("us-central1", []) == []


@given(st.tuples(*[st.sampled_from(list(REGIONS))] * 3))
def test_distance_obeys_the_triangle_inequality(regions: tuple[str, str, str]) -> None:
    a, b, c = regions
    assert CATALOG.distance_km(a, c) <= (CATALOG.distance_km(a, b) + CATALOG.distance_km(b, c)) * (1 + 1e-6)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "user.yaml"
    path.write_text(text)
    return path


def test_user_file_adds_regions_and_gpus_and_changes_prices(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
gpus:
  nvidia-l4: {price: 0.5, speed: 2.5}
  fake-gpu: {memory_gib: 8, speed: 0.5, price: 0, counts: [1]}
regions:
  local-a: {city: Here, lat: 52.0, lon: 5.0, continent: europe, gpus: {fake-gpu, nvidia-l4: 0.1}}
  local-b: {city: There, lat: 52.5, lon: 5.5, continent: europe, gpus: {fake-gpu}}
  europe-west4: {gpus: {nvidia-tesla-t4: 0.4, fake-gpu}}
  asia-southeast1: {gpus: {nvidia-l4: null}}
""",
    )
    catalog = load_catalog(path)
    assert catalog.price("local-a", "nvidia-l4") == 0.1
    assert catalog.price("local-a", "fake-gpu") == 0.0
    assert catalog.regions_offering("fake-gpu") == ["europe-west4", "local-a", "local-b"]
    assert catalog.nearest("local-a", ["us-central1", "europe-west4", "local-b"]) == [
        "local-b",
        "europe-west4",
        "us-central1",
    ]
    assert catalog.distance_km("local-a", "local-b") < 100
    # The changed base price applies wherever no regional price is set, and the bundled fields not given stay.
    assert catalog.price("us-central1", "nvidia-l4") == 0.5
    assert catalog.price("asia-southeast1", "nvidia-l4") == 0.5
    assert catalog.price("europe-west4", "nvidia-l4") == 0.588
    assert catalog.speed("nvidia-l4") == 2.5
    assert catalog.gpus["nvidia-l4"].counts == (1, 2, 4, 8)
    # Merging a region's gpus adds offers and keeps the bundled ones and the region's location.
    assert [o.gpu for o in catalog.offers_in("europe-west4")] == [*OFFERED, "fake-gpu"]
    assert catalog.price("europe-west4", "nvidia-tesla-t4") == 0.4
    assert catalog.regions["europe-west4"] == CATALOG.regions["europe-west4"]
    # The cached bundled catalog is untouched.
    assert "local-a" not in load_catalog().regions
    assert load_catalog().price("us-central1", "nvidia-l4") == 0.56


def test_user_file_quotes_spot_prices_with_their_source_and_date(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
spot: {source: "my billing export", as_of: 2026-12-01, price_uncertain: false}
regions:
  us-central1: {spot: {nvidia-l4: 0.2, nvidia-h100-80gb: false}}
  local-a: {city: Here, lat: 52.0, lon: 5.0, continent: europe, gpus: {nvidia-l4: 0.6}, spot: {nvidia-l4: 0.15}}
""",
    )
    catalog = load_catalog(path)
    assert (catalog.spot.source, catalog.spot.as_of, catalog.spot.price_uncertain) == (
        "my billing export",
        date(2026, 12, 1),
        False,
    )
    assert catalog.spot.discount == 0.6, "the bundled discount stays unless the file changes it"
    assert (catalog.spot_price("us-central1", "nvidia-l4"), catalog.offers["us-central1", "nvidia-l4"].spot_quoted) == (
        0.2,
        True,
    )
    assert catalog.price("us-central1", "nvidia-l4") == 0.56, "on-demand prices stay"
    assert catalog.spot_price("local-a", "nvidia-l4") == 0.15
    assert catalog.spot_price("us-central1", "nvidia-tesla-t4") == 0.14, "derived where none is quoted"
    with pytest.raises(KeyError, match=r"no Spot price for 'nvidia-h100-80gb' in 'us-central1' \(its regions entry"):
        catalog.spot_price("us-central1", "nvidia-h100-80gb")
    assert catalog.price("us-central1", "nvidia-h100-80gb") == 11.0, "still offered on demand"


def test_without_a_discount_only_quoted_spot_prices_exist(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, "spot: {discount: null}\nregions: {europe-west4: {spot: {nvidia-l4: 0.3}}}"))
    assert catalog.spot_price("europe-west4", "nvidia-l4") == 0.3
    with pytest.raises(KeyError) as raised:
        catalog.spot_price("europe-west4", "nvidia-tesla-t4")
    assert "none is quoted and spot.discount is unset" in str(raised.value)
    assert "regions: {europe-west4: {spot: {nvidia-tesla-t4: PRICE}}}" in str(raised.value)


@given(
    st.floats(0, 0.99),
    st.dictionaries(st.sampled_from(list(GPUS)), st.floats(0, 20).map(lambda p: round(p, 4)), max_size=5),
)
def test_spot_prices_are_quoted_else_the_discount_below_on_demand(discount: float, quoted: dict[str, float]) -> None:
    offered = {o.gpu for o in CATALOG.offers_in("us-central1")}
    text = f"spot: {{discount: {discount:.6f}}}\nregions: {{us-central1: {{spot: {quoted!r}}}}}"
    catalog = load_catalog(_user_file(text))
    for gpu in offered:
        price, spot = catalog.price("us-central1", gpu), catalog.spot_price("us-central1", gpu)
        assert spot == (quoted[gpu] if gpu in quoted else pytest.approx(price * (1 - round(discount, 6)), abs=1e-4))
        assert catalog.offers["us-central1", gpu].spot_quoted is (gpu in quoted)
        if gpu not in quoted:
            assert spot <= price


def _user_file(text: str) -> Path:
    """A user catalog in a fresh temporary file (hypothesis examples cannot share pytest's tmp_path)."""
    folder = Path(tempfile.mkdtemp())
    return write(folder, text)


def test_empty_user_file_gives_the_bundled_catalog(tmp_path: Path) -> None:
    assert load_catalog(str(write(tmp_path, ""))) == CATALOG


LOCAL = "city: Here, lat: 52.0, lon: 5.0, continent: europe"


@pytest.mark.parametrize(
    ("text", "entry", "fix"),
    [
        (
            "regions: {us-central1: {gpus: {nvidia-x}}}",
            "region 'us-central1' offers unknown GPU 'nvidia-x'",
            "known GPUs: nvidia-tesla-t4, nvidia-l4",
        ),
        (
            "regions: {local-a: {city: Here, lon: 5.0, continent: europe}}",
            "region 'local-a' is missing 'lat'",
            "latitude in degrees",
        ),
        (
            "regions: {local-a: {city: Here, lat: 5.0, continent: europe}}",
            "region 'local-a' is missing 'lon'",
            "longitude in degrees",
        ),
        ("regions: {local-a: {lat: 5.0, lon: 5.0, continent: europe}}", "region 'local-a' is missing 'city'", "add it"),
        (f"regions: {{local-a: {{{LOCAL}, lat: 95}}}}", "region 'local-a' has lat 95", "-90 to 90"),
        (f"regions: {{local-a: {{{LOCAL}, lon: .nan}}}}", "region 'local-a' has lon nan", "-180 to 180"),
        (
            f"regions: {{local-a: {{{LOCAL}, continent: mars}}}}",
            "region 'local-a' has continent 'mars'",
            "use one of americas",
        ),
        (
            f"regions: {{local-a: {{{LOCAL}, latitude: 1}}}}",
            "region 'local-a' has unknown field 'latitude'",
            "fields are city, lat",
        ),
        (
            f"regions: {{local-a: {{{LOCAL}, gpus: [nvidia-l4]}}}}",
            "region 'local-a' has gpus ['nvidia-l4']",
            "as a mapping",
        ),
        (
            "regions: {europe-west4: {gpus: {nvidia-l4: -0.5}}}",
            "region 'europe-west4' prices nvidia-l4 at -0.5",
            "must be >= 0",
        ),
        ("regions: {local-a: null}", "region 'local-a' must be a mapping", "fields city, lat"),
        ("gpus: {nvidia-l4: {price: -1}}", "GPU 'nvidia-l4' has price -1", "must be >= 0"),
        ("gpus: {nvidia-l4: {speed: 0}}", "GPU 'nvidia-l4' has speed 0", "must be > 0"),
        ("gpus: {nvidia-l4: {speed: -2.0}}", "GPU 'nvidia-l4' has speed -2.0", "must be > 0"),
        ("gpus: {nvidia-l4: {speed: true}}", "GPU 'nvidia-l4' has speed True", "must be > 0"),
        ("gpus: {nvidia-l4: {counts: [0, 1]}}", "GPU 'nvidia-l4' has counts [0, 1]", "distinct positive"),
        ("gpus: {nvidia-l4: {memory_gib: lots}}", "GPU 'nvidia-l4' has memory_gib 'lots'", "positive integer"),
        ("gpus: {nvidia-l4: {price_uncertain: maybe}}", "GPU 'nvidia-l4' has price_uncertain 'maybe'", "true or false"),
        (
            "gpus: {nvidia-b200: {speed: 20, price: 6, counts: [1]}}",
            "GPU 'nvidia-b200' is missing 'memory_gib'",
            "add it",
        ),
        ("gpus: {1: {speed: 1}}", "gpus entry 1", "quote it"),
        ("spot: {discount: 1.0}", "section 'spot' has discount 1.0", "fraction below on-demand, 0 to under 1"),
        ("spot: {discount: -0.1}", "section 'spot' has discount -0.1", "or null"),
        ("spot: {as_of: yesterday}", "section 'spot' has as_of 'yesterday'", "e.g. 2026-12-07"),
        ("spot: {as_of: 2026-12-07 10:00:00}", "section 'spot' has as_of", "the date the Spot prices hold for"),
        ("spot: {source: ''}", "section 'spot' has source ''", "where the Spot prices come from"),
        ("spot: {price_uncertain: 1}", "section 'spot' has price_uncertain 1", "true or false"),
        ("spot: {discout: 0.7}", "section 'spot' has unknown field 'discout'", "fields are source, as_of"),
        ("spot: [0.6]", "section 'spot' must be a mapping", "names to entries"),
        (
            "regions: {us-west2: {spot: {nvidia-l4: 0.2}}}",
            "region 'us-west2' has a Spot price for 'nvidia-l4', which it does not offer",
            "add it to its gpus first",
        ),
        (
            "regions: {us-central1: {spot: {nvidia-l4: -1}}}",
            "region 'us-central1' has Spot price -1 for nvidia-l4",
            "or false: not offered as Spot",
        ),
        ("regions: {us-central1: {spot: {nvidia-l4: true}}}", "has Spot price True for nvidia-l4", ">= 0"),
        ("regions: {us-central1: {spot: [nvidia-l4]}}", "region 'us-central1' has spot ['nvidia-l4']", "a mapping"),
        ("zones: {}", "unknown section 'zones'", "sections are gpus, regions, spot"),
        ("- a list", "the top level must be a mapping", "gpus, regions"),
        ("regions: {local-a: [", "not valid YAML", "fix the syntax"),
    ],
)
def test_errors_name_the_file_the_entry_and_the_fix(tmp_path: Path, text: str, entry: str, fix: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CatalogError) as raised:
        load_catalog(path)
    message = str(raised.value)
    assert message.startswith(f"catalog {path}: ")
    assert entry in message
    assert fix in message


def test_missing_user_file_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="missing.yaml: cannot read it"):
        load_catalog(tmp_path / "missing.yaml")
