"""`semflow --help` and each command's `--help`: a description for every command and every option, and the
default of every option that has one."""

import argparse
import re

import pytest

from semflow_pipeline.cli import build_parser, main

COMMANDS = ("segment", "synthesize", "push", "convert-official")


def _subparsers():
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_top_level_help_lists_each_command_with_its_description(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = "".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere, even inside paths
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(commands.choices) == sorted(COMMANDS)
    for command in commands._choices_actions:
        assert command.help and len(command.help) > 15, command.dest
        assert command.dest + "".join(command.help.split()) in out, command.dest
    assert "COMMAND--help" in out


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_a_description_and_its_default(name, capsys):
    parser = _subparsers()[name]
    assert parser.description and len(parser.description) > 30
    with pytest.raises(SystemExit):
        main([name, "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere, even inside paths
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        label = action.option_strings[-1] if action.option_strings else action.dest
        assert action.help and len(action.help) > 10, f"{name} {label}: no description"
        shown = " ".join(formatter._expand_help(action).split())
        assert "".join(shown.split()) in text, f"{name} {label}: help not printed"
        if action.option_strings and not action.required and action.nargs != 0:
            # A value option says what happens when it is left out: its default, or what "not set" means.
            assert re.search(r"\(default: [^)]", shown), f"{name} {label}: no default shown: {shown!r}"
        if action.default not in (None, False) and action.option_strings:
            assert f"(default: {action.default})" in shown, f"{name} {label}: default {action.default!r} not shown"


def test_help_imports_no_heavy_library():
    # Issue 17 item 14: `semflow --help` took ~8 s because torch and diffusers were imported before argparse ran.
    # The package's names are imported lazily (PEP 562); --help must not touch them. (A time bound would be flaky
    # on a loaded CI machine; what is imported is what decides the time.)
    import subprocess
    import sys

    code = ("import sys\nfrom semflow_pipeline.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n"
            "    pass\nfor command in ('segment', 'synthesize', 'push'):\n    try:\n        main([command, '--help'])\n"
            "    except SystemExit:\n        pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'diffusers', 'transformers', 'numpy', 'PIL', 'accelerate',"
            " 'huggingface_hub') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "HEAVY []" in out.stdout, out.stdout[-500:]


def test_the_package_names_still_import():
    import semflow_pipeline

    assert semflow_pipeline.SemFlowPipeline.__name__ == "SemFlowPipeline"
    assert set(semflow_pipeline.__all__) <= set(dir(semflow_pipeline))
    from semflow_pipeline import AnchorCodec, SemFlowScheduler  # noqa: F401
    with pytest.raises(AttributeError):
        semflow_pipeline.NoSuchName  # noqa: B018
