"""Seed data of the care journey: specialties (reference data); twelve sample physicians,
their agendas for the four weeks before and the three weeks after the sample anchor, and
appointments of the sample members (samples).

Agendas are laid on a grid (weekday, shift, slot length) per physician, so slots never
overlap by construction; the table's exclusion constraint stays the final word.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
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
    CITIES,
    City,
    SampleUser,
    make_name,
    sample_patients,
    sample_users,
)
from saga import FunctionSeeder

CARE_SPECIALTY = table(
    "care_specialty", column("id"), column("code"), column("name"), schema="care_journey"
)
CARE_PROVIDER = table(
    "care_provider",
    column("id"),
    column("user_id"),
    column("specialty_id"),
    column("full_name"),
    column("crm"),
    column("city"),
    column("state"),
    column("accepts_telemedicine"),
    schema="care_journey",
)
CARE_SLOT = table(
    "care_slot",
    column("id"),
    column("provider_id"),
    column("starts_at"),
    column("ends_at"),
    column("status"),
    column("is_telemedicine"),
    schema="care_journey",
)
CARE_APPOINTMENT = table(
    "care_appointment",
    column("id"),
    column("slot_id"),
    column("provider_id"),
    column("patient_id"),
    column("starts_at"),
    column("ends_at"),
    column("status"),
    column("hold_expires_at"),
    column("is_telemedicine"),
    column("reason"),
    column("cancelled_reason"),
    schema="care_journey",
)

# --- Reference data: specialties (CFM names) -------------------------------------------------

SPECIALTIES = {
    "clinica_geral": "Clínica Geral",
    "medicina_familia": "Medicina de Família e Comunidade",
    "cardiologia": "Cardiologia",
    "dermatologia": "Dermatologia",
    "endocrinologia": "Endocrinologia e Metabologia",
    "gastroenterologia": "Gastroenterologia",
    "ginecologia": "Ginecologia e Obstetrícia",
    "neurologia": "Neurologia",
    "oftalmologia": "Oftalmologia",
    "ortopedia": "Ortopedia e Traumatologia",
    "otorrinolaringologia": "Otorrinolaringologia",
    "pediatria": "Pediatria",
    "pneumologia": "Pneumologia",
    "psiquiatria": "Psiquiatria",
    "urologia": "Urologia",
    "nutrologia": "Nutrologia",
}


def specialty_rows() -> list[Row]:
    return [
        {"id": seed_id("care_specialty", code), "code": code, "name": name}
        for code, name in SPECIALTIES.items()
    ]


async def seed_care_reference(conn: AsyncConnection) -> Counts:
    return {
        CARE_SPECIALTY.fullname: await insert_rows(
            conn, CARE_SPECIALTY, specialty_rows(), conflict=("code",)
        )
    }


# --- Samples: physicians ----------------------------------------------------------------------

# The first six are the sample users with the provider role; the rest have no app account.
PROVIDER_SPECIALTIES = (
    "clinica_geral", "cardiologia", "dermatologia", "pediatria", "ortopedia", "ginecologia",
    "psiquiatria", "endocrinologia", "clinica_geral", "cardiologia", "medicina_familia",
    "neurologia",
)  # fmt: skip
TELEMEDICINE_FRIENDLY = {
    "clinica_geral",
    "medicina_familia",
    "psiquiatria",
    "endocrinologia",
    "dermatologia",
}

AGENDA_WEEKS = range(-4, 3)  # Mondays relative to the anchor (itself a Monday)
SHIFT_MINUTES = 180


@dataclass(frozen=True, slots=True)
class SampleProvider:
    key: str
    id: uuid.UUID
    user_id: uuid.UUID | None
    specialty_code: str
    full_name: str
    crm: str
    city: City
    accepts_telemedicine: bool
    weekdays: tuple[int, ...]
    shift_start_hour: int
    slot_minutes: int


def _provider(
    number: int,
    specialty: str,
    registration: int,
    user: SampleUser | None,
    random_: random.Random,
) -> SampleProvider:
    if user is not None:
        full_name, city = user.full_name, user.city
    else:
        full_name = make_name(random_)[0]
        city = random_.choices(CITIES, weights=[c.weight for c in CITIES])[0]
    key = f"sample-provider-{number:02d}"
    return SampleProvider(
        key=key,
        id=seed_id("care_provider", key),
        user_id=user.id if user else None,
        specialty_code=specialty,
        full_name=full_name,
        # The CRM of the state the physician practises in.
        crm=f"CRM-{city.state} {registration:06d}",
        city=city,
        accepts_telemedicine=specialty in TELEMEDICINE_FRIENDLY or random_.random() < 0.25,
        weekdays=tuple(sorted(random_.sample(range(5), 2))),
        shift_start_hour=random_.choice((8, 14)),
        slot_minutes=50 if specialty == "psiquiatria" else 30,
    )


@cache
def sample_providers() -> tuple[SampleProvider, ...]:
    random_ = rng("care.providers")
    accounts = [user for user in sample_users() if user.role == "provider"]
    numbers = random_.sample(range(30000, 260000), len(PROVIDER_SPECIALTIES))
    return tuple(
        _provider(
            number,
            specialty,
            registration,
            accounts[number - 1] if number <= len(accounts) else None,
            random_,
        )
        for number, (specialty, registration) in enumerate(
            zip(PROVIDER_SPECIALTIES, numbers, strict=True), start=1
        )
    )


def provider_rows(specialty_ids: dict[str, uuid.UUID]) -> list[Row]:
    return [
        {
            "id": p.id,
            "user_id": p.user_id,
            "specialty_id": specialty_ids[p.specialty_code],
            "full_name": p.full_name,
            "crm": p.crm,
            "city": p.city.name,
            "state": p.city.state,
            "accepts_telemedicine": p.accepts_telemedicine,
        }
        for p in sample_providers()
    ]


# --- Samples: agendas and appointments -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class SampleSlot:
    id: uuid.UUID
    provider: SampleProvider
    starts_at: datetime
    ends_at: datetime
    is_telemedicine: bool


@dataclass(frozen=True, slots=True)
class SampleAppointment:
    id: uuid.UUID
    slot: SampleSlot
    patient: SampleUser
    status: str
    reason: str
    cancelled_reason: str | None
    hold_expires_at: datetime | None


def agenda(provider: SampleProvider) -> Iterator[SampleSlot]:
    """Every slot of the physician's grid over AGENDA_WEEKS, in time order."""
    length = timedelta(minutes=provider.slot_minutes)
    for week in AGENDA_WEEKS:
        for weekday in provider.weekdays:
            day = SAMPLE_ANCHOR + timedelta(weeks=week, days=weekday)
            # The last weekday of a physician who offers it is their telemedicine day.
            remote = provider.accepts_telemedicine and weekday == provider.weekdays[-1]
            start = brt(day, provider.shift_start_hour)
            for n in range(SHIFT_MINUTES // provider.slot_minutes):
                starts_at = start + n * length
                yield SampleSlot(
                    id=seed_id("care_slot", f"{provider.key}:{starts_at.isoformat()}"),
                    provider=provider,
                    starts_at=starts_at,
                    ends_at=starts_at + length,
                    is_telemedicine=remote,
                )


ANCHOR_START = brt(SAMPLE_ANCHOR, 0)

# What happened before the anchor, and what is on the books after it.
PAST_STATUSES = ("billed",) * 8 + ("completed",) * 4 + ("cancelled",) * 2
FUTURE_STATUSES = ("confirmed",) * 7 + ("held",) * 2 + ("cancelled", "released")

REASONS = (
    "Consulta de rotina",
    "Retorno para mostrar exames",
    "Primeira consulta",
    "Renovação de receita",
    "Dor persistente há duas semanas",
    "Check-up anual",
)
CANCELLED_REASONS = ("Paciente pediu para remarcar", "Médico indisponível na data")


def _ending(status: str, random_: random.Random) -> tuple[str | None, datetime | None]:
    """(cancelled_reason, hold_expires_at) of an appointment in ``status``."""
    if status == "cancelled":
        return random_.choice(CANCELLED_REASONS), None
    if status == "released":
        return "Reserva expirada antes da confirmação", None
    if status == "held":
        return None, brt(SAMPLE_ANCHOR, 9, 10)
    return None, None


class AppointmentBook:
    """Picks free slots and free patients, so that no slot and no patient is booked twice."""

    def __init__(self, random_: random.Random) -> None:
        self.random = random_
        self.taken_slots: set[uuid.UUID] = set()
        self.busy: set[tuple[uuid.UUID, datetime]] = set()
        self.appointments: list[SampleAppointment] = []

    def book(self, status: str, past: bool) -> None:
        provider = self.random.choice(sample_providers())
        free = [
            slot
            for slot in agenda(provider)
            if (slot.starts_at < ANCHOR_START) == past and slot.id not in self.taken_slots
        ]
        slot = self.random.choice(free)
        patient = self.random.choice(
            [p for p in sample_patients() if (p.id, slot.starts_at) not in self.busy]
        )
        cancelled_reason, hold_expires_at = _ending(status, self.random)
        self.taken_slots.add(slot.id)
        self.busy.add((patient.id, slot.starts_at))
        self.appointments.append(
            SampleAppointment(
                id=seed_id("care_appointment", str(slot.id)),
                slot=slot,
                patient=patient,
                status=status,
                reason=self.random.choice(REASONS),
                cancelled_reason=cancelled_reason,
                hold_expires_at=hold_expires_at,
            )
        )


@cache
def sample_appointments() -> tuple[SampleAppointment, ...]:
    book = AppointmentBook(rng("care.appointments"))
    for status in PAST_STATUSES:
        book.book(status, past=True)
    for status in FUTURE_STATUSES:
        book.book(status, past=False)
    return tuple(book.appointments)


# A slot is taken by a live appointment; a cancelled or released one gives it back.
SLOT_STATUS = {
    "held": "held",
    "confirmed": "booked",
    "completed": "booked",
    "billed": "booked",
    "cancelled": "open",
    "released": "open",
}


def _slot_row(slot: SampleSlot, status: str) -> Row:
    return {
        "id": slot.id,
        "provider_id": slot.provider.id,
        "starts_at": slot.starts_at,
        "ends_at": slot.ends_at,
        "status": status,
        "is_telemedicine": slot.is_telemedicine,
    }


def slot_rows() -> list[Row]:
    """The coming weeks' agenda, and the past slots that appointments used."""
    random_ = rng("care.slots")
    booked = {a.slot.id: SLOT_STATUS[a.status] for a in sample_appointments()}
    rows = []
    for provider in sample_providers():
        for slot in agenda(provider):
            if slot.id in booked:
                rows.append(_slot_row(slot, booked[slot.id]))
            elif slot.starts_at >= ANCHOR_START:
                # Now and then a physician blocks an hour for a meeting or a procedure.
                rows.append(_slot_row(slot, "blocked" if random_.random() < 0.04 else "open"))
    return rows


def appointment_rows() -> list[Row]:
    return [
        {
            "id": a.id,
            "slot_id": a.slot.id,
            "provider_id": a.slot.provider.id,
            "patient_id": a.patient.id,
            "starts_at": a.slot.starts_at,
            "ends_at": a.slot.ends_at,
            "status": a.status,
            "hold_expires_at": a.hold_expires_at,
            "is_telemedicine": a.slot.is_telemedicine,
            "reason": a.reason,
            "cancelled_reason": a.cancelled_reason,
        }
        for a in sample_appointments()
    ]


async def seed_care_samples(conn: AsyncConnection) -> Counts:
    specialty_ids = await ids_by(
        conn, CARE_SPECIALTY, "code", {p.specialty_code for p in sample_providers()}
    )
    return {
        CARE_PROVIDER.fullname: await insert_rows(
            conn, CARE_PROVIDER, provider_rows(specialty_ids)
        ),
        CARE_SLOT.fullname: await insert_rows(conn, CARE_SLOT, slot_rows()),
        CARE_APPOINTMENT.fullname: await insert_rows(conn, CARE_APPOINTMENT, appointment_rows()),
    }


REFERENCE = FunctionSeeder(name="care.reference", run=seed_care_reference)
SAMPLES = FunctionSeeder(name="care.samples", run=seed_care_samples, samples_only=True)
