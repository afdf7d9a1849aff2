"""Personal and health data kept out of what the engine shows: which fields hold it, a
copy of a value with them hidden, and the safe part of a free-text reason.

A field is sensitive when its name is one of :data:`DEFAULT_SENSITIVE_FIELDS`, one a
journey service declares (``JourneyService.sensitive_fields``, declared when the journeys
are discovered) or one listed in ``LOG_SENSITIVE_FIELDS``. Names match ignoring case,
``_`` and ``-``, so ``full_name`` also hides ``fullName`` and ``FULL-NAME``.

The names are one set per process: a masked value must look the same in every log line
and every ``saga show``, whichever journey's code produced it. Declaring only ever adds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

MASK = "***"

DEFAULT_SENSITIVE_FIELDS: frozenset[str] = frozenset(
    {
        # Who the patient is and how to reach them. "name" is left out on purpose: plans,
        # goals, steps and definitions have names too, and none of them is personal.
        "full_name",
        "social_name",
        "cpf",
        "rg",
        "cns",  # Cartão Nacional de Saúde
        "email",
        "phone",
        "birth_date",
        "address",
    }
)


def _normal(name: str) -> str:
    return name.casefold().replace("_", "").replace("-", "")


# Normalised name → the name as first declared (for people to read).
_declared: dict[str, str] = {_normal(name): name for name in DEFAULT_SENSITIVE_FIELDS}
# Key → verdict, for the few hundred keys log lines and payloads use over and over; bounded,
# since payload keys come from outside.
_verdicts: dict[str, bool] = {}
_MAX_VERDICTS = 4096


def declare_sensitive(names: Iterable[str]) -> None:
    """Hide ``names`` in this process's logs and masked views from now on."""
    for name in names:
        if name.strip():
            _declared.setdefault(_normal(name.strip()), name.strip())
    _verdicts.clear()


def sensitive_fields() -> frozenset[str]:
    """Every name masked in this process, as declared."""
    return frozenset(_declared.values())


def is_sensitive(key: object) -> bool:
    if not isinstance(key, str):
        return False
    verdict = _verdicts.get(key)
    if verdict is None:
        verdict = _normal(key) in _declared
        if len(_verdicts) < _MAX_VERDICTS:
            _verdicts[key] = verdict
    return verdict


def mask(value: Any) -> Any:
    """A deep copy of the JSON-like ``value`` in which the value of every sensitive key,
    at any depth, is ``"***"``."""
    if isinstance(value, Mapping):
        return {k: MASK if is_sensitive(k) else mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(item) for item in value]
    plain = _as_plain(value)
    return value if plain is None else mask(plain)


# Exact types, checked with one set lookup (an isinstance of a union costs several times
# more, on every value of every log line); a subclass such as an enum takes the long way.
SCALARS: frozenset[type] = frozenset({str, int, float, bool, type(None)})


def masked(value: Any) -> Any:
    """``value`` itself when it holds nothing sensitive, else a masked copy: what a log
    line needs, where almost every value is a scalar and copying would be waste."""
    if value.__class__ in SCALARS:
        return value
    if isinstance(value, Mapping):
        return _masked_mapping(value)
    if isinstance(value, list | tuple):
        copy: list[Any] | None = None
        for index, item in enumerate(value):
            hidden = masked(item)
            if hidden is not item and copy is None:
                copy = list(value[:index])
            if copy is not None:
                copy.append(hidden)
        return value if copy is None else copy
    plain = _as_plain(value)
    # A model or dataclass renders as its repr, fields and all: always hand on the copy.
    return value if plain is None else masked(plain)


def _masked_mapping(value: Mapping[Any, Any]) -> Mapping[Any, Any]:
    copy: dict[Any, Any] | None = None
    for key, item in value.items():
        hidden = MASK if is_sensitive(key) else masked(item)
        if hidden is not item and copy is None:
            copy = dict(value)
        if copy is not None:
            copy[key] = hidden
    return value if copy is None else copy


def _as_plain(value: Any) -> dict[str, Any] | None:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return None


def summarize(text: str | None) -> str | None:
    """The part of a free-text reason that is safe to log: its first line up to the first
    ``": "``.

    Refusal reasons (``claim invalid: diagnosis_code must be ..., got 'X'``), exception
    messages (``invalid input syntax for type uuid: "..."``) and the saga errors built
    from them (``step 'create_claim' failed: ...``) name what went wrong before that colon
    and may quote the input after it. A step handler must therefore keep patient data
    after the first ``": "`` of a reason; the saga log keeps the whole text.
    """
    if text is None:
        return None
    head = text.split("\n", 1)[0]
    return head.split(": ", 1)[0]
