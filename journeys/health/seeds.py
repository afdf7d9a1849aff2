"""Seed data of the health journey: goal templates (reference data); the sample members'
devices, four weeks of metrics and their goals (samples).

The samples follow one health profile per member (a wearable or not, hypertension,
diabetes), so that devices, metrics and goals agree with each other.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import cache

from sqlalchemy import column, table
from sqlalchemy.ext.asyncio import AsyncConnection

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

HEALTH_GOAL_TEMPLATE = table(
    "health_goal_template",
    column("id"),
    column("code"),
    column("goal_type"),
    column("default_target_value"),
    column("unit"),
    column("default_period_days"),
    column("points_reward"),
    column("description"),
    schema="health_journey",
)
HEALTH_DEVICE_CONNECTION = table(
    "health_device_connection",
    column("id"),
    column("user_id"),
    column("device_type"),
    column("provider_name"),
    column("external_device_id"),
    column("status"),
    column("connected_at"),
    column("last_synced_at"),
    schema="health_journey",
)
HEALTH_METRIC = table(
    "health_metric",
    column("id"),
    column("user_id"),
    column("metric_type"),
    column("value"),
    column("unit"),
    column("recorded_at"),
    column("source"),
    column("device_connection_id"),
    column("notes"),
    schema="health_journey",
)
HEALTH_GOAL = table(
    "health_goal",
    column("id"),
    column("user_id"),
    column("goal_template_id"),
    column("goal_type"),
    column("target_value"),
    column("unit"),
    column("period_start"),
    column("period_end"),
    column("status"),
    column("completed_at"),
    column("completion_value"),
    column("points_reward"),
    schema="health_journey",
)

# The units the table's CHECK pairs with each metric type.
METRIC_UNITS = {
    "heart_rate": "bpm",
    "blood_pressure_systolic": "mmHg",
    "blood_pressure_diastolic": "mmHg",
    "blood_glucose": "mg/dL",
    "weight": "kg",
    "steps": "steps",
    "sleep_hours": "h",
}

# --- Reference data: goal templates -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GoalTemplate:
    code: str
    goal_type: str
    target: Decimal
    unit: str
    period_days: int
    points_reward: int
    description: str
    # Control goals are met by staying at or under the target; the others by reaching it.
    at_most: bool = False


GOAL_TEMPLATES = {
    template.code: template
    for template in (
        GoalTemplate(
            "daily_steps_8000", "daily_steps", Decimal(8000), "steps", 7, 50,
            "Caminhar 8.000 passos por dia durante uma semana",
        ),
        GoalTemplate(
            "daily_steps_10000", "daily_steps", Decimal(10000), "steps", 7, 80,
            "Caminhar 10.000 passos por dia durante uma semana",
        ),
        GoalTemplate(
            "weekly_exercise_150", "weekly_exercise_minutes", Decimal(150), "min", 7, 60,
            "Fazer 150 minutos de atividade física moderada na semana, como recomenda a OMS",
        ),
        GoalTemplate(
            "daily_active_30", "daily_active_minutes", Decimal(30), "min", 7, 40,
            "Ficar ativo pelo menos 30 minutos todos os dias",
        ),
        GoalTemplate(
            "sleep_7h", "sleep_hours", Decimal(7), "h", 14, 60,
            "Dormir pelo menos 7 horas por noite durante duas semanas",
        ),
        GoalTemplate(
            "weight_target_90d", "weight_target", Decimal(70), "kg", 90, 200,
            "Chegar ao peso combinado com seu médico em até 90 dias",
            at_most=True,
        ),
        GoalTemplate(
            "blood_pressure_130", "blood_pressure_control", Decimal(130), "mmHg", 30, 150,
            "Manter a pressão sistólica abaixo de 130 mmHg por 30 dias",
            at_most=True,
        ),
        GoalTemplate(
            "fasting_glucose_130", "blood_glucose_control", Decimal(130), "mg/dL", 30, 150,
            "Manter a glicemia de jejum até 130 mg/dL por 30 dias",
            at_most=True,
        ),
    )
}  # fmt: skip


def template_rows() -> list[Row]:
    return [
        {
            "id": seed_id("health_goal_template", t.code),
            "code": t.code,
            "goal_type": t.goal_type,
            "default_target_value": t.target,
            "unit": t.unit,
            "default_period_days": t.period_days,
            "points_reward": t.points_reward,
            "description": t.description,
        }
        for t in GOAL_TEMPLATES.values()
    ]


async def seed_health_reference(conn: AsyncConnection) -> Counts:
    return {
        HEALTH_GOAL_TEMPLATE.fullname: await insert_rows(
            conn, HEALTH_GOAL_TEMPLATE, template_rows(), conflict=("code",)
        )
    }


# --- Samples: who measures what -----------------------------------------------------------------

HISTORY_DAYS = 28

DEVICE_APPS = {
    "smartwatch": ("Apple Health", "Samsung Health", "Garmin Connect", "Google Fit"),
    "fitness_tracker": ("Mi Fitness", "Fitbit", "Huawei Health"),
    "blood_pressure_monitor": ("Omron Connect", "G-Tech Saúde"),
    "glucose_monitor": ("FreeStyle LibreLink", "Accu-Chek"),
    "smart_scale": ("Zepp Life", "Withings Health Mate"),
}


@dataclass(frozen=True, slots=True)
class HealthProfile:
    user: SampleUser
    wearable: str | None
    scale: bool
    hypertensive: bool
    bp_monitor: bool
    diabetic: bool
    glucose_monitor: bool
    weight_kg: float
    daily_steps: int
    sleep_hours: float
    resting_heart_rate: int


@dataclass(frozen=True, slots=True)
class SampleDevice:
    id: uuid.UUID
    user_id: uuid.UUID
    device_type: str
    provider_name: str
    external_device_id: str
    connected_at: datetime
    last_synced_at: datetime


@dataclass(frozen=True, slots=True)
class SampleGoal:
    id: uuid.UUID
    user: SampleUser
    template: GoalTemplate
    target_value: Decimal
    period_start: date
    period_end: date
    status: str
    completed_at: datetime | None
    completion_value: Decimal | None


def _health_profile(user: SampleUser) -> HealthProfile:
    random_ = rng(f"health.profile:{user.key}")
    hypertensive = random_.random() < 0.3
    diabetic = random_.random() < 0.15
    return HealthProfile(
        user=user,
        wearable=random_.choices(["smartwatch", "fitness_tracker", None], [4, 3, 3])[0],
        scale=random_.random() < 0.3,
        hypertensive=hypertensive,
        bp_monitor=hypertensive and random_.random() < 0.6,
        diabetic=diabetic,
        glucose_monitor=diabetic and random_.random() < 0.7,
        weight_kg=round(random_.uniform(52, 105), 1),
        daily_steps=random_.randrange(3500, 12500, 100),
        sleep_hours=round(random_.uniform(5.5, 8.0), 1),
        resting_heart_rate=random_.randint(56, 84),
    )


@cache
def health_profiles() -> tuple[HealthProfile, ...]:
    return tuple(_health_profile(user) for user in sample_patients())


def _device_types(profile: HealthProfile) -> list[str]:
    wanted = {
        "smart_scale": profile.scale,
        "blood_pressure_monitor": profile.bp_monitor,
        "glucose_monitor": profile.glucose_monitor,
    }
    extra = [device_type for device_type, has in wanted.items() if has]
    return [profile.wearable, *extra] if profile.wearable else extra


def _devices_of(profile: HealthProfile) -> list[SampleDevice]:
    random_ = rng(f"health.devices:{profile.user.key}")
    devices = []
    for device_type in _device_types(profile):
        # Connected before the metric history starts, since the metrics name the device.
        connected_on = SAMPLE_ANCHOR - timedelta(days=random_.randint(HISTORY_DAYS + 7, 400))
        devices.append(
            SampleDevice(
                id=seed_id("health_device_connection", f"{profile.user.key}:{device_type}"),
                user_id=profile.user.id,
                device_type=device_type,
                provider_name=random_.choice(DEVICE_APPS[device_type]),
                external_device_id=f"{random_.getrandbits(48):012X}",
                connected_at=brt(connected_on, random_.randint(8, 22), random_.randrange(60)),
                last_synced_at=brt(SAMPLE_ANCHOR - timedelta(days=1), 23, 55),
            )
        )
    return devices


@cache
def sample_devices() -> tuple[SampleDevice, ...]:
    return tuple(device for profile in health_profiles() for device in _devices_of(profile))


def device_rows() -> list[Row]:
    return [
        {
            "id": d.id,
            "user_id": d.user_id,
            "device_type": d.device_type,
            "provider_name": d.provider_name,
            "external_device_id": d.external_device_id,
            "status": "connected",
            "connected_at": d.connected_at,
            "last_synced_at": d.last_synced_at,
        }
        for d in sample_devices()
    ]


# --- Samples: metrics ---------------------------------------------------------------------------


class MetricLog:
    """One member's metric rows; a reading comes from their device of that kind if any."""

    def __init__(self, profile: HealthProfile) -> None:
        self.profile = profile
        self.devices = {d.device_type: d for d in sample_devices() if d.user_id == profile.user.id}
        self.rows: list[Row] = []

    def add(
        self,
        metric_type: str,
        value: float,
        at: datetime,
        device_type: str | None,
        notes: str | None = None,
    ) -> None:
        device = self.devices.get(device_type) if device_type else None
        key = f"{self.profile.user.key}:{metric_type}:{at.isoformat()}"
        self.rows.append(
            {
                "id": seed_id("health_metric", key),
                "user_id": self.profile.user.id,
                "metric_type": metric_type,
                "value": Decimal(f"{value:.2f}"),
                "unit": METRIC_UNITS[metric_type],
                "recorded_at": at,
                "source": "device" if device else "manual",
                "device_connection_id": device.id if device else None,
                "notes": None if device else notes,
            }
        )


def _wearable_day(log: MetricLog, day: date, random_: random.Random) -> None:
    profile = log.profile
    if profile.wearable is None:
        return
    weekend = day.weekday() >= 5
    usual = profile.daily_steps * (0.8 if weekend else 1.0)
    steps = max(500, round(random_.gauss(usual, usual * 0.25)))
    log.add("steps", steps, brt(day, 23, 50), profile.wearable)
    sleep = min(11.0, max(3.5, random_.gauss(profile.sleep_hours + (0.6 if weekend else 0), 0.6)))
    log.add("sleep_hours", sleep, brt(day, 7, 10), profile.wearable)
    if profile.wearable == "smartwatch":
        heart_rate = round(random_.gauss(profile.resting_heart_rate, 3))
        log.add("heart_rate", heart_rate, brt(day, 7, 30), profile.wearable)


def _weight_day(log: MetricLog, day: date, random_: random.Random) -> None:
    if day.weekday() != 0:
        return
    weeks_in = (day - (SAMPLE_ANCHOR - timedelta(days=HISTORY_DAYS))).days // 7
    weight = log.profile.weight_kg - 0.2 * weeks_in + random_.gauss(0, 0.3)
    log.add("weight", round(weight, 1), brt(day, 7, 0), "smart_scale", "Em jejum, logo ao acordar")


def _blood_pressure_day(log: MetricLog, day: date, random_: random.Random) -> None:
    if not log.profile.hypertensive or day.weekday() not in (0, 2, 4):
        return
    at = brt(day, 8, 0)
    note = "Medida em casa, após 5 minutos sentado"
    log.add(
        "blood_pressure_systolic", round(random_.gauss(138, 8)), at, "blood_pressure_monitor", note
    )
    log.add(
        "blood_pressure_diastolic", round(random_.gauss(88, 5)), at, "blood_pressure_monitor", note
    )


def _glucose_day(log: MetricLog, day: date, random_: random.Random) -> None:
    profile = log.profile
    # A sensor reads every day; a finger-prick meter is used twice a week.
    if not profile.diabetic or (not profile.glucose_monitor and day.weekday() not in (0, 3)):
        return
    glucose = min(300, max(70, round(random_.gauss(128, 18))))
    log.add("blood_glucose", glucose, brt(day, 6, 40), "glucose_monitor", "Glicemia de jejum")


def metric_rows_of(profile: HealthProfile) -> list[Row]:
    random_ = rng(f"health.metrics:{profile.user.key}")
    log = MetricLog(profile)
    for days_back in range(HISTORY_DAYS, 0, -1):
        day = SAMPLE_ANCHOR - timedelta(days=days_back)
        for record_day in (_wearable_day, _weight_day, _blood_pressure_day, _glucose_day):
            record_day(log, day, random_)
    return log.rows


def metric_rows() -> list[Row]:
    return [row for profile in health_profiles() for row in metric_rows_of(profile)]


# --- Samples: goals -----------------------------------------------------------------------------


def _fitting_template(profile: HealthProfile, random_: random.Random) -> GoalTemplate:
    if profile.hypertensive:
        code = "blood_pressure_130"
    elif profile.diabetic:
        code = "fasting_glucose_130"
    elif profile.wearable:
        code = "daily_steps_10000" if profile.daily_steps >= 8500 else "daily_steps_8000"
    else:
        code = random_.choice(
            ["weekly_exercise_150", "daily_active_30", "sleep_7h", "weight_target_90d"]
        )
    return GOAL_TEMPLATES[code]


def _goal_target(profile: HealthProfile, template: GoalTemplate) -> Decimal:
    if template.goal_type == "weight_target":
        return Decimal(round(profile.weight_kg - 4))
    return template.target


def _goal(
    profile: HealthProfile, template: GoalTemplate, start: date, status: str, random_: random.Random
) -> SampleGoal:
    target = _goal_target(profile, template)
    end = start + timedelta(days=template.period_days - 1)
    done = status == "completed"
    factor = random_.uniform(0.85, 0.98) if template.at_most else random_.uniform(1.02, 1.25)
    return SampleGoal(
        id=seed_id("health_goal", f"{profile.user.key}:{template.code}:{start.isoformat()}"),
        user=profile.user,
        template=template,
        target_value=target,
        period_start=start,
        period_end=end,
        status=status,
        completed_at=brt(end, 21, 30) if done else None,
        completion_value=(target * Decimal(f"{factor:.4f}")).quantize(Decimal("0.01"))
        if done
        else None,
    )


def _goals_of(profile: HealthProfile) -> list[SampleGoal]:
    random_ = rng(f"health.goals:{profile.user.key}")
    template = _fitting_template(profile, random_)
    # The current period has begun on or before the anchor and is still running.
    start = SAMPLE_ANCHOR - timedelta(days=random_.randrange(template.period_days))
    goals = [_goal(profile, template, start, "active", random_)]
    if random_.random() < 0.65:
        previous_start = start - timedelta(days=template.period_days)
        status = "completed" if random_.random() < 0.75 else "abandoned"
        goals.insert(0, _goal(profile, template, previous_start, status, random_))
    return goals


@cache
def sample_goals() -> tuple[SampleGoal, ...]:
    return tuple(goal for profile in health_profiles() for goal in _goals_of(profile))


def goal_rows(template_ids: dict[str, uuid.UUID]) -> list[Row]:
    return [
        {
            "id": g.id,
            "user_id": g.user.id,
            "goal_template_id": template_ids[g.template.code],
            "goal_type": g.template.goal_type,
            "target_value": g.target_value,
            "unit": g.template.unit,
            "period_start": g.period_start,
            "period_end": g.period_end,
            "status": g.status,
            "completed_at": g.completed_at,
            "completion_value": g.completion_value,
            "points_reward": g.template.points_reward,
        }
        for g in sample_goals()
    ]


async def seed_health_samples(conn: AsyncConnection) -> Counts:
    template_ids = await ids_by(conn, HEALTH_GOAL_TEMPLATE, "code", GOAL_TEMPLATES)
    return {
        HEALTH_DEVICE_CONNECTION.fullname: await insert_rows(
            conn, HEALTH_DEVICE_CONNECTION, device_rows()
        ),
        # The partition key is part of the primary key, hence of the conflict target.
        HEALTH_METRIC.fullname: await insert_rows(
            conn, HEALTH_METRIC, metric_rows(), conflict=("id", "recorded_at")
        ),
        HEALTH_GOAL.fullname: await insert_rows(conn, HEALTH_GOAL, goal_rows(template_ids)),
    }


REFERENCE = FunctionSeeder(name="health.reference", run=seed_health_reference)
SAMPLES = FunctionSeeder(name="health.samples", run=seed_health_samples, samples_only=True)
