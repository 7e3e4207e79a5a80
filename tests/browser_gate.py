"""Whether the browser tests (``test_app_browser.py``, or any test marked ``browser``) can run here.

A fresh machine (``pip install -e ".[dev]"`` then ``pytest``) usually has no Chromium: the browser tests are then
SKIPPED, with the reason and the fix in the summary, and every other test runs. CI must not lose them silently:
with ``SEMFLOW_REQUIRE_BROWSER=1`` (``.ci/run`` sets it) a missing browser FAILS them instead.

The browser is ``$SEMFLOW_CHROMIUM`` or ``/usr/bin/chromium``, as in ``test_app_browser.py``. A Chromium that is
present but cannot start is not skipped: the tests' own fixture fails with the reason.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

BROWSER_MODULES = {"test_app_browser.py"}
REQUIRE_ENV = "SEMFLOW_REQUIRE_BROWSER"
INSTALL_HINT = "apt-get install chromium (Debian/Ubuntu), or point SEMFLOW_CHROMIUM at a Chromium binary"


def browser_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def browser_missing_reason() -> str | None:
    """Why the browser tests cannot run on this machine, or None when they can."""
    chromium = os.environ.get("SEMFLOW_CHROMIUM", "/usr/bin/chromium")
    if not (os.path.isfile(chromium) and os.access(chromium, os.X_OK)):
        return f"Chromium not found at {chromium} ({INSTALL_HINT})"
    if importlib.util.find_spec("playwright") is None:
        return "Playwright for Python is not installed (pip install -e \".[dev]\")"
    return None


def is_browser_test(item) -> bool:
    return item.path.name in BROWSER_MODULES or item.get_closest_marker("browser") is not None


_skipped: list[str] = []


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives the app in Chromium (skipped when Chromium is missing, "
                                       f"unless {REQUIRE_ENV}=1)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if not is_browser_test(item):
        return
    reason = browser_missing_reason()
    if reason is None:
        return
    if browser_required():
        pytest.fail(f"{REQUIRE_ENV}=1 and the browser tests cannot run: {reason}", pytrace=False)
    _skipped.append(item.nodeid)
    pytest.skip(f"browser test skipped: {reason}; set {REQUIRE_ENV}=1 to make this a failure (CI does)")


def pytest_terminal_summary(terminalreporter):
    if _skipped:
        terminalreporter.write_line(
            f"{len(_skipped)} browser tests skipped: {browser_missing_reason()}. Everything else ran. "
            f"With {REQUIRE_ENV}=1 (as in .ci/run) they fail instead.", yellow=True)
