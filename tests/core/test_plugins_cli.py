"""The plugin manager, ``novaconsole plugins``, ``--plugin`` and the CLI's error contract."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from novaconsole.cli import main
from novaconsole.hookspecs import hookimpl
from novaconsole.plugins import BLOCK_ENV, get_plugin_manager
from novaconsole.steps import RunContext, Step

BUILT_INS = {"controller", "compute", "compute-agent"}


def test_built_ins_load_through_entry_points() -> None:
    pm = get_plugin_manager(environ={})
    loaded = {p.name: p for p in pm.loaded}
    assert set(loaded) >= BUILT_INS
    assert all(loaded[name].source.startswith("entry point") for name in BUILT_INS)
    assert not any(p.blocked for p in pm.loaded)


def test_block_env_blocks_by_name() -> None:
    pm = get_plugin_manager(environ={BLOCK_ENV: "compute, compute-agent"})
    blocked = {p.name for p in pm.loaded if p.blocked}
    assert blocked == {"compute", "compute-agent"}
    assert pm.get_plugin("compute") is None
    modes = [m for r in pm.hook.novaconsole_plugin_modes() for m in r]
    assert "compute-agent" not in modes


def test_inline_plugin_adds_steps_after_built_ins() -> None:
    class Extra(Step[bool]):
        name = "extra.step"
        phase = "finish"

        def check(self, ctx: RunContext) -> bool:
            return True

        def plan(self, ctx: RunContext, observed: bool) -> list[str]:
            return []

        def apply(self, ctx: RunContext, changes: list[str]) -> None:
            return None

    class Plugin:
        @hookimpl
        def novaconsole_provision_steps(self, role: str) -> list[Step[bool]]:
            return [Extra()] if role == "controller" else []

    from novaconsole.provision import collect_steps
    from novaconsole.site import Site

    pm = get_plugin_manager(environ={})
    pm.register(Plugin(), name="inline")
    steps = collect_steps(pm, "controller", Site())
    assert steps[-1].name == "extra.step"
    assert any(s.name.startswith("controller.") for s in steps[:-1])


def test_plugins_command_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "-f", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {p["name"] for p in data["plugins"]} >= BUILT_INS
    assert "compute-agent" in data["modes"]


def test_unknown_plugin_mode_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--plugin", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("novaconsole: error: no plugin mode named 'nope'")
    assert "\n" not in err
    assert "Traceback" not in err


def test_compute_agent_mode_needs_a_config_to_run_the_daemon() -> None:
    # The mode is wired through --plugin; without --config (and without --once) the daemon
    # has no bus to talk to: one line, exit 2, not a daemon that pretends to run.
    proc = subprocess.run(
        [sys.executable, "-m", "novaconsole", "--plugin", "compute-agent"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "novaconsole: error: compute-agent: --config FILE is needed to run the daemon (or --once)"
    ]


def test_plugin_mode_options_with_values_reach_the_mode() -> None:
    # "--config FILE" after "--plugin NAME" is the mode's, not a sub-command name.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "novaconsole",
            "--plugin",
            "compute-agent",
            "--config",
            "/nonexistent.toml",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "novaconsole: error: /nonexistent.toml: no such file"


def test_usage_error_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "up", "--port", "keystone=notaport"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--port 'keystone=notaport'" in err


def test_unknown_cloud_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--os-cloud", "no-such-cloud-here"]) == 2
    err = capsys.readouterr().err
    assert "no-such-cloud-here" in err
    assert err.count("\n") == 1


def test_console_script_exits_with_mains_code_and_runs_finalisers() -> None:
    """`novaconsole` (cli.run) freezes objects before exit; output and atexit still happen."""
    script = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('atexit ran', file=sys.stderr))\n"
        "from novaconsole.cli import run\n"
        "sys.argv = ['novaconsole', 'plugins', '-f', 'json']\n"
        "code = run()\n"
        "import gc; assert gc.get_freeze_count() > 0\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "compute-agent" in json.loads(proc.stdout)["modes"]
    assert "atexit ran" in proc.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "novaconsole", "no-such-command"], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1
