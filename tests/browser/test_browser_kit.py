"""The browser kit itself, on a page of its own: the app is served, its external script
loads and runs (the console's pages rely on scripts served by the app, never inline ones),
a form posts, and a screenshot lands on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from tests.browser.conftest import ConsoleServer, Screenshot, reset_browser

pytestmark = pytest.mark.browser

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>kit</title><script src="/kit.js" defer></script></head>
<body>
  <p id="status">script not run</p>
  <form method="post" action="/echo">
    <input name="note" id="note"><button type="submit" id="send">Send</button>
  </form>
</body>
</html>"""

SCRIPT = "document.getElementById('status').textContent = 'script ran';"


async def page(request: Request) -> Response:
    return HTMLResponse(PAGE)


async def script(request: Request) -> Response:
    return Response(SCRIPT, media_type="text/javascript")


async def echo(request: Request) -> Response:
    form = await request.form()
    note = str(form.get("note", ""))
    return HTMLResponse(f"<!doctype html><p id='echo'>{note.upper()}</p>")


def kit_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/", page),
            Route("/kit.js", script),
            Route("/echo", echo, methods=["POST"]),
        ]
    )


def test_a_served_page_runs_its_script_posts_its_form_and_is_photographed(
    browser: webdriver.Chrome, console_server: ConsoleServer, screenshot: Screenshot
) -> None:
    base = console_server(kit_app())
    browser.get(base + "/")
    status = browser.find_element(By.ID, "status")
    WebDriverWait(browser, 10).until(lambda _: status.text == "script ran")
    assert browser.get_window_size()["width"] == 1366

    shot = screenshot(browser, "browser-kit")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 1000

    browser.find_element(By.ID, "note").send_keys("booked")
    browser.find_element(By.ID, "send").click()
    echoed = WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "echo"))
    assert echoed.text == "BOOKED"


def test_each_test_starts_without_the_cookies_of_the_last(
    browser: webdriver.Chrome, console_server: ConsoleServer
) -> None:
    base = console_server(kit_app())
    browser.get(base + "/")
    browser.add_cookie({"name": "session", "value": "left-behind"})
    assert browser.get_cookie("session") is not None
    reset_browser(browser)
    browser.get(base + "/")
    assert browser.get_cookie("session") is None


def test_screenshots_are_also_published_when_asked(
    browser: webdriver.Chrome,
    console_server: ConsoleServer,
    screenshot: Screenshot,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    published = tmp_path / "docs-console"
    monkeypatch.setenv("SAGA_SCREENSHOTS_DIR", str(published))
    browser.get(console_server(kit_app()) + "/")
    shot = screenshot(browser, "kit-page")
    assert (published / "kit-page.png").read_bytes() == shot.read_bytes()
