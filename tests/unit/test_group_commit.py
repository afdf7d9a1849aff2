"""GroupCommit batches concurrent writes: a write alone is flushed at once, the writes
that arrive during a flush share the next one, one key never appears twice in a batch,
and a failure reaches only the writes it belongs to."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from saga.errors import ConfigurationError
from saga.store.group_commit import GroupCommit


class Recorder:
    """A flush that records its batches and answers each write with its doubled value;
    a negative write fails alone, and ``broken`` fails the next flush, once."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.broken: Exception | None = None

    async def flush(self, writes: Sequence[tuple[str, int]]) -> list[int | BaseException]:
        self.batches.append(list(writes))
        await self.release.wait()
        if self.broken is not None:
            broken, self.broken = self.broken, None
            raise broken
        return [value * 2 if value >= 0 else ValueError(f"{key} refused") for key, value in writes]


def committer(recorder: Recorder, max_batch: int = 256) -> GroupCommit[tuple[str, int], int]:
    return GroupCommit(recorder.flush, key=lambda write: write[0], max_batch=max_batch)


async def test_a_write_alone_is_flushed_at_once_by_itself() -> None:
    recorder = Recorder()
    group = committer(recorder)
    assert await group.submit(("a", 1)) == 2
    assert recorder.batches == [[("a", 1)]]
    assert (group.batches, group.writes) == (1, 1)


async def test_writes_arriving_during_a_flush_share_the_next_one() -> None:
    recorder = Recorder()
    group = committer(recorder)
    recorder.release.clear()
    first = asyncio.create_task(group.submit(("a", 1)))
    await asyncio.sleep(0)  # the first flush is under way, holding only "a"
    others = [asyncio.create_task(group.submit((f"k{n}", n))) for n in range(10)]
    await asyncio.sleep(0)
    recorder.release.set()
    assert await first == 2
    assert [await task for task in others] == [n * 2 for n in range(10)]
    assert recorder.batches == [[("a", 1)], [(f"k{n}", n) for n in range(10)]]


async def test_two_writes_of_one_key_go_in_successive_batches_in_the_order_they_came() -> None:
    recorder = Recorder()
    group = committer(recorder)
    recorder.release.clear()
    first = asyncio.create_task(group.submit(("x", 0)))
    await asyncio.sleep(0)
    later = [asyncio.create_task(group.submit(write)) for write in [("s", 1), ("b", 2), ("s", 3)]]
    await asyncio.sleep(0)
    recorder.release.set()
    await first
    assert [await task for task in later] == [2, 4, 6]
    assert recorder.batches == [[("x", 0)], [("s", 1), ("b", 2)], [("s", 3)]]


async def test_a_batch_holds_at_most_max_batch_writes() -> None:
    recorder = Recorder()
    group = committer(recorder, max_batch=4)
    recorder.release.clear()
    tasks = [asyncio.create_task(group.submit((f"k{n}", n))) for n in range(10)]
    await asyncio.sleep(0)
    recorder.release.set()
    assert [await task for task in tasks] == [n * 2 for n in range(10)]
    # The first write found the flusher free and went alone.
    assert [len(batch) for batch in recorder.batches] == [1, 4, 4, 1]


async def test_each_free_flusher_takes_a_write_alone_before_writes_wait_for_company() -> None:
    recorder = Recorder()
    group: GroupCommit[tuple[str, int], int] = GroupCommit(recorder.flush, flushers=2)
    recorder.release.clear()
    tasks = [asyncio.create_task(group.submit((f"k{n}", n))) for n in range(5)]
    for _ in range(2):  # the submits start the flushers, which then start flushing
        await asyncio.sleep(0)
    # Two flushers busy, each with one write; the other three wait together.
    assert recorder.batches == [[("k0", 0)], [("k1", 1)]]
    recorder.release.set()
    assert [await task for task in tasks] == [0, 2, 4, 6, 8]
    assert sorted(map(len, recorder.batches)) == [1, 1, 3]


def test_writes_with_a_key_need_one_flusher() -> None:
    with pytest.raises(ConfigurationError, match="writes with a key need one flusher"):
        GroupCommit(Recorder().flush, key=lambda write: write, flushers=2)


async def test_a_write_that_fails_alone_fails_only_its_own_caller() -> None:
    recorder = Recorder()
    group = committer(recorder)
    results = await asyncio.gather(
        *(group.submit(write) for write in [("a", 1), ("b", -1), ("c", 3)]),
        return_exceptions=True,
    )
    assert results[0] == 2
    assert results[2] == 6
    assert isinstance(results[1], ValueError)
    assert str(results[1]) == "b refused"


async def test_a_flush_that_fails_fails_its_batch_and_the_next_batch_still_runs() -> None:
    recorder = Recorder()
    group = committer(recorder)
    recorder.release.clear()
    recorder.broken = RuntimeError("database gone")
    doomed = asyncio.create_task(group.submit(("a", 1)))
    await asyncio.sleep(0)
    later = asyncio.create_task(group.submit(("b", 2)))
    await asyncio.sleep(0)
    recorder.release.set()
    with pytest.raises(RuntimeError, match="database gone"):
        await doomed
    assert await later == 4
    assert recorder.batches == [[("a", 1)], [("b", 2)]]


async def test_a_cancelled_caller_does_not_stop_the_flush_the_others_wait_for() -> None:
    recorder = Recorder()
    group = committer(recorder)
    recorder.release.clear()
    first = asyncio.create_task(group.submit(("a", 1)))
    await asyncio.sleep(0)
    gone = asyncio.create_task(group.submit(("b", 2)))
    kept = asyncio.create_task(group.submit(("c", 3)))
    await asyncio.sleep(0)
    gone.cancel()
    recorder.release.set()
    assert await first == 2
    assert await kept == 6
    with pytest.raises(asyncio.CancelledError):
        await gone
    # The cancelled caller's write was taken all the same, as a statement in flight is.
    assert recorder.batches[1] == [("b", 2), ("c", 3)]


def test_max_batch_below_one_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="max_batch must be >= 1, got 0"):
        GroupCommit(Recorder().flush, key=lambda write: write, max_batch=0)
