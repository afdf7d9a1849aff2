"""Seed data of the ``shared`` schema: permissions, roles and who may do what (reference
data), and the sample people every journey's sample data belongs to.
"""

from __future__ import annotations

import random
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache

from sqlalchemy import column, table
from sqlalchemy.ext.asyncio import AsyncConnection

from journeys.seeding import (
    SAMPLE_ANCHOR,
    Counts,
    Row,
    ids_by,
    insert_rows,
    rng,
    seed_id,
)
from saga import FunctionSeeder

# Emails of sample people, on a domain reserved for examples (RFC 2606): nothing is
# ever sent from the seeds, and no real mailbox can receive one.
EMAIL_DOMAIN = "exemplo.example"


# --- Tables ----------------------------------------------------------------------------------

SHARED_PERMISSION = table(
    "shared_permission",
    column("id"),
    column("code"),
    column("journey"),
    column("description"),
    schema="shared",
)
SHARED_ROLE = table(
    "shared_role",
    column("id"),
    column("name"),
    column("journey"),
    column("description"),
    schema="shared",
)
SHARED_ROLE_PERMISSION = table(
    "shared_role_permission",
    column("id"),
    column("role_id"),
    column("permission_id"),
    schema="shared",
)
SHARED_USER = table(
    "shared_user",
    column("id"),
    column("email"),
    column("full_name"),
    column("cpf"),
    column("phone"),
    column("birth_date"),
    schema="shared",
)
SHARED_USER_ROLE = table(
    "shared_user_role",
    column("id"),
    column("user_id"),
    column("role_id"),
    schema="shared",
)

# --- Reference data: permissions and roles ----------------------------------------------------

# code -> (journey, description). Journey None: the operators' and the platform's own.
PERMISSIONS: dict[str, tuple[str | None, str]] = {
    "health:metric:record": ("health", "Registrar medições de saúde"),
    "health:metric:read": ("health", "Consultar medições de saúde"),
    "health:goal:read": ("health", "Consultar metas de saúde"),
    "health:goal:manage": ("health", "Criar, concluir e abandonar metas de saúde"),
    "health:device:connect": ("health", "Conectar e desconectar dispositivos de saúde"),
    "care:provider:search": ("care", "Buscar médicos e especialidades"),
    "care:provider:manage": ("care", "Cadastrar e atualizar médicos da rede"),
    "care:slot:manage": ("care", "Abrir, bloquear e liberar horários de agenda"),
    "care:appointment:book": ("care", "Agendar consultas"),
    "care:appointment:cancel": ("care", "Cancelar consultas"),
    "care:appointment:read": ("care", "Consultar agendamentos"),
    "care:appointment:complete": ("care", "Registrar a realização de consultas"),
    "care:telemedicine:join": ("care", "Entrar em teleconsultas"),
    "plan:coverage:read": ("plan", "Consultar cobertura e carteirinha"),
    "plan:coverage:manage": ("plan", "Gerenciar coberturas de beneficiários"),
    "plan:insurance_plan:manage": ("plan", "Gerenciar o catálogo de planos"),
    "plan:claim:submit": ("plan", "Enviar solicitações de reembolso"),
    "plan:claim:read": ("plan", "Consultar solicitações de reembolso"),
    "plan:claim:review": ("plan", "Analisar, aprovar e recusar reembolsos"),
    "plan:pre_authorization:decide": ("plan", "Decidir autorizações prévias"),
    "plan:audit_log:read": ("plan", "Consultar a trilha de auditoria do plano"),
    "gamification:points:read": ("gamification", "Consultar pontos e nível"),
    "gamification:points:grant": ("gamification", "Conceder e estornar pontos"),
    "gamification:achievement:read": ("gamification", "Consultar conquistas"),
    "gamification:achievement:manage": ("gamification", "Gerenciar o catálogo de conquistas"),
    "gamification:leaderboard:read": ("gamification", "Consultar o ranking"),
    "saga:definition:read": (None, "Consultar definições de saga"),
    "saga:instance:read": (None, "Consultar instâncias de saga e seu histórico"),
    "saga:instance:retry": (None, "Retomar uma saga estacionada"),
    "saga:instance:compensate": (None, "Forçar a compensação de uma saga"),
    "saga:outbox:replay": (None, "Reenviar mensagens do outbox"),
    "db:migration:apply": (None, "Aplicar e reverter migrações"),
    "db:seed:run": (None, "Carregar dados de referência"),
    "shared:user:manage": (None, "Gerenciar contas e papéis de usuários"),
}

MEMBER_PERMISSIONS = (
    "health:metric:record",
    "health:metric:read",
    "health:goal:read",
    "health:goal:manage",
    "health:device:connect",
    "care:provider:search",
    "care:appointment:book",
    "care:appointment:cancel",
    "care:appointment:read",
    "care:telemedicine:join",
    "plan:coverage:read",
    "plan:claim:submit",
    "plan:claim:read",
    "gamification:points:read",
    "gamification:achievement:read",
    "gamification:leaderboard:read",
)


@dataclass(frozen=True, slots=True)
class RoleSpec:
    journey: str | None
    description: str
    permissions: tuple[str, ...]


ROLES: dict[str, RoleSpec] = {
    "patient": RoleSpec(None, "Beneficiário que usa o app", MEMBER_PERMISSIONS),
    "provider": RoleSpec(
        "care",
        "Médico da rede credenciada",
        (
            "care:provider:search",
            "care:slot:manage",
            "care:appointment:read",
            "care:appointment:complete",
            "care:telemedicine:join",
            "health:metric:read",
            "health:goal:read",
        ),
    ),
    "care_coordinator": RoleSpec(
        "care",
        "Coordenação de cuidado: agenda e rede",
        (
            "care:provider:search",
            "care:provider:manage",
            "care:slot:manage",
            "care:appointment:book",
            "care:appointment:cancel",
            "care:appointment:read",
            "health:goal:read",
        ),
    ),
    "health_coach": RoleSpec(
        "health",
        "Acompanhamento de metas e hábitos",
        ("health:metric:read", "health:goal:read", "health:goal:manage"),
    ),
    "insurance_admin": RoleSpec(
        "plan",
        "Operação do plano: coberturas, reembolsos e autorizações",
        (
            "plan:coverage:read",
            "plan:coverage:manage",
            "plan:insurance_plan:manage",
            "plan:claim:read",
            "plan:claim:review",
            "plan:pre_authorization:decide",
            "plan:audit_log:read",
        ),
    ),
    "gamification_admin": RoleSpec(
        "gamification",
        "Gestão de conquistas e pontos",
        (
            "gamification:points:read",
            "gamification:points:grant",
            "gamification:achievement:read",
            "gamification:achievement:manage",
            "gamification:leaderboard:read",
        ),
    ),
    "saga_operator": RoleSpec(
        None,
        "Operação das sagas entre jornadas",
        (
            "saga:definition:read",
            "saga:instance:read",
            "saga:instance:retry",
            "saga:instance:compensate",
            "saga:outbox:replay",
        ),
    ),
    "dba": RoleSpec(
        None,
        "Administração do banco de dados",
        ("db:migration:apply", "db:seed:run", "saga:instance:read", "plan:audit_log:read"),
    ),
    "platform_admin": RoleSpec(
        None, "Administração de contas e acessos", ("shared:user:manage", "saga:instance:read")
    ),
}


def permission_rows() -> list[Row]:
    return [
        {
            "id": seed_id("shared_permission", code),
            "code": code,
            "journey": journey,
            "description": description,
        }
        for code, (journey, description) in PERMISSIONS.items()
    ]


def role_rows() -> list[Row]:
    return [
        {
            "id": seed_id("shared_role", name),
            "name": name,
            "journey": spec.journey,
            "description": spec.description,
        }
        for name, spec in ROLES.items()
    ]


def role_permission_rows(
    role_ids: dict[str, uuid.UUID], permission_ids: dict[str, uuid.UUID]
) -> list[Row]:
    return [
        {
            "id": seed_id("shared_role_permission", f"{name}:{code}"),
            "role_id": role_ids[name],
            "permission_id": permission_ids[code],
        }
        for name, spec in ROLES.items()
        for code in spec.permissions
    ]


async def seed_access_control(conn: AsyncConnection) -> Counts:
    """Permissions, roles and the role-permission grants."""
    counts = {
        SHARED_PERMISSION.fullname: await insert_rows(
            conn, SHARED_PERMISSION, permission_rows(), conflict=("code",)
        ),
        SHARED_ROLE.fullname: await insert_rows(conn, SHARED_ROLE, role_rows(), conflict=("name",)),
    }
    role_ids = await ids_by(conn, SHARED_ROLE, "name", ROLES)
    permission_ids = await ids_by(conn, SHARED_PERMISSION, "code", PERMISSIONS)
    counts[SHARED_ROLE_PERMISSION.fullname] = await insert_rows(
        conn,
        SHARED_ROLE_PERMISSION,
        role_permission_rows(role_ids, permission_ids),
        conflict=("role_id", "permission_id"),
    )
    return counts


# --- Sample people ---------------------------------------------------------------------------

FEMALE_NAMES = (
    "Ana", "Maria", "Juliana", "Fernanda", "Camila", "Beatriz", "Larissa", "Patrícia",
    "Aline", "Mariana", "Gabriela", "Letícia", "Vanessa", "Renata", "Luciana", "Carolina",
    "Isabela", "Natália", "Simone", "Tatiane", "Adriana", "Cláudia", "Débora", "Raquel",
)  # fmt: skip
MALE_NAMES = (
    "João", "José", "Pedro", "Lucas", "Gabriel", "Rafael", "Carlos", "Paulo", "Marcos",
    "Bruno", "Felipe", "Gustavo", "Rodrigo", "Thiago", "André", "Eduardo", "Ricardo",
    "Leandro", "Fábio", "Diego", "Matheus", "Vinícius", "Antônio", "Sérgio",
)  # fmt: skip
SURNAMES = (
    "Silva", "Santos", "Oliveira", "Souza", "Rodrigues", "Ferreira", "Alves", "Pereira",
    "Lima", "Gomes", "Costa", "Ribeiro", "Martins", "Carvalho", "Almeida", "Lopes", "Soares",
    "Fernandes", "Vieira", "Barbosa", "Rocha", "Dias", "Nascimento", "Andrade", "Moreira",
    "Nunes", "Marques", "Machado", "Mendes", "Freitas", "Cardoso", "Ramos", "Gonçalves",
    "Santana", "Teixeira", "Araújo", "Cavalcanti", "Moura", "Pinto", "Correia",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class City:
    name: str
    state: str
    area_code: str
    # The CPF's ninth digit is the fiscal region that issued it; matching it to the city
    # makes a sample person's documents agree with each other.
    cpf_region: int
    weight: int


CITIES = (
    City("São Paulo", "SP", "11", 8, 8),
    City("Campinas", "SP", "19", 8, 2),
    City("Santos", "SP", "13", 8, 1),
    City("Rio de Janeiro", "RJ", "21", 7, 4),
    City("Belo Horizonte", "MG", "31", 6, 2),
    City("Curitiba", "PR", "41", 9, 2),
    City("Porto Alegre", "RS", "51", 0, 1),
    City("Salvador", "BA", "71", 5, 1),
    City("Recife", "PE", "81", 4, 1),
    City("Brasília", "DF", "61", 1, 1),
    City("Fortaleza", "CE", "85", 3, 1),
)

# The sample population: mostly members; six of the twelve sample physicians use the app.
SAMPLE_ROLES = (
    *(["patient"] * 28),
    *(["provider"] * 6),
    "care_coordinator",
    "care_coordinator",
    "insurance_admin",
    "health_coach",
    "saga_operator",
    "dba",
)


@dataclass(frozen=True, slots=True)
class SampleUser:
    key: str
    id: uuid.UUID
    full_name: str
    given_name: str
    email: str
    cpf: str
    phone: str
    birth_date: date
    role: str
    city: City


def cpf_check_digits(base: str) -> str:
    """The two check digits of a nine-digit CPF base (mod 11, weights 10..2 then 11..2)."""
    digits = [int(c) for c in base]
    for _ in range(2):
        total = sum(d * w for d, w in zip(digits, range(len(digits) + 1, 1, -1), strict=True))
        digits.append(total * 10 % 11 % 10)
    return f"{digits[-2]}{digits[-1]}"


def make_cpf(random_: random.Random, region: int) -> str:
    while True:
        base = "".join(str(random_.randrange(10)) for _ in range(8)) + str(region)
        if len(set(base)) > 1:  # 111.111.111-11 and the like pass the digits but are void
            return base + cpf_check_digits(base)


def ascii_slug(text_: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text_)
    return "".join(c for c in decomposed if c.isascii() and c.isalpha()).lower()


def make_name(random_: random.Random) -> tuple[str, str, str]:
    """(full name, given name, family name) in the Brazilian order: mother's family name,
    then father's."""
    given = random_.choice(random_.choice((FEMALE_NAMES, MALE_NAMES)))
    mother, father = random_.sample(SURNAMES, 2)
    return f"{given} {mother} {father}", given, father


def make_phone(random_: random.Random, city: City) -> str:
    first_half = f"9{random_.randint(6, 9)}{random_.randrange(1000):03d}"
    return f"+55 {city.area_code} {first_half}-{random_.randrange(10000):04d}"


def make_birth_date(random_: random.Random, role: str) -> date:
    youngest, oldest = (18, 85) if role == "patient" else (27, 64)
    age_days = random_.randint(youngest * 365, oldest * 365)
    return SAMPLE_ANCHOR - timedelta(days=age_days)


@cache
def sample_users() -> tuple[SampleUser, ...]:
    """The sample people, the same on every call and every run."""
    random_ = rng("shared.users")
    users: list[SampleUser] = []
    names: set[str] = set()
    emails: set[str] = set()
    cpfs: set[str] = set()
    for number, role in enumerate(SAMPLE_ROLES, start=1):
        full_name, given, family = make_name(random_)
        while full_name in names:
            full_name, given, family = make_name(random_)
        email = f"{ascii_slug(given)}.{ascii_slug(family)}@{EMAIL_DOMAIN}"
        suffix = 2
        while email in emails:
            email = f"{ascii_slug(given)}.{ascii_slug(family)}{suffix}@{EMAIL_DOMAIN}"
            suffix += 1
        city = random_.choices(CITIES, weights=[c.weight for c in CITIES])[0]
        cpf = make_cpf(random_, city.cpf_region)
        while cpf in cpfs:
            cpf = make_cpf(random_, city.cpf_region)
        names.add(full_name)
        emails.add(email)
        cpfs.add(cpf)
        key = f"sample-user-{number:02d}"
        users.append(
            SampleUser(
                key=key,
                id=seed_id("shared_user", key),
                full_name=full_name,
                given_name=given,
                email=email,
                cpf=cpf,
                phone=make_phone(random_, city),
                birth_date=make_birth_date(random_, role),
                role=role,
                city=city,
            )
        )
    return tuple(users)


def sample_patients() -> tuple[SampleUser, ...]:
    return tuple(user for user in sample_users() if user.role == "patient")


def user_rows(users: Iterable[SampleUser]) -> list[Row]:
    return [
        {
            "id": user.id,
            "email": user.email,
            "full_name": user.full_name,
            "cpf": user.cpf,
            "phone": user.phone,
            "birth_date": user.birth_date,
        }
        for user in users
    ]


def user_role_rows(users: Iterable[SampleUser], role_ids: dict[str, uuid.UUID]) -> list[Row]:
    return [
        {
            "id": seed_id("shared_user_role", f"{user.key}:{user.role}"),
            "user_id": user.id,
            "role_id": role_ids[user.role],
        }
        for user in users
    ]


async def seed_sample_users(conn: AsyncConnection) -> Counts:
    """The sample people and their roles."""
    users = sample_users()
    role_ids = await ids_by(conn, SHARED_ROLE, "name", {user.role for user in users})
    return {
        # By id, not email: a sample person soft-deleted while trying out account deletion
        # is then skipped instead of re-created beside the deleted row.
        SHARED_USER.fullname: await insert_rows(conn, SHARED_USER, user_rows(users)),
        SHARED_USER_ROLE.fullname: await insert_rows(
            conn, SHARED_USER_ROLE, user_role_rows(users, role_ids), conflict=("user_id", "role_id")
        ),
    }


REFERENCE = FunctionSeeder(name="shared.reference", run=seed_access_control)
SAMPLES = FunctionSeeder(name="shared.samples", run=seed_sample_users, samples_only=True)
