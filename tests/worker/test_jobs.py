import asyncio

from hypothesis import given
from hypothesis import strategies as st

from gpuroam.worker.jobs import BatchKey, ImageTask, Job, take_batch

KEYS = [BatchKey("txt2img", w, 64, s, "Euler", "automatic", 7.0) for w in (64, 128) for s in (2, 3)]


def make_queue(key_indexes: list[int]) -> list[ImageTask]:
    loop = asyncio.new_event_loop()
    jobs = [Job(id=f"j{i}", key=KEYS[k], image_count=1) for i, k in enumerate(key_indexes)]
    queue = [ImageTask(job, 0, "p", "", i, i, 0.0, None, loop.create_future()) for i, job in enumerate(jobs)]
    loop.close()
    return queue


@given(st.lists(st.integers(0, len(KEYS) - 1), max_size=40), st.integers(1, 16))
def test_take_batch_is_fifo_by_head_and_shares_one_key(key_indexes: list[int], max_batch: int) -> None:
    queue = make_queue(key_indexes)
    batch = take_batch(queue, max_batch)
    if not queue:
        assert batch == []
        return
    assert batch[0] is queue[0], "the oldest task always runs next"
    assert 1 <= len(batch) <= max_batch
    assert all(task.key == queue[0].key for task in batch)
    positions = [queue.index(task) for task in batch]
    assert positions == sorted(positions), "arrival order is kept"
    same_key = [task for task in queue if task.key == queue[0].key]
    assert len(batch) == min(max_batch, len(same_key)), "the batch is as full as the queue allows"


def test_progress_counts_done_and_running_images() -> None:
    job = Job(id="j", key=KEYS[0], image_count=4)
    assert job.progress == 0.0
    job.images_done, job.running_images, job.sampling_step, job.sampling_steps = 2, 2, 5, 10
    assert job.progress == 0.75
