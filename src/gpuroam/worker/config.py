"""What a worker is started with (the `gpuroam worker` flags)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerConfig:
    model: str = "tiny"
    device: str = "auto"
    region: str | None = None
    gpu: str | None = None
    replica: str | None = None
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    max_queued_images: int = 256
    max_body_bytes: int = 64 * 1024 * 1024
    api_auth: tuple[tuple[str, str], ...] = ()
    compile: str = "auto"  # the fast path (worker/accelerate.py): auto, none, or a torch.compile mode
    buckets: tuple[int, ...] = ()  # batch sizes compiled and warmed at start; () keeps the default
    compile_cache: str | None = None  # where compiled kernels are kept across restarts

    @staticmethod
    def parse_api_auth(value: str | None) -> tuple[tuple[str, str], ...]:
        """A1111's --api-auth format: "user:pass" or "user1:pass1,user2:pass2"."""
        if not value:
            return ()
        pairs = []
        for item in value.split(","):
            user, sep, password = item.strip().partition(":")
            if not sep or not user or not password:
                raise ValueError(f"--api-auth expects user:password[,user2:password2]; got {item.strip()!r}")
            pairs.append((user, password))
        return tuple(pairs)
