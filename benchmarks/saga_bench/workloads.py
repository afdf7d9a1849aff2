"""``--workload``'s names and the workloads they stand for."""

from __future__ import annotations

from benchmarks.saga_bench.options import Options
from benchmarks.saga_bench.workload import Workload


def workload_for(options: Options) -> Workload:
    if options.workload == "journeys":
        from benchmarks.saga_bench.journeys_workload import Journeys

        return Journeys()
    from benchmarks.saga_bench.synthetic import Synthetic

    return Synthetic(options.warmup)
