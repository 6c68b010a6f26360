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
    # What one request may ask of the GPU (spec `limits:`): width x height x steps x images, in megapixel-steps
    # (64 images of 512x512 at 50 steps: 839; 8 of 1024x1024 at 50: 419), and its prompts' length.
    max_megapixel_steps: float = 1000.0
    max_prompt_chars: int = 10_000
    api_auth: tuple[tuple[str, str], ...] = ()
    compile: str = "auto"  # the fast path (worker/accelerate.py): auto, none, or a torch.compile mode
    buckets: tuple[int, ...] = ()  # batch sizes compiled in the background; () keeps the default
    compile_cache: str | None = None  # where compiled kernels and the compiled artefact are kept
    compile_sizes: tuple[tuple[int, int], ...] | None = None  # sizes compiled after start; None: the model's common
    # Where LoRAs, embeddings, VAEs and more checkpoints are found (A1111's flags; worker/library.py).
    lora_dir: str | None = None
    embeddings_dir: str | None = None
    vae_dir: str | None = None
    ckpt_dir: str | None = None

    @staticmethod
    def parse_sizes(value: str | None) -> tuple[tuple[int, int], ...] | None:
        """--compile-sizes: "512x512,512x768" (width x height, multiples of 8), or "" for none."""
        if value is None:
            return None
        sizes = []
        for item in filter(None, (part.strip() for part in value.split(","))):
            width, sep, height = item.lower().partition("x")
            if not sep or not width.isdigit() or not height.isdigit():
                raise ValueError(
                    f"--compile-sizes expects WIDTHxHEIGHT[,WIDTHxHEIGHT...], e.g. 512x512,512x768; got {item!r}"
                )
            if int(width) % 8 or int(height) % 8 or not 64 <= int(width) <= 2048 or not 64 <= int(height) <= 2048:
                raise ValueError(f"--compile-sizes: {item} must be multiples of 8 from 64 to 2048")
            sizes.append((int(width), int(height)))
        return tuple(sizes)

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
