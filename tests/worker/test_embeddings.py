"""Embeddings' names in prompts: matched as whole words in any case, never inside another word."""

from __future__ import annotations

import pytest
import torch

from gpuroam.worker.embeddings import Embedding, EmbeddingError, Spelling, install, markers, reserve
from gpuroam.worker.models import build_random_pipeline


def embedding(name: str, count: int = 2) -> Embedding:
    return Embedding(name=name, vectors={"clip_l": torch.randn(count, 32)})


def test_a_name_is_spelled_as_all_its_tokens_where_it_is_a_whole_word_in_any_case() -> None:
    shiny = embedding("ShinyTok")
    spelled = Spelling([shiny])
    tokens = " ".join(markers(shiny))
    assert tokens == "<embedding:shinytok:0> <embedding:shinytok:1>"
    assert spelled("a ShinyTok, shinytok and SHINYTOK.") == f"a {tokens}, {tokens} and {tokens}."
    assert spelled("shinytoks peasyShinyTok shinytok2") == "shinytoks peasyShinyTok shinytok2"
    assert spelled("(shinytok:1.2) shinytok_x") == f"({tokens}:1.2) {tokens}_x", "punctuation bounds a word"


def test_the_longest_name_that_matches_wins() -> None:
    spelled = Spelling([embedding("bad", 1), embedding("bad hands", 1)])
    assert spelled("bad hands, bad") == "<embedding:bad hands:0>, <embedding:bad:0>"


def test_without_embeddings_a_prompt_is_left_as_it_is() -> None:
    assert Spelling([])("anything <at> all") == "anything <at> all"


@pytest.mark.parametrize("name", ["hands", "Blurry", "worst", "nsfw"])
def test_a_name_that_is_a_whole_word_of_the_vocabulary_is_refused(name: str) -> None:
    pipeline = build_random_pipeline("tiny")
    reserve(pipeline, rows=8)
    with pytest.raises(EmbeddingError, match="already a word"):
        install(pipeline, embedding(name))


def test_every_vector_of_a_capitalised_name_reaches_the_text_encoder() -> None:
    pipeline = build_random_pipeline("tiny")
    reserve(pipeline, rows=8)
    shiny = embedding("ShinyTok")
    install(pipeline, shiny)
    ids = pipeline.tokenizer(Spelling([shiny])("a ShinyTok")).input_ids
    rows = pipeline.text_encoder.get_input_embeddings().weight[ids[2:4]]
    assert torch.equal(rows, shiny.vectors["clip_l"].to(rows.dtype))
