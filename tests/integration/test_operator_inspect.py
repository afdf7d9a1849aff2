"""``saga ls``, ``show``, ``stats``, ``definitions`` and the operator views, against sagas
really run into every state (``operator_scene``).

Each command runs at least once as an operator runs it (a process of its own); the many
filter and option cases run through ``saga.cli.main`` in this process, which is the same
code without the interpreter's start-up. Expected values come from the saga log itself,
read here with plain SQL, and from what the scene is known to have done.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from saga.cli import main
from saga.errors import DatabaseError
from saga.operator import queries
from saga.store import Database
from tests.integration.operator_scene import (
    BACKDATED,
    SECRETS,
    Scene,
    operator_scene,
)

pytestmark = pytest.mark.integration

__all__ = ["operator_scene"]  # the fixture, imported for this module

IN_FLIGHT = {"compensating", "running"}
EVERY = {
    "completed",
    "completed_retried",
    "completed_old_1",
    "completed_old_2",
    "compensated",
    "compensated_retry",
    "parked",
    "compensating",
    "running",
}


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)


Cli = Callable[..., Ran]


@pytest.fixture
def cli(
    operator_scene: Scene, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Cli:
    """``saga *argv`` in this process, pointed at the scene."""
    for name, value in operator_scene.env.process_environment().items():
        monkeypatch.setenv(name, value)

    def run(*argv: str, **env: str) -> Ran:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="module")
def order(operator_scene: Scene) -> list[str]:
    """Every saga's role, newest first (what ``saga ls`` promises)."""
    rows = operator_scene.query("SELECT id FROM shared.saga_instance ORDER BY started_at DESC, id")
    return [operator_scene.role_of(row["id"]) for row in rows]


@pytest.fixture(scope="module")
def log_rows(operator_scene: Scene) -> list[dict[str, Any]]:
    return operator_scene.query(
        """
        SELECT l.*, i.definition_name FROM shared.saga_step_log l
        JOIN shared.saga_instance i ON i.id = l.saga_instance_id
        ORDER BY l.created_at, l.started_at, l.step_index
        """
    )


# --- saga ls --------------------------------------------------------------------------


def test_ls_lists_every_saga_newest_first_as_a_process(
    operator_scene: Scene, order: list[str]
) -> None:
    result = operator_scene.saga("ls")
    assert result.returncode == 0, result.stderr
    table = parse_table(result.stdout)
    assert list(table[0]) == [
        "id", "definition", "status", "step", "journey", "phase", "attempt", "started", "took",
        "waiting", "error",
    ]  # fmt: skip
    assert [operator_scene.role_of(row["id"]) for row in table] == order
    assert len(result.stdout.splitlines()) == 1 + len(EVERY)  # no footer: everything fit
    rows = {operator_scene.role_of(row["id"]): row for row in table}
    shown = {
        role: (r["definition"], r["status"], r["step"], r["journey"], r["phase"], r["attempt"])
        for role, r in rows.items()
    }
    assert shown["parked"] == (
        "test_booking v1",
        "parked",
        "award",
        "gamification",
        "compensate",
        "3",
    )
    assert shown["running"] == (
        "test_booking_short v1", "running", "award", "gamification", "execute", "2",
    )  # fmt: skip
    assert shown["compensating"][1:] == ("compensating", "award", "gamification", "compensate", "1")
    assert shown["completed"][1:] == ("completed", "confirm", "care", "execute", "1")
    # A compensated saga stopped in the compensation of its first step.
    assert shown["compensated"][1:] == ("compensated", "reserve", "care", "compensate", "1")
    # Finished sagas show how long they took; those in flight how long they have waited.
    assert rows["completed"]["took"] != "-"
    assert rows["completed"]["waiting"] == "-"
    assert rows["running"]["took"] == "-"
    assert rows["running"]["waiting"] != "-"
    assert rows["completed"]["error"] == "-"
    assert rows["parked"]["error"].startswith("compensation of step 'award' failed")
    assert rows["parked"]["error"].endswith("…")  # cut to the table's width
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rows["parked"]["started"])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--status", "completed"], {"completed", "completed_retried", *BACKDATED}),
        (["--status", "compensated,parked"], {"compensated", "compensated_retry", "parked"}),
        (["--status", "running", "--status", "compensating"], IN_FLIGHT),
        (["--parked"], {"parked"}),
        (["--parked", "--status", "running"], {"parked", "running"}),
        (["--status", "aborted"], set()),
        (["--definition", "test_booking_short"], {"running"}),
        (["--definition", "test_booking"], EVERY - {"running"}),
        (["--definition", "test_booking,test_booking_short"], EVERY),
        (["--definition", "nothing_like_it"], set()),
        # The journey of the step each saga is at now.
        (["--journey", "gamification"], {"parked", "compensating", "running"}),
        (["--journey", "care"], EVERY - {"parked", "compensating", "running"}),
        (["--journey", "plan"], set()),
        (["--since", "1d"], EVERY - set(BACKDATED)),
        (["--until", "1d"], set(BACKDATED)),
        (["--since", "4d", "--until", "2d"], set(BACKDATED)),
        (["--since", "2026-01-01T00:00:00Z"], EVERY),
        (["--until", "2026-01-01"], set()),
        (["--stuck-for", "1s"], IN_FLIGHT),
        (["--stuck-for", "1h"], set()),
        (["--journey", "gamification", "--status", "running,parked"], {"running", "parked"}),
        (["--journey", "gamification", "--stuck-for", "1s"], IN_FLIGHT),
    ],
)
def test_each_filter_selects_exactly_its_sagas(
    cli: Cli, operator_scene: Scene, order: list[str], argv: list[str], expected: set[str]
) -> None:
    if "--stuck-for" in argv:
        _let_in_flight_attempts_age(operator_scene, seconds=1.2)
    listed = cli("ls", "--json", *argv).json()
    roles = [operator_scene.role_of(saga["id"]) for saga in listed["sagas"]]
    assert roles == [role for role in order if role in expected]
    assert listed["more"] is False


def test_ls_json_carries_the_listing(cli: Cli, operator_scene: Scene) -> None:
    listed = cli("ls", "--json", "--parked").json()
    [parked] = listed["sagas"]
    facts = operator_scene.query(
        "SELECT * FROM shared.saga_instance WHERE id = $1", operator_scene.sagas["parked"]
    )[0]
    assert parked["id"] == str(facts["id"])
    assert (parked["definition"], parked["version"]) == ("test_booking", 1)
    assert (parked["status"], parked["current_step"], parked["step"]) == ("parked", 2, "award")
    assert (parked["journey"], parked["phase"], parked["attempt"]) == (
        "gamification",
        "compensate",
        3,
    )
    assert parked["error"] == facts["error"]
    assert parked["error"].startswith("compensation of step 'award' failed after 3 attempts")
    assert datetime.fromisoformat(parked["started_at"]) == facts["started_at"]
    assert parked["finished_at"] is None


def test_pages(cli: Cli, order: list[str], operator_scene: Scene) -> None:
    def roles(result: Ran) -> list[str]:
        return [operator_scene.role_of(line.split()[0]) for line in result.out.splitlines()[1:]
                if not line.startswith("page") and not line.startswith("offset")]  # fmt: skip

    first = cli("ls", "--limit", "4")
    assert roles(first) == order[:4]
    assert first.out.splitlines()[-1] == "page 1, 4 shown; --page 2 for more"
    second = cli("ls", "--limit", "4", "--page", "2")
    assert roles(second) == order[4:8]
    assert second.out.splitlines()[-1] == "page 2, 4 shown; --page 3 for more"
    last = cli("ls", "--limit", "4", "--page", "3")
    assert roles(last) == order[8:]
    assert "for more" not in last.out
    beyond = cli("ls", "--limit", "4", "--page", "4")
    assert beyond.out == "no sagas match\n"

    skipped = cli("ls", "--limit", "3", "--offset", "5")
    assert roles(skipped) == order[5:8]
    assert skipped.out.splitlines()[-1] == "offset 5, 3 shown; --offset 8 for more"

    page = cli("ls", "--json", "--limit", "4", "--page", "2").json()
    assert [operator_scene.role_of(s["id"]) for s in page["sagas"]] == order[4:8]
    assert (page["limit"], page["offset"], page["page"], page["more"]) == (4, 4, 2, True)
    exact = cli("ls", "--json", "--limit", str(len(order))).json()
    assert len(exact["sagas"]) == len(order)
    assert exact["more"] is False


# --- saga show ------------------------------------------------------------------------


def expected_timeline(rows: list[dict[str, Any]], saga_id: uuid.UUID) -> list[dict[str, Any]]:
    """One row per attempt, straight from the step log: the outcome of each answered
    attempt, the dispatch of each attempt still waiting."""
    mine = [r for r in rows if r["saga_instance_id"] == saga_id]
    answered = {
        (r["step_index"], r["action"], r["attempt"])
        for r in mine
        if r["status"] not in ("dispatched", "ignored")
    }
    kept = [
        r
        for r in mine
        if r["status"] != "dispatched"
        or (r["step_index"], r["action"], r["attempt"]) not in answered
    ]
    return sorted(kept, key=lambda r: r["started_at"])


def test_show_prints_the_state_and_one_line_per_attempt_as_a_process(
    operator_scene: Scene, log_rows: list[dict[str, Any]]
) -> None:
    saga_id = operator_scene.sagas["parked"]
    result = operator_scene.saga("show", str(saga_id))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.splitlines()[0] == f"saga {saga_id}"
    assert re.search(r"^  definition +test_booking v1$", out, re.M)
    assert re.search(r"^  status +parked$", out, re.M)
    [facts] = operator_scene.query("SELECT error FROM shared.saga_instance WHERE id = $1", saga_id)
    assert f"\n  reason     {facts['error']}\n" in out
    assert re.search(
        r"^  reason +compensation of step 'award' failed after 3 attempts: .*revoke broke on "
        r"attempt 3 \(compensating because step 'confirm' failed: confirm refused by the test\)$",
        out,
        re.M,
    )
    assert re.search(r"^  finished +-$", out, re.M)
    assert re.search(r"^  current +step 2 award \(gamification\), compensate, attempt 3", out, re.M)

    attempts = [line for line in out.splitlines() if line.startswith("  +")]
    expected = expected_timeline(log_rows, saga_id)
    # A loaded machine can resend a command whose reply was slow; the late duplicate reply
    # is logged as 'ignored' and shown like any row, but it is not part of the saga's path.
    path = [r for r in expected if r["status"] != "ignored"]
    assert [(r["step_name"], r["action"], r["attempt"], r["status"]) for r in path] == [
        ("reserve", "execute", 1, "succeeded"),
        ("authorize", "execute", 1, "succeeded"),
        ("award", "execute", 1, "succeeded"),
        ("confirm", "execute", 1, "failed"),
        ("award", "compensate", 1, "retried"),
        ("award", "compensate", 2, "retried"),
        ("award", "compensate", 3, "failed"),
    ]
    assert len(attempts) == len(expected)
    for line, row in zip(attempts, expected, strict=True):
        assert re.search(
            rf"\b{row['step_name']}\s+{row['journey']}\s+{row['action']}\s+"
            rf"#{row['attempt']}\s+{row['status']}\b",
            line,
        ), line
        if row["error"]:
            assert line.endswith(row["error"])
    [second_revoke] = [
        line
        for line, row in zip(attempts, expected, strict=True)
        if (row["action"], row["attempt"]) == ("compensate", 2)
    ]
    assert "revoke broke on attempt 2" in second_revoke
    # Each answered attempt carries the request its dispatch recorded.
    assert out.count('\n             request  {"action": ') == len(expected)
    answered_with_data = [r for r in expected if r["response"] is not None]
    assert len([r for r in answered_with_data if r["status"] != "ignored"]) == 3  # three succeeded
    assert out.count("\n             response ") == len(answered_with_data)


def test_show_json_is_the_whole_saga_with_a_timeline_per_attempt(
    cli: Cli, operator_scene: Scene, log_rows: list[dict[str, Any]]
) -> None:
    saga_id = operator_scene.sagas["compensated_retry"]
    shown = cli("show", str(saga_id), "--json").json()
    facts = operator_scene.query("SELECT * FROM shared.saga_instance WHERE id = $1", saga_id)[0]
    assert shown["id"] == str(saga_id)
    assert (shown["definition"], shown["version"], shown["status"]) == (
        "test_booking", 1, "compensated",
    )  # fmt: skip
    assert shown["error"] == facts["error"] == "step 'award' failed: award refused by the test"
    took = (facts["finished_at"] - facts["started_at"]).total_seconds() * 1000
    assert shown["took_ms"] == pytest.approx(took)
    assert shown["current_step"]["name"] == "reserve"
    assert shown["current_step"]["phase"] == "compensate"
    assert shown["payload"] == {"error": {"award": 2}, "refuse": "award"}

    expected = expected_timeline(log_rows, saga_id)
    timeline = shown["timeline"]
    assert [
        (e["step_name"], e["action"], e["attempt"], e["status"], e["error"]) for e in timeline
    ] == [(r["step_name"], r["action"], r["attempt"], r["status"], r["error"]) for r in expected]
    # A reply that came twice (redelivered after a rebalance on a busy machine) is in the
    # log as ``ignored``, and matched above; the attempts themselves are these:
    attempts = [e for e in timeline if e["status"] != "ignored"]
    assert [(e["step_name"], e["action"], e["attempt"], e["status"]) for e in attempts] == [
        ("reserve", "execute", 1, "succeeded"),
        ("authorize", "execute", 1, "succeeded"),
        ("award", "execute", 1, "retried"),
        ("award", "execute", 2, "retried"),
        ("award", "execute", 3, "failed"),
        ("authorize", "compensate", 1, "succeeded"),
        ("reserve", "compensate", 1, "succeeded"),
    ]
    assert attempts[2]["error"].endswith("award broke on attempt 1")
    for entry, row in zip(timeline, expected, strict=True):
        assert entry["duration_ms"] == pytest.approx(row["duration_ms"])
        assert entry["actor"] is None
        assert entry["request"]["action"] in ("reserve", "authorize", "award", "void", "release")
    assert attempts[-1]["response"] == {"deleted": "DELETE 1"}


def test_show_of_a_saga_still_waiting_shows_the_open_attempt(
    cli: Cli, operator_scene: Scene, log_rows: list[dict[str, Any]]
) -> None:
    saga_id = operator_scene.sagas["running"]
    shown = cli("show", str(saga_id), "--json").json()
    award = [(e["attempt"], e["status"]) for e in shown["timeline"] if e["step_name"] == "award"]
    assert award == [(1, "timed_out"), (2, "dispatched")]
    assert shown["timeline"][-1]["duration_ms"] is None
    assert shown["finished_at"] is None
    assert shown["took_ms"] is None
    assert shown["current_step"] | {"started_at": None, "deadline": None} == {
        "index": 2, "name": "award", "journey": "gamification", "phase": "execute",
        "attempt": 2, "started_at": None, "deadline": None,
    }  # fmt: skip
    text = cli("show", str(saga_id)).out
    assert re.search(r"award\s+gamification\s+execute\s+#1\s+timed_out\b", text)
    assert re.search(r"award\s+gamification\s+execute\s+#2\s+dispatched\s+-$", text, re.M)


def test_show_masks_sensitive_fields(operator_scene: Scene) -> None:
    # Processes of their own: which names are sensitive is set once per process.
    saga_id = str(operator_scene.sagas["completed"])
    shown = operator_scene.saga("show", saga_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["payload"] == {
        "n": 1, "email": "***", "member": {"cpf": "***", "n": 1}, "reason": "***",
    }  # fmt: skip
    text = operator_scene.saga("show", saga_id)
    for secret in SECRETS:
        assert secret not in shown.stdout
        assert secret not in text.stdout
    assert '"email": "***"' in text.stdout
    assert '"reason": "***"' in text.stdout  # declared by the care journey service
    # LOG_SENSITIVE_FIELDS adds names; here every field called "n".
    extra = operator_scene.saga("show", saga_id, "--json", LOG_SENSITIVE_FIELDS="n")
    assert json.loads(extra.stdout)["payload"] == {
        "n": "***", "email": "***", "member": {"cpf": "***", "n": "***"}, "reason": "***",
    }  # fmt: skip


def test_show_refuses_bad_and_unknown_ids_in_one_line(operator_scene: Scene, cli: Cli) -> None:
    malformed = operator_scene.saga("show", "not-a-uuid")
    assert malformed.returncode == 2
    assert malformed.stderr == "saga: error: not a saga id (a UUID): 'not-a-uuid'\n"
    unknown = uuid.uuid4()
    missing = cli("show", str(unknown))
    assert missing.code == 1
    assert missing.err == f"saga: error: no saga with id {unknown}\n"
    assert missing.out == ""


# --- saga stats -----------------------------------------------------------------------


def percentile_cont(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def expected_step_stats(
    rows: list[dict[str, Any]], since: datetime, until: datetime
) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if (
            r["status"] in ("succeeded", "failed", "timed_out", "retried")
            and r["actor"] is None
            and since <= r["finished_at"] < until
        ):
            groups[(r["definition_name"], r["step_name"], r["journey"], r["action"])].append(r)
    return {
        key: {
            "answers": len(group),
            "p50_ms": percentile_cont([r["duration_ms"] for r in group], 0.5),
            "p95_ms": percentile_cont([r["duration_ms"] for r in group], 0.95),
            "p99_ms": percentile_cont([r["duration_ms"] for r in group], 0.99),
            "max_ms": max(r["duration_ms"] for r in group),
            "failed": sum(r["status"] == "failed" for r in group),
            "retried": sum(r["status"] == "retried" for r in group),
            "timed_out": sum(r["status"] == "timed_out" for r in group),
            "serialization_retries": sum(r["serialization_retries"] for r in group),
            "deadlock_retries": sum(r["deadlock_retries"] for r in group),
        }
        for key, group in groups.items()
    }


def test_stats_counts_and_percentiles_match_the_log(
    cli: Cli, operator_scene: Scene, log_rows: list[dict[str, Any]]
) -> None:
    before = datetime.now(UTC)
    stats = cli("stats", "--json", "--top", "3").json()
    since, until = (datetime.fromisoformat(stats[k]) for k in ("since", "until"))
    assert before - timedelta(hours=24, seconds=5) < since < before - timedelta(hours=23)

    counts = {(c["definition"], c["status"]): c["sagas"] for c in stats["sagas"]}
    # The two backdated sagas started outside the window.
    assert counts == {
        ("test_booking", "completed"): 2,
        ("test_booking", "compensated"): 2,
        ("test_booking", "compensating"): 1,
        ("test_booking", "parked"): 1,
        ("test_booking_short", "running"): 1,
    }

    expected = expected_step_stats(log_rows, since, until)
    steps = {
        (s["definition"], s["step_name"], s["journey"], s["action"]): s for s in stats["steps"]
    }
    assert steps.keys() == expected.keys()
    for key, facts in expected.items():
        for name, value in facts.items():
            assert steps[key][name] == pytest.approx(value), (key, name)
    # What the scene is known to have done, beside what the log says.
    assert steps[("test_booking", "authorize", "plan", "execute")]["retried"] == 2
    assert steps[("test_booking", "award", "gamification", "execute")]["retried"] == 2
    assert steps[("test_booking", "award", "gamification", "compensate")]["retried"] == 2
    assert steps[("test_booking", "award", "gamification", "compensate")]["failed"] == 1
    assert steps[("test_booking_short", "award", "gamification", "execute")]["timed_out"] == 1
    # Four completed sagas (the backdated two started long ago, but their attempts ended
    # in the window) and two refused: the parked and the compensating saga.
    assert steps[("test_booking", "confirm", "care", "execute")]["answers"] == 4 + 2

    by_p95 = sorted(
        expected.items(), key=lambda kv: (kv[1]["p95_ms"], kv[1]["max_ms"]), reverse=True
    )
    assert [
        (s["definition"], s["step_name"], s["journey"], s["action"]) for s in stats["slowest"]
    ] == [key for key, _ in by_p95[:3]]


def test_stats_window_and_definition(
    cli: Cli, operator_scene: Scene, log_rows: list[dict[str, Any]]
) -> None:
    wide = cli("stats", "--json", "--since", "4d").json()
    assert sum(c["sagas"] for c in wide["sagas"]) == len(EVERY)

    old = cli("stats", "--json", "--since", "4d", "--until", "2d").json()
    assert {(c["definition"], c["status"]): c["sagas"] for c in old["sagas"]} == {
        ("test_booking", "completed"): 2
    }
    assert old["steps"] == []
    assert old["slowest"] == []

    both = cli("stats", "--json", "--definition", "test_booking_short,test_booking").json()
    assert both["definitions"] == ["test_booking_short", "test_booking"]
    assert both["sagas"] == cli("stats", "--json").json()["sagas"]

    short = cli("stats", "--json", "--definition", "test_booking_short").json()
    assert short["definitions"] == ["test_booking_short"]
    assert {c["definition"] for c in short["sagas"]} == {"test_booking_short"}
    assert {s["definition"] for s in short["steps"]} == {"test_booking_short"}
    assert [(s["step_name"], s["answers"]) for s in short["steps"]] == [
        ("reserve", 1), ("authorize", 1), ("award", 1),
    ]  # fmt: skip


def test_stats_table_as_a_process(operator_scene: Scene) -> None:
    result = operator_scene.saga("stats", "--top", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^test_booking_short\s+running\s+1$", out, re.M)
    assert re.search(r"^test_booking\s+parked\s+1$", out, re.M)
    assert "attempts that ended in the window (durations in ms)" in out
    assert re.search(
        r"^test_booking_short\s+award\s+gamification\s+execute\s+1\s+(\S+\s+){4}0\s+0\s+1\s+0\s+0$",
        out,
        re.M,
    )
    assert "slowest 2 by p95" in out


# --- saga definitions -----------------------------------------------------------------


def test_definitions_with_their_sagas_in_flight_and_parked(operator_scene: Scene, cli: Cli) -> None:
    result = operator_scene.saga("definitions")
    assert result.returncode == 0, result.stderr
    table = parse_table(result.stdout)
    assert [
        (d["name"], d["version"], d["steps"], d["step_names"], d["running"], d["compensating"],
         d["parked"])
        for d in table
    ] == [
        ("test_booking", "1", "4", "reserve,authorize,award,confirm", "0", "1", "1"),
        ("test_booking_short", "1", "4", "reserve,authorize,award,confirm", "1", "0", "0"),
    ]  # fmt: skip
    assert all(d["registered_at"].endswith("Z") for d in table)

    found = {d["name"]: d for d in cli("definitions", "--json").json()}
    facts = operator_scene.query(
        """
        SELECT definition_name, status, count(*) AS n FROM shared.saga_instance
        WHERE status IN ('running', 'compensating', 'parked') GROUP BY 1, 2
        """
    )
    for name, definition in found.items():
        for status in ("running", "compensating", "parked"):
            n = sum(f["n"] for f in facts if (f["definition_name"], f["status"]) == (name, status))
            assert definition[status] == n
    assert found["test_booking"]["step_names"] == ["reserve", "authorize", "award", "confirm"]
    assert found["test_booking"]["steps"] == 4
    assert found["test_booking"]["timeout_seconds"] is None


# --- the views ------------------------------------------------------------------------


def test_saga_stuck_view(operator_scene: Scene) -> None:
    _let_in_flight_attempts_age(operator_scene, seconds=0.5)
    rows = operator_scene.query("SELECT * FROM shared.saga_stuck")
    stuck = {operator_scene.role_of(r["saga_id"]): r for r in rows}
    assert stuck.keys() == {"parked", "compensating", "running"}
    assert {
        role: (r["status"], r["step_name"], r["journey"], r["attempt"], r["phase"])
        for role, r in stuck.items()
    } == {
        "parked": ("parked", "award", "gamification", 3, "compensate"),
        "compensating": ("compensating", "award", "gamification", 1, "compensate"),
        "running": ("running", "award", "gamification", 2, "execute"),
    }
    instances = {
        r["id"]: r
        for r in operator_scene.query(
            "SELECT *, now() AS now FROM shared.saga_instance WHERE status IN "
            "('running', 'compensating', 'parked')"
        )
    }
    for r in rows:
        facts = instances[r["saga_id"]]
        assert r["step_started_at"] == facts["step_started_at"]
        assert timedelta(0) < r["stuck_for"] <= facts["now"] - facts["step_started_at"]
        assert r["error"] == facts["error"]
        assert r["started_at"] == facts["started_at"]
    assert stuck["running"]["overdue"] is True  # award gives up after 0.4 s
    assert stuck["parked"]["overdue"] is False  # a parked saga waits on no deadline


def test_saga_failures_view(operator_scene: Scene, log_rows: list[dict[str, Any]]) -> None:
    rows = operator_scene.query("SELECT * FROM shared.saga_failures")
    from_log = {
        (r["saga_instance_id"], r["step_name"], r["action"], r["attempt"], r["status"], r["error"])
        for r in log_rows
        if r["status"] in ("failed", "timed_out", "retried", "aborted")
    }
    steps = [r for r in rows if r["source"] == "step"]
    assert len(steps) == len(from_log)
    assert {
        (r["saga_id"], r["step_name"], r["action"], r["attempt"], r["status"], r["error"])
        for r in steps
    } == from_log
    assert all(r["actor"] is None for r in rows)

    sagas = {operator_scene.role_of(r["saga_id"]): r for r in rows if r["source"] == "saga"}
    assert sagas.keys() == {"compensated", "compensated_retry", "parked"}
    errors = {
        operator_scene.role_of(r["id"]): r["error"]
        for r in operator_scene.query("SELECT id, error FROM shared.saga_instance")
    }
    for role, row in sagas.items():
        assert row["error"] == errors[role]
        assert row["definition_name"] == "test_booking"
    assert (sagas["parked"]["step_name"], sagas["parked"]["status"]) == ("award", "parked")
    assert sagas["compensated"]["step_name"] is None
    # Every saga that ran into trouble appears; the clean ones do not.
    troubled = {operator_scene.role_of(r["saga_id"]) for r in rows}
    assert troubled == {
        "completed_retried", "compensated", "compensated_retry", "parked", "compensating",
        "running",
    }  # fmt: skip


def test_saga_step_durations_view(operator_scene: Scene, log_rows: list[dict[str, Any]]) -> None:
    rows = operator_scene.query("SELECT * FROM shared.saga_step_durations")
    hourly: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in log_rows:
        if r["status"] in ("succeeded", "failed", "timed_out", "retried") and r["actor"] is None:
            hour = r["finished_at"].replace(minute=0, second=0, microsecond=0)
            key = (hour, r["definition_name"], r["step_name"], r["journey"], r["action"])
            hourly[key].append(r)
    got = {
        (r["hour"], r["definition_name"], r["step_name"], r["journey"], r["action"]): r
        for r in rows
    }
    assert got.keys() == hourly.keys()
    for key, group in hourly.items():
        durations = [r["duration_ms"] for r in group]
        view = got[key]
        assert view["answers"] == len(group)
        assert view["p50_ms"] == pytest.approx(percentile_cont(durations, 0.5))
        assert view["p95_ms"] == pytest.approx(percentile_cont(durations, 0.95))
        assert view["p99_ms"] == pytest.approx(percentile_cont(durations, 0.99))
        assert view["max_ms"] == pytest.approx(max(durations))
        assert view["failures"] == sum(r["status"] == "failed" for r in group)
        assert view["retries"] == sum(r["status"] == "retried" for r in group)
        assert view["timeouts"] == sum(r["status"] == "timed_out" for r in group)


def test_the_coordinator_role_may_read_the_views(operator_scene: Scene) -> None:
    rows = operator_scene.query(
        "SELECT v, has_table_privilege('austa_saga_coordinator', 'shared.' || v, 'SELECT') AS ok "
        "FROM unnest(ARRAY['saga_stuck', 'saga_failures', 'saga_step_durations']) AS v"
    )
    assert {r["v"]: r["ok"] for r in rows} == dict.fromkeys(
        ("saga_stuck", "saga_failures", "saga_step_durations"), True
    )


def test_the_commands_read_in_a_read_only_transaction(operator_scene: Scene) -> None:
    async def attempt_a_write() -> None:
        database = Database.from_settings(operator_scene.env.settings, url=operator_scene.url)
        try:
            await queries.read_only(
                database,
                lambda conn: conn.execute("UPDATE shared.saga_instance SET error = error"),
                name="tests.write",
            )
        finally:
            await database.dispose()

    with pytest.raises(DatabaseError) as caught:
        asyncio.run(attempt_a_write())
    assert caught.value.sqlstate == "25006"  # read_only_sql_transaction


# --- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ls", "--status", "bogus"], "--status: unknown status 'bogus' (expected one of "),
        (["ls", "--since", "yesterday"], "--since: expected an ISO time"),
        (["ls", "--stuck-for=-5m"], "--stuck-for: a duration must be positive; got '-5m'"),
        (["ls", "--since", "1h", "--until", "2h"], "--since ("),
        (["ls", "--limit", "5000"], "--limit: expected 1..1000; got '5000'"),
        (["ls", "--limit", "ten"], "--limit: expected 1..1000; got 'ten'"),
        (["ls", "--page", "0"], "--page: expected a whole number >= 1; got '0'"),
        (["ls", "--page", "2", "--offset", "5"], "--page and --offset: give one or the other"),
        (["stats", "--since", "soon"], "--since: expected an ISO time"),
        (["stats", "--since", "1h", "--until", "2h"], "--since ("),
        (["stats", "--top", "0"], "--top: expected a whole number >= 1; got '0'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli: Cli, argv: list[str], message: str) -> None:
    result = cli(*argv)
    assert result.code == 2
    assert result.out == ""
    assert result.err.startswith(f"saga: error: {message}")
    assert result.err.count("\n") == 1
    if message == "--since (":
        assert "must be before --until (" in result.err


def test_bad_input_as_a_process(operator_scene: Scene) -> None:
    for argv in (["ls", "--status", "bogus"], ["stats", "--since", "yesterday"]):
        result = operator_scene.saga(*argv)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("saga: error: ")
        assert result.stderr.count("\n") == 1


def test_an_unreachable_database_is_one_line(cli: Cli) -> None:
    result = cli(
        "ls",
        DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere",
        DATABASE_CONNECTION_TIMEOUT="500",
    )
    assert result.code == 1
    assert result.err.startswith("saga: error: ")
    assert result.err.count("\n") == 1


# --- helpers ----------------------------------------------------------------------------


def parse_table(text: str) -> list[dict[str, str]]:
    """The rows of a table ``print_table`` printed, by column (cells may hold spaces:
    each column starts where its header does). Lines after the table are left out."""
    lines = text.splitlines()
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    rows = []
    for line in lines[1:]:
        if not line.strip():
            break
        ends = [*starts[1:], None]
        rows.append(
            {
                name: line[start:end].strip()
                for name, start, end in zip(names, starts, ends, strict=True)
            }
        )
    return rows


def _let_in_flight_attempts_age(scene: Scene, *, seconds: float) -> None:
    """Wait until every in-flight attempt has been going ``seconds`` (the scene is built
    just before the first test)."""
    [row] = scene.query(
        "SELECT extract(epoch FROM now() - max(step_started_at)) AS age "
        "FROM shared.saga_instance WHERE status IN ('running', 'compensating')"
    )
    time.sleep(max(0.0, seconds - float(row["age"])))
