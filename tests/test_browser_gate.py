"""On a machine without Chromium, `pytest` skips the browser tests and says why; with SEMFLOW_REQUIRE_BROWSER=1
(set by .ci/run) the same run fails. Checked in a child pytest run of a stand-in browser test module."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture
def project(tmp_path):
    """A stand-in test tree: the real gate in its conftest, and a module named like the browser tests."""
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
        "from browser_gate import pytest_configure, pytest_runtest_setup, pytest_terminal_summary  # noqa: F401\n")
    (tmp_path / "test_app_browser.py").write_text("def test_page():\n    pass\n")
    (tmp_path / "test_other.py").write_text(
        "import pytest\n\ndef test_plain():\n    pass\n\n@pytest.mark.browser\ndef test_marked():\n    pass\n")
    return tmp_path


def run_pytest(folder, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("SEMFLOW_REQUIRE_BROWSER", "SEMFLOW_CHROMIUM")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(folder)],
                          cwd=folder, env={**base, **env}, capture_output=True, text=True, timeout=300)


def test_missing_chromium_skips_the_browser_tests_with_the_reason(project):
    done = run_pytest(project, SEMFLOW_CHROMIUM=str(project / "no-chromium"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 2 skipped" in done.stdout
    assert f"Chromium not found at {project / 'no-chromium'}" in done.stdout
    assert "apt-get install chromium" in done.stdout
    assert "2 browser tests skipped" in done.stdout and "SEMFLOW_REQUIRE_BROWSER=1" in done.stdout


def test_ci_turns_the_skip_into_a_failure(project):
    done = run_pytest(project, SEMFLOW_CHROMIUM=str(project / "no-chromium"), SEMFLOW_REQUIRE_BROWSER="1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 passed, 2 errors" in done.stdout and "skipped" not in done.stdout
    assert "SEMFLOW_REQUIRE_BROWSER=1 and the browser tests cannot run: Chromium not found" in done.stdout


def test_with_a_browser_present_they_run(project):
    browser = project / "chromium"
    browser.write_text("#!/bin/sh\n")
    browser.chmod(0o755)
    for env in ({}, {"SEMFLOW_REQUIRE_BROWSER": "1"}):
        done = run_pytest(project, SEMFLOW_CHROMIUM=str(browser), **env)
        assert done.returncode == 0 and "3 passed" in done.stdout, done.stdout + done.stderr


def test_ci_script_requires_the_browser():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "export SEMFLOW_REQUIRE_BROWSER=1" in ci
    assert ci.index("SEMFLOW_REQUIRE_BROWSER=1") < ci.index("\npytest")
