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
    python -m benchmarks.sagas --workload journeys --levels 1,64,256 --sagas 1500

``--workload journeys`` measures the three real cross-journey sagas instead:
``book_appointment``, ``submit_claim`` and ``complete_health_goal`` in a 50/25/25 mix,
started with the start functions of ``journeys/*/sagas.py``, served by ``saga run
coordinator`` and ``saga run participant --journey care|plan|health|gamification`` (each
logged in as its journey's role). Each level's database gets the reference seeds and a
scene built in bulk (:mod:`.journey_scene`, sized by :mod:`.journey_mix`): members, some
with a small limit, providers with a free slot per booking (about 3 % of bookings take
the slot of the one before), a completed appointment per claim, an active goal per
goal-completion, a few goals of uncovered users. Refusals are the workload's own, so
outcomes are reported, not predicted; once every service has stopped, the level's
sagas go through :func:`journeys.invariants.check_invariants` (``allow_parked=True``),
whose violations are reported (and listed among the problems) next to the figures,
with completed / compensated / parked and latency per saga kind. Results go to
``benchmarks/results/sagas-journeys.json``, logs to ``sagas-journeys-logs/``.

Figures per level: finished sagas per second from the first start to the last finish,
p50/p95/p99 start-to-end latency from the database's own timestamps, outcomes, database
commits and Kafka messages per saga, CPU seconds and peak memory per process. It prints
two tables and writes JSON (``benchmarks/results/sagas.json``). Nothing is asserted.

The modules, by concern: :mod:`.options` (the command line), :mod:`.workload` (what a
workload provides), :mod:`.synthetic` and :mod:`.journeys_workload` (the two workloads,
the latter with :mod:`.journey_mix` and :mod:`.journey_scene`), :mod:`.workloads` (the
option's choice), :mod:`.processes` (the service processes, the broker's process, /proc
figures), :mod:`.database` (the benchmark
database and PostgreSQL's counters), :mod:`.topics` (Kafka's counters), :mod:`.loop` (the
closed loop and the completion watcher), :mod:`.level` (one level from start to clean-up),
:mod:`.measure` (turning what was read into figures), :mod:`.results` (the figures),
:mod:`.report` (tables and JSON) and :mod:`.cli` (``main``).
"""
