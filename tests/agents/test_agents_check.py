"""The verify check ``compute-agents``: pure evaluation, and when verify adds it at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from novaconsole.agentbus.settings import console_config_path
from novaconsole.agents.checks import evaluate_agents
from novaconsole.agents.model import AgentState
from novaconsole.verify import agent_checks, agents_config_path, collect_checks


def agent(host: str, *, stale: bool = False, age: float | None = 3.0) -> AgentState:
    return AgentState(
        host=host, nova_host=host, version="1", last_seen=0.0, last_heartbeat=0.0,
        heartbeat_age=age, heartbeat_interval=10.0, stale=stale, libvirt="connected",
        libvirt_error="", domain_count=0, domains=(), nova_compute="running", error_count=0,
        errors=(), missing=0, gaps_total=0, restarts=0, last_seq=0, messages=1,
        inventories=1, events=0,
    )  # fmt: skip


SERVICES = [
    {"binary": "nova-compute", "host": "cmp1"},
    {"binary": "nova-compute", "host": "cmp2"},
    {"binary": "nova-scheduler", "host": "ctl"},
]


def test_every_compute_host_live_passes() -> None:
    result = evaluate_agents(SERVICES, [agent("cmp1"), agent("cmp2"), agent("spare")])
    assert result.ok
    assert result.summary == "2 of 2 live: cmp1, cmp2"
    assert result.facts["agents_without_compute_service"] == ["spare"]


def test_stale_and_missing_agents_fail() -> None:
    result = evaluate_agents(SERVICES, [agent("cmp1", stale=True, age=None)])
    assert not result.ok
    assert result.summary == "stale agent: cmp1 (never heard); no agent enrolled for: cmp2"


def test_check_only_where_agents_are_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOVACONSOLE_AGENTS_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("NOVACONSOLE_LAB_DIR", str(tmp_path / "no-lab"))
    assert agents_config_path() == console_config_path() == tmp_path / "novaconsole/agents.toml"
    assert agent_checks() == []
    assert "compute-agents" not in [c.name for c in collect_checks(None)]
    config = tmp_path / "elsewhere.toml"
    config.write_text("[bus]\n")
    monkeypatch.setenv("NOVACONSOLE_AGENTS_CONFIG", str(config))
    assert agents_config_path() == console_config_path() == config
    assert [c.name for c in collect_checks(None)][-1] == "compute-agents"
