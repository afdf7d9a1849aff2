"""The operators' console walked through in headless Chromium, against sagas that really
ran on the real PostgreSQL and broker (tests/integration/console_scene.py).

The console is served by uvicorn on a port of its own (its own event loop, its own pool);
the test's loop runs the coordinator and participants, so every wait for the browser runs
in a thread and the sagas keep moving meanwhile. Each page is photographed; with
``SAGA_SCREENSHOTS_DIR=docs/console`` the pictures refresh the docs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.ui import WebDriverWait

from saga.machine import SagaStatus
from saga.web.app import create_app
from tests.browser.conftest import ConsoleServer, Screenshot
from tests.integration.conftest import (  # noqa: F401 - fixtures this module uses
    SagaEnvironment,
    saga_env,
    template_database_name,
)
from tests.integration.console_scene import (
    MEMBER_A,
    PATIENT_VALUES,
    SCRIPT_NOTE,
    SEARCHABLE_BOOKING,
    ConsoleScene,
    build_console_scene,
    console_settings,
    payload,
)
from tests.integration.sagas import cluster, starter, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.integration]

WAIT_SECONDS = 20


@pytest.fixture
async def scene(saga_env: SagaEnvironment) -> ConsoleScene:  # noqa: F811 - the fixture
    return await build_console_scene(saga_env)


def served(scene: ConsoleScene, console_server: ConsoleServer) -> str:
    settings = console_settings(scene.env, database_url=scene.env.database_url)
    return console_server(create_app(settings))


async def until(
    driver: webdriver.Chrome, check: Callable[[webdriver.Chrome], Any], what: str
) -> Any:
    """Wait for the page in a thread, so the sagas in the test's loop keep moving."""
    wait = WebDriverWait(driver, WAIT_SECONDS)
    return await asyncio.to_thread(wait.until, check, what)


def element(driver: webdriver.Chrome, css: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, css)


def submit(driver: webdriver.Chrome, css: str) -> None:
    """Click what submits a form and wait for the next page to have loaded: a click may
    return before the browser has left the page, and a loaded machine makes that likely."""
    page = driver.find_element(By.TAG_NAME, "html")
    element(driver, css).click()
    WebDriverWait(driver, WAIT_SECONDS).until(staleness_of(page), f"the page after {css}")
    WebDriverWait(driver, WAIT_SECONDS).until(
        lambda d: d.execute_script("return document.readyState") == "complete",
        f"the page after {css} to load",
    )


def sign_in(driver: webdriver.Chrome, base: str, token: str) -> None:
    driver.get(f"{base}/sagas")
    assert "/login" in driver.current_url
    element(driver, "#token").send_keys(token)
    submit(driver, "form[action='/login'] button")


def listed_ids(driver: webdriver.Chrome) -> set[str]:
    return {
        row.get_attribute("data-id") or ""
        for row in driver.find_elements(By.CSS_SELECTOR, "#sagas tbody tr[data-id]")
    }


def no_patient_values(driver: webdriver.Chrome) -> None:
    source = driver.page_source
    for value in PATIENT_VALUES:
        assert value not in source, (driver.current_url, value)


async def test_a_viewer_reads_finds_and_is_refused_actions(
    scene: ConsoleScene,
    browser: webdriver.Chrome,
    console_server: ConsoleServer,
    screenshot: Screenshot,
) -> None:
    base = served(scene, console_server)
    browser.get(f"{base}/sagas")
    assert "/login" in browser.current_url
    screenshot(browser, "sign-in")
    element(browser, "#token").send_keys("austa_wrong")
    submit(browser, "form[action='/login'] button")
    assert "unknown, revoked or expired" in element(browser, "#problem").text

    sign_in(browser, base, scene.viewer_token)
    assert browser.current_url.endswith("/sagas")
    assert listed_ids(browser) == {str(s) for s in scene.sagas.values()}
    screenshot(browser, "sagas")
    no_patient_values(browser)

    # Filter: parked only.
    element(browser, "input[name='status'][value='parked']").click()
    submit(browser, "#filters button[type='submit']")
    assert listed_ids(browser) == {str(scene.sagas["parked"])}

    # Find a member's sagas by search attribute from the one search box.
    browser.get(f"{base}/sagas")
    element(browser, "#q").send_keys(f"member_id={MEMBER_A}")
    submit(browser, "form.search button")
    assert listed_ids(browser) == {str(s) for s in scene.member_a_sagas}
    screenshot(browser, "search-by-attribute")

    # A compensated saga's timeline, and a payload holding <script> shown as text.
    browser.get(f"{base}/sagas/{scene.sagas['compensated']}")
    timeline = element(browser, "#timeline svg")
    assert timeline.size["width"] > 300
    bars = browser.find_elements(By.CSS_SELECTOR, "#timeline svg .bar")
    assert len(bars) >= 5, "reserve, authorize and award, then the undoing of two"
    assert SCRIPT_NOTE in element(browser, "#payload").text
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - reading it is the check
    statuses = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#entries .status")]
    assert "failed" in statuses
    assert "succeeded" in statuses
    screenshot(browser, "saga-compensated")
    no_patient_values(browser)
    assert "&lt;script&gt;" in browser.page_source

    # A viewer sees no action, and going to one is refused.
    parked = scene.sagas["parked"]
    browser.get(f"{base}/sagas/{parked}")
    assert "Viewers read; operators act." in browser.page_source
    assert not browser.find_elements(By.CSS_SELECTOR, "#act-retry")
    browser.get(f"{base}/sagas/{parked}/act/retry")
    assert "viewers read, operators act" in element(browser, "#problem").text
    screenshot(browser, "viewer-refused")

    for path, name in (
        ("/attention", "needs-attention"),
        ("/definitions", "definitions"),
        (f"/definitions/{SEARCHABLE_BOOKING.name}/1", "definition-diagram"),
        ("/stats?window=1h", "stats"),
    ):
        browser.get(base + path)
        assert "Cannot do that" not in browser.page_source, path
        no_patient_values(browser)
        screenshot(browser, name)
    browser.get(f"{base}/definitions/{SEARCHABLE_BOOKING.name}/1")
    assert element(browser, "#diagram svg").size["width"] > 300


async def test_an_operator_retries_a_parked_saga_and_watches_it_compensate(
    scene: ConsoleScene,
    browser: webdriver.Chrome,
    console_server: ConsoleServer,
    screenshot: Screenshot,
) -> None:
    env = scene.env
    base = served(scene, console_server)
    parked = scene.sagas["parked"]
    sign_in(browser, base, scene.operator_token)

    # A forged action: a form with no CSRF token, posted from the page, is refused.
    browser.get(f"{base}/sagas/{parked}")
    browser.execute_script(
        """
        const form = document.createElement('form');
        form.method = 'post';
        form.action = arguments[0];
        for (const [name, value] of [['stage', 'execute'], ['reason', 'forged']]) {
            const input = document.createElement('input');
            input.name = name; input.value = value; form.appendChild(input);
        }
        document.body.appendChild(form);
        form.submit();
        """,
        f"/sagas/{parked}/act/abort",
    )
    await until(browser, lambda d: d.find_elements(By.ID, "problem"), "the refusal")
    assert "security token" in element(browser, "#problem").text
    status = await env.database.run_driver(
        lambda conn: conn.fetchval("SELECT status FROM shared.saga_instance WHERE id = $1", parked)
    )
    assert status == "parked"

    # The plan service is fixed (void stops failing), and the operator retries.
    await env.database.run_driver(
        lambda conn: conn.execute(
            "UPDATE shared.saga_instance SET payload = payload - 'error' WHERE id = $1", parked
        )
    )
    async with cluster(env.settings, env.database, env.bootstrap):
        browser.get(f"{base}/sagas/{parked}")
        submit(browser, "#act-retry")
        element(browser, "#reason").send_keys("void fixed in plan 2.4.1")
        submit(browser, "#preview")
        assert "parked at authorize (compensate)" in element(browser, "#before").text
        assert "compensating at authorize (compensate)" in element(browser, "#after").text
        screenshot(browser, "action-preview")
        submit(browser, "#confirm")
        assert "Done" in element(browser, "#result").text
        screenshot(browser, "action-done")
        await wait_until(env.database, parked, "status = 'compensated'")
        browser.get(f"{base}/sagas/{parked}")
        assert element(browser, "#saga-status").text == SagaStatus.COMPENSATED.value
        assert "otto.operator" in element(browser, "#entries").text

        # The list updates a saga in flight without a reload.
        async with starter(env) as coordinator:
            moving = await coordinator.start(
                SEARCHABLE_BOOKING, payload("member-c-0003", 12, sleep={"award": 3})
            )
            browser.get(f"{base}/sagas?status=running")
            row = f"#sagas tr[data-id='{moving}'] [data-field='status']"
            browser.execute_script("window.notReloaded = true;")
            assert element(browser, row).text == "running"
            await until(
                browser,
                lambda d: d.find_element(By.CSS_SELECTOR, row).text == "completed",
                "the live update",
            )
            assert browser.execute_script("return window.notReloaded === true;")
            screenshot(browser, "live-update")
