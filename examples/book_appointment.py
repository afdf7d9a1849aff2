"""Book an appointment: completes, then a second booking past the plan's limit is compensated.

Runs against DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS when they are set (the database
migrated), else against an embedded PostgreSQL and broker started for the run:

    .venv/bin/python examples/book_appointment.py

Prints each saga's timeline from the log tables and the rows it touched; exits non-zero
if a saga ends otherwise than described.
"""

from __future__ import annotations

import sys

from journeys.scenarios import SCENARIOS
from saga import run_standalone

if __name__ == "__main__":
    sys.exit(run_standalone([s for s in SCENARIOS if s.name == "book_appointment"]))
