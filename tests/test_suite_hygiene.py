"""The test suite itself: it runs without an activated venv (issue 17 item 15), and filters known third-party
warnings so that our own stand out (item 16)."""

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def test_subprocesses_find_our_tools_through_sys_executable():
    # `venv/bin/pytest` without `source venv/bin/activate` has no venv on PATH: a bare "semflow" or "accelerate"
    # is then not found (or is another installation's).
    bare = re.compile(r"""\[\s*["'](semflow|accelerate|python3?|pytest|torchrun)["']""")
    offenders = [f"{p.name}:{i}" for p in sorted(TESTS.glob("*.py")) if p.name != Path(__file__).name
                 for i, line in enumerate(p.read_text().splitlines(), 1) if bare.search(line)]
    assert not offenders, offenders


def test_the_cli_and_accelerate_run_through_sys_executable_without_path():
    env = {"PATH": "", "HF_HUB_OFFLINE": "1"}
    for module in ("semflow_pipeline.cli", "accelerate.commands.launch"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, env=env,
                             timeout=120, cwd=TESTS.parent)
        assert out.returncode == 0 and "usage" in out.stdout.lower(), out.stderr[-1000:]


def _shown(message: str, category, module: str) -> bool:
    """Whether a warning attributed to ``module`` gets through the filters this test runs under (pytest applies
    the config's `filterwarnings` around every test)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit(message, category, f"{module.replace('.', '/')}.py", 1, module=module, registry={})
    return bool(caught)


def test_known_third_party_warnings_are_filtered_and_ours_are_not():
    Pandas4Warning = getattr(pytest.importorskip("pandas.errors"), "Pandas4Warning", DeprecationWarning)

    assert not _shown("'future.no_silent_downcasting' is deprecated", Pandas4Warning, "gradio.queueing")
    assert not _shown("The copy keyword is deprecated", Pandas4Warning, "gradio.queueing")
    assert _shown("ours", DeprecationWarning, "semflow_pipeline.pipeline_semflow")
    assert _shown("ours", UserWarning, "space.ui")
    assert _shown("a third-party warning we do not know", UserWarning, "gradio.queueing")
