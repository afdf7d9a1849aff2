"""Every ```python block of README.md and docs/ runs, so a renamed API cannot leave a
stale example behind.

One test per page: its blocks run in order in one namespace, top-level ``await`` allowed,
in an event loop of their own test, with the environment pointing at a database (migrated
and reference-seeded) and topics of the page's own on the test broker, the way a reader's
``DATABASE_URL`` and ``KAFKA_BOOTSTRAP_SERVERS`` would. A page must stop what it starts.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from tests.doc_pages import Block, doc_pages, fenced_blocks, page_name
from tests.integration.conftest import SagaEnvironment

pytestmark = pytest.mark.integration


def python_blocks(page: Path) -> list[Block]:
    return [block for block in fenced_blocks(page) if block.language == "python"]


PAGES_WITH_CODE = [page for page in doc_pages() if python_blocks(page)]

# How long tasks a page stopped may take to end before they count as left running.
SETTLE_SECONDS = 5.0


def point_environment_at(env: SagaEnvironment, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``load_settings()`` inside the page's blocks find this test's stack."""
    monkeypatch.chdir(REPO_ROOT)  # load_settings() reads .env.<APP_ENV> from here
    own = env.process_environment()
    for name in (
        "APP_ENV",
        "DATABASE_URL",
        "KAFKA_BOOTSTRAP_SERVERS",
        "KAFKA_TOPIC_PREFIX",
        "KAFKA_TOPIC_PARTITIONS",
        "KAFKA_SESSION_TIMEOUT_MS",
        "KAFKA_HEARTBEAT_INTERVAL_MS",
        "DATABASE_POOL_SIZE",
        "LOG_LEVEL",
    ):
        monkeypatch.setenv(name, own[name])


async def run_block(block: Block, page: Path, namespace: dict[str, Any]) -> None:
    """Run one block in ``namespace``; its line numbers are the page's."""
    source = "\n" * block.line + block.text
    code = compile(
        source,
        f"{page_name(page)}",
        "exec",
        flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
        dont_inherit=True,
    )
    try:
        result = eval(code, namespace)  # noqa: S307 - the code is this repository's own docs
        if inspect.iscoroutine(result):
            await result
    except BaseException as exc:
        exc.add_note(f"in the ```python block at {page_name(page)}:{block.line}")
        raise


async def tasks_left_running() -> list[asyncio.Task[Any]]:
    """Tasks other than this test's, after giving stopped ones a moment to end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_SECONDS
    while True:
        left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        if not left or loop.time() >= deadline:
            return left
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=page_name)
async def test_the_python_blocks_of_the_page_run(
    page: Path, saga_env: SagaEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_environment_at(saga_env, monkeypatch)
    namespace: dict[str, Any] = {"__name__": f"docs:{page_name(page)}"}
    for block in python_blocks(page):
        await run_block(block, page, namespace)
    left = await tasks_left_running()
    for task in left:
        task.cancel()
    assert not left, f"{page_name(page)} left tasks running: " + ", ".join(
        task.get_name() for task in left
    )


def test_every_page_with_code_is_collected() -> None:
    """The pages are found by their fences: a page whose blocks were all mislabelled would
    silently drop out, so the pages known to teach with code must be among them."""
    names = {page_name(page) for page in PAGES_WITH_CODE}
    assert {"README.md", "docs/writing-sagas.md", "docs/handlers.md"} <= names
