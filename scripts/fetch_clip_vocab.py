"""Fetch the CLIP BPE merges that Stable Diffusion's tokenizer uses and store them as package data.

The merges come from the open-clip-torch wheel (MIT licence, originally OpenAI CLIP's
`bpe_simple_vocab_16e6.txt.gz`). Stable Diffusion uses the first 48,894 merges after the
header line; the vocabulary (49,408 entries) is derived from them at load time
(see gpuroam.worker.tokenizer). Run once by a developer; the result is committed:

    python scripts/fetch_clip_vocab.py
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "open-clip-torch==3.3.0"
MERGES_IN_WHEEL = "open_clip/bpe_simple_vocab_16e6.txt.gz"
SD_MERGE_COUNT = 49152 - 256 - 2
ASSETS = Path(__file__).resolve().parents[1] / "src" / "gpuroam" / "worker" / "assets"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL],
            check=True,
        )
        wheel = next(Path(tmp).glob("open_clip_torch-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            lines = gzip.decompress(zf.read(MERGES_IN_WHEEL)).decode("utf-8").split("\n")
            licence = next(n for n in zf.namelist() if n.endswith("LICENSE"))
            licence_text = zf.read(licence).decode("utf-8")
    merges = lines[1 : 1 + SD_MERGE_COUNT]
    assert len(merges) == SD_MERGE_COUNT, len(merges)
    ASSETS.mkdir(parents=True, exist_ok=True)
    body = "#version: 0.2\n" + "\n".join(merges) + "\n"
    (ASSETS / "clip-merges.txt.gz").write_bytes(gzip.compress(body.encode("utf-8"), mtime=0))
    (ASSETS / "CLIP-LICENSE.txt").write_text(
        f"clip-merges.txt.gz: the CLIP BPE merges, taken from {WHEEL} ({MERGES_IN_WHEEL}),\n"
        "originally from OpenAI CLIP (MIT licence). Its licence follows.\n\n" + licence_text
    )
    print(f"wrote {len(merges)} merges to {ASSETS}")


if __name__ == "__main__":
    main()
