import asyncio

from hypothesis import given
from hypothesis import strategies as st

from gpuroam.worker.jobs import BatchKey, ImageTask, Job, take_batch

KEYS = [BatchKey("txt2img", w, 64, s, "Euler", "automatic", 7.0) for w in (64, 128) for s in (2, 3)]


def make_queue(key_indexes: list[int], owners: list[str] | None = None) -> list[ImageTask]:
    loop = asyncio.new_event_loop()
    owners = owners or [""] * len(key_indexes)
    jobs = [Job(id=f"j{i}", key=KEYS[k], image_count=1, owner=o) for i, (k, o) in enumerate(zip(key_indexes, owners))]
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


@given(
    st.lists(st.tuples(st.integers(0, len(KEYS) - 1), st.sampled_from("abcd")), max_size=40),
    st.integers(1, 16),
    st.dictionaries(st.sampled_from("abcd"), st.integers(0, 100)),
)
def test_take_batch_takes_callers_in_turn_oldest_first_within_each(
    tasks: list[tuple[int, str]], max_batch: int, last_served: dict[str, int]
) -> None:
    queue = make_queue([k for k, _ in tasks], [o for _, o in tasks])
    batch = take_batch(queue, max_batch, last_served)
    if not queue:
        assert batch == []
        return
    owners = list(dict.fromkeys(task.job.owner for task in queue))
    first = min(owners, key=lambda owner: last_served.get(owner, -1))
    head = next(task for task in queue if task.job.owner == first)
    assert batch[0] is head, "the oldest task of the caller served longest ago (a newcomer first) runs next"
    assert all(task.key == head.key for task in batch) and 1 <= len(batch) <= max_batch
    same_key = [task for task in queue if task.key == head.key]
    assert len(batch) == min(max_batch, len(same_key)), "the batch is as full as the queue allows"
    for owner in owners:
        mine = [queue.index(task) for task in batch if task.job.owner == owner]
        assert mine == sorted(mine), "each caller's tasks run in the order it sent them"
        left = [task for task in same_key if task.job.owner == owner and task not in batch]
        if left:  # a caller with more of this key waiting got no fewer than anyone else, bar one
            assert len(mine) >= max(sum(t.job.owner == o for t in batch) for o in owners) - 1


def test_a_newcomers_image_heads_the_next_batch_behind_five_callers_64_images_each() -> None:
    heavy = [k for k in [0] * 64 for _ in range(5)]
    owners = [o for _ in range(64) for o in "abcde"]
    queue = make_queue([*heavy, 1, 0], [*owners, "f", "g"])
    served = {owner: turn for turn, owner in enumerate("abcde")}
    assert take_batch(queue, 8, served)[0].job.owner == "f", "another key: the newcomer's image is the head"
    batch = take_batch(queue, 8, {**served, "f": 10, "g": 11})
    assert "g" in {task.job.owner for task in batch}, "the same key: even one served last joins the next batch"


def test_progress_counts_done_and_running_images() -> None:
    job = Job(id="j", key=KEYS[0], image_count=4)
    assert job.progress == 0.0
    job.images_done, job.running_images, job.sampling_step, job.sampling_steps = 2, 2, 5, 10
    assert job.progress == 0.75
