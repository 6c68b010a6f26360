"""Cross-request batching: requests that arrive together and share a shape run as one batch.

The original Web UI runs one job at a time under a lock. Here, image tasks queue; the device
loop takes the oldest task of the caller served longest ago plus queued tasks with the same
`BatchKey`, callers in turn, up to max_batch images (`take_batch`), waiting a few milliseconds to
fill the batch when the device was idle. While a batch runs on the device thread, new requests
queue up and form the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from gpuroam.worker.engine import BatchResult, is_out_of_memory
from gpuroam.worker.jobs import BatchKey, ImageTask, Job, Picture, take_batch
from gpuroam.worker.metrics import WorkerMetrics

log = logging.getLogger("gpuroam.worker.batcher")

T = TypeVar("T")
RunBatch = Callable[[list[ImageTask], Callable[[int, int], None]], BatchResult]


def device_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpuroam-device")


class QueueFull(Exception):
    """More images are queued than the worker accepts; the client should retry later."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"queue full; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


WAITING_POLL_S = 0.1  # how often a queue of batches that cannot run yet is looked at again


class BatchFailed(Exception):
    """A batch failed on the device; the message is meant for the client."""


class Batcher:
    def __init__(
        self,
        run_batch: RunBatch,
        metrics: WorkerMetrics,
        max_batch: int,
        max_wait_s: float,
        max_queued_images: int,
        device: ThreadPoolExecutor | None = None,
        sizes: tuple[int, ...] = (),
        runnable_now: Callable[[BatchKey], bool] = lambda key: True,
    ) -> None:
        """`device` is the one thread that touches the GPU (the engine was built and warmed there:
        CUDA graphs belong to the thread that recorded them); by default a new one."""
        self._run_batch = run_batch
        self._metrics = metrics
        self.max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._max_queued = max_queued_images
        self._queue: list[ImageTask] = []
        self._arrived = asyncio.Event()
        self._device = device or device_thread()
        self._sizes = sorted(size for size in sizes if size <= max_batch)  # compiled batch sizes, if any
        self._loop_task: asyncio.Task[None] | None = None
        self.running: list[Job] = []
        self._served: dict[str, int] = {}  # owner -> when it last had images on the device (owners with a queue)
        self._turns = itertools.count()
        self._batch_seconds = 1.0  # moving average, for Retry-After
        # A batch of a key the engine cannot run at once (a tiled one while a graph compiles) waits in the
        # queue, so the device thread never sits waiting with other callers' batches behind it.
        self._runnable_now = runnable_now

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._device_loop(), name="gpuroam-device-loop")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        self._device.shutdown(wait=True, cancel_futures=True)

    async def on_device(self, work: Callable[[], T]) -> T:
        """`work`'s result, run on the device thread between two batches (a model switch, say)."""
        return await asyncio.get_running_loop().run_in_executor(self._device, work)

    @property
    def queued_images(self) -> int:
        return len(self._queue)

    def submit(self, tasks: list[ImageTask]) -> None:
        """Queue a job's tasks, or refuse the whole job when the queue is full."""
        if self.queued_images + len(tasks) > self._max_queued:
            batches_ahead = -(-self.queued_images // self.max_batch)
            raise QueueFull(retry_after_s=max(1, round(batches_ahead * self._batch_seconds)))
        self._queue.extend(tasks)
        self._metrics.queue_depth.set(self.queued_images)
        self._arrived.set()

    async def _device_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            self._drop_interrupted()
            if not self._queue:
                self._arrived.clear()
                continue
            if len(take_batch(self._runnable(), self.max_batch, self._served)) < self.max_batch:
                await asyncio.sleep(self._max_wait_s)  # let requests that arrive together join
            batch = take_batch(self._runnable(), self.max_batch, self._served)
            if not batch:
                await asyncio.sleep(WAITING_POLL_S)  # only batches that cannot run yet are queued
                continue
            batch = batch[: self._fitting(len(batch))]
            taken = set(map(id, batch))
            self._queue = [task for task in self._queue if id(task) not in taken]
            self._mark_served(batch)
            self._metrics.queue_depth.set(self.queued_images)
            await self._run(loop, batch)

    def _runnable(self) -> list[ImageTask]:
        return [task for task in self._queue if self._runnable_now(task.key)]

    def _mark_served(self, batch: list[ImageTask]) -> None:
        """The batch's owners go to the back of the turn, its head's owner last; owners with nothing
        queued are forgotten (they come back as newcomers, first in line)."""
        head = batch[0].job.owner
        for owner in [*dict.fromkeys(task.job.owner for task in batch if task.job.owner != head), head]:
            self._served[owner] = next(self._turns)
        queued = {task.job.owner for task in self._queue}
        self._served = {owner: turn for owner, turn in self._served.items() if owner in queued}

    def _fitting(self, count: int) -> int:
        """With compiled sizes, run the largest that `count` images fill (the rest go next) rather than
        pad up to the next size: 17 images as 16 + 1, not 17 padded to 32 (half the GPU wasted)."""
        fitting = [size for size in self._sizes if size <= count]
        return fitting[-1] if fitting else count

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[ImageTask]) -> None:
        jobs = list(dict.fromkeys(task.job for task in batch))
        for job in jobs:
            job.running_images = sum(1 for task in batch if task.job is job)
            job.sampling_step, job.sampling_steps = 0, 0
            if job.started is None:
                job.started = loop.time()
        self.running = jobs

        def on_step(step: int, total: int) -> None:
            for job in jobs:
                job.sampling_step, job.sampling_steps = step, total

        try:
            result = await loop.run_in_executor(self._device, self._run_batch, batch, on_step)
        except Exception as error:  # noqa: BLE001 - every failure must reach the waiting clients
            await self._recover(loop, batch, jobs, error)
        else:
            self._deliver(batch, result)
        finally:
            for job in jobs:
                job.running_images = 0
                job.skipped = False
            self.running = []

    def _deliver(self, batch: list[ImageTask], result: BatchResult) -> None:
        self._metrics.observe_batch(len(batch), result.seconds)
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * result.seconds
        for task, image in zip(batch, result.images):
            task.job.images_done += 1
            _resolve(task, image)

    async def _recover(
        self, loop: asyncio.AbstractEventLoop, batch: list[ImageTask], jobs: list[Job], error: Exception
    ) -> None:
        """A batch we merged from several jobs that ran out of memory is retried one job at a time."""
        if is_out_of_memory(error) and len(jobs) > 1:
            log.warning(
                "out of memory on a merged batch; retrying job by job", extra={"jobs": len(jobs), "images": len(batch)}
            )
            for job in jobs:
                await self._run(loop, [task for task in batch if task.job is job])
            return
        if is_out_of_memory(error):
            message = (
                f"out of memory generating {len(batch)} image(s) of {batch[0].key.width}x{batch[0].key.height}; "
                "ask for fewer images per request (batch_size) or a smaller size"
            )
        else:
            message = f"generation failed: {type(error).__name__}: {error}"
        log.error("batch failed", extra={"error": repr(error), "images": len(batch)})
        self._metrics.batch_failures.inc()
        for task in batch:
            if task.result is not None and not task.result.done():
                task.result.set_exception(BatchFailed(message))

    def _drop_interrupted(self) -> None:
        """Queued tasks of an interrupted job never run; the job returns what it has."""
        kept = []
        for task in self._queue:
            if task.job.interrupted:
                _resolve(task, None)
            else:
                kept.append(task)
        self._queue = kept
        self._metrics.queue_depth.set(self.queued_images)

    def interrupt(self, job: Job) -> None:
        job.interrupted = True
        self._arrived.set()


def _resolve(task: ImageTask, image: Picture | None) -> None:
    if task.result is not None and not task.result.done():
        task.result.set_result(image)
