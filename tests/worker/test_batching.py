"""Cross-request batching on a live worker: fewer device batches than requests, same bytes."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import httpx
import pytest
import webuiapi

from gpuroam.worker.engine import Engine

SHAPE = {"steps": 6, "width": 128, "height": 128, "sampler_name": "Euler a", "cfg_scale": 7}


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as client:
        return await asyncio.gather(*(client.post(f"{url}/sdapi/v1/txt2img", json=body) for body in bodies))


def requests_for(count: int) -> list[dict]:
    return [{**SHAPE, "prompt": f"prompt number {i}", "seed": 100 + i} for i in range(count)]


def test_concurrent_same_shape_requests_share_device_batches(live_worker) -> None:  # type: ignore[no-untyped-def]
    with live_worker(max_batch=8, batch_wait_ms=20) as url:
        responses = asyncio.run(post_all(url, requests_for(8)))
        assert all(r.status_code == 200 for r in responses)
        batches = metric(url, "gpuroam_worker_batch_images_count")
        images = metric(url, "gpuroam_worker_images_total")
        assert images == 8
        assert batches < 8, f"8 requests ran in {batches:.0f} device batches"


def test_the_same_seed_gives_the_same_bytes_with_and_without_batching(live_worker) -> None:  # type: ignore[no-untyped-def]
    bodies = requests_for(8)
    with live_worker(max_batch=1) as url:
        alone = [r.json()["images"] for r in asyncio.run(post_all(url, bodies))]
        assert metric(url, "gpuroam_worker_batch_images_count") == 8
    with live_worker(max_batch=8, batch_wait_ms=20) as url:
        batched = [r.json()["images"] for r in asyncio.run(post_all(url, bodies))]
        assert metric(url, "gpuroam_worker_batch_images_count") < 8
    assert batched == alone


def test_different_shapes_never_share_a_batch(live_worker) -> None:  # type: ignore[no-untyped-def]
    bodies = [{**body, "steps": 4 + i % 2} for i, body in enumerate(requests_for(6))]
    with live_worker(max_batch=8, batch_wait_ms=20) as url:
        assert all(r.status_code == 200 for r in asyncio.run(post_all(url, bodies)))
        assert metric(url, "gpuroam_worker_batch_images_count") >= 2


def test_a_full_queue_answers_503_with_retry_after(live_worker) -> None:  # type: ignore[no-untyped-def]
    with live_worker(max_batch=1, max_queued_images=2) as url:
        bodies = [{**SHAPE, "steps": 20, "batch_size": 2, "seed": i} for i in range(4)]
        responses = asyncio.run(post_all(url, bodies))
        refused = [r for r in responses if r.status_code == 503]
        assert refused and all(int(r.headers["retry-after"]) >= 1 for r in refused)
        assert "queue full" in refused[0].json()["detail"]
        assert any(r.status_code == 200 for r in responses)


def test_out_of_memory_in_a_merged_batch_is_retried_job_by_job(live_worker, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real_run = Engine.run

    def run_with_small_memory(self, tasks, on_step=None):  # type: ignore[no-untyped-def]
        if len(tasks) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_run(self, tasks, on_step)

    monkeypatch.setattr(Engine, "run", run_with_small_memory)
    with live_worker(max_batch=8, batch_wait_ms=50) as url:
        responses = asyncio.run(post_all(url, [{**SHAPE, "seed": i} for i in range(4)]))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        too_big = asyncio.run(post_all(url, [{**SHAPE, "batch_size": 3}]))[0]
        assert too_big.status_code == 500 and "out of memory" in too_big.json()["detail"]
        assert "batch_size" in too_big.json()["detail"]
        assert asyncio.run(post_all(url, [SHAPE]))[0].status_code == 200, "the worker recovers"


def test_progress_and_interrupt_act_on_one_job(live_worker) -> None:  # type: ignore[no-untyped-def]
    with live_worker(max_batch=8) as url:
        slow = {**SHAPE, "steps": 150, "width": 256, "height": 256, "force_task_id": "task(slow)"}
        result: dict = {}
        thread = threading.Thread(
            target=lambda: result.update(r=httpx.post(f"{url}/sdapi/v1/txt2img", json=slow, timeout=120))
        )
        thread.start()
        deadline = time.monotonic() + 30
        while True:
            progress = httpx.get(f"{url}/sdapi/v1/progress", params={"id_task": "task(slow)"}).json()
            if progress["state"]["sampling_step"] > 0:
                break
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.02)
        assert progress["state"]["job"] == "task(slow)" and 0 < progress["progress"] < 1
        assert progress["state"]["sampling_steps"] == 150
        httpx.post(f"{url}/sdapi/v1/interrupt", params={"id_task": "task(slow)"})
        thread.join(timeout=60)
        response = result["r"]
        assert response.status_code == 200 and len(response.json()["images"]) == 1
        assert '"interrupted": true' in response.json()["info"]


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M Karras"])
def test_a_real_a1111_client_works_unchanged(live_worker, sampler: str) -> None:  # type: ignore[no-untyped-def]
    with live_worker() as url:
        port = int(url.rsplit(":", 1)[1])
        api = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler=sampler, steps=4)
        result = api.txt2img(
            prompt="a lighthouse at dusk", negative_prompt="blurry", seed=1234, width=128, height=128, batch_size=2
        )
        assert len(result.images) == 2 and result.images[0].size == (128, 128)
        assert result.info["all_seeds"] == [1234, 1235]
        assert result.images[0].info["parameters"].startswith("a lighthouse at dusk\nNegative prompt: blurry")
        again = api.img2img(
            images=[result.image], prompt="a lighthouse at night", seed=5, denoising_strength=0.6, width=128, height=128
        )
        assert again.image.size == (128, 128) and again.info["seed"] == 5
        assert api.get_progress()["state"]["job_count"] == 0
        assert "Euler a" in [s["name"] for s in api.get_samplers()]
        assert api.get_sd_models()[0]["model_name"] == "tiny"
        api.set_options({"CLIP_stop_at_last_layers": 1})
        assert api.get_options()["CLIP_stop_at_last_layers"] == 1


def test_with_compiled_sizes_a_batch_is_the_largest_size_the_queue_fills() -> None:
    from gpuroam.worker.batcher import Batcher
    from gpuroam.worker.engine import BatchResult
    from gpuroam.worker.jobs import BatchKey, ImageTask, Job
    from gpuroam.worker.metrics import WorkerMetrics

    ran: list[int] = []

    def run_batch(tasks: list[ImageTask], on_step: object) -> BatchResult:
        ran.append(len(tasks))
        return BatchResult(images=[None] * len(tasks), seconds=0.0)  # type: ignore[list-item]

    async def play() -> None:
        batcher = Batcher(run_batch, WorkerMetrics(), 32, 0.0, 100, sizes=(1, 2, 4, 8, 16, 32))
        key = BatchKey("txt2img", 64, 64, 2, "Euler", "automatic", 7.0)
        loop = asyncio.get_running_loop()
        tasks = [ImageTask(Job(f"j{i}", key, 1), 0, "", "", i, 0, 0.0, None, loop.create_future()) for i in range(19)]
        batcher.submit(tasks)  # queued before the device loop starts: all 19 wait together
        batcher.start()
        await asyncio.wait_for(asyncio.gather(*(t.result for t in tasks if t.result is not None)), 10)
        await batcher.stop()

    asyncio.run(play())
    assert ran == [16, 2, 1], "19 images run as 16 + 2 + 1, never padded to 32"


def test_a_sixth_callers_image_waits_at_most_one_batch_behind_five_callers_64_images_each() -> None:
    from gpuroam.worker.batcher import Batcher
    from gpuroam.worker.engine import BatchResult
    from gpuroam.worker.jobs import BatchKey, ImageTask, Job
    from gpuroam.worker.metrics import WorkerMetrics

    ran: list[list[str]] = []
    running = threading.Event()
    proceed = threading.Event()

    def run_batch(tasks: list[ImageTask], on_step: object) -> BatchResult:
        ran.append([task.job.owner for task in tasks])
        running.set()
        proceed.wait(10)
        return BatchResult(images=[None] * len(tasks), seconds=0.0)  # type: ignore[list-item]

    async def play() -> None:
        batcher = Batcher(run_batch, WorkerMetrics(), 8, 0.0, 1000)
        heavy_key = BatchKey("txt2img", 64, 64, 20, "Euler", "automatic", 7.0)
        loop = asyncio.get_running_loop()

        def job(owner: str, images: int, key: BatchKey) -> list[ImageTask]:
            one = Job(f"{owner}-job", key, images, owner=owner)
            return [ImageTask(one, i, "", "", i, 0, 0.0, None, loop.create_future()) for i in range(images)]

        heavy = [job(owner, 64, heavy_key) for owner in "abcde"]
        for tasks in heavy:
            batcher.submit(tasks)
        batcher.start()
        await asyncio.to_thread(running.wait, 10)  # the first heavy batch is on the device
        small = job("f", 1, BatchKey("txt2img", 64, 64, 4, "Euler", "automatic", 7.0))
        batcher.submit(small)
        proceed.set()
        assert small[0].result is not None
        await asyncio.wait_for(small[0].result, 10)
        await batcher.stop()

    asyncio.run(play())
    assert ran[1] == ["f"], f"batches run before the sixth caller's image: {ran[:2]}"


def test_a_batch_the_engine_cannot_start_yet_waits_in_the_queue_and_others_run() -> None:
    from gpuroam.worker.batcher import Batcher
    from gpuroam.worker.engine import BatchResult
    from gpuroam.worker.jobs import BatchKey, ImageTask, Job
    from gpuroam.worker.metrics import WorkerMetrics

    ran: list[bool] = []
    compiling = [True]

    def run_batch(tasks: list[ImageTask], on_step: object) -> BatchResult:
        ran.append(tasks[0].key.tiling)
        return BatchResult(images=[None] * len(tasks), seconds=0.0)  # type: ignore[list-item]

    async def play() -> None:
        batcher = Batcher(
            run_batch, WorkerMetrics(), 8, 0.0, 100, runnable_now=lambda key: not (key.tiling and compiling[0])
        )
        plain = BatchKey("txt2img", 64, 64, 2, "Euler", "automatic", 7.0)
        tiled = BatchKey("txt2img", 64, 64, 2, "Euler", "automatic", 7.0, tiling=True)
        loop = asyncio.get_running_loop()
        first = ImageTask(Job("tiled", tiled, 1), 0, "", "", 1, 0, 0.0, None, loop.create_future())
        second = ImageTask(Job("plain", plain, 1), 0, "", "", 2, 0, 0.0, None, loop.create_future())
        batcher.submit([first])
        batcher.submit([second])
        batcher.start()
        assert second.result is not None and first.result is not None
        await asyncio.wait_for(second.result, 5)
        assert ran == [False] and not first.result.done(), "the tiled batch waits; the one behind it does not"
        compiling[0] = False
        await asyncio.wait_for(first.result, 5)
        assert ran == [False, True]
        await batcher.stop()

    asyncio.run(play())
