import base64
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from gpuroam.worker.images import ImageDecodeError, decode_image, encode_png, resize_for_generation


def test_png_carries_parameters_and_is_deterministic() -> None:
    image = Image.new("RGB", (16, 8), (10, 20, 30))
    encoded = encode_png(image, "a cat\nSteps: 2")
    assert encoded == encode_png(image, "a cat\nSteps: 2")
    decoded = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert decoded.info["parameters"] == "a cat\nSteps: 2"
    assert decoded.size == (16, 8)


def test_decode_accepts_raw_base64_and_data_urls() -> None:
    encoded = encode_png(Image.new("RGB", (8, 8)), "x")
    assert decode_image(encoded).size == (8, 8)
    assert decode_image("data:image/png;base64," + encoded).size == (8, 8)


@pytest.mark.parametrize("data", ["not base64!!", base64.b64encode(b"not an image").decode(), ""])
def test_decode_rejects_what_is_not_an_image(data: str) -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(data)


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_every_resize_mode_gives_the_requested_size(mode: int) -> None:
    assert resize_for_generation(Image.new("RGB", (100, 50)), 64, 128, mode).size == (64, 128)


@pytest.mark.parametrize("text", ["a lighthouse\nSteps: 20, Seed: 1", "ünïcode ☃ prompt"])
@given(pixels=arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40), st.just(3))))
@settings(max_examples=40, deadline=None)
def test_png_keeps_every_pixel_and_the_parameters(pixels: np.ndarray, text: str) -> None:
    decoded = Image.open(io.BytesIO(base64.b64decode(encode_png(Image.fromarray(pixels), text))))
    decoded.load()
    assert np.array_equal(np.asarray(decoded.convert("RGB")), pixels)
    assert decoded.info["parameters"] == text
