"""Group commit: writes that arrive while one batch is being committed are committed
together in the next, in one statement and one commit.

No write waits for company: the first one of a quiet moment is flushed at once, alone.
Under load, while a flush runs, the writes of every other handler queue up behind it, and
the next flush takes them all. The cost of a commit (its statement, its WAL flush, its
round trip) is then shared by the whole batch, and nothing is added to a single write's
latency but the wait for the flush already under way.

Two writes with the same key (one saga) never share a batch: the later one waits for the
next, so a batch's statement touches each row at most once, in the order the writes came.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

from saga.errors import ConfigurationError

__all__ = ["GroupCommit"]

W = TypeVar("W")
R = TypeVar("R")


class GroupCommit(Generic[W, R]):
    """Collects concurrent writes and hands them to ``flush`` in batches.

    ``flush`` gets up to ``max_batch`` writes with distinct keys and returns one outcome
    per write, in order: its result, or the exception that write (and only it) failed with.
    An exception raised by ``flush`` itself fails every write of that batch.

    Up to ``flushers`` batches are flushed at once: a write that finds one free is
    flushed alone, at once; only while all are busy do writes wait, and then go together.
    With more than one, two writes could be flushed side by side in any order, so writes
    then have no key.
    """

    def __init__(
        self,
        flush: Callable[[Sequence[W]], Awaitable[Sequence[R | BaseException]]],
        *,
        key: Callable[[W], Hashable] | None = None,
        max_batch: int = 256,
        flushers: int = 1,
    ) -> None:
        if max_batch < 1:
            raise ConfigurationError(f"max_batch must be >= 1, got {max_batch}")
        if flushers < 1:
            raise ConfigurationError(f"flushers must be >= 1, got {flushers}")
        if key is not None and flushers > 1:
            raise ConfigurationError(
                "writes with a key need one flusher: two flushers could reorder them"
            )
        self._flush = flush
        self._key = key
        self._max_batch = max_batch
        self._max_flushers = flushers
        self._pending: list[tuple[W, asyncio.Future[R]]] = []
        # Counted by the flushers themselves: one that has just seen nothing pending is
        # no longer counted, though its task is not done yet.
        self._flushing = 0
        self._flushers: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.writes = 0

    async def submit(self, write: W) -> R:
        """Commit ``write`` with whatever else is waiting; its own outcome."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if self._flushing < self._max_flushers:
            # A free flusher takes this write alone, at once; it then takes what queued
            # meanwhile. The flusher outlives a caller that is cancelled: the others
            # still need it.
            self._flushing += 1
            flusher = loop.create_task(self._run([(write, future)]))
            self._flushers.add(flusher)
            flusher.add_done_callback(self._flushers.discard)
        else:
            self._pending.append((write, future))
        return await future

    async def _run(self, first: list[tuple[W, asyncio.Future[R]]]) -> None:
        try:
            await self._flush_pending(first)
        finally:
            self._flushing -= 1

    async def _flush_pending(self, first: list[tuple[W, asyncio.Future[R]]]) -> None:
        batch = first
        while batch:
            self.batches += 1
            self.writes += len(batch)
            try:
                outcomes = await self._flush([write for write, _ in batch])
                if len(outcomes) != len(batch):
                    raise AssertionError(f"{len(outcomes)} outcomes for {len(batch)} writes")
            except asyncio.CancelledError:
                # The loop is going away: nobody is left to flush what waits.
                for _, future in [*batch, *self._pending]:
                    future.cancel()
                self._pending = []
                raise
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                batch = self._take()
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue  # its caller was cancelled; the write stands, as any would
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
            batch = self._take()

    def _take(self) -> list[tuple[W, asyncio.Future[R]]]:
        """The oldest writes, at most one per key and ``max_batch`` in all; the rest wait."""
        taken: list[tuple[W, asyncio.Future[R]]] = []
        left: list[tuple[W, asyncio.Future[R]]] = []
        keys: set[Hashable] = set()
        for pending in self._pending:
            key = id(pending) if self._key is None else self._key(pending[0])
            if len(taken) < self._max_batch and key not in keys:
                keys.add(key)
                taken.append(pending)
            else:
                left.append(pending)
        self._pending = left
        return taken
