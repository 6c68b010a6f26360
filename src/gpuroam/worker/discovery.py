"""Files found in an asset directory (--lora-dir, --embeddings-dir, --vae-dir, --ckpt-dir), and nothing else.

A request names an asset; the name is looked up in the index a scan built, never joined into a path,
so `../x` or `/etc/passwd` is merely a name that is not there. The scan itself keeps to its directory:
symbolic links to directories are not followed, a file that resolves (through links) outside the
directory is left out, and the check is made again just before a file is read (a file swapped for a
link after the scan is refused then).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("gpuroam.worker.discovery")

MAX_FILES = 10_000  # per directory: a scan of a huge tree must not stall the worker


class OutsideDirectory(ValueError):
    """A file that resolves outside the directory it was found in; never read."""


@dataclass(frozen=True)
class Found:
    """A file of an asset directory: its path as found, and its path relative to the directory."""

    path: Path
    relative: str

    @property
    def stem(self) -> str:
        """The file name without directories or the suffix: A1111's name for LoRAs and embeddings."""
        return Path(self.relative).name.rsplit(".", 1)[0]


def scan(root: Path | None, suffixes: tuple[str, ...]) -> list[Found]:
    """The files under `root` (recursively, in a stable order) whose names end in one of `suffixes`."""
    if root is None:
        return []
    if not root.is_dir():
        log.warning("asset directory missing", extra={"directory": str(root)})
        return []
    real_root = root.resolve()
    found: list[Found] = []
    for path in _walk(root):
        if not path.name.lower().endswith(suffixes):
            continue
        if not _inside(path, real_root):
            log.warning("asset outside its directory skipped", extra={"path": str(path), "directory": str(root)})
            continue
        found.append(Found(path, path.relative_to(root).as_posix()))
        if len(found) >= MAX_FILES:
            log.warning("asset directory truncated", extra={"directory": str(root), "files": MAX_FILES})
            break
    return found


def _walk(root: Path) -> Iterator[Path]:
    for folder, folders, files in os.walk(root, followlinks=False):
        folders.sort()
        for name in sorted(files):
            yield Path(folder) / name


def _inside(path: Path, real_root: Path) -> bool:
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):  # a dangling link or a loop
        return False
    return real.is_file() and real.is_relative_to(real_root)


def checked(found: Found, root: Path) -> Path:
    """`found.path`, resolved, if it is still a file inside `root`; else OutsideDirectory. Call right
    before reading, and read the returned path."""
    real_root = root.resolve()
    if not _inside(found.path, real_root):
        raise OutsideDirectory(f"{found.relative} no longer resolves to a file inside {root}; refresh the list")
    return found.path.resolve()
