"""``python -m benchmarks.saga_bench``, the same as ``python -m benchmarks.sagas``."""

from benchmarks.saga_bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
