"""What a step handler, a worker job or a scene builder sees of the database.

:class:`Connection` is the open transaction the engine hands a unit of work (a handler's
``step.connection``, the argument of a unit given to :meth:`Database.run_driver`), and
:class:`Row` is what its queries return. Both are protocols: user code depends on them,
never on the driver, so the engine may change what stands behind them.

Errors come out of every method already translated to :mod:`saga.errors`: a duplicate key
is a :class:`~saga.errors.UniqueViolation`, a double booking an
:class:`~saga.errors.ExclusionViolation`, and so on, each chained to the driver's error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar, overload

_T = TypeVar("_T")


class Row(Protocol):
    """One result row: read a column by name (``row["id"]``) or position (``row[0]``);
    ``dict(row)`` gives the columns by name. Iterating yields the values, as a tuple does."""

    @overload
    def get(self, key: str) -> Any | None: ...
    @overload
    def get(self, key: str, default: _T) -> Any | _T: ...
    def keys(self) -> Iterator[str]: ...
    def values(self) -> Iterator[Any]: ...
    def items(self) -> Iterator[tuple[str, Any]]: ...
    @overload
    def __getitem__(self, index: str) -> Any: ...
    @overload
    def __getitem__(self, index: int) -> Any: ...
    def __iter__(self) -> Iterator[Any]: ...
    def __contains__(self, x: object) -> bool: ...
    def __len__(self) -> int: ...


class Connection(Protocol):
    """A connection inside a transaction the engine owns: no ``BEGIN``, ``COMMIT`` or
    ``close()``; the engine commits when the unit returns and rolls back when it raises.
    Parameters are PostgreSQL's ``$1``, ``$2``, ..."""

    async def execute(self, query: str, *args: Any) -> str:
        """Run a statement; returns its status tag, e.g. ``UPDATE 1``."""
        ...

    async def executemany(self, query: str, args: Iterable[Sequence[Any]]) -> None:
        """Run one statement for each argument tuple, pipelined in one round trip."""
        ...

    async def fetch(self, query: str, *args: Any) -> list[Row]:
        """Every row the query returns."""
        ...

    async def fetchrow(self, query: str, *args: Any) -> Row | None:
        """The first row, or None when there is none."""
        ...

    async def fetchval(self, query: str, *args: Any) -> Any:
        """The first column of the first row, or None when there is no row."""
        ...
