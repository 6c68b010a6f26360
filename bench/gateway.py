"""Reverse proxies side by side: gpuroam's gateway, nginx and SkyServe's load balancer.

One run, on one machine, the same backends and the same load generators for every target:
- backends: 3 nginx replicas on loopback, each its own process group, answering 200
  `{"ok":true}` to any method and path (GET /internal/ping included);
- targets: `direct` (one backend, no proxy), `gpuroam` (`python -m gpuroam gateway` with the
  3 backends), `nginx` (1 worker, upstream keepalive, HTTP/1.1 to the replicas) and `skyserve`
  (skypilot's `sky.serve.load_balancer`, default least-load policy, bound to 127.0.0.1, fed by
  a controller stand-in that reports the replicas passing GET /internal/ping); each logs as it
  would in service (nginx a buffered access log, SkyServe a line per request, its default) to
  files in the bench's temp dir;
- load: POST /sdapi/v1/txt2img with `{"prompt":"a cat","steps":1}`.

Sections, each printed as a markdown table and written to --out as JSON:
1. closed loop: wrk -t1 -c32 --latency, --duration s a run, --repeats runs per target,
   interleaved (direct, gpuroam, nginx, skyserve, then again); medians of req/s, p50, p99;
2. open loop at each of --rates req/s (bench/gateway_support/loadgen.py, its own process):
   latency runs from each request's scheduled send time, so there is no coordinated omission,
   and a target that cannot keep up shows its queueing; added latency = target p50/p99 minus
   direct p50/p99 (medians of --repeats interleaved runs);
3. failover: each proxy, started fresh (nginx twice: as configured above, and `nginx-tuned`,
   which adds `proxy_next_upstream error timeout http_502 http_503 non_idempotent`), under 16
   closed-loop connections for --failover-duration s; one backend's process group is SIGKILLed
   at --kill-at s. Reported: failed requests (connection errors, timeouts, non-2xx), the median
   req/s of the 100 ms buckets before the kill, the time from the kill until 3 buckets in a row
   are back within 10% of it, the lowest and the median bucket after the kill, and the slowest
   request after it. SkyServe's load balancer asks its controller for the replica list 5 s after
   it starts and then every 20 s, so it keeps sending to the dead replica until its next sync.

Everything shares the machine's cores (2 here): compare targets within one run only.

Run (7-8 minutes with the defaults and all four targets; up to 10 on a busy machine, as each run
first waits up to 10 s for idle cores):

    .venv/bin/python bench/gateway.py
    .venv/bin/python bench/gateway.py --targets direct,nginx,skyserve --rates 1000,250

Requirements: `apt-get install -y nginx wrk`; for `skyserve`, skypilot in its own venv (it must
not share gpuroam's): `python3 -m venv /work/skyserve-venv && /work/skyserve-venv/bin/pip
install skypilot==0.14.1` (or --skyserve-python); for `gpuroam`, the `gpuroam gateway` command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from gateway_support import report, wrk
from gateway_support.servers import API_PATH, SUPPORT, Backend, Processes, Target, start_backend, start_target

TARGETS = ("direct", "gpuroam", "nginx", "skyserve")
SKYSERVE_PYTHON = "/work/skyserve-venv/bin/python"
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated, from " + ",".join(TARGETS))
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run and per fixed-rate run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per target in sections 1 and 2")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--rates", default="1000", help="comma-separated requests/s of the open-loop section")
    parser.add_argument("--failover-connections", type=int, default=16)
    parser.add_argument("--failover-duration", type=float, default=6.0)
    parser.add_argument("--kill-at", type=float, default=2.0, help="seconds into the failover run")
    parser.add_argument("--skip", default="", help="sections to leave out: comma-separated of wrk,rate,failover")
    parser.add_argument("--skyserve-python", default=SKYSERVE_PYTHON, help="python of the venv with skypilot")
    parser.add_argument("--out", type=Path, default=RESULTS / f"gateway-{date.today()}.json")
    args = parser.parse_args()
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(TARGETS)
    if unknown or not args.targets:
        parser.error(f"--targets: unknown {sorted(unknown)}; choose from {','.join(TARGETS)}")
    args.rates = [float(r) for r in args.rates.split(",")]
    args.skip = sorted(s.strip() for s in args.skip.split(",") if s.strip())
    return args


def preflight(args: argparse.Namespace) -> None:
    """Stop early, with what to do, when a tool or a target's command is missing."""
    problems = []
    missing = [tool for tool in ("nginx", "wrk") if shutil.which(tool) is None]
    if missing:
        problems.append(f"{' and '.join(missing)} not found: install with `apt-get install -y nginx wrk`")
    if "skyserve" in args.targets:
        check = [args.skyserve_python, "-c", "import sky.serve.load_balancer"]
        if (
            not Path(args.skyserve_python).exists()
            or subprocess.run(check, capture_output=True, check=False).returncode
        ):
            problems.append(
                f"skyserve: no skypilot at {args.skyserve_python}: `python3 -m venv /work/skyserve-venv && "
                "/work/skyserve-venv/bin/pip install skypilot==0.14.1`, or leave it out with --targets"
            )
    if "gpuroam" in args.targets:
        check = [sys.executable, "-m", "gpuroam", "gateway", "--help"]
        if subprocess.run(check, capture_output=True, check=False).returncode:
            problems.append(
                f"gpuroam: `{sys.executable} -m gpuroam gateway --help` fails; leave it out with "
                f"--targets {','.join(t for t in args.targets if t != 'gpuroam')}"
            )
    if problems:
        sys.exit("bench/gateway.py cannot run:\n- " + "\n- ".join(problems))


def versions(args: argparse.Namespace) -> dict:
    def out(command: list[str]) -> str:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        return (done.stdout + done.stderr).strip().splitlines()[0] if done.stdout + done.stderr else ""

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    found = {
        "python": platform.python_version(),
        "nginx": out(["nginx", "-v"]),
        "wrk": out(["wrk", "-v"]),
        "cpu": next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), ""),
        "cores": os.cpu_count(),
    }
    if "skyserve" in args.targets:
        found["skypilot"] = out([args.skyserve_python, "-c", "import sky; print(sky.__version__)"])
    return found


def cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all cores since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)


def wait_for_quiet(limit_s: float = 10.0, idle_share: float = 0.8) -> bool:
    """Before a run, wait (at most `limit_s`) for the cores to be mostly idle, so that the last
    run's leftovers (an overloaded proxy draining its queue) do not slow the next target.
    False when they never were: other work on the machine, which skews that run."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        idle, total = cpu_times()
        time.sleep(0.5)
        idle2, total2 = cpu_times()
        if (idle2 - idle) >= idle_share * (total2 - total):
            return True
    log(f"the machine is still busy after {limit_s:g} s (other work?); running anyway")
    return False


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_loadgen(*args: str, timeout: float) -> dict:
    command = [sys.executable, str(SUPPORT / "loadgen.py"), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def section_wrk(targets: list[Target], args: argparse.Namespace, script: Path) -> dict[str, dict]:
    for target in targets:
        log(f"wrk warm-up: {target.name}")
        wrk.run(target.url + API_PATH, script, args.connections, 2)
    runs: dict[str, list[dict]] = {t.name: [] for t in targets}
    for round_ in range(args.repeats):
        for target in targets:
            quiet = wait_for_quiet()
            result = wrk.run(target.url + API_PATH, script, args.connections, args.duration) | {"quiet": quiet}
            log(f"wrk {round_ + 1}/{args.repeats} {target.name}: {result['rps']:,.0f} req/s, p99 {result['p99_ms']} ms")
            runs[target.name].append(result)
    return {name: report.summarize_wrk(r) for name, r in runs.items()}


def section_rate(targets: list[Target], rate: float, args: argparse.Namespace) -> dict[str, dict]:
    runs: dict[str, list[dict]] = {t.name: [] for t in targets}
    for round_ in range(args.repeats):
        for target in targets:
            quiet = wait_for_quiet()
            result = run_loadgen(
                "rate",
                *("--url", target.url + API_PATH, "--rate", str(rate), "--duration", str(args.duration)),
                timeout=args.duration + 60,
            ) | {"quiet": quiet}
            latency = result["latency_ms"]
            log(
                f"{rate:g} req/s {round_ + 1}/{args.repeats} {target.name}: {result['ok_per_s']:,.0f} ok/s, "
                f"p50 {latency['p50']} ms, p99 {latency['p99']} ms"
            )
            runs[target.name].append(result)
    direct = report.summarize_rate(runs["direct"], None) if "direct" in runs else None
    return {name: report.summarize_rate(r, direct) for name, r in runs.items()}


def failover_once(procs: Processes, name: str, backends: list[Backend], args: argparse.Namespace) -> dict:
    """Start `name` fresh, load it, SIGKILL backend 1 at --kill-at, then restart that backend."""
    target = start_target(procs, name, backends, args.skyserve_python)
    victim = backends[1]
    quiet = wait_for_quiet()
    command = [
        *(sys.executable, str(SUPPORT / "loadgen.py"), "closed", "--url", target.url + API_PATH),
        *("--connections", str(args.failover_connections), "--duration", str(args.failover_duration)),
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as loadgen:
        assert loadgen.stdout is not None
        first = loadgen.stdout.readline()
        if not first.startswith("started "):
            raise RuntimeError(f"failover load generator for {name} did not start: {first!r}")
        started = float(first.split()[1])  # time.monotonic(), the same clock in every process
        time.sleep(max(0.0, started + args.kill_at - time.monotonic()))
        procs.kill(victim.process)
        killed = time.monotonic()
        output, _ = loadgen.communicate(timeout=args.failover_duration + 60)
    for process in target.processes:
        procs.stop(process)
    backends[1] = start_backend(procs, victim.name, victim.port)
    summary = report.summarize_failover(json.loads(output.strip().splitlines()[-1]), killed - started) | {
        "quiet": quiet
    }
    log(f"failover {name}: {summary['failed']} failed, back after {summary['recovery_s']} s")
    return summary


def section_failover(procs: Processes, backends: list[Backend], args: argparse.Namespace) -> dict[str, dict]:
    names = [n for t in args.targets if t != "direct" for n in ((t, "nginx-tuned") if t == "nginx" else (t,))]
    return {name: failover_once(procs, name, backends, args) for name in names}


def run_sections(procs: Processes, args: argparse.Namespace, results: dict) -> None:
    backends = [start_backend(procs, f"backend{i}") for i in range(3)]
    if {"wrk", "rate"} - set(args.skip):
        log(f"starting targets {args.targets} (logs in {procs.root})")
        targets = [start_target(procs, name, backends, args.skyserve_python) for name in args.targets]
        if "wrk" not in args.skip:
            results["closed_loop"] = section_wrk(targets, args, wrk.write_script(procs.root))
            emit(report.throughput_table(results["closed_loop"], args.connections))
        if "rate" not in args.skip:
            results["open_loop"] = {}
            for rate in args.rates:
                results["open_loop"][str(rate)] = section_rate(targets, rate, args)
                emit(report.rate_table(results["open_loop"][str(rate)], rate))
        for process in [p for t in targets for p in t.processes]:
            procs.stop(process)
    if "failover" not in args.skip:
        results["failover"] = section_failover(procs, backends, args)
        emit(report.failover_table(results["failover"], args.failover_connections, args.failover_duration))


def emit(table: str) -> None:
    print(table + "\n", flush=True)


def main() -> None:
    args = parse_args()
    preflight(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below, as Ctrl-C does
    began = time.monotonic()
    results: dict = {"date": str(date.today()), "command": sys.argv, "args": vars(args) | {"out": str(args.out)}}
    results["machine"] = versions(args)
    results["load_average_before"] = os.getloadavg()
    log(f"load average before: {results['load_average_before']} (other work on the machine skews every figure)")
    with tempfile.TemporaryDirectory(prefix="gpuroam-bench-gateway-") as tmp:
        procs = Processes(Path(tmp))
        try:
            run_sections(procs, args, results)
        finally:
            procs.stop_all()
    emit(report.NOTE)
    results["elapsed_s"] = round(time.monotonic() - began, 1)
    results["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"done in {results['elapsed_s']:.0f} s; JSON in {args.out}")


if __name__ == "__main__":
    main()
