"""Textual-inversion embeddings in A1111's formats, taught to the tokenizer and text encoder by file name.

An embedding is a few vectors in the text encoder's input space. Its file's name (without the suffix) is
its word, matched in a prompt as A1111 matches it: as whole words, whatever the case (CLIP reads text in
lower case). Each vector is taught to a token of its own, a marker no prompt word tokenizes to
(`<embedding:name:0>`, ...), and `Spelling` rewrites each use of the name as its markers before the prompt
is encoded: the name never matches inside another word, and every vector is used whatever the file's case.
A name that is already a whole word of the vocabulary is refused: a prompt using that word would change.

Formats read (A1111's): a .pt with `string_to_param` (A1111's own training), a one-tensor .pt, .bin or
.safetensors (`emb_params`, or diffusers' `{token: vector}`), and SDXL's `clip_l` + `clip_g` pair. A .pt
is read with weights_only, so no code in it runs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from safetensors.torch import load_file
from transformers import AddedToken

log = logging.getLogger("gpuroam.worker.embeddings")

SUFFIXES = (".pt", ".bin", ".safetensors")
RESERVED_ROWS = 1024  # token rows kept for embeddings: 1.5 MB of a SD 1.x text encoder in half precision
LEGACY_EOS_ID = 2  # transformers' CLIP takes the largest token id as the end when a config says 2
ENCODERS = (("clip_l", "tokenizer", "text_encoder"), ("clip_g", "tokenizer_2", "text_encoder_2"))


class EmbeddingError(ValueError):
    """A file that is not an embedding this worker can read; the message says which and why."""


@dataclass(frozen=True)
class Embedding:
    """One embedding: its vectors per text encoder (`clip_l`, and `clip_g` for SDXL), and A1111's details."""

    name: str
    vectors: Mapping[str, torch.Tensor]
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None

    @property
    def shape(self) -> int:
        """A1111's `shape`: the width of a vector (both encoders' together for SDXL)."""
        return sum(int(vector.shape[-1]) for vector in self.vectors.values())

    @property
    def count(self) -> int:
        """A1111's `vectors`: how many tokens the name stands for."""
        return int(next(iter(self.vectors.values())).shape[0])

    def as_a1111(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "sd_checkpoint": self.sd_checkpoint,
            "sd_checkpoint_name": self.sd_checkpoint_name,
            "shape": self.shape,
            "vectors": self.count,
        }


def read_embedding(path: Path, name: str) -> Embedding:
    """The embedding in `path`, named `name`; EmbeddingError for anything else."""
    data = _read(path)
    step, checkpoint, checkpoint_name = data.get("step"), data.get("sd_checkpoint"), data.get("sd_checkpoint_name")
    details: dict[str, Any] = {
        "step": step if isinstance(step, int) else None,
        "sd_checkpoint": checkpoint if isinstance(checkpoint, str) else None,
        "sd_checkpoint_name": checkpoint_name if isinstance(checkpoint_name, str) else None,
    }
    params = data.get("string_to_param")
    if isinstance(params, dict) and params:
        vectors = {"clip_l": next(iter(params.values()))}
    elif "clip_l" in data and "clip_g" in data:
        vectors = {"clip_l": data["clip_l"], "clip_g": data["clip_g"]}
    else:
        tensors = [value for value in data.values() if isinstance(value, torch.Tensor)]
        if len(tensors) != 1:
            raise EmbeddingError(
                f"{path.name} is not an embedding: expected string_to_param, clip_l and clip_g, or a single tensor; "
                f"found {len(tensors)} tensors"
            )
        vectors = {"clip_l": tensors[0]}
    if not all(isinstance(vector, torch.Tensor) and vector.dim() in (1, 2) for vector in vectors.values()):
        raise EmbeddingError(f"{path.name}: an embedding's vectors are a tensor of 1 or 2 dimensions")
    shaped = {
        part: (vector[None] if vector.dim() == 1 else vector).detach().float() for part, vector in vectors.items()
    }
    return Embedding(name=name, vectors=shaped, **details)


def _read(path: Path) -> dict[str, Any]:
    try:
        if path.suffix.lower() == ".safetensors":
            return dict(load_file(str(path)))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a damaged or foreign file fails in many ways
        raise EmbeddingError(f"{path.name} is not a readable embedding ({type(error).__name__}: {error})") from None
    if not isinstance(loaded, dict):
        raise EmbeddingError(f"{path.name} holds a {type(loaded).__name__}, not an embedding")
    return loaded


def expected_widths(pipeline: DiffusionPipeline) -> dict[str, int]:
    """The width of each text encoder's input vectors, by the part of an embedding that feeds it."""
    widths = {}
    for part, _, encoder_name in ENCODERS:
        encoder = getattr(pipeline, encoder_name, None)
        if encoder is not None:
            widths[part] = int(encoder.get_input_embeddings().weight.shape[1])
    return widths


def fits(embedding: Embedding, widths: Mapping[str, int]) -> bool:
    """Whether the embedding was made for text encoders of these widths (A1111 skips the others)."""
    return {part: int(vector.shape[-1]) for part, vector in embedding.vectors.items()} == dict(widths)


def reserve(pipeline: DiffusionPipeline, rows: int = RESERVED_ROWS) -> None:
    """Grow each text encoder's token table once, before anything is compiled, by `rows` for embeddings'
    tokens: later embeddings (a refresh) are written into these rows in place, so the table stays the
    tensor the compiled graphs read."""
    for _, tokenizer_name, encoder_name in ENCODERS:
        tokenizer, encoder = getattr(pipeline, tokenizer_name, None), getattr(pipeline, encoder_name, None)
        if tokenizer is None or encoder is None:
            continue
        if encoder.get_input_embeddings().weight.shape[0] < tokenizer.vocab_size + rows:  # once per model
            encoder.resize_token_embeddings(tokenizer.vocab_size + rows, mean_resizing=False)
        for module in encoder.modules():  # the pooled output finds the prompt's end by EOS, not the largest id
            if getattr(module, "eos_token_id", None) == LEGACY_EOS_ID:
                module.eos_token_id = tokenizer.eos_token_id


def markers(embedding: Embedding) -> list[str]:
    """The tokens its vectors are taught to: lower case, so two files whose names differ only in case share them."""
    key = embedding.name.lower()
    return [f"<embedding:{key}:{index}>" for index in range(embedding.count)]


def install(pipeline: DiffusionPipeline, embedding: Embedding) -> None:
    """Give the embedding's markers its vectors in each text encoder (adding the tokens the first time), in
    the rows `reserve` made; EmbeddingError for a name that is a word of the vocabulary, or no room left."""
    tokens = markers(embedding)
    for part, tokenizer_name, encoder_name in ENCODERS:
        if part not in embedding.vectors:
            continue
        tokenizer, encoder = getattr(pipeline, tokenizer_name), getattr(pipeline, encoder_name)
        vocabulary, word = tokenizer.get_vocab(), embedding.name.lower()
        if word in vocabulary or f"{word}</w>" in vocabulary:
            raise EmbeddingError(f"{embedding.name} is already a word of the tokenizer; rename the file")
        weight = encoder.get_input_embeddings().weight
        new = [token for token in tokens if token not in tokenizer.added_tokens_encoder]
        if len(tokenizer) + len(new) > weight.shape[0]:
            raise EmbeddingError(
                f"{embedding.name}: no room for {len(new)} more embedding vectors (this worker keeps "
                f"{RESERVED_ROWS}); remove unused embeddings and restart the worker"
            )
        tokenizer.add_tokens([AddedToken(token, normalized=False) for token in new])
        ids = tokenizer.convert_tokens_to_ids(tokens)
        with torch.no_grad():
            weight[ids] = embedding.vectors[part].to(weight.device, weight.dtype)


def forget(pipeline: DiffusionPipeline, embedding: Embedding) -> None:
    """Zero the rows of an embedding whose file is gone: its markers (kept by the tokenizer) mean nothing."""
    for part, tokenizer_name, encoder_name in ENCODERS:
        tokenizer, encoder = getattr(pipeline, tokenizer_name, None), getattr(pipeline, encoder_name, None)
        if part not in embedding.vectors or tokenizer is None or encoder is None:
            continue
        ids = tokenizer.convert_tokens_to_ids(markers(embedding))
        with torch.no_grad():
            encoder.get_input_embeddings().weight[ids] = 0


class Spelling:
    """Rewrites each use of an installed embedding's name in a prompt as its markers: whole words only (not
    next to a letter or digit), in any case."""

    def __init__(self, installed: Iterable[Embedding]) -> None:
        self._markers = {embedding.name.lower(): " ".join(markers(embedding)) for embedding in installed}
        names = sorted(self._markers, key=len, reverse=True)  # the longest name that matches wins
        alternatives = "|".join(re.escape(name) for name in names)
        self._pattern = re.compile(rf"(?<![^\W_])(?:{alternatives})(?![^\W_])", re.IGNORECASE) if names else None

    def __call__(self, prompt: str) -> str:
        if self._pattern is None:
            return prompt
        return self._pattern.sub(lambda match: self._markers.get(match[0].lower(), match[0]), prompt)
