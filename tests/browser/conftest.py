"""The console in a real browser: Debian's Chromium driven by Selenium through Debian's
chromedriver, against an app served by uvicorn on a free local port.

- ``chromium``: one headless Chromium for the whole run (starting one takes a second or
  two); ``browser`` hands it to a test with no cookies left from the test before, since
  every test's server lives on 127.0.0.1 and cookies are kept per host, not per port.
- ``console_server(app)``: serve an ASGI app (lifespan included) and get its base URL.
- ``screenshot(driver, name)``: a PNG in the test's own directory, and also in
  ``SAGA_SCREENSHOTS_DIR`` when it is set, which is how the docs' pictures are refreshed:
  ``SAGA_SCREENSHOTS_DIR=docs/console .venv/bin/pytest tests/browser``.

Mark browser tests ``pytest.mark.browser``. `make tools` installs the two binaries; a
machine without them fails these tests rather than skipping them, so CI cannot go green
without having looked at the console.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.selenium_manager import SeleniumManager

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1366, 900)
SERVER_START_SECONDS = 15.0
PROCESS_EXIT_SECONDS = 10.0

ConsoleServer = Callable[[Any], str]
Screenshot = Callable[[webdriver.Chrome, str], Path]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def chromium_options(binary: str) -> Options:
    options = Options()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        # CI runs as root, where Chromium's sandbox refuses to start.
        "--no-sandbox",
        # Containers give /dev/shm 64 MB, which a page with a long table can exhaust.
        "--disable-dev-shm-usage",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--disable-gpu",
        # Nothing but the page under test may touch the network (a test must not depend
        # on the internet): no component updates, no first-run pages, and no host is
        # resolved but the local ones (even an IP literal goes through these rules), since
        # Chromium otherwise looks up Google's sign-in and update hosts in the background.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
    ):
        options.add_argument(argument)
    return options


def _binary(variable: str, default: str) -> str:
    path = os.environ.get(variable) or default
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(
            f"{path} is missing (set {variable} to another path, or run `make tools`, "
            "which installs Debian's chromium and chromium-driver)",
            pytrace=False,
        )
    return path


def _refuse_selenium_manager(*_args: Any, **_kwargs: Any) -> dict[str, str]:
    raise AssertionError(
        "Selenium Manager was asked for a driver: it downloads one from the internet. "
        "The chromium fixture passes the driver's path, so this must never happen"
    )


@pytest.fixture(scope="session")
def chromium() -> Iterator[webdriver.Chrome]:
    """Headless Chromium for the whole run; quit, with every process it started, at the end."""
    binary = _binary("SAGA_CHROMIUM", CHROMIUM)
    driver_path = _binary("SAGA_CHROMEDRIVER", CHROMEDRIVER)
    with pytest.MonkeyPatch.context() as patch:
        # Selenium's usage statistics are the one request Selenium itself would make.
        patch.setenv("SE_AVOID_STATS", "true")
        patch.setattr(SeleniumManager, "binary_paths", _refuse_selenium_manager)
        service = Service(executable_path=driver_path)
        driver = webdriver.Chrome(options=chromium_options(binary), service=service)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        _quit(driver, service)


def _quit(driver: webdriver.Chrome, service: Service) -> None:
    """Quit the browser and make sure chromedriver and every Chromium process it started
    are gone: a renderer left behind would outlive the run (and CI's job)."""
    started: list[psutil.Process] = []
    process = getattr(service, "process", None)
    if process is not None:
        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(process.pid)
            started = [parent, *parent.children(recursive=True)]
    try:
        driver.quit()
    finally:
        _, alive = psutil.wait_procs(started, timeout=PROCESS_EXIT_SECONDS)
        for leftover in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
        psutil.wait_procs(alive, timeout=PROCESS_EXIT_SECONDS)


def reset_browser(driver: webdriver.Chrome) -> None:
    """A blank page and no cookies or storage of any site."""
    driver.get("about:blank")
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    driver.execute_cdp_cmd("Storage.clearDataForOrigin", {"origin": "*", "storageTypes": "all"})


@pytest.fixture
def browser(chromium: webdriver.Chrome) -> webdriver.Chrome:
    """The run's Chromium without the cookies and storage of the tests before: each test
    signs in (or not) on its own."""
    reset_browser(chromium)
    return chromium


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread on a free 127.0.0.1 port; its base URL.

    The socket is bound here and handed to uvicorn, so no other process can take the port
    between choosing it and listening on it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the console server stopped while starting (see its log)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the console server did not start in {SERVER_START_SECONDS} s")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=SERVER_START_SECONDS)
        sock.close()
        if thread.is_alive():
            raise RuntimeError("the console server did not stop")


@pytest.fixture
def console_server() -> Iterator[ConsoleServer]:
    """``console_server(app)`` serves ``app`` until the test ends; returns its base URL."""
    with contextlib.ExitStack() as stack:

        def start(app: Any) -> str:
            return stack.enter_context(serve(app))

        yield start


def save_screenshot(driver: webdriver.Chrome, name: str, directory: Path) -> Path:
    """The page as ``directory/name.png``; also copied into ``SAGA_SCREENSHOTS_DIR`` when
    that is set."""
    if not _NAME.match(name):
        raise ValueError(f"a screenshot's name is a lowercase file stem; got {name!r}")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    if not driver.save_screenshot(str(path)):
        raise RuntimeError(f"Chromium could not take the screenshot {name!r}")
    published = os.environ.get("SAGA_SCREENSHOTS_DIR")
    if published:
        target = Path(published)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / path.name)
    return path


@pytest.fixture
def screenshot(tmp_path: Path) -> Screenshot:
    """``screenshot(driver, "saga-list")``: see :func:`save_screenshot`."""

    def take(driver: webdriver.Chrome, name: str) -> Path:
        return save_screenshot(driver, name, tmp_path / "screenshots")

    return take
