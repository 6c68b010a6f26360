"""The block backoff factored out of the reconciler into placement: one rule, used by both."""

from __future__ import annotations

import inspect
import itertools

from hypothesis import given
from hypothesis import strategies as st

from gpuroam.controller import reconciler
from gpuroam.placement import block_after_failure
from gpuroam.records import Block

ttls = st.floats(1.0, 1000.0)
backoffs = st.floats(1.0, 4.0)


@given(ttl=ttls, backoff=backoffs, extra=st.floats(0.0, 10_000.0), failures=st.integers(1, 12), now=st.floats(0, 1e9))
def test_each_failure_multiplies_the_block_up_to_the_cap(
    ttl: float, backoff: float, extra: float, failures: int, now: float
) -> None:
    cap = ttl + extra
    block = None
    lengths = []
    for _ in range(failures):
        block = block_after_failure(block, "us-central1", "nvidia-l4", now, ttl, backoff, cap, "stockout")
        lengths.append(block.until - now)
    assert block is not None and block.failures == failures
    assert block.last_failure_at == now and block.reason == "stockout"
    assert abs(lengths[0] - min(cap, ttl)) <= 1e-6 * max(1.0, now)
    for shorter, longer in itertools.pairwise(lengths):
        assert longer >= shorter - 1e-6 * max(1.0, now)  # never shorter than the last
    assert all(length <= cap + 1e-6 * max(1.0, now) for length in lengths)
    expected = min(cap, ttl * backoff ** (failures - 1))
    assert abs(lengths[-1] - expected) <= 1e-6 * max(1.0, now, expected)


def test_an_expired_block_still_counts_its_failures() -> None:
    old = Block("us-central1", "nvidia-l4", until=100.0, failures=3, last_failure_at=0.0)
    block = block_after_failure(old, "us-central1", "nvidia-l4", 5000.0, 300.0, 2.0, 3600.0)
    assert block.failures == 4 and block.until == 5000.0 + 2400.0


def test_the_reconciler_blocks_with_the_same_rule() -> None:
    assert "block_after_failure(" in inspect.getsource(reconciler.Reconciler._block)
