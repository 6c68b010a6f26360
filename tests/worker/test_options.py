"""A1111's whole settings set: every key at A1111's defaults, kept when set, checked by its default's kind."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuroam.worker.options import MAX_TEXT, OptionError, WorkerOptions, a1111_defaults, check_value

# What clients read at start-up (chat front-ends, webuiapi, editors' plug-ins).
READ_BY_CLIENTS = ("send_seed", "sd_vae", "CLIP_stop_at_last_layers", "samples_format", "sd_model_checkpoint")


def test_every_a1111_key_is_there_at_its_default() -> None:
    options = WorkerOptions().as_a1111("tiny.safetensors [0123456789]", "0123456789abcdef")
    assert len(options) == len(a1111_defaults()) == 329
    assert all(key in options for key in READ_BY_CLIENTS)
    assert options["samples_format"] == "png" and options["sd_vae"] == "Automatic" and options["send_seed"] is True
    assert options["sd_model_checkpoint"] == "tiny.safetensors [0123456789]"


def test_a_setting_is_kept_and_read_back() -> None:
    options = WorkerOptions()
    options.update({"samples_format": "webp", "jpeg_quality": 95})
    assert options.get("samples_format") == "webp" and options.as_a1111(None, None)["jpeg_quality"] == 95


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("samples_format", 3, "takes a str"),
        ("jpeg_quality", "high", "takes a float or int"),
        ("send_seed", 1, "takes a bool"),
        ("jpeg_quality", True, "takes a float or int"),
        ("outdir_samples", "x" * (MAX_TEXT + 1), "characters long"),
        ("quicksettings_list", [{"a": 1}], "list of at most"),
    ],
)
def test_a_value_of_the_wrong_kind_is_refused_with_what_it_takes(key: str, value: object, says: str) -> None:
    with pytest.raises(OptionError, match=says):
        check_value(key, value)


@given(st.sampled_from(sorted(a1111_defaults())))
def test_every_default_passes_its_own_check(key: str) -> None:
    assert check_value(key, a1111_defaults()[key]) == a1111_defaults()[key]
