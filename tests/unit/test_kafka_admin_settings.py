"""KAFKA_ENABLE_IDEMPOTENCE and ``saga topics``' input, decided without a broker: the
producer's mode for each setting and broker answer, and bad arguments refused in one line
before anything is asked of Kafka."""

from __future__ import annotations

from pathlib import Path

import pytest

from saga.cli import main
from saga.cli.topics import MAX_PARTITIONS, parse_journeys, parse_partition_count
from saga.errors import BrokerFeatureMissing, ConfigurationError, SettingsError
from saga.settings import Idempotence, Settings, load_settings
from saga.transport.broker_features import IdempotenceSupport
from saga.transport.producer import idempotence_mode
from saga.transport.topic_admin import check_topic_name

SUPPORTED = IdempotenceSupport(True, "the broker hands out producer ids")
LACKING = IdempotenceSupport(False, "the broker answered InitProducerId with UnknownError")


# --- the producer's mode -------------------------------------------------------------------


def test_false_never_asks_and_never_runs_idempotent() -> None:
    assert idempotence_mode(Idempotence.FALSE, None, broker="k:9092") is False
    assert idempotence_mode(Idempotence.FALSE, SUPPORTED, broker="k:9092") is False


def test_auto_follows_the_broker() -> None:
    assert idempotence_mode(Idempotence.AUTO, SUPPORTED, broker="k:9092") is True
    assert idempotence_mode(Idempotence.AUTO, LACKING, broker="k:9092") is False


def test_true_runs_idempotent_or_refuses_in_one_line() -> None:
    assert idempotence_mode(Idempotence.TRUE, SUPPORTED, broker="k:9092") is True
    with pytest.raises(BrokerFeatureMissing) as refused:
        idempotence_mode(Idempotence.TRUE, LACKING, broker="k:9092")
    message = str(refused.value)
    assert "KAFKA_ENABLE_IDEMPOTENCE=true" in message
    assert "k:9092" in message
    assert "InitProducerId with UnknownError" in message
    assert "\n" not in message


def test_a_mode_that_needs_the_broker_asked_is_not_decided_without_it() -> None:
    with pytest.raises(ConfigurationError, match="needs the broker asked"):
        idempotence_mode(Idempotence.AUTO, None, broker="k:9092")


# --- the settings ---------------------------------------------------------------------------


def test_idempotence_defaults_to_auto_and_replication_to_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAFKA_ENABLE_IDEMPOTENCE", raising=False)
    monkeypatch.delenv("KAFKA_TOPIC_REPLICATION_FACTOR", raising=False)
    settings = load_settings(env_dir=tmp_path)
    assert settings.kafka_enable_idempotence is Idempotence.AUTO
    assert settings.kafka_topic_replication_factor == 1


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("auto", Idempotence.AUTO),
        (" TRUE ", Idempotence.TRUE),
        ("False", Idempotence.FALSE),
        (True, Idempotence.TRUE),
        (False, Idempotence.FALSE),
    ],
)
def test_idempotence_reads_any_case(raw: object, expected: Idempotence) -> None:
    assert Settings(kafka_enable_idempotence=raw).kafka_enable_idempotence is expected


@pytest.mark.parametrize(
    ("field", "raw", "variable"),
    [
        ("kafka_enable_idempotence", "yes", "KAFKA_ENABLE_IDEMPOTENCE"),
        ("kafka_topic_replication_factor", 0, "KAFKA_TOPIC_REPLICATION_FACTOR"),
        ("kafka_topic_replication_factor", 17, "KAFKA_TOPIC_REPLICATION_FACTOR"),
    ],
)
def test_bad_kafka_values_name_their_variable(field: str, raw: object, variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings(**{field: raw})


# --- saga topics' arguments -----------------------------------------------------------------


@pytest.mark.parametrize("text", ["0", "-1", str(MAX_PARTITIONS + 1), "x", "", "2.5"])
def test_a_partition_count_out_of_range_is_refused(text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"--to: expected a partition count 1\.\.1024"):
        parse_partition_count(text)


def test_a_partition_count_in_range_is_taken() -> None:
    assert parse_partition_count(" 12 ") == 12
    assert parse_partition_count(str(MAX_PARTITIONS)) == MAX_PARTITIONS


def test_journeys_may_be_repeated_or_comma_separated() -> None:
    assert parse_journeys(None) is None
    assert parse_journeys(["care,health", "care", " plan "]) == ["care", "health", "plan"]
    with pytest.raises(ConfigurationError, match="--journey"):
        parse_journeys([" , "])


@pytest.mark.parametrize("name", ["bad name", "", ".", "..", "a/b", "x" * 250, "ação"])
def test_names_kafka_would_refuse_are_refused_here(name: str) -> None:
    with pytest.raises(ConfigurationError, match="is not a Kafka topic name"):
        check_topic_name(name)


def test_names_kafka_takes_pass() -> None:
    assert check_topic_name("austa.saga.care-2_b.commands") == "austa.saga.care-2_b.commands"
    assert check_topic_name("x" * 249) == "x" * 249


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_topics_without_a_broker_address_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("APP_ENV", "test")
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    code, err = run_cli(["topics", "list"], capsys)
    assert code == 2
    assert err == (
        "saga: error: saga topics needs KAFKA_BOOTSTRAP_SERVERS "
        "(the broker whose topics to manage)\n"
    )


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["topics", "add-partitions", "t", "--to", "0"], "--to: expected a partition count"),
        (["topics", "add-partitions", "bad name", "--to", "3"], "is not a Kafka topic name"),
        (["topics", "describe", "a/b"], "is not a Kafka topic name"),
        (["topics", "create", "--journey", "care home"], "journey 'care home' is not a Kafka"),
    ],
)
def test_bad_arguments_are_refused_before_the_broker_is_asked(
    argv: list[str],
    problem: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # An address nothing listens on: reaching it would fail differently and slowly.
    monkeypatch.setenv("APP_ENV", "test")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert problem in err
    assert len(err.strip().splitlines()) == 1


def test_add_partitions_needs_to(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["topics", "add-partitions", "t"])
    assert exited.value.code == 2
    assert "--to" in capsys.readouterr().err
