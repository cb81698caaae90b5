"""The agent plugin's provisioning steps: what they render is what the agent and the
console really load, and nothing is provisioned unless the site asks for the agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from novaconsole.agentbus.settings import BusSettings
from novaconsole.errors import ConfigError
from novaconsole.site import Site, site_from_mapping
from novaconsole_agent import novaconsole_provision_steps
from novaconsole_agent.config import AgentConfig
from novaconsole_agent.provision import agent_spec, agent_toml, console_agents_toml


def _site(tmp_path: Path, **kw: object) -> Site:
    site = Site(
        compute_agent=True,
        compute_host="compute1",
        rabbit_host="127.0.0.2",
        bus_dir=tmp_path / "bus",
        agent_dir=tmp_path / "agent",
        services_dir=tmp_path / "services",
    )
    for key, value in kw.items():
        setattr(site, key, value)
    return site


def test_no_agent_steps_unless_the_site_asks(tmp_path: Path) -> None:
    site = _site(tmp_path, compute_agent=False)
    assert novaconsole_provision_steps(role="controller", site=site) == []
    assert novaconsole_provision_steps(role="compute", site=site) == []


def test_controller_and_compute_steps(tmp_path: Path) -> None:
    site = _site(tmp_path)
    controller = [s.name for s in novaconsole_provision_steps(role="controller", site=site)]
    compute = [s.name for s in novaconsole_provision_steps(role="compute", site=site)]
    assert controller == ["agent.bus.broker", "agent.bus.console-key", "agent.bus.console-config"]
    assert compute[0] == "agent.key"
    assert compute[-1] == "agent.service"


def test_rendered_configs_load_in_the_real_loaders(tmp_path: Path) -> None:
    site = _site(tmp_path)
    agent_file = tmp_path / "agent.toml"
    agent_file.write_text(agent_toml(site))
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "bus.password").write_text("s3cret\n")
    config = AgentConfig.load(agent_file)
    assert config.host == "compute1"
    assert config.bus is not None
    assert config.bus.user == "novaconsole-agent-compute1"
    assert str(config.bus.brokers[0]) == "amqp://127.0.0.2:5672"
    assert config.bus.password == "s3cret"
    assert "s3cret" not in agent_file.read_text()  # the file names the password's file only

    console_file = tmp_path / "agents.toml"
    console_file.write_text(console_agents_toml(site))
    (tmp_path / "bus").mkdir()
    (tmp_path / "bus" / "console.password").write_text("other\n")
    settings = BusSettings.load(console_file)
    assert settings.user == "novaconsole-console"
    assert settings.trusted_keys == tmp_path / "bus" / "agent-keys"


def test_the_service_runs_the_agent_mode_with_no_secret_in_its_arguments(
    tmp_path: Path,
) -> None:
    site = _site(tmp_path, agent_python=Path("/opt/agent/bin/python"))
    spec = agent_spec(site)
    assert spec.argv[:6] == (
        "/opt/agent/bin/python",
        "-P",
        "-m",
        "novaconsole",
        "--plugin",
        "compute-agent",
    )
    assert spec.argv[-1] == str(tmp_path / "agent" / "agent.toml")


def test_site_file_agent_settings(tmp_path: Path) -> None:
    site = site_from_mapping(
        {"compute_agent": True, "agent_hosts": ["c1", "c2"], "bus_dir": "/srv/bus"}, "t.toml"
    )
    assert site.compute_agent
    assert site.agent_hosts == ["c1", "c2"]
    assert site.bus_dir == Path("/srv/bus")
    with pytest.raises(ConfigError, match="agent_hosts must be a list"):
        site_from_mapping({"agent_hosts": "c1"}, "t.toml")


def test_the_console_finds_the_labs_bus_when_it_has_no_agents_file(tmp_path: Path) -> None:
    from novaconsole.agentbus.settings import console_config_path

    env = {"HOME": str(tmp_path), "NOVACONSOLE_LAB_DIR": str(tmp_path / "lab")}
    own = tmp_path / ".config" / "novaconsole" / "agents.toml"
    assert console_config_path(env) == own  # nothing anywhere: the operator's own path
    lab_file = tmp_path / "lab" / "bus" / "agents.toml"
    lab_file.parent.mkdir(parents=True)
    lab_file.write_text("[bus]\n")
    assert console_config_path(env) == lab_file
    own.parent.mkdir(parents=True)
    own.write_text("[bus]\n")
    assert console_config_path(env) == own  # an operator's own file always wins
    assert console_config_path({**env, "NOVACONSOLE_AGENTS_CONFIG": "/x.toml"}) == Path("/x.toml")


def test_new_agent_code_in_its_venv_restarts_the_service(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    site = _site(tmp_path, agent_python=venv / "bin" / "python")
    marker = venv / ".novaconsole-packages.json"
    marker.write_text('["novaconsole#aaaa"]')
    before = agent_spec(site)
    assert agent_spec(site) == before  # nothing changed: the keeper leaves it running
    marker.write_text('["novaconsole#bbbb"]')  # the venv was reinstalled with new code
    assert agent_spec(site).env != before.env


def test_broker_step_on_the_real_broker_creates_then_takes_over_existing_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second site (another lab's state dir) finds the users there and resets them."""
    import os
    import subprocess

    from novaconsole.steps import RunContext
    from novaconsole_agent import provision

    tag = f"nc-test-prov-{os.getpid()}"
    vhost = f"/{tag}"
    monkeypatch.setattr(provision, "CONSOLE_USER", f"{tag}-console")
    users = [f"{tag}-console", f"novaconsole-agent-{tag}"]

    def ctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, check=False)

    try:
        for n in (1, 2):
            site = _site(tmp_path / f"site{n}", compute_host=tag, rabbit_host="127.0.0.1")
            step = provision.AgentBusBrokerStep(site)
            step.vhost = vhost
            ctx = RunContext()
            changes = step.plan(ctx, step.check(ctx))
            assert changes, f"site {n}: nothing planned"
            step.apply(ctx, changes)
            assert step.check(ctx) == [], f"site {n}: not converged"
    finally:
        for user in users:
            ctl("delete_user", user)
        ctl("delete_vhost", vhost)
