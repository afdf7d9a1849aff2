"""The proof that a patient's data does not reach the log.

The three journey sagas run through real engine processes (``saga run coordinator`` and
``saga run participant --journey ...``) logging JSON at debug level, so every payload,
context and result they handle is logged. The patient has a distinctive name, CPF,
e-mail, phone, mother's name (declared through ``LOG_SENSITIVE_FIELDS``), visit reason,
diagnosis and procedure codes and readings; some sagas are refused on them (an invalid
diagnosis code, a reading out of range, a coverage limit) and compensated. Every byte
the processes wrote is then searched for those values.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from journeys import world
from journeys.care.sagas import book_appointment
from journeys.health.sagas import complete_health_goal
from journeys.plan.sagas import GRANT_WELLNESS_CREDIT, submit_claim
from saga.coordinator import Coordinator
from saga.definition import SagaDefinition
from saga.machine import SagaStatus
from saga.store.driver import DriverConnection
from tests.integration.conftest import SagaEnvironment, engine_process

pytestmark = pytest.mark.integration

NAME = "Zephyrine Quixotte"
CPF = "987.654.321-09"
EMAIL = "zephyrine.quixotte@paciente.example"
PHONE = "+55 11 97531-8642"
MOTHER = "Ophelia Brandwater"
VISIT_REASON = "wheezing after xylophone lessons"
DIAGNOSIS = "K58.9QZ"
BAD_DIAGNOSIS = "QX-7731-ZD"  # not ICD-10: refused, and the refusal quotes it
PROCEDURE = "31009417"
WEIGHT = Decimal("417.93")
HEART_RATE = Decimal("431.79")  # out of range: refused, and the refusal quotes it

# What must never appear, in every spelling a leak could take.
PATIENT_DATA = [
    NAME,
    "Quixotte",
    CPF,
    CPF.replace(".", "").replace("-", ""),
    EMAIL,
    PHONE,
    "97531-8642",
    "975318642",
    MOTHER,
    VISIT_REASON,
    "xylophone",
    DIAGNOSIS,
    BAD_DIAGNOSIS,
    PROCEDURE,
    str(WEIGHT),
    str(HEART_RATE),
]

# Contact details a service might pass along with any saga (to notify the patient, say):
# the defaults cover them, and the mother's name is declared by LOG_SENSITIVE_FIELDS.
PATIENT = {"full_name": NAME, "cpf": CPF, "email": EMAIL, "phone": PHONE, "mothers_name": MOTHER}

PROCESSES = {
    "coordinator": ("run", "coordinator"),
    "care": ("run", "participant", "--journey", "care"),
    "plan": ("run", "participant", "--journey", "plan"),
    "gamification": ("run", "participant", "--journey", "gamification"),
    "health": ("run", "participant", "--journey", "health"),
}

SAGA_FIELDS = ("saga_id", "definition", "step", "journey", "phase", "attempt", "trace_id")
# Lines that are always about one saga's step, whichever process logs them.
SAGA_EVENTS = {
    "saga_transition",
    "reply_received",
    "command_received",
    "step_refused",
    "step_answered",
    "step_result",
}


class PatientCoordinator(Coordinator):
    """Starts every saga with the patient's contact details in its payload."""

    async def start(
        self,
        definition: SagaDefinition | str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> uuid.UUID:
        return await super().start(
            definition, {**payload, "patient": PATIENT}, idempotency_key=idempotency_key
        )


@dataclass(frozen=True, slots=True)
class Scene:
    member: world.Member
    slots: list[world.Slot]
    done: world.CompletedAppointment
    missed: world.CompletedAppointment
    weight_goal: uuid.UUID
    steps_goal: uuid.UUID


async def build_scene(conn: DriverConnection) -> Scene:
    member = await world.create_member(conn, limit_cents=30_000, name=NAME)
    provider = await world.create_provider(conn)
    return Scene(
        member=member,
        slots=await world.create_slots(conn, provider, 2),
        done=await world.create_completed_appointment(conn, member.user_id, provider),
        missed=await world.create_completed_appointment(
            conn, member.user_id, provider, days_ago=2, status="confirmed"
        ),
        weight_goal=await world.create_goal(
            conn, member.user_id, goal_type="weight_target", unit="kg", target_value=Decimal(450)
        ),
        steps_goal=await world.create_goal(conn, member.user_id),
    )


async def run_sagas(starter: Coordinator, scene: Scene) -> dict[str, SagaStatus]:
    user = scene.member.user_id

    async def claim(appointment: world.CompletedAppointment, diagnosis: str) -> uuid.UUID:
        return await submit_claim(
            starter,
            user_id=user,
            appointment_id=appointment.appointment_id,
            amount_cents=2_000,
            service_date=appointment.service_date,
            procedure_code=PROCEDURE,
            diagnosis_code=diagnosis,
        )

    started = {
        # Two consultations of R$ 250 on a limit of R$ 300: plan refuses one, care
        # releases its slot.
        "booking 1": await book_appointment(
            starter,
            user_id=user,
            slot_id=scene.slots[0].slot_id,
            amount_cents=25_000,
            reason=VISIT_REASON,
        ),
        "booking 2": await book_appointment(
            starter,
            user_id=user,
            slot_id=scene.slots[1].slot_id,
            amount_cents=25_000,
            reason=VISIT_REASON,
        ),
        "claim": await claim(scene.done, DIAGNOSIS),
        "claim with a bad diagnosis": await claim(scene.done, BAD_DIAGNOSIS),
        # Care will not bill a missed appointment: plan cancels the claim it made.
        "claim of a missed appointment": await claim(scene.missed, DIAGNOSIS),
        "goal": await complete_health_goal(
            starter,
            user_id=user,
            goal_id=scene.weight_goal,
            completion_value=WEIGHT,
            metric_type="weight",
        ),
        "goal with a bad reading": await complete_health_goal(
            starter,
            user_id=user,
            goal_id=scene.steps_goal,
            completion_value=HEART_RATE,
            metric_type="heart_rate",
        ),
    }
    ended = await asyncio.gather(
        *(starter.wait(saga_id, timeout=45) for saga_id in started.values())
    )
    return {name: summary.status for name, summary in zip(started, ended, strict=True)}


def leaks(raw: bytes, process: str) -> list[str]:
    """Each patient value found in ``raw`` (ignoring case), with the line it is on."""
    found = []
    for line in raw.lower().splitlines():
        found += [
            f"{process}: {v!r} in {line[:400]!r}"
            for v in PATIENT_DATA
            if v.lower().encode() in line
        ]
    return found


def json_lines(raw: bytes, process: str) -> list[dict[str, Any]]:
    lines = []
    for number, line in enumerate(raw.splitlines(), 1):
        try:
            lines.append(json.loads(line))
        except ValueError:
            pytest.fail(f"{process} line {number} is not JSON: {line[:300]!r}")
    return lines


async def test_a_patients_data_never_reaches_the_log(
    saga_env: SagaEnvironment, tmp_path: Path
) -> None:
    scene = await saga_env.database.run_driver(build_scene)
    environ = {
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "debug",
        "DATABASE_LOG_QUERIES": "true",
        "LOG_SENSITIVE_FIELDS": "mothers_name",
    }
    files = {name: tmp_path / f"{name}.log" for name in PROCESSES}
    with ExitStack() as stack:
        running = {
            name: stack.enter_context(
                engine_process(
                    saga_env,
                    *argv,
                    environ=environ,
                    output=stack.enter_context(files[name].open("wb")),
                )
            )
            for name, argv in PROCESSES.items()
        }
        async with PatientCoordinator(
            settings=saga_env.settings,
            database=saga_env.database,
            bootstrap_servers=saga_env.bootstrap,
        ) as starter:
            outcomes = await run_sagas(starter, scene)
        for process in running.values():
            process.send_signal(signal.SIGTERM)
        for name, process in running.items():
            assert await asyncio.to_thread(process.wait, 30) == 0, name

    assert sorted([outcomes.pop("booking 1"), outcomes.pop("booking 2")]) == [
        SagaStatus.COMPENSATED,
        SagaStatus.COMPLETED,
    ]
    assert outcomes == {
        "claim": SagaStatus.COMPLETED,
        "claim with a bad diagnosis": SagaStatus.COMPENSATED,
        "claim of a missed appointment": SagaStatus.COMPENSATED,
        "goal": SagaStatus.COMPLETED,
        "goal with a bad reading": SagaStatus.COMPENSATED,
    }

    everything: list[dict[str, Any]] = []
    found: list[str] = []
    for name, path in files.items():
        raw = path.read_bytes()
        found += leaks(raw, name)
        everything.extend(json_lines(raw, name))
    assert not found, "the patient's data reached the log:\n" + "\n".join(found[:20])

    # Every line about a saga says which saga, step and attempt, and its trace.
    about_sagas = [line for line in everything if "saga_id" in line]
    assert {line["event"] for line in about_sagas} >= SAGA_EVENTS
    assert all("saga_id" in line for line in everything if line["event"] in SAGA_EVENTS)
    for line in about_sagas:
        missing = [field for field in SAGA_FIELDS if line.get(field) is None]
        assert not missing, f"{line['event']} lacks {missing}: {line}"
    assert all(line["trace_id"] == uuid.UUID(line["saga_id"]).hex for line in about_sagas)
    # A reply or command handled names the command's span as well.
    assert all(len(line["span_id"]) == 16 for line in about_sagas if line["event"] in SAGA_EVENTS)

    # Not vacuous: the payloads and refusals were logged, masked.
    commands = [line for line in everything if line["event"] == "command_received"]
    # A child saga's payload is what its parent's position passes on, not the caller's.
    started_here = [c for c in commands if c["definition"] != GRANT_WELLNESS_CREDIT.name]
    of_children = [c for c in commands if c["definition"] == GRANT_WELLNESS_CREDIT.name]
    assert started_here
    assert of_children
    assert all(c["payload"]["patient"] == dict.fromkeys(PATIENT, "***") for c in started_here)
    assert all("patient" not in c["payload"] for c in of_children)
    assert any(line["payload"].get("diagnosis_code") == "***" for line in commands)
    assert any(line["payload"].get("reason") == "***" for line in commands)
    assert any(line["payload"].get("measurement") == "***" for line in commands)
    refusals = {line["reason"] for line in everything if line["event"] == "step_refused"}
    assert {
        "claim invalid",
        "invalid metric",
        "not covered",
        "appointment not completed",
    } <= refusals
    transitions = [line for line in everything if line["event"] == "saga_transition"]
    assert {line["status"] for line in transitions} >= {"completed", "compensating", "compensated"}
