"""The worker's schedule: defaults, WORKER_SCHEDULE overrides, disabled jobs, bad names."""

from __future__ import annotations

import pytest

from saga.errors import ConfigurationError, SettingsError
from saga.settings import Settings, load_settings, parse_schedule
from saga.worker.job import BatchResult, Job, JobContext, lock_key
from saga.worker.scheduler import build_schedule


async def _nothing(ctx: JobContext) -> BatchResult:
    return BatchResult.nothing()


JOBS = [
    Job(name="alpha", run=_nothing, interval=1.0, batch=100, description="a"),
    Job(name="beta", run=_nothing, interval=60.0, batch=10, description="b"),
]


def test_defaults_apply_without_overrides() -> None:
    schedule = build_schedule(JOBS, Settings())
    assert {name: (s.interval, s.batch) for name, s in schedule.items()} == {
        "alpha": (1.0, 100),
        "beta": (60.0, 10),
    }


def test_overrides_change_interval_and_batch_and_disabled_jobs_are_left_out() -> None:
    settings = Settings(worker_schedule=" alpha = 0.25/7 , beta=5", worker_disabled_jobs="beta")
    schedule = build_schedule(JOBS, settings)
    assert list(schedule) == ["alpha"]
    assert (schedule["alpha"].interval, schedule["alpha"].batch) == (0.25, 7)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("worker_schedule", "gamma=1"), ("worker_disabled_jobs", "alpha,gamma")],
)
def test_a_name_no_job_has_is_an_error_naming_the_jobs(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=r"no job called gamma \(jobs: alpha, beta\)"):
        build_schedule(JOBS, Settings().model_copy(update={variable: value}))


def test_two_jobs_with_one_name_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="two worker jobs are named 'alpha'"):
        build_schedule([JOBS[0], JOBS[0]], Settings())


@pytest.mark.parametrize("text", ["alpha", "alpha=", "alpha=x", "alpha=0", "alpha=1/0", "=1"])
def test_malformed_schedule_entries_are_named(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not job=SECONDS or job=SECONDS/BATCH"):
        parse_schedule(text)


def test_a_malformed_schedule_in_the_environment_is_a_settings_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORKER_SCHEDULE", "step_timeouts=soon")
    with pytest.raises(SettingsError, match="WORKER_SCHEDULE"):
        load_settings()


def test_lock_keys_are_stable_and_distinct() -> None:
    assert lock_key("alpha") == lock_key("alpha")
    assert lock_key("alpha") != lock_key("beta")
    assert -(2**63) <= lock_key("alpha") < 2**63
