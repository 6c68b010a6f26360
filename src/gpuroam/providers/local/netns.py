"""Regions as Linux network namespaces, linked to the root namespace over an emulated WAN.

Why: on one machine every local region is a loopback port away, so nothing exercises what makes
regions different: distance (delay) and partitions. Here each region's workers run in their own
network namespace; the gateway and controller stay in the root namespace and reach a region over a
point-to-point link with a one-way delay taken from the catalog's distances, and a region can be cut
off (partition: packets dropped silently, so clients see timeouts) and healed.

The link is a veth pair with `tc netem` where the kernel has sch_netem, else a userspace emulator
(`gpuroam.providers.local.wanlink`) between two TUN devices. Region slot s gets 10.213.s.0/30: .1 in the
root namespace, .2 in the region's. Names carry a prefix made from the state dir, so two runs do not
collide, and everything is recorded in `<state_dir>/local/network.json` before it is created, so a
restarted controller re-attaches to what exists (and repairs what is missing) instead of recreating it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from subprocess import DEVNULL, STDOUT, Popen
from typing import Any

from gpuroam import processes
from gpuroam.catalog import Catalog, load_catalog
from gpuroam.providers.base import ProviderError
from gpuroam.providers.local import wanlink

SUBNET = "10.213"
NS_IF = "wan0"  # inside its own namespace the region's interface needs no unique name
GLOBAL_LOCK = Path("/run/lock/gpuroam-netns.lock")  # slot allocation across state dirs
FIBRE_KM_PER_MS = 200.0  # light in fibre covers about 200 km per millisecond
ROUTE_FACTOR = 1.5  # real routes are about 1.5x the great-circle distance
MIN_DELAY_MS, MAX_DELAY_MS = 1.0, 75.0
DEFAULT_DELAY_MS = 25.0  # a region the catalog cannot place
LINK_KINDS = ("auto", "veth", "tun")


class NetworkError(ProviderError):
    """The region network cannot be set up or used; the message says what to do."""


def one_way_delay_ms(distance_km: float) -> float:
    """1 ms, plus fibre time over a route 1.5x the great circle (200 km/ms), capped at 75 ms.

    So the home region gets 1 ms, Iowa -> Netherlands (~7000 km) about 54 ms (108 ms RTT), and
    anything beyond ~9800 km 75 ms (150 ms RTT)."""
    return round(min(MAX_DELAY_MS, MIN_DELAY_MS + distance_km * ROUTE_FACTOR / FIBRE_KM_PER_MS), 1)


def region_delays(
    regions: Sequence[str], home: str, catalog: Catalog, overrides: Mapping[str, float] | None = None
) -> dict[str, tuple[float, str]]:
    """Region -> (one-way delay in ms, where it came from: override, home, catalog or default)."""
    overrides = overrides or {}
    delays: dict[str, tuple[float, str]] = {}
    for region in regions:
        if region in overrides:
            delays[region] = (float(overrides[region]), "override")
        elif region == home:
            delays[region] = (MIN_DELAY_MS, "home")
        elif region in catalog.regions and home in catalog.regions:
            delays[region] = (one_way_delay_ms(catalog.distance_km(home, region)), "catalog")
        else:
            delays[region] = (DEFAULT_DELAY_MS, "default")
    return delays


def _run(command: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=20, stdin=DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise NetworkError(f"`{' '.join(command)}` could not run: {error}") from error
    if check and result.returncode != 0:
        problem = (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"
        raise NetworkError(f"`{' '.join(command)}` failed: {problem}")
    return result


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *(["-n", netns] if netns else []), *args], check)


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[str | None, bool]:
    """(why namespaces cannot be used, or None; whether netem works), probed once in a scratch namespace."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux; this is {sys.platform}", False
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CAP_NET_ADMIN); run as root, e.g. `sudo -E ...`", False
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing; install it, e.g. `apt-get install iproute2`", False
    probe = f"grprobe{os.getpid()}"
    added = _run(["ip", "netns", "add", probe], check=False)
    if added.returncode != 0:
        return f"`ip netns add` fails ({added.stderr.strip()}); the kernel needs CONFIG_NET_NS and /run/netns", False
    try:
        netem = shutil.which("tc") is not None and (
            _run(["tc", "-n", probe, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"], False).returncode
            == 0
        )
        if not netem and _ip("tuntap", "add", "dev", "probe0", "mode", "tun", netns=probe, check=False).returncode:
            return (
                "neither `tc netem` (kernel sch_netem) nor TUN (/dev/net/tun) works; `modprobe sch_netem` or tun",
                False,
            )
    finally:
        _run(["ip", "netns", "del", probe], check=False)
    return None, netem


def network_unavailable() -> str | None:
    """Why regions cannot be network namespaces here (not root, no `ip`, ...), or None when they can."""
    return _probe()[0]


def netem_available() -> bool:
    """Whether `tc qdisc ... netem` works on this kernel (probed once per process)."""
    return _probe()[1]


def _prefix(state_dir: Path) -> str:
    return "gr" + hashlib.sha1(str(Path(state_dir).resolve()).encode()).hexdigest()[:5]


@dataclass
class RegionLink:
    """One region's namespace and link, as recorded in network.json."""

    region: str
    index: int  # position in this network: names the namespace and the root-side device
    slot: int  # 10.213.<slot>.0/30, unique on the machine
    netns: str
    host_if: str
    delay_ms: float
    delay_source: str
    up: bool = True

    @property
    def host_address(self) -> str:
        return f"{SUBNET}.{self.slot}.1"

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.slot}.2"


def _used_slots() -> dict[int, str]:
    """Slot -> root-namespace device holding its .1 address, for every run on this machine."""
    pattern = rf"^\d+:\s+(\S+)\s+inet {re.escape(SUBNET)}\.(\d+)\.1[ /]"
    found = re.findall(pattern, _ip("-o", "-4", "addr").stdout, re.MULTILINE)
    return {int(slot): device for device, slot in found}


def _free_slot(used: Mapping[int, str], taken: set[int]) -> int:
    free = sorted(set(range(256)) - set(used) - taken)
    if not free:
        raise NetworkError(f"all 256 region slots of {SUBNET}.0.0/16 are in use; `gpuroam net down` unused networks")
    return free[0]


def _link_pids() -> dict[str, int]:
    """host_if -> pid of each live wanlink process (the process table is the truth, not a stored pid)."""
    found: dict[str, int] = {}
    for pid in processes.pids():
        cmdline = processes.command_line(pid)
        if cmdline is None or processes.zombie(pid):
            continue
        if "gpuroam.providers.local.wanlink" in cmdline and "--host-if" in cmdline[:-1]:
            found[cmdline[cmdline.index("--host-if") + 1]] = pid
    return found


class RegionNetwork:
    """The regions' namespaces and links of one state dir. Build with `create` (idempotent) or `attach`."""

    def __init__(self, state_dir: Path, kind: str, home: str, links: dict[str, RegionLink], python: str) -> None:
        self.state_dir = Path(state_dir)
        self.dir = self.state_dir / "local"
        self.kind = kind
        self.home = home
        self.links = links
        self.python = python
        self.prefix = _prefix(self.state_dir)

    # -- building and finding ------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        state_dir: Path,
        regions: Sequence[str],
        home: str | None = None,
        delays_ms: Mapping[str, float] | None = None,
        catalog: Catalog | None = None,
        link: str = "auto",
        python: str = sys.executable,
    ) -> RegionNetwork:
        """Make the network of `regions` exist: re-attach to what network.json records, repair what is
        missing (a dead link process, a deleted namespace), add new regions, apply new delays."""
        reason = network_unavailable()
        if reason:
            raise NetworkError(f"regions cannot be network namespaces here: {reason}")
        if not regions:
            raise NetworkError("no regions given; pass a regions file with at least one region")
        unknown = sorted(set(delays_ms or {}) - set(regions))
        if unknown:
            raise NetworkError(f"delay given for unknown region(s) {', '.join(unknown)}; regions: {', '.join(regions)}")
        if link not in LINK_KINDS:
            raise NetworkError(f"unknown link kind {link!r}; use one of {', '.join(LINK_KINDS)}")
        with cls._state_lock(state_dir):
            network = cls.load(state_dir, python)
            if network is None:
                kind = link if link != "auto" else ("veth" if netem_available() else "tun")
                if kind == "veth" and not netem_available():
                    raise NetworkError("link kind veth needs `tc netem` (kernel sch_netem), missing here; use tun")
                network = cls(state_dir, kind, "", {}, python)
                network._remove_leftovers()
            elif link not in ("auto", network.kind):
                raise NetworkError(
                    f"the network of {state_dir} uses {network.kind} links; run `gpuroam net down` first to switch"
                )
            # a re-run without --home or --delay keeps what an earlier `net up` chose
            home = home or (network.home if network.home in regions else regions[0])
            if home not in regions:
                raise NetworkError(f"home region {home!r} is not one of the regions: {', '.join(regions)}")
            kept = {r: lk.delay_ms for r, lk in network.links.items() if lk.delay_source == "override"}
            delays = region_delays(regions, home, catalog or load_catalog(), {**kept, **(delays_ms or {})})
            network.home = home
            GLOBAL_LOCK.parent.mkdir(parents=True, exist_ok=True)
            with open(GLOBAL_LOCK, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                used = _used_slots()
                taken = {lk.slot for lk in network.links.values()}
                for region in regions:
                    known = network.links.get(region)
                    if known is not None and used.get(known.slot, known.host_if) != known.host_if:
                        known.slot = _free_slot(used, taken)  # after a reboot its slot went to another run
                    if known is None:
                        index = max((lk.index for lk in network.links.values()), default=-1) + 1
                        netns, host_if = f"{network.prefix}-{index}", f"{network.prefix}h{index}"
                        known = RegionLink(region, index, _free_slot(used, taken), netns, host_if, 0.0, "")
                        network.links[region] = known
                    taken.add(known.slot)
                    known.delay_ms, known.delay_source = delays[region]
                network._save()  # recorded before it is created: a crash in between is repaired next time
                for region in regions:
                    network._ensure(network.links[region])
        return network

    @classmethod
    def attach(cls, state_dir: Path, python: str = sys.executable) -> RegionNetwork:
        """The network recorded in `state_dir`, as it is (no repair); NetworkError when there is none."""
        network = cls.load(state_dir, python)
        if network is None:
            raise NetworkError(
                f"no region network in {state_dir}; create one with `gpuroam net up --regions FILE --state {state_dir}`"
            )
        return network

    @classmethod
    def load(cls, state_dir: Path, python: str = sys.executable) -> RegionNetwork | None:
        path = Path(state_dir) / "local" / "network.json"
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            links = {name: RegionLink(**fields) for name, fields in data["regions"].items()}
            return cls(state_dir, data["kind"], data["home"], links, python)
        except (ValueError, KeyError, TypeError) as error:
            raise NetworkError(f"{path} is corrupt ({error}); run `gpuroam net down --state {state_dir}`") from error

    @staticmethod
    @contextlib.contextmanager
    def _state_lock(state_dir: Path) -> Iterator[None]:
        directory = Path(state_dir) / "local"
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / "network.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _reload(self) -> None:
        """Take up what another process (`gpuroam net partition`, a controller) recorded since we read it."""
        current = self.load(self.state_dir, self.python)
        if current is not None:
            self.kind, self.home, self.links = current.kind, current.home, current.links

    def _save(self) -> None:
        data = {"kind": self.kind, "home": self.home, "regions": {r: asdict(lk) for r, lk in self.links.items()}}
        tmp = self.dir / f".network.json.{os.getpid()}"
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.dir / "network.json")

    # -- what the provider needs ---------------------------------------------------------------------

    def link(self, region: str) -> RegionLink:
        if region not in self.links:
            raise NetworkError(
                f"region {region!r} has no network namespace (the network has: {', '.join(self.links) or 'none'}); "
                f"run `gpuroam net up --regions FILE --state {self.state_dir}` with this region in FILE"
            )
        return self.links[region]

    def address(self, region: str) -> str:
        """The region-side address that its workers bind and the gateway reaches them at."""
        return self.link(region).address

    def exec_prefix(self, region: str) -> list[str]:
        """The command prefix that runs a program inside `region`'s namespace."""
        netns = self.link(region).netns
        if not Path("/run/netns", netns).exists():
            raise NetworkError(
                f"the namespace {netns} of region {region} is gone; run `gpuroam net up --state {self.state_dir}`"
            )
        return ["ip", "netns", "exec", netns]

    def delay_ms(self, region: str) -> float:
        """One-way delay between the root namespace and `region`, in milliseconds."""
        return self.link(region).delay_ms

    def describe(self) -> dict[str, dict[str, Any]]:
        """Region -> address, delay, link kind, up/down and whether the link is actually in place."""
        self._reload()
        pids = _link_pids() if self.kind == "tun" else {}
        described = {}
        for region, lk in self.links.items():
            if self.kind == "tun":
                intact = lk.host_if in pids
            else:
                intact = Path("/sys/class/net", lk.host_if).exists()
            described[region] = {
                "netns": lk.netns,
                "address": lk.address,
                "host_address": lk.host_address,
                "delay_ms": lk.delay_ms,
                "delay_source": lk.delay_source,
                "link": self.kind,
                "up": lk.up,
                "intact": intact and Path("/run/netns", lk.netns).exists(),
                "home": region == self.home,
            }
        return described

    # -- chaos ---------------------------------------------------------------------------------------

    def partition(self, region: str) -> None:
        """Cut `region` off: from now on every packet either way is dropped, in-flight ones included."""
        self._set_up(region, False)

    def heal(self, region: str) -> None:
        """Reconnect `region`; TCP connections that survived the cut resume on their own."""
        self._set_up(region, True)

    def set_delay(self, region: str, delay_ms: float) -> None:
        """Change `region`'s one-way delay now (packets already in flight keep theirs)."""
        with self._state_lock(self.state_dir):
            self._reload()
            lk = self.link(region)
            lk.delay_ms, lk.delay_source = float(delay_ms), "override"
            self._save()
            self._apply(lk)

    def _set_up(self, region: str, up: bool) -> None:
        with self._state_lock(self.state_dir):
            self._reload()
            lk = self.link(region)
            lk.up = up
            self._save()
            self._apply(lk)

    def _apply(self, lk: RegionLink) -> None:
        """Push delay and up/down to the live link; a dead link process is restarted with them."""
        if self.kind == "veth":
            self._netem(lk)
            return
        try:
            wanlink.send_command(lk.host_if, f"delay {lk.delay_ms}")
            wanlink.send_command(lk.host_if, "up" if lk.up else "down")
        except OSError:
            self._ensure(lk)

    # -- setting up and tearing down -------------------------------------------------------------------

    def _ensure(self, lk: RegionLink) -> None:
        """Idempotently make `lk`'s namespace, devices, addresses and link exist as recorded."""
        if not Path("/run/netns", lk.netns).exists():
            _ip("netns", "add", lk.netns)
        _ip("link", "set", "lo", "up", netns=lk.netns)
        ns_if_missing = _ip("link", "show", NS_IF, netns=lk.netns, check=False).returncode != 0
        if self.kind == "veth":
            if not Path("/sys/class/net", lk.host_if).exists() or ns_if_missing:
                _ip("link", "del", lk.host_if, check=False)
                _ip("link", "del", NS_IF, netns=lk.netns, check=False)
                _ip("link", "add", lk.host_if, "type", "veth", "peer", "name", NS_IF, "netns", lk.netns)
            _ip("addr", "replace", f"{lk.host_address}/30", "dev", lk.host_if)
            _ip("addr", "replace", f"{lk.address}/30", "dev", NS_IF, netns=lk.netns)
        else:
            if not Path("/sys/class/net", lk.host_if).exists():
                _ip("tuntap", "add", "dev", lk.host_if, "mode", "tun")
            if ns_if_missing:
                _ip("tuntap", "add", "dev", NS_IF, "mode", "tun", netns=lk.netns)
            _ip("addr", "replace", lk.host_address, "peer", lk.address, "dev", lk.host_if)
            _ip("addr", "replace", lk.address, "peer", lk.host_address, "dev", NS_IF, netns=lk.netns)
        _ip("link", "set", lk.host_if, "up")
        _ip("link", "set", NS_IF, "up", netns=lk.netns)
        via = ["via", lk.host_address] if self.kind == "veth" else ["dev", NS_IF]  # tun is point-to-point
        _ip("route", "replace", "default", *via, netns=lk.netns)
        if self.kind == "veth":
            self._netem(lk)
        elif lk.host_if in _link_pids():
            wanlink.send_command(lk.host_if, f"delay {lk.delay_ms}")
            wanlink.send_command(lk.host_if, "up" if lk.up else "down")
        else:
            self._start_link(lk)

    def _netem(self, lk: RegionLink) -> None:
        rule = ["root", "netem", "limit", "100000", "delay", f"{lk.delay_ms}ms", *([] if lk.up else ["loss", "100%"])]
        _run(["tc", "qdisc", "replace", "dev", lk.host_if, *rule])
        _run(["tc", "-n", lk.netns, "qdisc", "replace", "dev", NS_IF, *rule])

    def _start_link(self, lk: RegionLink) -> None:
        """Start the region's wanlink in its own session (it outlives us) and wait until it forwards."""
        log_path = self.dir / "logs" / f"wanlink-{lk.region}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [self.python, "-m", "gpuroam.providers.local.wanlink", "--host-if", lk.host_if, "--netns", lk.netns]
        command += ["--ns-if", NS_IF, "--delay-ms", str(lk.delay_ms), *([] if lk.up else ["--down"])]
        with open(log_path, "ab") as log:
            child = Popen(command, stdin=DEVNULL, stdout=log, stderr=STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                wanlink.send_command(lk.host_if, "stats", timeout_s=0.5)
                return
            if child.poll() is not None:
                break
            time.sleep(0.01)
        tail = log_path.read_text(errors="replace")[-600:].strip()
        raise NetworkError(f"the WAN link of region {lk.region} did not start (log {log_path}): {tail}")

    def teardown(self) -> None:
        """Remove every namespace, device and link process of this state dir; safe to repeat.

        Processes still inside a region's namespace (its workers) are stopped too: a namespace lives
        on, unreachable, while any process holds it."""
        with self._state_lock(self.state_dir):
            self._remove_leftovers()
            with contextlib.suppress(FileNotFoundError):
                (self.dir / "network.json").unlink()
            self.links = {}

    def _remove_leftovers(self) -> None:
        """Everything on the machine named with this state dir's prefix, recorded or not."""
        namespaces = {line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()}
        namespaces = {ns for ns in namespaces if ns.startswith(f"{self.prefix}-")}
        namespaces |= {lk.netns for lk in self.links.values() if Path("/run/netns", lk.netns).exists()}
        devices = [d for d in os.listdir("/sys/class/net") if d.startswith(f"{self.prefix}h")]
        processes.stop([pid for host_if, pid in _link_pids().items() if host_if.startswith(f"{self.prefix}h")], 3.0)
        for netns in sorted(namespaces):
            pids = [int(p) for p in _ip("netns", "pids", netns, check=False).stdout.split() if p.isdigit()]
            processes.stop(pids, 3.0)
            _ip("link", "del", NS_IF, netns=netns, check=False)
            _ip("netns", "del", netns, check=False)
        for device in devices:
            _ip("link", "del", device, check=False)
