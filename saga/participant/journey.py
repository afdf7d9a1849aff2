"""A journey service as the engine sees it: its name, schema, database role, step handlers
and the sagas it starts, published by a package under the ``saga.journeys`` entry point
group so that ``saga run participant --journey care`` finds it without ``saga`` importing
the journeys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from sqlalchemy.engine import make_url

from saga.definition import SagaDefinition
from saga.errors import ConfigurationError
from saga.masking import declare_sensitive
from saga.participant.runtime import Handler
from saga.participant.service import Participant
from saga.retry import RetryPolicy
from saga.settings import Settings
from saga.store.database import Database
from saga.store.inbox import JourneyTables
from saga.worker.job import Job
from saga.worker.policies import PartitionPolicy

ENTRY_POINT_GROUP = "saga.journeys"


@dataclass(frozen=True)
class JourneyService:
    """Everything needed to run one journey's participant."""

    name: str
    schema: str
    database_role: str
    handlers: Mapping[str, Handler]
    table_prefix: str | None = None
    # The sagas this service starts; the coordinator registers them when it starts.
    definitions: Sequence[SagaDefinition] = field(default_factory=tuple)
    # How often a transaction that lost a serialization conflict or a deadlock is re-run;
    # None takes DATABASE_RETRY_* from the settings. A journey whose steps contend for
    # one row (a member's coverage) needs more attempts than the default.
    retry: RetryPolicy | None = None
    # Background jobs only this journey knows how to do (releasing expired holds, ...);
    # `saga run worker` runs them beside the engine's own.
    maintenance: Sequence[Job] = field(default_factory=tuple)
    # Partitioned tables the worker keeps partitions ahead for (and detaches past retention).
    partitions: Sequence[PartitionPolicy] = field(default_factory=tuple)
    # Tables whose rows are updated or deleted all the time (a ledger, appointments,
    # slots), ``schema.table``: the worker watches their dead tuples and index bloat
    # beside the journey's inbox and outbox, which it always watches.
    churning_tables: Sequence[str] = field(default_factory=tuple)
    # Fields of the payloads of this service's sagas and of its handlers' results that hold
    # personal or health data (beyond saga.masking's defaults): masked wherever they
    # appear, in every process that discovers this service's package.
    sensitive_fields: frozenset[str] = frozenset()

    @property
    def tables(self) -> JourneyTables:
        """The journey's inbox and outbox."""
        return JourneyTables.of(self.schema, self.table_prefix or self.name)

    def participant(self, *, settings: Settings, database: Database, **options: Any) -> Participant:
        """A participant serving every handler; ``options`` go to :class:`Participant`."""
        declare_sensitive(self.sensitive_fields)
        options.setdefault("retry", self.retry)
        participant = Participant(
            self.name,
            schema=self.schema,
            table_prefix=self.table_prefix,
            settings=settings,
            database=database,
            **options,
        )
        for action, handler in self.handlers.items():
            participant.register(action, handler)
        return participant

    def database_url(self, url: str) -> str:
        """``url`` logging in as this journey's own role.

        The URL's password is kept only when the URL already names the role: a production
        service is given its own credentials, while a development URL of the superuser
        (trust authentication) is narrowed to the role with no password.
        """
        parsed = make_url(url)
        if parsed.username == self.database_role:
            return url
        narrowed = parsed.set(username=self.database_role, password=None)
        return narrowed.render_as_string(hide_password=False)


def discover_journeys() -> dict[str, JourneyService]:
    """Every journey service published under ``saga.journeys``, by name; their
    sensitive fields are masked in this process from now on.

    A command carries its saga's whole payload and every earlier step's result, so a
    participant of one journey sees the others' data: every process declares them all.
    """
    found: dict[str, JourneyService] = {}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        service = ep.load()
        if not isinstance(service, JourneyService):
            raise ConfigurationError(
                f"entry point {ep.name!r} in {ENTRY_POINT_GROUP} must be a JourneyService, "
                f"got {type(service).__name__}"
            )
        if service.name in found:
            raise ConfigurationError(f"two journey services are named {service.name!r}")
        found[service.name] = service
    for service in found.values():
        declare_sensitive(service.sensitive_fields)
    return found


def journey_named(name: str) -> JourneyService:
    journeys = discover_journeys()
    if name not in journeys:
        known = ", ".join(sorted(journeys)) or "none"
        raise ConfigurationError(f"no journey service named {name!r} (installed: {known})")
    return journeys[name]
