"""systemd unit rendering and the choice of service keeper (no systemd needed).

The units are also checked by systemd's own parser (``systemd-analyze verify``); running
them under a real systemd is tests/core/test_systemd_keeper.py and the MariaDB lab test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from novaconsole.errors import ConfigError
from novaconsole.lab.config import LabConfig
from novaconsole.services import (
    STATE_MARKER,
    ServiceSpec,
    Supervisor,
    SystemdUnits,
    choose_service_manager,
    keeper_for_site,
    render_unit,
)
from novaconsole.site import Site, site_from_mapping

SLEEP = "import time; time.sleep(60)"


def spec(**extra: object) -> ServiceSpec:
    fields: dict[str, object] = {
        "name": "demo",
        "argv": (sys.executable, "-c", "print('50% of $HOME')", "two words"),
        "env": {"GREETING": 'say "hi" at 100%', "PLAIN": "x"},
        "stop_signal": "INT",
        "stop_wait": 7,
    }
    fields.update(extra)
    return ServiceSpec(**fields)  # type: ignore[arg-type]


def test_unit_escapes_specifiers_variables_and_quotes(tmp_path: Path) -> None:
    text = render_unit(spec(), tmp_path / "logs", tmp_path)
    lines = text.splitlines()
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert exec_start == (f'ExecStart={sys.executable} -c "print(\'50%% of $$HOME\')" "two words"')
    assert 'Environment="GREETING=say \\"hi\\" at 100%%"' in lines
    assert 'Environment="PLAIN=x"' in lines
    assert f"StandardOutput=append:{tmp_path / 'logs' / 'demo.log'}" in lines
    assert f"{STATE_MARKER}={tmp_path}" in lines
    assert "KillSignal=SIGINT" in lines
    assert "TimeoutStopSec=7" in lines
    assert "Restart=on-failure" in lines
    assert "WantedBy=multi-user.target" in lines


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemds_own_parser_accepts_the_unit_without_a_warning(tmp_path: Path) -> None:
    unit = tmp_path / "novaconsole-demo.service"
    unit.write_text(render_unit(spec(directory=str(tmp_path)), tmp_path / "logs", tmp_path))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    # Unknown keys, bad quoting or escapes are warnings on stderr, not failures.
    assert proc.stderr.strip() == ""


def test_paths_systemd_cannot_append_to_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="spaces or %"):
        render_unit(spec(), tmp_path / "my logs", tmp_path)


def test_keeper_pending_install_and_owner(tmp_path: Path) -> None:
    units = tmp_path / "units"
    keeper = SystemdUnits(tmp_path / "state", unit_dir=units, prefix="nc-")
    assert keeper.pending([spec()]) == ["demo"]
    assert keeper.install([spec()]) == ["demo"]
    assert (units / "nc-demo.service").stat().st_mode & 0o777 == 0o644
    assert keeper.pending([spec()]) == []
    assert keeper.install([spec()]) == []
    assert keeper.is_installed("demo")
    assert keeper.names() == ["demo"]
    other = SystemdUnits(tmp_path / "other", unit_dir=units, prefix="nc-")
    assert other.names() == []
    assert not other.is_installed("demo")
    with pytest.raises(ConfigError, match="belongs to the state directory"):
        other.install([spec()])


def test_auto_takes_systemd_where_it_runs_but_keeps_a_supervisord_setup(tmp_path: Path) -> None:
    assert choose_service_manager("auto", tmp_path, booted=True) == "systemd"
    assert choose_service_manager("auto", tmp_path, booted=False) == "supervisord"
    assert choose_service_manager("supervisord", tmp_path, booted=True) == "supervisord"
    (tmp_path / "supervisord.conf").write_text("")
    assert choose_service_manager("auto", tmp_path, booted=True) == "supervisord"
    with pytest.raises(ConfigError) as caught:
        choose_service_manager("systemd", tmp_path, booted=False)
    assert "systemd is not running on this machine" in caught.value.one_line()


def test_this_machine_without_systemd_gets_supervisord(tmp_path: Path) -> None:
    site = Site(services_dir=tmp_path, supervisor_bin_dir=tmp_path)
    keeper = keeper_for_site(site)
    if Path("/run/systemd/system").is_dir():  # a machine booted with systemd
        assert isinstance(keeper, SystemdUnits)
    else:
        assert isinstance(keeper, Supervisor)


def test_site_file_validates_the_service_manager_and_unit_prefix() -> None:
    site = site_from_mapping({"service_manager": "systemd", "systemd_unit_prefix": "nova-"}, "s")
    assert site.service_manager == "systemd"
    assert site.systemd_unit_prefix == "nova-"
    with pytest.raises(ConfigError, match="service_manager must be one of"):
        site_from_mapping({"service_manager": "upstart"}, "site.toml")
    with pytest.raises(ConfigError, match="not a valid unit name prefix"):
        site_from_mapping({"systemd_unit_prefix": "../evil"}, "site.toml")


def test_lab_remembers_its_service_manager(tmp_path: Path) -> None:
    config = LabConfig(state_dir=tmp_path)
    config.service_manager = "supervisord"
    config.save()
    assert LabConfig.load(tmp_path).service_manager == "supervisord"


def test_unwritable_unit_dir_is_one_line_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    keeper = SystemdUnits(tmp_path / "state", unit_dir=blocker / "units")
    with pytest.raises(ConfigError) as caught:
        keeper.install([spec()])
    assert caught.value.one_line().startswith(f"cannot write systemd units in {blocker / 'units'}")


def _zombie() -> subprocess.Popen[bytes]:
    """A child that has exited and that nobody has reaped yet."""
    child = subprocess.Popen(["true"])
    stat = Path(f"/proc/{child.pid}/stat")
    for _ in range(200):
        if stat.read_text().rsplit(") ", 1)[-1][:1] == "Z":
            return child
        time.sleep(0.01)
    raise AssertionError("the child did not exit")


def test_a_stale_supervisord_pid_file_does_not_count_as_a_running_keeper(tmp_path: Path) -> None:
    # After every process was killed (a reboot, a session's end) the pid file stays. Its pid
    # names a zombie PID 1 never reaped, or a process that reused the number: lab up must start
    # a new supervisord rather than ask a dead socket (CI failed on exactly this).
    keeper = Supervisor(tmp_path, tmp_path / "bin")
    zombie = _zombie()
    try:
        keeper.pidfile.write_text(f"{zombie.pid}\n")
        assert keeper.daemon_pid() is None
    finally:
        zombie.wait()
    keeper.pidfile.write_text(f"{os.getpid()}\n")  # alive, but pytest is not supervisord
    assert keeper.daemon_pid() is None
    keeper.pidfile.write_text("not a pid\n")
    assert keeper.daemon_pid() is None


def test_a_live_supervisord_with_this_configuration_counts(tmp_path: Path) -> None:
    keeper = Supervisor(tmp_path, tmp_path / "bin")
    # The command line supervisord's console script runs with; another lab's differs only in -c.
    script = SLEEP
    ours = subprocess.Popen(
        [sys.executable, "-c", script, "/v/bin/supervisord", "-c", str(keeper.conf)]
    )
    other = subprocess.Popen(
        [sys.executable, "-c", script, "/v/bin/supervisord", "-c", str(tmp_path / "other.conf")]
    )
    try:
        for proc in (ours, other):  # until each has exec'd (before, /proc shows pytest's argv)
            cmdline = Path(f"/proc/{proc.pid}/cmdline")
            for _ in range(500):
                if b"supervisord" in cmdline.read_bytes():
                    break
                time.sleep(0.01)
        keeper.pidfile.write_text(f"{ours.pid}\n")
        argv = Path(f"/proc/{ours.pid}/cmdline").read_bytes()
        assert keeper.daemon_pid() == ours.pid, (argv, Path(f"/proc/{ours.pid}/stat").read_text())
        keeper.pidfile.write_text(f"{other.pid}\n")
        assert keeper.daemon_pid() is None
    finally:
        for proc in (ours, other):
            proc.kill()
            proc.wait()


def test_processes_a_killed_supervisord_left_are_found_by_its_socket_and_stopped(
    tmp_path: Path,
) -> None:
    # supervisord marks every program's environment with its socket; descendants inherit
    # it. Once supervisord is gone, those processes are orphans this keeper must stop
    # (they hold the ports its next programs need); another keeper's are left alone.
    keeper = Supervisor(tmp_path / "lab", tmp_path / "bin")
    other = Supervisor(tmp_path / "other", tmp_path / "bin")
    script = SLEEP

    def program(owner: Supervisor, name: str) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "SUPERVISOR_ENABLED": "1",
            "SUPERVISOR_SERVER_URL": f"unix://{owner.socket}",
            "SUPERVISOR_PROCESS_NAME": name,
        }
        return subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)

    mine, theirs = program(keeper, "keystone"), program(other, "keystone")
    try:
        assert [(o.pid, o.program) for o in keeper.orphans()] == [(mine.pid, "keystone")]
        stopped = keeper.stop_orphans(timeout=10)
        assert [o.pid for o in stopped] == [mine.pid]
        assert mine.wait(10) == -signal.SIGTERM
        assert theirs.poll() is None
        assert keeper.orphans() == []
    finally:
        for proc in (mine, theirs):
            proc.kill()
            proc.wait()


def test_a_killed_supervisords_session_names_programs_whose_environment_is_gone(
    tmp_path: Path,
) -> None:
    # Python services' setproctitle overwrites the environment /proc shows, so the socket
    # mark is gone from them; they are still in the dead supervisord's session.
    keeper = Supervisor(tmp_path / "lab", tmp_path / "bin")
    keeper.state_dir.mkdir()
    sleeper = f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', {SLEEP!r}])"
    leader = subprocess.Popen(
        [sys.executable, "-c", sleeper + "; print(p.pid, flush=True)"],
        start_new_session=True,
        stdout=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")},
    )
    assert leader.stdout is not None
    child = int(leader.stdout.readline())
    assert leader.wait(10) == 0  # the session's leader (our stand-in supervisord) is gone
    try:
        keeper.pidfile.write_text(f"{leader.pid}\n")
        assert [o.pid for o in keeper.orphans()] == [child]
        assert [o.pid for o in keeper.stop_orphans(timeout=10)] == [child]
        assert keeper.orphans() == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
