"""A userspace WAN link: forwards IP packets between two TUN devices with a one-way delay.

Why it exists: the kernels we run on (Firecracker, CI) have no sch_netem, so `tc ... netem delay` is
not available. This process owns a TUN device in the root network namespace and one inside a region's
namespace, and copies each packet across after `delay` (the same delay each way), in arrival order. A
partitioned link drops every packet silently, in flight ones included, so peers see timeouts, as on a
real WAN outage, rather than a quick "no route to host".

It runs in its own session (started by `gpuroam.providers.local.netns`), so it outlives a killed controller.
Both devices are persistent (`ip tuntap add`), so their addresses survive a restart of this process.
Control: a line protocol on the abstract Unix socket `control_address(host_if)`:
`up`, `down`, `delay MS`, `stats`; each answered with one JSON line.

Run: `python -m gpuroam.providers.local.wanlink --host-if IF --netns NS --ns-if IF --delay-ms MS [--down]`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
MAX_PACKET = 65536
BURST = 256  # packets read from one device before the other gets a turn
QUEUE_LIMIT = 20000  # packets in flight per direction; beyond it the link tail-drops, as a router would


class _Stopped(Exception):
    """Raised by the SIGTERM/SIGINT handler to leave the forwarding loop."""


def control_address(host_if: str) -> str:
    """The abstract socket (no file, no path-length limit, gone with the process) of the link for `host_if`."""
    return f"\0gpuroam-wanlink-{host_if}"


def open_tun(name: str) -> int:
    """Attach to the existing TUN device `name` in the caller's current network namespace."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def _setns(fd: int) -> None:
    """setns(2) for a network namespace; Python 3.11 has no os.setns."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


def open_pair(host_if: str, netns: str, ns_if: str) -> tuple[int, int]:
    """Open `host_if` here (the root namespace) and `ns_if` inside `netns`, then come back.

    A TUN fd stays bound to the namespace it was opened in, so one process can serve both sides."""
    host_fd = open_tun(host_if)
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            ns_fd = open_tun(ns_if)
        finally:
            _setns(home)
    finally:
        os.close(home)
        os.close(target)
    return host_fd, ns_fd


@dataclass
class Direction:
    """One way of the link: packets read from `source`, written to `sink` at their due time, in order."""

    name: str
    source: int
    sink: int
    queue: deque[tuple[float, bytes]] = field(default_factory=deque)
    forwarded: int = 0
    bytes: int = 0
    dropped: int = 0

    def stats(self) -> dict[str, int]:
        return {"forwarded": self.forwarded, "bytes": self.bytes, "dropped": self.dropped, "queued": len(self.queue)}


class Link:
    """The forwarding loop; single-threaded (epoll), so no locks and strict FIFO order per direction."""

    def __init__(self, host_fd: int, ns_fd: int, delay_ms: float, down: bool, control: socket.socket) -> None:
        self.delay_s = max(0.0, delay_ms) / 1000.0
        self.down = down
        self.control = control
        self.ways = [Direction("to_region", host_fd, ns_fd), Direction("from_region", ns_fd, host_fd)]
        self.selector = selectors.DefaultSelector()
        for way in self.ways:
            self.selector.register(way.source, selectors.EVENT_READ, way)
        self.selector.register(control, selectors.EVENT_READ, None)

    def run(self) -> None:
        while True:
            self.selector_round()

    def selector_round(self) -> None:
        due = [way.queue[0][0] for way in self.ways if way.queue]
        timeout = max(0.0, min(due) - time.monotonic()) if due else None
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                self._serve_control()
            else:
                self._read(key.data)
        now = time.monotonic()
        for way in self.ways:
            self._flush(way, now)

    def _read(self, way: Direction) -> None:
        for _ in range(BURST):
            try:
                packet = os.read(way.source, MAX_PACKET)
            except BlockingIOError:
                return
            except OSError:  # the device went away or down: nothing to read now
                return
            if self.down or len(way.queue) >= QUEUE_LIMIT:
                way.dropped += 1
                continue
            way.queue.append((time.monotonic() + self.delay_s, packet))

    def _flush(self, way: Direction, now: float) -> None:
        queue = way.queue
        while queue and queue[0][0] <= now:
            packet = queue.popleft()[1]
            try:
                os.write(way.sink, packet)
            except OSError:  # the far device is down or full: the packet is lost, as on a wire
                way.dropped += 1
                continue
            way.forwarded += 1
            way.bytes += len(packet)

    def _serve_control(self) -> None:
        with contextlib.suppress(OSError):
            client, _ = self.control.accept()
            with client:
                client.settimeout(1.0)
                uid = struct.unpack("3i", client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
                if uid not in (0, os.geteuid()):  # an abstract socket has no file permissions to do this
                    reply: dict[str, object] = {"error": f"uid {uid} may not control this link; run as root"}
                else:
                    reply = self.command(client.recv(256).decode(errors="replace").strip())
                client.sendall((json.dumps(reply) + "\n").encode())

    def command(self, line: str) -> dict[str, object]:
        """Apply one control command; every reply carries the link's state after it."""
        words = line.split()
        if words == ["down"]:
            self.down = True
            for way in self.ways:  # in-flight packets are lost with the link
                way.dropped += len(way.queue)
                way.queue.clear()
        elif words == ["up"]:
            self.down = False
        elif len(words) == 2 and words[0] == "delay":
            try:
                self.delay_s = max(0.0, float(words[1])) / 1000.0
            except ValueError:
                return {"error": f"delay wants milliseconds, got {words[1]!r}"}
        elif words != ["stats"]:
            return {"error": f"unknown command {line!r}; use up, down, delay MS or stats"}
        return {
            "up": not self.down,
            "delay_ms": self.delay_s * 1000.0,
            "pid": os.getpid(),
            **{way.name: way.stats() for way in self.ways},
        }


def send_command(host_if: str, command: str, timeout_s: float = 2.0) -> dict[str, object]:
    """Send one control command to the link of `host_if`; OSError when no link process listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(control_address(host_if))
        sock.sendall(command.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    reply = json.loads(data or b"{}")
    if not isinstance(reply, dict):
        raise OSError(f"unexpected reply from the link of {host_if}: {reply!r}")
    if "error" in reply:
        raise ValueError(str(reply["error"]))
    return reply


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpuroam.providers.local.wanlink", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host-if", required=True, help="TUN device in the root network namespace")
    parser.add_argument("--netns", required=True, help="the region's network namespace (ip netns name)")
    parser.add_argument("--ns-if", required=True, help="TUN device inside that namespace")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay, each direction")
    parser.add_argument("--down", action="store_true", help="start partitioned (drop every packet)")
    args = parser.parse_args(argv)
    try:
        host_fd, ns_fd = open_pair(args.host_if, args.netns, args.ns_if)
    except OSError as error:
        print(
            f"wanlink: cannot open TUN devices {args.host_if} (root namespace) and {args.ns_if} "
            f"(namespace {args.netns}): {error}; run `gpuroam net up` to (re)create them",
            file=sys.stderr,
        )
        return 2
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        control.bind(control_address(args.host_if))
    except OSError as error:
        print(f"wanlink: another link already serves {args.host_if} ({error}); nothing to do", file=sys.stderr)
        return 3
    with contextlib.suppress(OSError):  # a wire is not slowed by a busy CPU: run ahead of the workload
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    control.listen(16)
    control.setblocking(False)
    link = Link(host_fd, ns_fd, args.delay_ms, args.down, control)

    def stop(*_: object) -> None:
        raise _Stopped  # a blocking select is retried after a handler that returns (PEP 475)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    state = "down" if args.down else "up"
    print(f"wanlink: {args.host_if} <-> {args.netns}/{args.ns_if}, {args.delay_ms} ms one way, {state}", flush=True)
    with contextlib.suppress(_Stopped):
        link.run()
    print(f"wanlink: stopped; {json.dumps(link.command('stats'))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
