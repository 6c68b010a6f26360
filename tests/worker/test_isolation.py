"""One caller cannot stop, watch or reconfigure another's work on a live worker (tiny model).

Through the gateway each request carries X-Gpuroam-Identity; these tests send it as the gateway
would. Without it (the worker's own port) A1111's single-user behaviour holds, which
tests/worker/test_batching.py covers.
"""

from __future__ import annotations

import socket
import time

import httpx

from live_jobs import generating, wait_until

SLOW = {"steps": 150, "width": 256, "height": 256, "sampler_name": "Euler a", "seed": 1}


def as_caller(name: str) -> dict[str, str]:
    return {"x-gpuroam-identity": name}


def test_a_caller_cannot_interrupt_skip_or_watch_another_callers_job(live_worker) -> None:  # type: ignore[no-untyped-def]
    with live_worker(max_batch=8) as url:
        body = {**SLOW, "force_task_id": "task(alice)"}
        with (
            httpx.Client(base_url=url, headers=as_caller("alice"), timeout=120) as alice,
            generating(alice, body) as result,
        ):
            bob = as_caller("bob")
            seen = httpx.get(f"{url}/sdapi/v1/progress", headers=bob).json()
            assert seen["state"]["job"] == "" and seen["progress"] == 0.0, "bob sees no job of alice's"
            named = httpx.get(f"{url}/sdapi/v1/progress", params={"id_task": "task(alice)"}, headers=bob).json()
            assert named["state"]["job"] == "", "not even by its id"
            for action in ("interrupt", "skip"):
                httpx.post(f"{url}/sdapi/v1/{action}", headers=bob)
                httpx.post(f"{url}/sdapi/v1/{action}", params={"id_task": "task(alice)"}, headers=bob)
            mine = httpx.get(f"{url}/sdapi/v1/progress", headers=as_caller("alice")).json()
            assert mine["state"]["job"] == "task(alice)" and not mine["state"]["interrupted"]
            assert not mine["state"]["skipped"]
            httpx.post(f"{url}/sdapi/v1/interrupt", headers=as_caller("alice"))
        assert result["r"].status_code == 200 and '"interrupted": true' in result["r"].json()["info"]


def test_through_the_gateway_options_are_checked_not_set(live_worker) -> None:  # type: ignore[no-untyped-def]
    with live_worker() as url:
        checked = httpx.post(f"{url}/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}, headers=as_caller("a"))
        assert checked.status_code == 200 and checked.json() == {"CLIP_stop_at_last_layers": 2}
        assert httpx.get(f"{url}/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1, "nobody else's changed"


def test_an_option_the_model_cannot_take_is_a_422_and_the_worker_keeps_serving(live_worker) -> None:  # type: ignore[no-untyped-def]
    """The tiny model's text encoder has 2 layers: CLIP skip 12 made every later generation fail with a 500."""
    with live_worker() as url:
        for headers in ({}, as_caller("mallory")):
            refused = httpx.post(f"{url}/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 12}, headers=headers)
            assert refused.status_code == 422
            assert "from 1 to 2" in refused.text and "text encoder has 2 layers" in refused.text
        override = {"steps": 2, "width": 64, "height": 64, "override_settings": {"CLIP_stop_at_last_layers": 3}}
        assert httpx.post(f"{url}/sdapi/v1/txt2img", json=override, timeout=60).status_code == 422
        served = httpx.post(f"{url}/sdapi/v1/txt2img", json={"steps": 2, "width": 64, "height": 64}, timeout=60)
        assert served.status_code == 200


def test_a_client_that_hangs_up_frees_the_device_within_a_few_steps(live_worker) -> None:  # type: ignore[no-untyped-def]
    with live_worker(max_batch=8) as url:
        host, port = url.removeprefix("http://").split(":")
        body = b'{"steps": 150, "width": 256, "height": 256, "seed": 3, "force_task_id": "task(gone)"}'
        head = f"POST /sdapi/v1/txt2img HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        with socket.create_connection((host, int(port))) as conn:
            conn.sendall(head.encode() + body)
            named = {"id_task": "task(gone)"}
            wait_until(lambda: httpx.get(f"{url}/sdapi/v1/progress", params=named).json()["state"]["sampling_step"] > 2)
            step_s = _seconds_per_step(url, named)
        hung_up = time.monotonic()
        wait_until(lambda: httpx.get(f"{url}/sdapi/v1/progress").json()["state"]["job"] == "", timeout_s=30)
        freed_s = time.monotonic() - hung_up
        assert freed_s < 2 + 3 * step_s, f"the device was freed {freed_s:.1f} s after the client left"
        served = httpx.post(f"{url}/sdapi/v1/txt2img", json={"steps": 2, "width": 64, "height": 64}, timeout=60)
        assert served.status_code == 200, "the next job runs"


def _seconds_per_step(url: str, params: dict[str, str]) -> float:
    first = httpx.get(f"{url}/sdapi/v1/progress", params=params).json()["state"]["sampling_step"]
    started = time.monotonic()
    wait_until(lambda: httpx.get(f"{url}/sdapi/v1/progress", params=params).json()["state"]["sampling_step"] > first)
    return time.monotonic() - started


def test_requests_over_the_limits_are_refused_before_they_queue(live_worker) -> None:  # type: ignore[no-untyped-def]
    """The issue's cases: 2048x2048, 150 steps, 8 x 8 images (an ETA of 6,000 s); a 1 MB prompt with 64 images."""
    with live_worker(max_megapixel_steps=1000.0, max_prompt_chars=10_000) as url:
        huge = {"width": 2048, "height": 2048, "steps": 150, "batch_size": 8, "n_iter": 8}
        refused = httpx.post(f"{url}/sdapi/v1/txt2img", json=huge, timeout=60)
        assert refused.status_code == 422
        assert "40,265 megapixel-steps" in refused.text and "limits.max_megapixel_steps" in refused.text
        long_prompt = {"prompt": "x" * 1_000_000, "steps": 2, "width": 64, "height": 64, "batch_size": 64}
        refused = httpx.post(f"{url}/sdapi/v1/txt2img", json=long_prompt, timeout=60)
        assert refused.status_code == 422 and "limits.max_prompt_chars" in refused.text
        assert "1,000,000 characters" in refused.text
        images = httpx.get(f"{url}/metrics").text
        assert "gpuroam_worker_images_total 0.0" in images, "nothing of either reached the device"
        usual = {"steps": 20, "width": 64, "height": 64, "batch_size": 8, "n_iter": 8, "prompt": "a boat " * 100}
        assert httpx.post(f"{url}/sdapi/v1/txt2img", json=usual, timeout=120).status_code == 200
