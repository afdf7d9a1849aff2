"""Seed data of the plan journey: the insurance plans (reference data); a coverage for
every sample member and a few claims (samples).

Claims are for the sample appointments that care billed, and for lab exams and imaging.
A coverage's ``used_cents`` is what its approved and paid claims took, so the numbers on
a member's screen add up. Every insert here is also written to ``plan_audit_log`` by the
table's trigger; those rows are the trigger's, not counted as seeded.
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

from journeys.care.seeds import SampleAppointment, sample_appointments
from journeys.seeding import (
    BRT,
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

PLAN_INSURANCE_PLAN = table(
    "plan_insurance_plan",
    column("id"),
    column("code"),
    column("name"),
    column("plan_type"),
    column("annual_limit_cents"),
    column("copay_percent"),
    schema="plan_journey",
)
PLAN_MEMBER_COVERAGE = table(
    "plan_member_coverage",
    column("id"),
    column("user_id"),
    column("insurance_plan_id"),
    column("policy_number"),
    column("period_start"),
    column("period_end"),
    column("annual_limit_cents"),
    column("used_cents"),
    schema="plan_journey",
)
PLAN_CLAIM = table(
    "plan_claim",
    column("id"),
    column("member_coverage_id"),
    column("user_id"),
    column("appointment_id"),
    column("amount_cents"),
    column("approved_cents"),
    column("service_date"),
    column("submitted_at"),
    column("status"),
    column("procedure_code"),
    column("diagnosis_code"),
    column("rejection_reason"),
    column("decided_at"),
    schema="plan_journey",
)

# --- Reference data: the plans --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InsurancePlan:
    code: str
    name: str
    plan_type: str
    annual_limit_cents: int
    copay_percent: Decimal
    # How often the plan appears among the sample members.
    weight: int


INSURANCE_PLANS = {
    plan.code: plan
    for plan in (
        InsurancePlan("basico", "AUSTA Básico", "basic", 5_000_000, Decimal(30), 3),
        InsurancePlan("essencial", "AUSTA Essencial", "standard", 15_000_000, Decimal(20), 4),
        InsurancePlan("premium", "AUSTA Premium", "premium", 50_000_000, Decimal(0), 2),
        InsurancePlan("empresarial", "AUSTA Empresarial", "corporate", 30_000_000, Decimal(10), 3),
    )
}


def insurance_plan_rows() -> list[Row]:
    return [
        {
            "id": seed_id("plan_insurance_plan", p.code),
            "code": p.code,
            "name": p.name,
            "plan_type": p.plan_type,
            "annual_limit_cents": p.annual_limit_cents,
            "copay_percent": p.copay_percent,
        }
        for p in INSURANCE_PLANS.values()
    ]


async def seed_plan_reference(conn: AsyncConnection) -> Counts:
    return {
        PLAN_INSURANCE_PLAN.fullname: await insert_rows(
            conn, PLAN_INSURANCE_PLAN, insurance_plan_rows(), conflict=("code",)
        )
    }


# --- Samples: coverage ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SampleCoverage:
    id: uuid.UUID
    user: SampleUser
    plan: InsurancePlan
    policy_number: str
    period_start: date
    period_end: date


def _coverage(number: int, user: SampleUser, random_: random.Random) -> SampleCoverage:
    plans = list(INSURANCE_PLANS.values())
    plan = random_.choices(plans, weights=[p.weight for p in plans])[0]
    # A year from the first of a month, started early enough to cover every sample claim.
    start = date(SAMPLE_ANCHOR.year, random_.randint(1, 8), 1)
    return SampleCoverage(
        id=seed_id("plan_member_coverage", user.key),
        user=user,
        plan=plan,
        policy_number=f"AUS-{start.year}-{number:06d}",
        period_start=start,
        period_end=start.replace(year=start.year + 1) - timedelta(days=1),
    )


@cache
def sample_coverages() -> dict[uuid.UUID, SampleCoverage]:
    """The sample members' coverages by user id."""
    random_ = rng("plan.coverage")
    return {
        user.id: _coverage(number, user, random_)
        for number, user in enumerate(sample_patients(), start=1)
    }


# --- Samples: claims --------------------------------------------------------------------------

CONSULTATION = "10101012"  # TUSS: consulta em consultório, horário normal
# TUSS code -> typical price in cents.
EXAMS = {
    "40304361": 3_500,  # hemograma com contagem de plaquetas
    "40302040": 1_200,  # glicose
    "40316521": 4_500,  # TSH
    "40101010": 8_000,  # eletrocardiograma convencional
    "40901122": 22_000,  # ultrassonografia de abdome total
}
# CID-10 codes a specialty's consultation is typically billed with.
DIAGNOSES = {
    "clinica_geral": ("Z00.0", "J06.9", "R51"),
    "medicina_familia": ("Z00.0", "I10"),
    "cardiologia": ("I10", "I25.1", "R07.4"),
    "dermatologia": ("L20.9", "L70.0"),
    "pediatria": ("J06.9", "Z00.1"),
    "ortopedia": ("M54.5", "M25.5"),
    "ginecologia": ("Z01.4", "N95.1"),
    "psiquiatria": ("F41.1", "F32.1"),
    "endocrinologia": ("E11.9", "E03.9", "E66.9"),
    "neurologia": ("G43.9", "R51"),
}
EXAM_DIAGNOSES = ("Z00.0", "E11.9", "I10", "E78.0", "R10.4")

APPOINTMENT_CLAIM_STATUSES = ("paid",) * 4 + ("approved",) * 2 + ("under_review", "submitted")
EXAM_CLAIM_STATUSES = (
    ("paid",) * 4
    + ("approved",) * 2
    + ("under_review",) * 2
    + (
        "submitted",
        "submitted",
        "rejected",
        "cancelled",
    )
)
REJECTION_REASONS = (
    "Pedido médico ausente",
    "Procedimento sem cobertura no plano contratado",
    "Nota fiscal ilegível",
)


@dataclass(frozen=True, slots=True)
class SampleClaim:
    id: uuid.UUID
    coverage: SampleCoverage
    appointment_id: uuid.UUID | None
    amount_cents: int
    service_date: date
    submitted_at: datetime
    decided_at: datetime | None
    status: str
    procedure_code: str
    diagnosis_code: str
    rejection_reason: str | None

    @property
    def approved_cents(self) -> int | None:
        """What the plan pays: the amount less the member's co-payment."""
        if self.status not in ("approved", "paid"):
            return None
        share = Decimal(100) - self.coverage.plan.copay_percent
        return int((Decimal(self.amount_cents) * share / 100).to_integral_value())


DECIDED = ("approved", "paid", "rejected")


def _timeline(
    service_date: date, status: str, random_: random.Random
) -> tuple[datetime, datetime | None]:
    """(submitted_at, decided_at): submitted a few days after the service; a decided claim
    early enough to have been decided by the anchor."""
    latest = SAMPLE_ANCHOR - timedelta(days=3 if status in DECIDED else 0)
    day = max(service_date, min(service_date + timedelta(days=random_.randint(0, 5)), latest))
    submitted_at = brt(day, random_.randint(7, 21), random_.randrange(60))
    if status not in DECIDED:
        return submitted_at, None
    return submitted_at, submitted_at + timedelta(hours=random_.randint(6, 60))


def _claim(
    key: str,
    coverage: SampleCoverage,
    appointment_id: uuid.UUID | None,
    service: tuple[date, str, str, int],
    status: str,
    random_: random.Random,
) -> SampleClaim:
    service_date, procedure_code, diagnosis_code, amount_cents = service
    submitted_at, decided_at = _timeline(service_date, status, random_)
    return SampleClaim(
        id=seed_id("plan_claim", key),
        coverage=coverage,
        appointment_id=appointment_id,
        amount_cents=amount_cents,
        service_date=service_date,
        submitted_at=submitted_at,
        decided_at=decided_at,
        status=status,
        procedure_code=procedure_code,
        diagnosis_code=diagnosis_code,
        rejection_reason=random_.choice(REJECTION_REASONS) if status == "rejected" else None,
    )


def _appointment_claim(
    appointment: SampleAppointment, status: str, random_: random.Random
) -> SampleClaim:
    diagnoses = DIAGNOSES.get(appointment.slot.provider.specialty_code, ("Z00.0",))
    service = (
        appointment.slot.starts_at.astimezone(BRT).date(),
        CONSULTATION,
        random_.choice(diagnoses),
        random_.randrange(25_000, 45_001, 500),
    )
    coverage = sample_coverages()[appointment.patient.id]
    return _claim(
        f"appointment:{appointment.id}", coverage, appointment.id, service, status, random_
    )


def _exam_claim(number: int, status: str, random_: random.Random) -> SampleClaim:
    coverage = random_.choice(list(sample_coverages().values()))
    code = random_.choice(sorted(EXAMS))
    service = (
        SAMPLE_ANCHOR - timedelta(days=random_.randint(3, 60)),
        code,
        random_.choice(EXAM_DIAGNOSES),
        round(EXAMS[code] * random_.uniform(0.9, 1.3)),
    )
    return _claim(f"exam:{number}", coverage, None, service, status, random_)


@cache
def sample_claims() -> tuple[SampleClaim, ...]:
    random_ = rng("plan.claims")
    # Oldest first, so the claims furthest along are for the oldest appointments.
    billed = sorted(
        (a for a in sample_appointments() if a.status == "billed"), key=lambda a: a.slot.starts_at
    )
    claims = [
        _appointment_claim(appointment, status, random_)
        for appointment, status in zip(billed, APPOINTMENT_CLAIM_STATUSES, strict=True)
    ]
    claims += [
        _exam_claim(number, status, random_)
        for number, status in enumerate(EXAM_CLAIM_STATUSES, start=1)
    ]
    return tuple(claims)


def claim_rows() -> list[Row]:
    return [
        {
            "id": c.id,
            "member_coverage_id": c.coverage.id,
            "user_id": c.coverage.user.id,
            "appointment_id": c.appointment_id,
            "amount_cents": c.amount_cents,
            "approved_cents": c.approved_cents,
            "service_date": c.service_date,
            "submitted_at": c.submitted_at,
            "status": c.status,
            "procedure_code": c.procedure_code,
            "diagnosis_code": c.diagnosis_code,
            "rejection_reason": c.rejection_reason,
            "decided_at": c.decided_at,
        }
        for c in sample_claims()
    ]


def coverage_rows(plan_ids: dict[str, uuid.UUID]) -> list[Row]:
    used: dict[uuid.UUID, int] = {}
    for claim in sample_claims():
        used[claim.coverage.id] = used.get(claim.coverage.id, 0) + (claim.approved_cents or 0)
    return [
        {
            "id": c.id,
            "user_id": c.user.id,
            "insurance_plan_id": plan_ids[c.plan.code],
            "policy_number": c.policy_number,
            "period_start": c.period_start,
            "period_end": c.period_end,
            "annual_limit_cents": c.plan.annual_limit_cents,
            "used_cents": used.get(c.id, 0),
        }
        for c in sample_coverages().values()
    ]


async def seed_plan_samples(conn: AsyncConnection) -> Counts:
    plan_ids = await ids_by(conn, PLAN_INSURANCE_PLAN, "code", INSURANCE_PLANS)
    return {
        PLAN_MEMBER_COVERAGE.fullname: await insert_rows(
            conn, PLAN_MEMBER_COVERAGE, coverage_rows(plan_ids)
        ),
        PLAN_CLAIM.fullname: await insert_rows(conn, PLAN_CLAIM, claim_rows()),
    }


REFERENCE = FunctionSeeder(name="plan.reference", run=seed_plan_reference)
SAMPLES = FunctionSeeder(name="plan.samples", run=seed_plan_samples, samples_only=True)
