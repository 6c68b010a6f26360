"""The worker's Web UI tabs in chromium, against one real worker (tiny model): txt2img with hires fix and
tiling, img2img from a result, the inpainting mask painted on the page, the LoRA and embedding pickers,
Extras and PNG Info.

The mask is checked in the img2img request the page sends (intercepted), so those tests do not need the
worker's inpainting; the one test that generates with a mask through the worker does, and is marked so.
GPUROAM_SCREENSHOTS=1 also writes docs/webui-*.png.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, PngImagePlugin
from playwright.sync_api import Page, Route, expect

from fuzzing import serve_app
from gpuroam.worker import LoadedModel, WorkerConfig, create_app

DOCS = Path(__file__).resolve().parents[2] / "docs"
SCREENSHOTS = os.environ.get("GPUROAM_SCREENSHOTS") == "1"
SMALL = (("#width", "64"), ("#height", "64"), ("#steps", "2"))


def png(width: int, height: int, **text: str) -> bytes:
    """A gradient PNG with these text chunks."""
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    down = Image.linear_gradient("L")
    across = down.transpose(Image.Transpose.ROTATE_90)
    channels = (down.resize((width, height)), across.resize((width, height)), Image.new("L", (width, height), 140))
    image = Image.merge("RGB", channels)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def as_file(data: bytes, name: str = "image.png") -> dict[str, Any]:
    return {"name": name, "mimeType": "image/png", "buffer": data}


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def natural_size(page: Page, selector: str) -> tuple[int, int]:
    size = page.locator(selector).evaluate("(img) => [img.naturalWidth, img.naturalHeight]")
    return size[0], size[1]


def screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        page.mouse.move(0, 0)
        page.evaluate("() => { document.activeElement.blur(); window.scrollTo(0, 0); }")
        bottom = page.evaluate(
            "() => Math.max(...[...document.querySelectorAll('.panel')].map((p) => p.getBoundingClientRect().bottom))"
        )
        viewport = page.viewport_size or {"width": 1280, "height": 960}
        clip = {"x": 0, "y": 0, "width": viewport["width"], "height": min(viewport["height"], bottom + 16)}
        page.screenshot(path=str(DOCS / name), clip=clip)


@pytest.fixture(scope="module")
def worker(tiny_model: LoadedModel) -> Iterator[str]:
    config = WorkerConfig(region="us-central1", gpu="nvidia-l4")
    with serve_app(create_app(config, model=tiny_model), "/internal/ping") as url:
        yield url


@pytest.fixture
def page(browser: Any, worker: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 960})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.set_default_timeout(15_000)
    opened.goto(worker)
    yield opened
    context.close()
    assert errors == []


def sent_bodies(page: Page, path: str) -> list[dict[str, Any]]:
    """The JSON bodies the page posts to `path`, as they are sent (the request goes on to the worker)."""
    bodies: list[dict[str, Any]] = []
    page.on("request", lambda r: bodies.append(r.post_data_json) if r.url.endswith(path) else None)
    return bodies


def test_txt2img_with_hires_fix_and_tiling_then_img2img_from_the_result(page: Page) -> None:
    txt2img, img2img = sent_bodies(page, "/sdapi/v1/txt2img"), sent_bodies(page, "/sdapi/v1/img2img")
    for field, value in (*SMALL, ("#seed", "3"), ("#prompt", "a tiled floor")):
        page.fill(field, value)
    page.check("#tiling")
    expect(page.locator("#hr_scale")).to_be_hidden()
    page.check("#enable_hr")
    expect(page.locator("#hr_upscaler option")).to_contain_text(["Latent", "Latent (bicubic)", "Lanczos"])
    page.select_option("#hr_upscaler", "Lanczos")
    page.fill("#hr_second_pass_steps", "1")
    page.fill("#hr_denoising_strength", "0.5")
    page.click("#generate")
    expect(page.locator("#gallery img")).to_have_count(1, timeout=60_000)
    assert natural_size(page, "#gallery img") == (128, 128)  # 64 px, upscaled 2x by the second pass
    assert txt2img[0] | {"force_task_id": None} == {
        "prompt": "a tiled floor", "negative_prompt": "", "width": 64, "height": 64, "steps": 2, "cfg_scale": 7,
        "seed": 3, "sampler_name": "Euler a", "batch_size": 1, "n_iter": 1, "tiling": True, "force_task_id": None,
        "enable_hr": True, "hr_upscaler": "Lanczos", "hr_scale": 2, "hr_second_pass_steps": 1,
        "denoising_strength": 0.5, "hr_resize_x": 0, "hr_resize_y": 0,
    }  # fmt: skip
    infotext = page.locator("#infotext").text_content() or ""
    assert "Tiling: True" in infotext and "Hires upscale: 2" in infotext and "Hires upscaler: Lanczos" in infotext
    screenshot(page, "worker-webui.png")

    page.click("#send-img2img")
    expect(page.locator("#tab-img2img")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#enable_hr")).to_be_hidden()
    expect(page.locator("#init-preview")).to_be_visible()
    assert natural_size(page, "#init-preview") == (128, 128)
    expect(page.locator("#mask-status")).to_contain_text("redraws the whole image")
    page.uncheck("#tiling")
    page.fill("#denoising_strength", "0.6")
    page.click("#generate")
    expect(page.locator("#progress-text")).to_contain_text("Done", timeout=60_000)
    body = img2img[0]
    assert decoded(body["init_images"][0]).size == (128, 128)
    assert body["denoising_strength"] == 0.6 and body["resize_mode"] == 0 and "enable_hr" not in body
    assert "mask" not in body  # nothing painted: plain img2img
    assert natural_size(page, "#gallery img") == (64, 64)
    assert "Denoising strength: 0.6" in (page.locator("#infotext").text_content() or "")
    assert page.locator("#error").is_hidden()


def paint_stroke(page: Page, brush_px: int, y: float = 0.5, xs: tuple[float, float] = (0.1, 0.4)) -> dict[str, float]:
    """A horizontal stroke across the mask canvas, at fractions of its shown size; returns its box."""
    page.locator("#brush-size").evaluate(
        "(range, px) => { range.value = px; range.dispatchEvent(new Event('input')); }", str(brush_px)
    )
    box = page.locator("#mask-canvas").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + xs[0] * box["width"], box["y"] + y * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + xs[1] * box["width"], box["y"] + y * box["height"], steps=6)
    page.mouse.up()
    return box


FAKE_IMG2IMG = {"parameters": {}, "info": json.dumps({"seed": 1, "all_seeds": [1], "infotexts": ["inpainted"]})}


def test_the_painted_mask_is_sent_at_the_image_size_with_the_inpainting_fields(page: Page) -> None:
    """Intercepted: the worker is not asked, so this holds with or without its inpainting."""
    bodies: list[dict[str, Any]] = []

    def answer(route: Route) -> None:
        body = route.request.post_data_json
        bodies.append(body)
        route.fulfill(json={**FAKE_IMG2IMG, "images": body["init_images"]})

    page.route("**/sdapi/v1/img2img", answer)
    page.click("#tab-img2img")
    page.set_input_files("#init-file", as_file(png(96, 64), "photo.png"))
    expect(page.locator("#init-preview")).to_be_visible()
    expect(page.locator("#mask_blur")).to_be_disabled()
    box = paint_stroke(page, brush_px=40)
    expect(page.locator("#mask-status")).to_contain_text("the painted part is redrawn (mask 96×64)")
    expect(page.locator("#mask_blur")).to_be_enabled()
    page.select_option("#inpainting_mask_invert", label="Inpaint not masked")
    page.fill("#mask_blur", "8")
    page.select_option("#inpainting_fill", label="latent noise")
    page.select_option("#inpaint_full_res", label="Only masked")
    page.fill("#inpaint_full_res_padding", "16")
    page.fill("#prompt", "a boat")
    screenshot(page, "webui-inpaint.png")
    page.click("#generate")
    expect(page.locator("#gallery img")).to_have_count(1)
    body = bodies[0]
    assert {key: body[key] for key in body if key.startswith(("inpaint", "mask_"))} == {
        "mask_blur": 8, "inpainting_fill": 2, "inpaint_full_res": True, "inpaint_full_res_padding": 16,
        "inpainting_mask_invert": 1,
    }  # fmt: skip
    assert decoded(body["init_images"][0]).size == (96, 64)
    mask = decoded(body["mask"])
    assert mask.format == "PNG" and mask.size == (96, 64)
    grey = mask.convert("L")
    scale = 96 / box["width"]  # the brush is in screen pixels
    assert grey.getpixel((int(0.25 * 96), 32)) == 255  # on the stroke
    for x, y in ((int(0.25 * 96), 5), (int(0.8 * 96), 32), (2, 2), (95, 63)):
        assert grey.getpixel((x, y)) == 0, (x, y)  # away from it
    thickness = sum(1 for y in range(64) if grey.getpixel((int(0.25 * 96), y)) > 127)
    assert abs(thickness - 40 * scale) <= 2
    colours = {colour for _, colour in mask.convert("RGB").getcolors(256 * 256)}
    assert colours <= {(v, v, v) for v in range(256)}  # white on black, grey at the stroke's edges

    page.click("#mask-clear")
    expect(page.locator("#mask-status")).to_contain_text("redraws the whole image")
    expect(page.locator("#mask_blur")).to_be_disabled()
    page.click("#generate")
    expect(page.locator("#progress-text")).to_contain_text("Done")
    assert len(bodies) == 2 and "mask" not in bodies[1] and "mask_blur" not in bodies[1]


def test_inpainting_generates_through_the_worker(page: Page) -> None:
    page.click("#tab-img2img")
    page.set_input_files("#init-file", as_file(png(64, 64)))
    for field, value in SMALL:
        page.fill(field, value)
    paint_stroke(page, brush_px=20)
    page.click("#generate")
    expect(page.locator("#progress-text")).to_have_text(re.compile("Done|Failed"), timeout=60_000)
    assert page.locator("#error").is_hidden(), page.locator("#error").text_content()
    expect(page.locator("#gallery img")).to_have_count(1)


def test_the_pickers_say_when_there_is_nothing_and_insert_what_there_is(page: Page, browser: Any, worker: str) -> None:
    page.click("#networks summary")
    expect(page.locator("#lora-list")).to_have_text("No LoRA on this worker.")
    expect(page.locator("#embedding-list")).to_have_text("No embeddings on this worker.")
    expect(page.locator("#lora-list button")).to_have_count(0)

    listed = browser.new_context().new_page()
    loras = [{"name": "film-grain", "alias": "grain", "path": "/loras/film-grain.safetensors", "metadata": {}}]
    listed.route("**/sdapi/v1/loras", lambda route: route.fulfill(json=loras))
    embeddings = {"loaded": {"easynegative": {"step": None, "shape": 768, "vectors": 8}}, "skipped": {}}
    listed.route("**/sdapi/v1/embeddings", lambda route: route.fulfill(json=embeddings))
    listed.goto(worker)
    listed.click("#networks summary")
    listed.fill("#prompt", "a cat")
    listed.get_by_role("button", name="film-grain").click()
    expect(listed.locator("#prompt")).to_have_value("a cat <lora:film-grain:1>")
    listed.locator("#prompt").evaluate("(prompt) => prompt.setSelectionRange(0, 0)")  # the caret at the start
    listed.get_by_role("button", name="easynegative").click()
    expect(listed.locator("#prompt")).to_have_value("easynegative a cat <lora:film-grain:1>")
    listed.context.close()


def test_extras_upscales_by_a_factor_and_to_a_size(page: Page) -> None:
    page.click("#tab-extras")
    expect(page.locator("#upscaler_1 option")).to_have_text(["None", "Lanczos", "Nearest"])
    page.click("#extras-run")
    expect(page.locator("#extras-error")).to_contain_text("Choose an image file")
    page.set_input_files("#extras-file", as_file(png(64, 48)))
    expect(page.locator("#extras-source")).to_be_visible()
    page.fill("#upscaling_resize", "2")
    page.click("#extras-run")
    expect(page.locator("#extras-result img")).to_have_count(1)
    assert natural_size(page, "#extras-result img") == (128, 96)
    expect(page.locator("#extras-info")).to_have_text(
        "128×96 px\nPostprocess upscale by: 2.0, Postprocess upscaler: Lanczos"
    )
    assert page.locator("#extras-error").is_hidden()
    screenshot(page, "webui-extras.png")

    page.select_option("#extras-resize-mode", label="Scale to")
    page.fill("#upscaling_resize_w", "80")
    page.fill("#upscaling_resize_h", "80")
    page.select_option("#upscaler_1", "Nearest")
    page.click("#extras-run")
    expect(page.locator("#extras-info")).to_contain_text("80×80 px\nPostprocess upscale to: 80x80, Postprocess crop")
    assert natural_size(page, "#extras-result img") == (80, 80)


INFOTEXT = "a red fox in snow\nNegative prompt: blurry\nSteps: 7, Sampler: Euler, CFG scale: 5.5, Seed: 42, Size: 96x64"


def test_png_info_reads_the_parameters_and_sends_them_to_txt2img(page: Page) -> None:
    page.click("#tab-pnginfo")
    page.set_input_files("#pnginfo-file", as_file(png(8, 8)))
    expect(page.locator("#pnginfo-status")).to_have_text("This image carries no generation parameters.")
    expect(page.locator("#pnginfo-send")).to_be_hidden()

    page.set_input_files("#pnginfo-file", as_file(png(96, 64, parameters=INFOTEXT, Software="a painter")))
    expect(page.locator("#pnginfo-text")).to_have_text(INFOTEXT)
    expect(page.locator("#pnginfo-status")).to_be_hidden()
    expect(page.locator("#pnginfo-items dt")).to_have_text(["Software"])
    expect(page.locator("#pnginfo-items dd")).to_have_text(["a painter"])
    screenshot(page, "webui-pnginfo.png")
    page.click("#pnginfo-send")
    expect(page.locator("#tab-txt2img")).to_have_attribute("aria-selected", "true")
    expected = {"#prompt": "a red fox in snow", "#negative_prompt": "blurry", "#steps": "7", "#cfg_scale": "5.5"}
    for field, value in {**expected, "#seed": "42", "#width": "96", "#height": "64", "#sampler": "Euler"}.items():
        expect(page.locator(field)).to_have_value(value)


def test_the_tabs_follow_the_keyboard(page: Page) -> None:
    page.focus("#tab-txt2img")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#tab-img2img")).to_be_focused()
    expect(page.locator("#init-file")).to_be_visible()
    expect(page).to_have_title("gpuroam · img2img")
    page.keyboard.press("End")
    expect(page.locator("#pnginfo-panel")).to_be_visible()
    expect(page.locator("#generate-panel")).to_be_hidden()
    page.keyboard.press("ArrowRight")  # wraps around
    expect(page.locator("#tab-txt2img")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#init-file")).to_be_hidden()
