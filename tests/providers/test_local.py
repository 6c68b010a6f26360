"""The local provider with real processes: one shared real worker for readiness and restarts, and
instant "fake workers" (a Python that sleeps, with a `gpuroam worker` command line) for bookkeeping."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gpuroam.providers.base import CapacityError, ObservedState
from gpuroam.providers.local import LocalProvider, LocalSitesError, Sites, load_sites
from gpuroam.providers.local.workers import scan_workers
from gpuroam.records import Capacity, Replica, ReplicaState
from gpuroam.spec import ServiceSpec, parse_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "local-regions.yaml"
SITES = {"us-central1": {"nvidia-l4": 1, "nvidia-tesla-t4": 1}, "europe-west4": {"nvidia-l4": 1, "nvidia-tesla-t4": 1}}


def app_spec(model: str = "tiny", args: tuple[str, ...] = ()) -> ServiceSpec:
    """A service whose replicas run `model` with `args` (what a launch is given)."""
    return parse_spec({"name": "sd", "app": {"model": model, "args": list(args)}, "resources": {"gpus": ["nvidia-l4"]}})


def replica(
    replica_id: str,
    region: str = "us-central1",
    gpu: str = "nvidia-l4",
    service: str = "sd",
    capacity: Capacity = Capacity.ON_DEMAND,
) -> Replica:
    return Replica(replica_id, service, region, gpu, ReplicaState.PROVISIONING, 0.0, 0.0, capacity=capacity)


def clean_up(provider: LocalProvider) -> None:
    """Leave no process behind, whatever the test did."""
    for seen in provider.observe():
        provider.terminate(seen.replica_id)


def wait_ready(provider: LocalProvider, replica_id: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(o.replica_id == replica_id and o.state is ObservedState.READY for o in provider.observe()):
            return
        time.sleep(0.2)
    raise AssertionError(f"{replica_id} not ready within {timeout_s} s")


def ids(provider: LocalProvider) -> set[str]:
    return {o.replica_id for o in provider.observe()}


# -- the sites file ----------------------------------------------------------------------------------


def test_load_sites_reads_the_example() -> None:
    assert load_sites(EXAMPLE) == Sites(
        on_demand={
            "us-central1": {"nvidia-l4": 1, "nvidia-tesla-t4": 2},
            "europe-west4": {"nvidia-l4": 1, "nvidia-tesla-t4": 1},
            "asia-southeast1": {"nvidia-tesla-t4": 1, "nvidia-tesla-a100": 1},
        },
        spot={
            "us-central1": {"nvidia-l4": 2},
            "europe-west4": {"nvidia-l4": 1, "nvidia-tesla-t4": 1},
            "asia-southeast1": {"nvidia-tesla-t4": 1},
        },
    )


def test_load_sites_reads_a_file_from_before_spot_and_a_site_with_spot_gpus_only(tmp_path: Path) -> None:
    path = tmp_path / "sites.yaml"
    path.write_text("regions:\n  us: {l4: 1}\n  eu: {spot: {l4: 2}}\n")
    assert load_sites(path) == Sites(on_demand={"us": {"l4": 1}, "eu": {}}, spot={"eu": {"l4": 2}})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("regions: {us: {l4: 1}}\nzones: {}\n", "unknown top-level key(s) zones; the only key is 'regions'"),
        ("regions: {us: {l4: one}}\n", "regions.us.l4 is 'one'; write a whole number"),
        ("regions: {us: {l4: 1.5}}\n", "regions.us.l4 is 1.5"),
        ("regions: {us: {l4: -1}}\n", "regions.us.l4 is -1; write a whole number of replicas, 0 or more"),
        ("regions: {us: {l4: true}}\n", "regions.us.l4 is True"),
        ("regions: {}\n", "'regions' must map at least one region"),
        ("", "expected a mapping with a 'regions' key"),
        ("regions: {us: []}\n", "regions.us must map GPU types to counts"),
        ("regions: {us: [\n", "not valid YAML"),
        ("regions: {us: {l4: 1, spot: 2}}\n", "regions.us.spot must map GPU types to Spot counts, e.g. {nvidia-l4: 2}"),
        ("regions: {us: {l4: 1, spot: {}}}\n", "regions.us.spot must map GPU types to Spot counts"),
        ("regions: {us: {spot: {l4: -2}}}\n", "regions.us.spot.l4 is -2; write a whole number of replicas, 0 or more"),
    ],
)
def test_load_sites_errors_name_the_file_the_entry_and_the_fix(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "sites.yaml"
    path.write_text(text)
    with pytest.raises(LocalSitesError, match="sites.yaml") as error:
        load_sites(path)
    assert expected in str(error.value)


def test_load_sites_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LocalSitesError, match="cannot read it"):
        load_sites(tmp_path / "nope.yaml")


# -- a real worker ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalProvider, dict]]:
    """One real tiny-model worker, shared by the tests below: us-central1 / nvidia-l4, replica sd-a."""
    provider = LocalProvider(SITES, tmp_path_factory.mktemp("real-state"))
    try:
        handle = provider.launch(replica("sd-a"), app_spec(args=("--max-batch", "2")))
        wait_ready(provider, "sd-a")
        yield provider, handle
    finally:
        clean_up(provider)


def test_a_launched_worker_becomes_ready_and_is_observed_with_its_labels(real: tuple[LocalProvider, dict]) -> None:
    provider, handle = real
    [seen] = provider.observe()
    assert (seen.replica_id, seen.service, seen.region, seen.gpu) == ("sd-a", "sd", "us-central1", "nvidia-l4")
    assert seen.state is ObservedState.READY
    assert seen.url == handle.url == f"http://127.0.0.1:{handle.details['port']}"
    assert httpx.get(f"{seen.url}/internal/ping", timeout=5).status_code == 200
    assert "gpuroam worker" in Path(handle.details["log"]).read_text()
    assert provider.endpoint("sd") is None
    provider.drain("sd-a")  # a no-op: the gateway stops routing
    assert ids(provider) == {"sd-a"}


def test_launching_the_same_replica_again_returns_its_handle_without_a_second_process(
    real: tuple[LocalProvider, dict],
) -> None:
    provider, handle = real
    assert provider.launch(replica("sd-a"), app_spec()) == handle
    assert [w.pid for w in scan_workers(provider.marker)] == [handle.details["pid"]]


def test_a_launch_beyond_the_inventory_is_a_capacity_error(real: tuple[LocalProvider, dict]) -> None:
    provider, _ = real
    assert provider.regions()["us-central1"] == {"nvidia-l4": 0, "nvidia-tesla-t4": 1}
    with pytest.raises(CapacityError) as error:
        provider.launch(replica("sd-b"), app_spec())
    assert (error.value.region, error.value.gpu) == ("us-central1", "nvidia-l4")
    assert error.value.reason == "local site us-central1 has 1 nvidia-l4, all in use"
    with pytest.raises(CapacityError, match="no local site named mars"):
        provider.launch(replica("sd-c", region="mars"), app_spec())
    with pytest.raises(CapacityError, match="local site us-central1 has no nvidia-h100"):
        provider.launch(replica("sd-d", gpu="nvidia-h100"), app_spec())
    assert ids(provider) == {"sd-a"}


def test_a_restarted_controller_finds_the_worker_and_another_state_dir_does_not(
    real: tuple[LocalProvider, dict], tmp_path: Path
) -> None:
    provider, handle = real
    restarted = LocalProvider(SITES, provider.dir.parent)
    assert [(o.replica_id, o.state, o.url) for o in restarted.observe()] == [("sd-a", ObservedState.READY, handle.url)]
    assert restarted.launch(replica("sd-a"), app_spec()) == handle
    assert LocalProvider(SITES, tmp_path).observe() == []


def test_an_orphan_spawned_without_bookkeeping_is_observed_and_terminated(real: tuple[LocalProvider, dict]) -> None:
    provider, _ = real
    env = {"GPUROAM_PROVIDER_ID": provider.provider_id, "GPUROAM_SERVICE": "sd"}
    pid = provider._spawn("orphan", 0, ["--region", "europe-west4", "--gpu", "nvidia-l4"], env)
    seen = {o.replica_id: o for o in LocalProvider(SITES, provider.dir.parent).observe()}
    assert (seen["orphan"].service, seen["orphan"].region, seen["orphan"].detail) == (
        "sd",
        "europe-west4",
        f"pid {pid}",
    )
    provider.terminate("orphan")
    assert ids(provider) == {"sd-a"}
    provider.terminate("orphan")  # idempotent


# -- bookkeeping with fake workers ---------------------------------------------------------------------


@pytest.fixture
def fake(tmp_path: Path, fake_python: str) -> Iterator[LocalProvider]:
    provider = LocalProvider(SITES, tmp_path / "state", python=fake_python, ready_timeout_s=0.5)
    try:
        yield provider
    finally:
        clean_up(provider)


def test_a_worker_that_does_not_answer_is_starting_and_terminate_removes_it(fake: LocalProvider) -> None:
    fake.launch(replica("a"), app_spec())
    assert [(o.replica_id, o.state) for o in fake.observe()] == [("a", ObservedState.STARTING)]
    fake.terminate("a")
    assert fake.observe() == []
    fake.terminate("a")
    fake.terminate("never-existed")


def test_zombies_are_not_observed(fake: LocalProvider, fake_python: str) -> None:
    env = {**os.environ, "GPUROAM_PROVIDER_ID": fake.provider_id}
    command = [fake_python, "-m", "gpuroam", "worker", "--port", "1", "--replica", "z"]
    child = subprocess.Popen(command, env=env)  # our child, deliberately not reaped yet
    try:
        deadline = time.monotonic() + 10  # /proc shows a new process's environ only after its exec
        while ids(fake) != {"z"}:
            assert time.monotonic() < deadline, "the child never showed up in observe()"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            time.sleep(0.01)
        assert fake.observe() == []
    finally:
        child.kill()
        child.wait()


def test_losing_a_region_kills_its_replicas_blocks_it_and_survives_a_restart(fake: LocalProvider) -> None:
    for rid, region, gpu in [
        ("a", "us-central1", "nvidia-l4"),
        ("b", "us-central1", "nvidia-tesla-t4"),
        ("c", "europe-west4", "nvidia-l4"),
    ]:
        fake.launch(replica(rid, region, gpu), app_spec())
    assert fake.fail_region("us-central1") == ["a", "b"]
    assert ids(fake) == {"c"}
    assert fake.regions() == {
        "us-central1": {"nvidia-l4": 0, "nvidia-tesla-t4": 0},
        "europe-west4": {"nvidia-l4": 0, "nvidia-tesla-t4": 1},
    }
    with pytest.raises(CapacityError, match="was taken away"):
        fake.launch(replica("d"), app_spec())

    restarted = LocalProvider(SITES, fake.dir.parent, python=fake.python)
    assert restarted.taken_away() == {("us-central1", "nvidia-l4"), ("us-central1", "nvidia-tesla-t4")}
    with pytest.raises(CapacityError):
        restarted.launch(replica("d"), app_spec())
    assert restarted.recover(region="us-central1") == [("us-central1", "nvidia-l4"), ("us-central1", "nvidia-tesla-t4")]
    assert fake.taken_away() == set()
    fake.launch(replica("d"), app_spec())
    assert ids(fake) == {"c", "d"}


def test_losing_a_gpu_in_one_region_then_everywhere(fake: LocalProvider) -> None:
    for region, gpus in SITES.items():
        for gpu in gpus:
            fake.launch(replica(f"{region}-{gpu}", region, gpu), app_spec())
    assert fake.fail_gpu("nvidia-l4", region="europe-west4") == ["europe-west4-nvidia-l4"]
    assert fake.fail_gpu("nvidia-tesla-t4") == ["europe-west4-nvidia-tesla-t4", "us-central1-nvidia-tesla-t4"]
    assert ids(fake) == {"us-central1-nvidia-l4"}
    assert fake.taken_away() == {
        ("europe-west4", "nvidia-l4"),
        ("europe-west4", "nvidia-tesla-t4"),
        ("us-central1", "nvidia-tesla-t4"),
    }
    assert fake.recover(gpu="nvidia-tesla-t4") == [
        ("europe-west4", "nvidia-tesla-t4"),
        ("us-central1", "nvidia-tesla-t4"),
    ]
    assert fake.recover() == [("europe-west4", "nvidia-l4")]
    assert fake.recover() == []
    assert fake.regions()["europe-west4"] == {"nvidia-l4": 1, "nvidia-tesla-t4": 1}


def test_chaos_names_must_exist(fake: LocalProvider) -> None:
    with pytest.raises(ValueError, match="no local region 'mars'; the regions are: europe-west4, us-central1"):
        fake.fail_region("mars")
    with pytest.raises(ValueError, match="no GPU type 'nvidia-h100' in any local region; the GPU types are: nvidia-l4"):
        fake.fail_gpu("nvidia-h100")
    with pytest.raises(ValueError, match="no GPU type 'nvidia-h100' in us-central1"):
        fake.recover(region="us-central1", gpu="nvidia-h100")
    assert fake.taken_away() == set()


def test_gpu_devices_pin_each_replica_to_a_free_cuda_device(tmp_path: Path, fake_python: str) -> None:
    provider = LocalProvider({"us": {"l4": 3}}, tmp_path, python=fake_python, gpu_devices={"l4": [3, 5]})
    try:
        provider.launch(replica("a", "us", "l4"), app_spec())
        provider.launch(replica("b", "us", "l4"), app_spec())
        assert {w.cuda_device for w in scan_workers(provider.marker)} == {"3", "5"}
        with pytest.raises(CapacityError, match="every CUDA device for l4"):
            provider.launch(replica("c", "us", "l4"), app_spec())
        provider.terminate("a")
        provider.launch(replica("c", "us", "l4"), app_spec())
        assert {w.replica_id: w.cuda_device for w in scan_workers(provider.marker)} == {"b": "5", "c": "3"}
    finally:
        clean_up(provider)


def test_two_threads_reaping_the_same_exited_child_is_no_error(tmp_path: Path) -> None:
    """The API's threads and the reconcile loop look at the workers at once; the second to see an exited
    child finds it already reaped (a KeyError there was a 500 from GET /api/v1/regions)."""
    provider = LocalProvider(SITES, tmp_path)

    class ReapedMeanwhile:
        def poll(self) -> int:
            provider._children.pop(4242, None)  # the other thread got there between the look and the reap
            return 0

    provider._children[4242] = ReapedMeanwhile()  # type: ignore[assignment]
    assert provider.regions() and provider._children == {}


# -- Spot and on-demand slots ----------------------------------------------------------------------------

SPOT = {"us-central1": {"nvidia-l4": 1}, "europe-west4": {"nvidia-tesla-t4": 2}}


@pytest.fixture
def spotty(tmp_path: Path, fake_python: str) -> Iterator[LocalProvider]:
    provider = LocalProvider(SITES, tmp_path / "state", python=fake_python, ready_timeout_s=0.5, spot=SPOT)
    try:
        yield provider
    finally:
        clean_up(provider)


def test_spot_and_on_demand_slots_are_counted_apart(spotty: LocalProvider) -> None:
    spotty.launch(replica("od"), app_spec())
    spotty.launch(replica("sp", capacity=Capacity.SPOT), app_spec())
    assert {w.replica_id: w.capacity for w in scan_workers(spotty.marker)} == {
        "od": Capacity.ON_DEMAND,
        "sp": Capacity.SPOT,
    }, "the capacity is found again in the process table"
    assert spotty.regions()["us-central1"] == {"nvidia-l4": 0, "nvidia-tesla-t4": 1}
    assert spotty.spot_regions() == {"us-central1": {"nvidia-l4": 0}, "europe-west4": {"nvidia-tesla-t4": 2}}
    with pytest.raises(CapacityError, match="local site us-central1 has 1 nvidia-l4 as Spot, all in use"):
        spotty.launch(replica("sp2", capacity=Capacity.SPOT), app_spec())
    with pytest.raises(CapacityError, match="local site us-central1 has 1 nvidia-l4, all in use"):
        spotty.launch(replica("od2"), app_spec())
    with pytest.raises(CapacityError, match="local site europe-west4 has no nvidia-l4 as Spot"):
        spotty.launch(replica("sp3", "europe-west4", capacity=Capacity.SPOT), app_spec())
    spotty.terminate("sp")
    assert spotty.spot_regions()["us-central1"] == {"nvidia-l4": 1}
    assert spotty.regions()["us-central1"] == {"nvidia-l4": 0, "nvidia-tesla-t4": 1}


def test_losing_a_gpu_or_a_region_takes_its_spot_slots_too(spotty: LocalProvider) -> None:
    spotty.launch(replica("sp", "europe-west4", "nvidia-tesla-t4", capacity=Capacity.SPOT), app_spec())
    spotty.launch(replica("od", "europe-west4", "nvidia-tesla-t4"), app_spec())
    assert spotty.fail_gpu("nvidia-tesla-t4", region="europe-west4") == ["od", "sp"]
    assert spotty.spot_regions()["europe-west4"] == {"nvidia-tesla-t4": 0}
    assert spotty.fail_region("us-central1") == []
    assert spotty.spot_regions()["us-central1"] == {"nvidia-l4": 0}
    spotty.recover()
    assert spotty.spot_regions() == SPOT
    with pytest.raises(ValueError, match="no GPU type 'nvidia-a100' in us-central1"):
        spotty.fail_gpu("nvidia-a100", region="us-central1")


def test_without_spot_in_the_sites_a_spot_replica_has_no_capacity(fake: LocalProvider) -> None:
    assert fake.spot_regions() == {}
    with pytest.raises(CapacityError, match="local site us-central1 has no nvidia-l4 as Spot"):
        fake.launch(replica("sp", capacity=Capacity.SPOT), app_spec())


def test_a_preempted_spot_replica_runs_out_its_notice_then_dies(spotty: LocalProvider) -> None:
    spotty.launch(replica("sp", "europe-west4", "nvidia-tesla-t4", capacity=Capacity.SPOT), app_spec())
    spotty.launch(replica("od", "europe-west4", "nvidia-tesla-t4"), app_spec())
    before = time.time()
    assert spotty.preempt(replica="sp", notice_s=2.0) == ["sp"]
    seen = {o.replica_id: o for o in spotty.observe()}
    assert seen["od"].reclaim_at is None
    reclaim_at = seen["sp"].reclaim_at
    assert reclaim_at is not None and before + 2.0 <= reclaim_at <= time.time() + 2.0, "running, with its notice"
    restarted = LocalProvider(SITES, spotty.dir.parent, python=spotty.python, ready_timeout_s=0.5, spot=SPOT)
    assert {o.replica_id: o.reclaim_at for o in restarted.observe()}["sp"] == reclaim_at, (
        "the notice outlives a restart"
    )
    time.sleep(max(0.0, reclaim_at - time.time()) + 0.1)
    assert ids(spotty) == {"od"}, "reclaimed at the end of the notice; on-demand untouched"
    assert spotty.spot_regions()["europe-west4"] == {"nvidia-tesla-t4": 2}, "one replica's preemption leaves the slots"
    with pytest.raises(ValueError, match="no Spot replica 'od'; Spot replicas: none"):
        spotty.preempt(replica="od")


def test_a_regional_preemption_wave_takes_its_spot_capacity_until_recover(spotty: LocalProvider) -> None:
    for rid in ("a", "b"):
        spotty.launch(replica(rid, "europe-west4", "nvidia-tesla-t4", capacity=Capacity.SPOT), app_spec())
    spotty.launch(replica("us", capacity=Capacity.SPOT), app_spec())
    assert spotty.preempt(region="europe-west4", notice_s=0) == ["a", "b"]
    assert ids(spotty) == {"us"}
    assert spotty.spot_regions()["europe-west4"] == {"nvidia-tesla-t4": 0}
    assert spotty.regions()["europe-west4"] == {"nvidia-l4": 1, "nvidia-tesla-t4": 1}, "on demand is still there"
    with pytest.raises(CapacityError, match="as Spot in local site europe-west4 was taken away"):
        spotty.launch(replica("c", "europe-west4", "nvidia-tesla-t4", capacity=Capacity.SPOT), app_spec())
    assert spotty.recover(region="europe-west4") == [("europe-west4", "nvidia-tesla-t4")]
    assert spotty.spot_regions()["europe-west4"] == {"nvidia-tesla-t4": 2}
