"""The lab's building blocks, without a running lab: files, secrets, preflight, supervisor."""

from __future__ import annotations

import json
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import yaml

from novaconsole.errors import ConfigError, ConnectionFailure, NovaconsoleError
from novaconsole.lab.cli import checked_db_url
from novaconsole.lab.config import LabConfig, load_or_create_secrets
from novaconsole.lab.generic import FileStep, ServicesStep, key_error_line, render_ini
from novaconsole.lab.runner import parse_port_overrides, preflight
from novaconsole.lab.stack.keystone import CloudsYamlStep, admin_openrc
from novaconsole.services import (
    ServiceKeeper,
    ServiceSpec,
    ServiceState,
    Supervisor,
    render_program,
    wsgi_service,
)
from novaconsole.site import SECRET_NAMES
from novaconsole.steps import RunContext, Status, run_steps


@pytest.fixture
def listener() -> Iterator[int]:
    """A real TCP listener on 127.0.0.1 holding a free port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_render_ini_formats_booleans_and_paths(tmp_path: Path) -> None:
    text = render_ini({"DEFAULT": {"debug": False, "state_path": tmp_path}, "api": {"x": 1}})
    assert "[DEFAULT]\ndebug = false\nstate_path = " + str(tmp_path) in text
    assert text.endswith("[api]\nx = 1\n")


def test_key_error_line_finds_the_exception_in_oslo_log_noise() -> None:
    output = (
        "2026-11-24 00:27:17.218 16505 ERROR keystone Traceback (most recent call last):\n"
        "2026-11-24 00:27:17.218 16505 ERROR keystone   File x.py, line 3\n"
        "2026-11-24 00:27:17.218 16505 ERROR keystone oslo_db.exception.DBError: disk full\n"
        "2026-11-24 00:27:17.218 16505 ERROR keystone (Background on this error at: x)\n"
    )
    assert key_error_line(output) == "oslo_db.exception.DBError: disk full"
    assert key_error_line("just one line") == "just one line"
    assert key_error_line("") == "no output"


def test_file_step_creates_then_converges_and_fixes_mode(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "x.conf"
    step = FileStep("t.file", path, lambda: "a = 1\n", mode=0o640, phase="config")
    first = run_steps([step], RunContext())
    assert first.results[0].status is Status.CHANGED
    assert path.read_text() == "a = 1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert run_steps([step], RunContext()).results[0].status is Status.OK
    path.chmod(0o644)
    assert run_steps([step], RunContext()).results[0].changes == [f"chmod 640 {path}"]


def test_secrets_are_generated_once_mode_0600_and_not_written_on_dry_run(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    dry = load_or_create_secrets(path, write=False)
    assert set(dry) == set(SECRET_NAMES)
    assert not path.exists()
    first = load_or_create_secrets(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secrets(path) == first
    assert len(set(first.values())) == len(first)


def test_corrupt_secrets_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=str(path)):
        load_or_create_secrets(path)


def test_clouds_yaml_merge_keeps_other_clouds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    clouds = tmp_path / "openstack" / "clouds.yaml"
    clouds.parent.mkdir(parents=True)
    clouds.write_text(yaml.safe_dump({"clouds": {"prod": {"auth": {"auth_url": "https://x"}}}}))
    clouds.chmod(0o600)
    step = CloudsYamlStep(LabConfig(state_dir=tmp_path / "lab"), "pw-not-shown")
    report = run_steps([step], RunContext())
    assert report.results[0].status is Status.CHANGED
    assert "pw-not-shown" not in json.dumps(report.as_dict())
    data = yaml.safe_load(clouds.read_text())
    assert set(data["clouds"]) == {"prod", "novaconsole-lab"}
    assert data["clouds"]["novaconsole-lab"]["auth"]["auth_url"] == "http://127.0.0.1:5000/v3"
    assert stat.S_IMODE(clouds.stat().st_mode) == 0o600
    assert run_steps([step], RunContext()).results[0].status is Status.OK


def test_clouds_yaml_that_is_not_yaml_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    clouds = tmp_path / "openstack" / "clouds.yaml"
    clouds.parent.mkdir(parents=True)
    clouds.write_text("clouds: [unclosed")
    report = run_steps([CloudsYamlStep(LabConfig(state_dir=tmp_path), "pw")], RunContext())
    assert report.results[0].status is Status.FAILED
    assert clouds.read_text() == "clouds: [unclosed"


def test_admin_openrc_is_the_guides() -> None:
    text = admin_openrc(LabConfig(), "pw")
    assert "export OS_USERNAME=admin\n" in text
    assert "export OS_AUTH_URL=http://127.0.0.1:5000/v3\n" in text


def test_port_overrides(tmp_path: Path) -> None:
    config = LabConfig(state_dir=tmp_path)
    parse_port_overrides(["keystone=15000"], config)
    assert config.ports["keystone"] == 15000
    for bad in ("keystone", "nope=1", "keystone=0", "keystone=70000", "keystone=x"):
        with pytest.raises(NovaconsoleError, match="--port"):
            parse_port_overrides([bad], config)


def test_db_url_with_password_is_refused() -> None:
    assert checked_db_url("mysql+pymysql://root@127.0.0.1") == "mysql+pymysql://root@127.0.0.1"
    with pytest.raises(ConfigError, match="must not carry a password"):
        checked_db_url("mysql+pymysql://root:hunter2@127.0.0.1")
    with pytest.raises(ConfigError, match="use mysql"):
        checked_db_url("postgresql://root@127.0.0.1")


def test_preflight_names_a_taken_port_and_writes_nothing(tmp_path: Path, listener: int) -> None:
    state = tmp_path / "lab"
    config = LabConfig(state_dir=state)
    config.ports = {k: free_port() for k in config.ports}
    config.ports["glance"] = listener
    with pytest.raises(
        ConfigError, match=f"port {listener} on 127.0.0.1 \\(glance\\) is already taken"
    ):
        preflight(config)
    assert not state.exists()


def test_preflight_unreachable_broker_on_a_non_default_port(tmp_path: Path) -> None:
    config = LabConfig(state_dir=tmp_path / "lab")
    config.ports = {k: free_port() for k in config.ports}
    config.rabbit_port = free_port()
    with pytest.raises(
        ConnectionFailure, match=f"RabbitMQ is unreachable at 127.0.0.1:{config.rabbit_port}"
    ):
        preflight(config)


def test_supervisor_program_rendering_and_pending(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path / "svc", tmp_path / "bin")
    spec = ServiceSpec("demo", ("/bin/sleep", "100"), env={"A": "1%"}, stop_wait=3)
    text = render_program(spec, sup.log_dir)
    assert "command=/bin/sleep 100" in text
    assert 'environment=A="1%%"' in text
    assert "stopwaitsecs=3" in text
    assert sup.pending([spec]) == ["demo"]
    assert sup.install([spec]) == ["demo"]
    assert sup.pending([spec]) == []
    assert stat.S_IMODE((sup.programs_dir / "demo.conf").stat().st_mode) == 0o600
    with pytest.raises(NovaconsoleError, match="invalid service name"):
        render_program(ServiceSpec("Bad Name", ("x",)), sup.log_dir)


def test_wsgi_shim_resets_argv_before_import(tmp_path: Path) -> None:
    spec = wsgi_service(
        "demo-api", module="demo.wsgi", port=1234, bin_dir=tmp_path, shim_dir=tmp_path, env={}
    )
    shim = (tmp_path / "wsgi_demo_api.py").read_text()
    assert shim.index("sys.argv = sys.argv[:1]") < shim.index("from demo.wsgi import application")
    assert "--no-control-socket" in spec.argv
    assert spec.argv[-1] == "wsgi_demo_api:application"
    assert spec.port == 1234


@pytest.mark.lab
def test_novnc_files_unpack_from_debians_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path a non-root operator gets: noVNC unpacked from the .deb, no install."""
    from novaconsole.lab.stack import host

    monkeypatch.setattr(host, "novnc_dir", lambda config: config.data_dir / "novnc")
    step = host.NoVNCStep(LabConfig(state_dir=tmp_path))
    report = run_steps([step], RunContext())
    assert report.results[0].status is Status.CHANGED, report.results[0].error
    assert (tmp_path / "data" / "novnc" / "vnc_lite.html").is_file()
    assert run_steps([step], RunContext()).results[0].status is Status.OK


class _FakeComputeAPI:
    """A fake nova-api for determinism: one dropped connection, then a service going up."""

    def __init__(self) -> None:
        self.calls = 0

    def services(self) -> list[object]:
        from types import SimpleNamespace

        from keystoneauth1 import exceptions as ka

        self.calls += 1
        if self.calls == 1:
            raise ka.ConnectFailure("Connection aborted: RemoteDisconnected")
        state = "down" if self.calls == 2 else "up"
        return [SimpleNamespace(binary="nova-compute", host="vm", state=state)]


def test_services_up_wait_rides_out_a_dropped_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from novaconsole.lab.stack.finish import ComputeServicesUpStep

    monkeypatch.setattr("novaconsole.lab.stack.finish.time.sleep", lambda _s: None)
    api = _FakeComputeAPI()
    ctx = RunContext()
    ctx.cache["lab-cloud"] = SimpleNamespace(compute=api)
    step = ComputeServicesUpStep()
    step.apply(ctx, ["wait for nova-compute@vm to report up"])
    assert api.calls == 3


def test_venv_marker_names_our_plugin_by_content_not_by_checkout_path(tmp_path: Path) -> None:
    from novaconsole.lab.venvs import SQLITE_PLUGIN, lab_venvs, local_project_digest

    venv = lab_venvs(tmp_path)["openstack"]
    wanted = venv.wanted()
    assert SQLITE_PLUGIN in venv.packages  # installed from the checkout's directory
    assert not [p for p in wanted if p.startswith("/")]  # ...but recorded without its path
    assert [p for p in wanted if p.startswith("novaconsole-sqlite-immediate#")]

    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (project / "x.py").write_text("A = 1\n")
    before = local_project_digest(project)
    (project / "x.py").write_text("A = 2\n")
    assert local_project_digest(project) != before


def test_broker_plan_says_whether_it_installs_or_only_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from novaconsole.lab.stack.rabbit import RabbitStep

    step = RabbitStep(LabConfig(state_dir=tmp_path), "pw")
    down = {"up": False, "auth": False, "perms": False}
    monkeypatch.setattr("novaconsole.lab.stack.rabbit.shutil.which", lambda _name: None)
    assert step.plan(RunContext(), down)[0] == (
        "install rabbitmq-server (Debian) and start it (none answers on 5672)"
    )
    monkeypatch.setattr(
        "novaconsole.lab.stack.rabbit.shutil.which", lambda name: f"/usr/sbin/{name}"
    )
    assert (
        step.plan(RunContext(), down)[0] == "start a local rabbitmq-server (none answers on 5672)"
    )


def test_every_lab_venv_is_pinned_by_a_constraints_file_recorded_by_content(
    tmp_path: Path,
) -> None:
    import re

    from novaconsole.lab.venvs import lab_venvs, on_demand_venvs

    for venv in [*lab_venvs(tmp_path).values(), *on_demand_venvs(tmp_path).values()]:
        pins = dict(
            line.split("==", 1)
            for line in venv.constraints.read_text().splitlines()
            if "==" in line
        )
        for package in venv.packages:
            if package.startswith("/"):
                continue  # our own SQLite plugin, part of this repository
            name, _, version = package.partition("==")
            key = re.sub(r"[-_.]+", "-", name).lower()
            assert key in pins, f"{package} is not pinned in {venv.constraints.name}"
            if version:
                assert pins[key] == version, f"{venv.constraints.name} pins {key}=={pins[key]}"
        # A changed pin list must reinstall the venv (and re-run the db syncs keyed on it).
        recorded = [p for p in venv.wanted() if p.startswith("constraints#")]
        assert len(recorded) == 1


class _KeeperFake:
    """A fake service keeper (only what ServicesStep.apply calls): its states are given."""

    def __init__(self, state_dir: Path, states: dict[str, ServiceState]) -> None:
        self.state_dir = state_dir
        self.log_dir = state_dir / "logs"
        self.states = states
        self.installed: list[str] = []

    def status(self) -> dict[str, ServiceState]:
        return self.states

    def install(self, specs: list[ServiceSpec]) -> list[str]:
        self.installed += [s.name for s in specs]
        return []

    def apply(self, restart: list[str]) -> None:
        return None

    def wait_running(self, names: list[str], timeout: float) -> dict[str, ServiceState]:
        return self.states


def test_services_step_counts_a_program_still_starting_as_the_ports_owner(
    tmp_path: Path, listener: int
) -> None:
    # A keeper restarted after the machine (or the session that ran it) went away starts
    # every program at once; one still STARTING has no pid yet but already holds its port.
    spec = ServiceSpec("ovn-sb-db", ("/bin/true",), port=listener)
    starting = _KeeperFake(tmp_path, {"ovn-sb-db": ServiceState("ovn-sb-db", "STARTING", None)})
    step = ServicesStep("lab.demo", cast(ServiceKeeper, starting), [spec])
    step.apply(RunContext(), ["start ovn-sb-db"])
    assert starting.installed == ["ovn-sb-db"]
    # Stopped, the program holds nothing: whoever holds the port is someone else.
    stopped = _KeeperFake(tmp_path, {"ovn-sb-db": ServiceState("ovn-sb-db", "STOPPED", None)})
    step = ServicesStep("lab.demo", cast(ServiceKeeper, stopped), [spec])
    with pytest.raises(NovaconsoleError, match=f"port {listener} on 127.0.0.1 is already taken"):
        step.apply(RunContext(), ["start ovn-sb-db"])
    assert stopped.installed == []


def test_an_extra_node_gets_a_compute_agent_and_the_controller_its_broker_user(
    tmp_path: Path,
) -> None:
    from novaconsole.lab.nodes import NodeLayout, node_site_toml
    from novaconsole.lab.runner import lab_site
    from novaconsole.site import site_from_mapping

    config = LabConfig(state_dir=tmp_path)
    config.computes = 3
    site = lab_site(config, {})
    # The controller makes a broker user for each node's agent, not only its own.
    assert site.agent_hosts == [site.compute_host, "nc-compute2", "nc-compute3"]
    layout = NodeLayout.of(config, "nc-compute2")
    text = node_site_toml(site, layout, config.instances_dir)
    import tomllib

    node = site_from_mapping(tomllib.loads(text), "node site")
    assert node.compute_host == "nc-compute2"
    assert node.compute_agent
    # Its own key and config; the controller's bus directory to enrol with.
    assert node.agent_dir == layout.root / "agent"
    assert node.bus_dir == site.bus_dir
    assert node.agent_python == site.agent_python
    assert node.services_dir == layout.services_dir
