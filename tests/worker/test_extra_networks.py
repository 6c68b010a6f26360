"""A1111's extra-network tags: stripped from the prompt, LoRA weights read as A1111 reads them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuroam.worker.extra_networks import MAX_LORAS, NetworkUse, parse_prompt
from gpuroam.worker.schemas import RequestError

NAMES = st.text(st.characters(blacklist_characters="<>:="), min_size=1, max_size=20).filter(lambda n: n.strip() == n)
WEIGHTS = st.floats(-10, 10, allow_nan=False).map(lambda w: round(w, 3))
PLAIN = st.text(st.characters(blacklist_characters="<>"), max_size=30)


@given(PLAIN)
def test_a_prompt_without_tags_is_left_as_it_is(prompt: str) -> None:
    assert parse_prompt(prompt).text == prompt and parse_prompt(prompt).loras == ()


@given(PLAIN, PLAIN, NAMES, WEIGHTS, st.sampled_from(["lora", "lyco"]))
def test_a_lora_tag_is_removed_and_read(before: str, after: str, name: str, weight: float, kind: str) -> None:
    parsed = parse_prompt(f"{before}<{kind}:{name}:{weight}>{after}")
    assert parsed.text == before + after
    assert parsed.loras == (NetworkUse(name, weight, weight),)


@given(st.lists(st.tuples(NAMES, WEIGHTS, WEIGHTS), max_size=4, unique_by=lambda tag: tag[0]))
def test_tags_keep_prompt_order_and_separate_weights(tags: list[tuple[str, float, float]]) -> None:
    prompt = " and ".join(f"<lora:{name}:{te}:{unet}>" for name, te, unet in tags)
    assert parse_prompt(prompt).loras == tuple(NetworkUse(name, te, unet) for name, te, unet in tags)


@pytest.mark.parametrize(
    ("tag", "use"),
    [
        ("<lora:a>", NetworkUse("a", 1.0, 1.0)),
        ("<lora:a:0.5>", NetworkUse("a", 0.5, 0.5)),
        ("<lora:a:0.5:0.25>", NetworkUse("a", 0.5, 0.25)),
        ("<lora:a:te=0.3>", NetworkUse("a", 0.3, 0.3)),
        ("<lora:a:1:unet=0.2>", NetworkUse("a", 1.0, 0.2)),
        ("<lora:a:0.4:te=0.9>", NetworkUse("a", 0.9, 0.9)),  # the UNet follows te unless given
    ],
)
def test_a1111s_weight_forms(tag: str, use: NetworkUse) -> None:
    assert parse_prompt(f"x {tag}").loras == (use,)


def test_other_kinds_are_removed_and_named() -> None:
    parsed = parse_prompt("a cat <hypernet:anime:1> <lora:b:1>")
    assert parsed.text == "a cat  " and parsed.other_kinds == ("hypernet",) and len(parsed.loras) == 1


@pytest.mark.parametrize("weight", ["abc", "nan", "inf", "1e9", ""])
def test_a_weight_that_is_not_a_number_is_a_422_that_says_how_to_write_it(weight: str) -> None:
    with pytest.raises(RequestError) as raised:
        parse_prompt(f"<lora:a:{weight}>")
    assert raised.value.field_name == "prompt" and "<lora:name:0.8>" in str(raised.value)


def test_a_name_tagged_again_counts_once_with_its_weights_added() -> None:
    parsed = parse_prompt("<lora:a:0.5> x <lora:b> <lora:a:0.25:1> " * 3)
    assert parsed.loras == (NetworkUse("a", 2.25, 4.5), NetworkUse("b", 3.0, 3.0))


def test_thousands_of_tags_of_a_few_names_are_a_few_uses() -> None:
    prompt = "".join(f"<lora:l{i % MAX_LORAS}:0.01>" for i in range(800))
    assert len(parse_prompt(prompt).loras) == MAX_LORAS


@pytest.mark.parametrize("field_name", ["prompt", "hr_prompt"])
def test_more_distinct_loras_than_a_prompt_may_name_is_a_422_naming_the_limit(field_name: str) -> None:
    with pytest.raises(RequestError) as raised:
        parse_prompt("".join(f"<lora:l{i}:1>" for i in range(MAX_LORAS + 1)), field_name)
    assert raised.value.field_name == field_name and f"at most {MAX_LORAS}" in str(raised.value)


def test_weights_that_add_up_past_the_bound_are_a_422() -> None:
    with pytest.raises(RequestError) as raised:
        parse_prompt("<lora:a:100>" * 2)
    assert raised.value.field_name == "prompt" and "add up" in str(raised.value)
