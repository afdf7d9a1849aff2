"""``python -m benchmarks.sagas``: the saga throughput benchmark. The driver lives in
:mod:`benchmarks.saga_bench`, whose docstring says what it measures and how."""

from __future__ import annotations

from benchmarks.saga_bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
