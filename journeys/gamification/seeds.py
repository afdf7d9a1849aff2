"""Seed data of gamification: the achievement catalogue (reference data); the sample
members' profiles, events, points and achievements (samples).

The samples replay what the other journeys' samples did (devices connected, goals
completed, appointments booked, attended or cancelled, claims sent) as gamification
events, award points for them in the ledger and grant the achievements they earn. A
profile's ``xp`` is never written here: the ledger's trigger adds each entry to it.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache

from sqlalchemy import column, table, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from journeys.care.seeds import SampleAppointment, sample_appointments
from journeys.gamification.levels import level_for
from journeys.health.seeds import sample_devices, sample_goals
from journeys.plan.seeds import sample_claims
from journeys.seeding import (
    SAMPLE_ANCHOR,
    Counts,
    Row,
    brt,
    ids_by,
    insert_rows,
    rng,
    seed_id,
)
from journeys.shared.seeds import (
    SampleUser,
    sample_patients,
)
from saga import FunctionSeeder

GAMIFICATION_ACHIEVEMENT = table(
    "gamification_achievement",
    column("id"),
    column("code"),
    column("name"),
    column("description"),
    column("points_reward"),
    column("journey"),
    schema="gamification",
)
GAMIFICATION_PROFILE = table(
    "gamification_profile",
    column("id"),
    column("user_id"),
    column("display_name"),
    column("level"),
    schema="gamification",
)
GAMIFICATION_POINTS_LEDGER = table(
    "gamification_points_ledger",
    column("id"),
    column("profile_id"),
    column("points"),
    column("reason"),
    column("source_journey"),
    column("source_ref"),
    column("reverses_entry_id"),
    column("created_at"),
    column("updated_at"),
    schema="gamification",
)
GAMIFICATION_USER_ACHIEVEMENT = table(
    "gamification_user_achievement",
    column("id"),
    column("profile_id"),
    column("achievement_id"),
    column("granted_at"),
    schema="gamification",
)
GAMIFICATION_EVENT = table(
    "gamification_event",
    column("id"),
    column("user_id"),
    column("event_type"),
    column("source_journey"),
    column("payload", JSONB),
    column("occurred_at"),
    schema="gamification",
)

# --- Reference data: achievements -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Achievement:
    code: str
    name: str
    description: str
    points_reward: int
    journey: str


ACHIEVEMENTS = {
    a.code: a
    for a in (
        Achievement(
            "first_appointment", "Primeira consulta",
            "Compareça à sua primeira consulta agendada pelo app", 50, "care",
        ),
        Achievement(
            "telemedicine_first", "Consulta sem sair de casa",
            "Faça sua primeira teleconsulta", 30, "care",
        ),
        Achievement(
            "appointments_5", "Paciente assíduo",
            "Compareça a cinco consultas agendadas", 100, "care",
        ),
        Achievement(
            "device_connected", "Conectado",
            "Conecte um relógio, pulseira ou aparelho de medição ao app", 20, "health",
        ),
        Achievement(
            "first_goal_completed", "Meta batida",
            "Conclua sua primeira meta de saúde", 50, "health",
        ),
        Achievement(
            "steps_week", "Semana ativa",
            "Caminhe 8.000 passos por dia durante sete dias seguidos", 75, "health",
        ),
        Achievement(
            "first_claim", "Reembolso pelo app",
            "Envie sua primeira solicitação de reembolso pelo app", 30, "plan",
        ),
        Achievement(
            "digital_card", "Carteirinha digital",
            "Apresente sua carteirinha digital em um atendimento", 10, "plan",
        ),
        Achievement(
            "profile_complete", "Perfil completo",
            "Complete seu perfil com foto e contato de emergência", 20, "gamification",
        ),
        Achievement("level_5", "Nível 5", "Alcance o nível 5", 0, "gamification"),
    )
}  # fmt: skip


def achievement_rows() -> list[Row]:
    return [
        {
            "id": seed_id("gamification_achievement", a.code),
            "code": a.code,
            "name": a.name,
            "description": a.description,
            "points_reward": a.points_reward,
            "journey": a.journey,
        }
        for a in ACHIEVEMENTS.values()
    ]


async def seed_gamification_reference(conn: AsyncConnection) -> Counts:
    return {
        GAMIFICATION_ACHIEVEMENT.fullname: await insert_rows(
            conn, GAMIFICATION_ACHIEVEMENT, achievement_rows(), conflict=("code",)
        )
    }


# --- Samples: what the members did -------------------------------------------------------------

BOOKING_POINTS = 10
ATTENDANCE_POINTS = 30


@dataclass(frozen=True, slots=True)
class Happening:
    """Something a member did: always an event; a ledger entry when it is worth points."""

    user: SampleUser
    at: datetime
    event_type: str
    journey: str
    # The ledger's source_ref: the row it is about, "<table>:<id>" (or achievement code).
    ref: str
    payload: dict[str, str] = field(default_factory=dict)
    points: int = 0
    reason: str = ""
    # An entry that takes back the points of the member's earlier happening with this ref.
    reverses: bool = False

    @property
    def key(self) -> str:
        return f"{self.user.key}:{self.ref}:{self.event_type}"


def _device_happenings(users: dict[uuid.UUID, SampleUser]) -> Iterable[Happening]:
    for device in sample_devices():
        yield Happening(
            user=users[device.user_id],
            at=device.connected_at,
            event_type="device_connected",
            journey="health",
            ref=f"health_device_connection:{device.id}",
            payload={"device_type": device.device_type, "provider_name": device.provider_name},
        )


def _goal_happenings() -> Iterable[Happening]:
    for goal in sample_goals():
        if goal.completed_at is None:
            continue
        yield Happening(
            user=goal.user,
            at=goal.completed_at,
            event_type="goal_completed",
            journey="health",
            ref=f"health_goal:{goal.id}",
            payload={"goal_type": goal.template.goal_type, "template": goal.template.code},
            points=goal.template.points_reward,
            reason=f"Meta concluída: {goal.template.description}",
        )


def _booked_at(appointment: SampleAppointment, random_: random.Random) -> datetime:
    """When the member booked: days before the visit, and before the anchor."""
    latest = brt(SAMPLE_ANCHOR - timedelta(days=3), 20)
    candidate = appointment.slot.starts_at - timedelta(days=random_.randint(5, 15))
    return min(candidate, latest) - timedelta(minutes=random_.randrange(600))


def _appointment_happenings(
    appointment: SampleAppointment, random_: random.Random
) -> list[Happening]:
    ref = f"care_appointment:{appointment.id}"
    payload = {
        "appointment_id": str(appointment.id),
        "specialty": appointment.slot.provider.specialty_code,
        "telemedicine": "yes" if appointment.slot.is_telemedicine else "no",
    }

    def happening(event_type: str, at: datetime, points: int, reason: str) -> Happening:
        return Happening(
            user=appointment.patient,
            at=at,
            event_type=event_type,
            journey="care",
            ref=ref,
            payload=payload,
            points=points,
            reason=reason,
            reverses=points < 0,
        )

    booked_at = _booked_at(appointment, random_)
    happenings = [
        happening("appointment_booked", booked_at, BOOKING_POINTS, "Consulta agendada pelo app")
    ]
    if appointment.status in ("completed", "billed"):
        happenings.append(
            happening(
                "appointment_completed",
                appointment.slot.ends_at,
                ATTENDANCE_POINTS,
                "Consulta realizada",
            )
        )
    elif appointment.status == "cancelled":
        # The booking's points go back, as the booking saga's compensation does it.
        cancelled_at = booked_at + timedelta(days=1, hours=random_.randint(0, 12))
        happenings.append(
            happening(
                "appointment_cancelled",
                cancelled_at,
                -BOOKING_POINTS,
                "Estorno: consulta cancelada",
            )
        )
    return happenings


def _all_appointment_happenings() -> Iterable[Happening]:
    random_ = rng("gamification.appointments")
    for appointment in sample_appointments():
        # A hold is not a booking until it is confirmed.
        if appointment.status not in ("held", "released"):
            yield from _appointment_happenings(appointment, random_)


def _claim_happenings() -> Iterable[Happening]:
    for claim in sample_claims():
        if claim.status == "cancelled":
            continue
        yield Happening(
            user=claim.coverage.user,
            at=claim.submitted_at,
            event_type="claim_submitted",
            journey="plan",
            ref=f"plan_claim:{claim.id}",
            payload={"claim_id": str(claim.id), "procedure_code": claim.procedure_code},
        )


# Achievements earned by the first happening of a kind.
FIRST_OF: dict[str, Callable[[Happening], bool]] = {
    "device_connected": lambda h: h.event_type == "device_connected",
    "first_goal_completed": lambda h: h.event_type == "goal_completed",
    "first_appointment": lambda h: h.event_type == "appointment_completed",
    "telemedicine_first": lambda h: (
        h.event_type == "appointment_completed" and h.payload["telemedicine"] == "yes"
    ),
    "first_claim": lambda h: h.event_type == "claim_submitted",
}


def _unlocked(achievement: Achievement, first: Happening) -> Happening:
    return Happening(
        user=first.user,
        at=first.at + timedelta(seconds=1),
        event_type="achievement_unlocked",
        journey=achievement.journey,
        ref=f"gamification_achievement:{achievement.code}",
        payload={"achievement": achievement.code},
        points=achievement.points_reward,
        reason=f"Conquista: {achievement.name}",
    )


def _achievement_happenings(happenings: list[Happening]) -> list[Happening]:
    unlocked = []
    for code, earns in FIRST_OF.items():
        firsts: dict[str, Happening] = {}
        for happening in happenings:
            if earns(happening):
                firsts.setdefault(happening.user.key, happening)
        unlocked += [_unlocked(ACHIEVEMENTS[code], first) for first in firsts.values()]
    return unlocked


@cache
def sample_happenings() -> tuple[Happening, ...]:
    """Everything the sample members did, oldest first."""
    users = {user.id: user for user in sample_patients()}
    happenings = sorted(
        [
            *_device_happenings(users),
            *_goal_happenings(),
            *_all_appointment_happenings(),
            *_claim_happenings(),
        ],
        key=lambda h: (h.at, h.key),
    )
    happenings += _achievement_happenings(happenings)
    return tuple(sorted(happenings, key=lambda h: (h.at, h.key)))


# --- Samples: rows ----------------------------------------------------------------------------


def profile_id(user: SampleUser) -> uuid.UUID:
    return seed_id("gamification_profile", user.key)


def profile_rows() -> list[Row]:
    xp: dict[str, int] = defaultdict(int)
    for happening in sample_happenings():
        xp[happening.user.key] += happening.points
    return [
        {
            "id": profile_id(user),
            "user_id": user.id,
            "display_name": f"{user.given_name} {user.full_name.split()[-1][0]}.",
            # Level is not derived by the database; it is set from the ledger the
            # profile is about to receive (xp itself is the ledger trigger's to add up).
            "level": level_for(xp[user.key]),
        }
        for user in sample_patients()
    ]


def ledger_rows() -> list[Row]:
    """Entries oldest first, so a revoke comes after the award it reverses and the
    running xp never dips below zero (the profile's CHECK)."""
    rows = []
    awards: dict[tuple[str, str], uuid.UUID] = {}
    for h in sample_happenings():
        if not h.points:
            continue
        entry_id = seed_id("gamification_points_ledger", h.key)
        rows.append(
            {
                "id": entry_id,
                "profile_id": profile_id(h.user),
                "points": h.points,
                "reason": h.reason,
                "source_journey": h.journey,
                "source_ref": h.ref,
                "reverses_entry_id": awards[(h.user.key, h.ref)] if h.reverses else None,
                # The sample history's own time, so a member's statement reads in order.
                "created_at": h.at,
                "updated_at": h.at,
            }
        )
        awards.setdefault((h.user.key, h.ref), entry_id)
    return rows


def user_achievement_rows(achievement_ids: dict[str, uuid.UUID]) -> list[Row]:
    return [
        {
            "id": seed_id("gamification_user_achievement", h.key),
            "profile_id": profile_id(h.user),
            "achievement_id": achievement_ids[h.payload["achievement"]],
            "granted_at": h.at,
        }
        for h in sample_happenings()
        if h.event_type == "achievement_unlocked"
    ]


def event_rows() -> list[Row]:
    return [
        {
            "id": seed_id("gamification_event", h.key),
            "user_id": h.user.id,
            "event_type": h.event_type,
            "source_journey": h.journey,
            "payload": {**h.payload, "source_ref": h.ref},
            "occurred_at": h.at,
        }
        for h in sample_happenings()
    ]


async def seed_gamification_samples(conn: AsyncConnection) -> Counts:
    achievement_ids = await ids_by(conn, GAMIFICATION_ACHIEVEMENT, "code", ACHIEVEMENTS)
    counts = {
        GAMIFICATION_PROFILE.fullname: await insert_rows(
            conn, GAMIFICATION_PROFILE, profile_rows()
        ),
        GAMIFICATION_EVENT.fullname: await insert_rows(
            conn, GAMIFICATION_EVENT, event_rows(), conflict=("id", "occurred_at")
        ),
        GAMIFICATION_POINTS_LEDGER.fullname: await insert_rows(
            conn, GAMIFICATION_POINTS_LEDGER, ledger_rows()
        ),
        GAMIFICATION_USER_ACHIEVEMENT.fullname: await insert_rows(
            conn, GAMIFICATION_USER_ACHIEVEMENT, user_achievement_rows(achievement_ids)
        ),
    }
    if counts[GAMIFICATION_PROFILE.fullname] or counts[GAMIFICATION_POINTS_LEDGER.fullname]:
        # New members or points: bring the leaderboard up to date. Not when nothing was
        # inserted, so that a second run leaves everything as it was.
        await conn.execute(text("SELECT gamification.refresh_leaderboard()"))
    return counts


REFERENCE = FunctionSeeder(name="gamification.reference", run=seed_gamification_reference)
SAMPLES = FunctionSeeder(
    name="gamification.samples", run=seed_gamification_samples, samples_only=True
)
