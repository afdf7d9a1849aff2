"""The reliability suite: a mixed load of the three cross-journey sagas across real
processes (coordinator, participants, worker, the broker, PostgreSQL) while faults are
injected (processes killed and restarted, the broker restarted, messages duplicated and
reordered, database backends terminated, serialization conflicts, poison messages),
then, once the faults stop and the system drains, the invariants checked and what
happened reported: sagas by outcome, faults by kind, dead letters, effects lost or
duplicated and the time to drain. :mod:`.faults` holds the injectors that need no
process control."""
