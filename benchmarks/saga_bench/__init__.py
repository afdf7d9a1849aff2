"""How many sagas per second the engine finishes, and how long one takes, with every part
in a process of its own: a coordinator (``saga run coordinator``), the care, plan and
gamification services (``benchmarks.saga_services``), PostgreSQL and the Tansu broker.

Each saga is ``BENCH_SAGA``: three steps, each a small real write in its journey's schema;
one saga in ten is refused at its last step and compensates the other two. For each
concurrency level the benchmark starts a fresh broker (Tansu's fetches slow down as its
partitions grow) and a fresh migrated database, starts the four processes, runs a few
warm-up sagas so that every consumer group holds its partitions, then keeps ``level``
sagas in flight until it has started ``--sagas`` of them (``--alone`` at level 1). This
process starts the sagas through a :class:`~saga.coordinator.Coordinator` that does not
consume replies, and sees them finish with one query over all the sagas in flight every
``--poll-ms`` milliseconds.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python -m benchmarks.sagas
    python -m benchmarks.sagas --levels 1,16 --sagas 200 --alone 50      # a quick smoke run

Figures per level: finished sagas per second from the first start to the last finish,
p50/p95/p99 start-to-end latency from the database's own timestamps, outcomes, database
commits and Kafka messages per saga, CPU seconds and peak memory per process. It prints
two tables and writes JSON (``benchmarks/results/sagas.json``). Nothing is asserted.

The modules, by concern: :mod:`.options` (the command line), :mod:`.processes` (the
service processes, the broker's process, /proc figures), :mod:`.database` (the benchmark
database and PostgreSQL's counters), :mod:`.topics` (Kafka's counters), :mod:`.loop` (the
closed loop and the completion watcher), :mod:`.level` (one level from start to clean-up),
:mod:`.measure` (turning what was read into figures), :mod:`.results` (the figures),
:mod:`.report` (tables and JSON) and :mod:`.cli` (``main``).
"""
