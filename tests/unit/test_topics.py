"""Topic names: every process derives the same names from the prefix setting alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from saga.settings import load_settings
from saga.transport import Topics


def test_names_hang_off_the_prefix() -> None:
    topics = Topics(prefix="austa.saga")
    assert topics.commands("booking") == "austa.saga.booking.commands"
    assert topics.commands("telemedicine") == "austa.saga.telemedicine.commands"
    assert topics.replies == "austa.saga.replies"
    assert topics.dead_letter == "austa.saga.dead-letter"


def test_from_settings_uses_the_topic_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAFKA_TOPIC_PREFIX", raising=False)
    assert Topics.from_settings(load_settings(env_dir=tmp_path)) == Topics("austa.saga")
    settings = load_settings(env_dir=tmp_path, kafka_topic_prefix="acme-staging")
    assert Topics.from_settings(settings).replies == "acme-staging.replies"


def test_topics_are_immutable_values() -> None:
    topics = Topics("p")
    with pytest.raises(dataclasses.FrozenInstanceError):
        topics.prefix = "q"  # type: ignore[misc]
    assert {Topics("p"), Topics("p")} == {topics}
