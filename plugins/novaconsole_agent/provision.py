"""Provisioning the agent bus: the controller's vhost, users and console key; the compute
node's agent key, config and service.

Controller side (role ``controller``, ``compute_agent = true`` in the site):

- the vhost ``/novaconsole`` on the cloud's RabbitMQ, a console user with every right on
  it, and one user per agent host (``agent_hosts``, default the site's compute host) whose
  permissions are limited to that agent's own queues and routing keys
  (:func:`~novaconsole.agentbus.bus.agent_permissions`); passwords are generated into
  ``bus_dir`` (mode 0600) and reach ``rabbitmqctl`` on standard input only;
- the console's signing key and ``bus_dir/agents.toml``, the file the console reads.

Compute side (role ``compute``):

- the agent's own key pair in ``agent_dir``; its public key is enrolled into the
  console's ``bus_dir/agent-keys/HOST.pub`` and the console's public key into the agent's
  ``console-keys/`` (no trust on first use): on an all-in-one node by copying; on a
  separate node the operator copies ``console.pub`` and the agent's password from the
  controller first, and the step says which files are missing;
- ``agent_dir/agent.toml`` and the ``novaconsole-agent`` service
  (``novaconsole --plugin compute-agent --config agent_dir/agent.toml``).
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from novaconsole.agentbus.bus import (
    CONSOLE_PERMISSIONS,
    EXCHANGE_AGENTS,
    BrokerPermissions,
    agent_permissions,
    agent_user,
)
from novaconsole.agentbus.keys import SigningKey
from novaconsole.agentbus.settings import DEFAULT_VHOST
from novaconsole.errors import ConnectionFailure, StepFailed
from novaconsole.fileutil import atomic_write
from novaconsole.services import ServiceSpec, keeper_for_site
from novaconsole.steps import RunContext, Step

if TYPE_CHECKING:
    from novaconsole.site import Site

CONSOLE_USER = "novaconsole-console"
CONSOLE_KEY_NAME = "console"
SERVICE = "novaconsole-agent"
DIGEST_ENV = "NOVACONSOLE_AGENT_DIGEST"


def agent_hosts(site: Site) -> list[str]:
    return list(site.agent_hosts) or [site.compute_host]


def _ctl(*args: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    if not shutil.which("rabbitmqctl"):
        raise ConnectionFailure("rabbitmqctl not found: the agent bus is set up on the broker host")
    return subprocess.run(
        ["rabbitmqctl", "-q", *args],
        input=input_text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _password(path: Path) -> str:
    """The password kept in ``path`` (created, 0600, when missing)."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = secrets.token_urlsafe(24)
        atomic_write(path, value + "\n", mode=0o600)
        return value


@dataclass(frozen=True)
class BrokerUser:
    name: str
    password_file: Path
    permissions: BrokerPermissions


def broker_users(site: Site) -> list[BrokerUser]:
    users = [BrokerUser(CONSOLE_USER, site.bus_dir / "console.password", CONSOLE_PERMISSIONS)]
    for host in agent_hosts(site):
        users.append(
            BrokerUser(
                agent_user(host),
                site.bus_dir / "agents" / f"{host}.password",
                agent_permissions(host),
            )
        )
    return users


class AgentBusBrokerStep(Step[list[str]]):
    """The bus's vhost and its users with their permissions, on the cloud's RabbitMQ."""

    name = "agent.bus.broker"
    phase = "prepare"

    def __init__(self, site: Site) -> None:
        self.site = site
        self.vhost = DEFAULT_VHOST
        self.description = f"RabbitMQ vhost {self.vhost} and the agent bus's users"

    def _login_ok(self, user: str, password: str) -> bool:
        """Whether ``user`` logs in to the vhost with ``password`` (an AMQP login: the
        password goes over the wire to the broker, never into a process's arguments)."""
        import pika
        import pika.exceptions

        params = pika.ConnectionParameters(
            host=self.site.rabbit_host,
            port=self.site.rabbit_port,
            virtual_host=self.vhost,
            credentials=pika.PlainCredentials(user, password),
            connection_attempts=1,
            socket_timeout=5,
            blocked_connection_timeout=5,
        )
        try:
            pika.BlockingConnection(params).close()
        except pika.exceptions.AMQPError:
            return False
        return True

    def check(self, ctx: RunContext) -> list[str]:
        # Two rabbitmqctl calls in all, side by side (each starts an Erlang VM: 0.5 s of a
        # core here): the vhost's permissions and its topic permissions; passwords are
        # checked by logging in.
        with ThreadPoolExecutor(max_workers=2) as pool:
            topics_call = pool.submit(_ctl, "list_topic_permissions", "-p", self.vhost)
            perms = _ctl("list_permissions", "-p", self.vhost)
            topics = topics_call.result().stdout.splitlines()
        if perms.returncode != 0:
            if "no_such_vhost" in perms.stderr or "does not exist" in perms.stderr:
                return [f"create vhost {self.vhost}"] + [
                    f"create user {u.name} (password in {u.password_file})"
                    for u in broker_users(self.site)
                ]
            raise ConnectionFailure(
                f"rabbitmqctl list_permissions -p {self.vhost} failed on "
                f"{self.site.rabbit_host}: "
                f"{(perms.stderr.strip().splitlines() or ['no output'])[-1]}"
            )
        have = set(perms.stdout.splitlines())
        have_topics = set(topics)
        missing: list[str] = []
        for user in broker_users(self.site):
            if not user.password_file.exists():
                missing.append(f"create user {user.name} (new password in {user.password_file})")
                continue
            if not self._login_ok(user.name, _password(user.password_file)):
                missing.append(f"create or reset user {user.name}")
                continue
            p = user.permissions
            want = f"{user.name}\t{p.configure}\t{p.write}\t{p.read}"
            want_topic = (
                f"{user.name}\t{EXCHANGE_AGENTS}\t{p.topic_write or '.*'}\t{p.topic_read or '.*'}"
            )
            has_topic = p.topic_write is None and p.topic_read is None
            if want not in have or not (has_topic or want_topic in have_topics):
                missing.append(f"set permissions of {user.name} on {self.vhost}")
        return missing

    def plan(self, ctx: RunContext, observed: list[str]) -> list[str]:
        return observed

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        where = f"RabbitMQ on {self.site.rabbit_host}"
        # Each rabbitmqctl call starts an Erlang VM; two at a time take little longer than
        # one on this 2-core machine, so independent calls go side by side.
        with ThreadPoolExecutor(max_workers=2) as pool:
            listing_call = pool.submit(_ctl, "list_users")
            if _ctl("add_vhost", self.vhost).returncode not in (0, 70):  # 70: already exists
                raise StepFailed(f"rabbitmqctl add_vhost {self.vhost} failed on {where}")
            # ``list_users`` takes no column names in 3.10 (it prints "user<TAB>tags").
            listing = listing_call.result()
            if listing.returncode != 0:
                raise StepFailed(f"rabbitmqctl list_users failed on {where}")
            existing = {line.split("\t")[0] for line in listing.stdout.splitlines()}
            # One user's calls in order (the user before its permissions), users in parallel.
            for done in [
                pool.submit(self._set_up, user, existing, where) for user in broker_users(self.site)
            ]:
                done.result()

    def _set_up(self, user: BrokerUser, existing: set[str], where: str) -> None:
        """A broker user with its password and its permissions on the bus's vhost."""
        password = _password(user.password_file)
        verb = "change_password" if user.name in existing else "add_user"
        # The password travels on stdin, never on the command line.
        if _ctl(verb, user.name, input_text=password).returncode != 0:
            raise StepFailed(f"rabbitmqctl could not set up user {user.name} on {where}")
        p = user.permissions
        proc = _ctl("set_permissions", "-p", self.vhost, user.name, p.configure, p.write, p.read)
        if proc.returncode != 0:
            raise StepFailed(f"rabbitmqctl set_permissions for {user.name} failed on {where}")
        if p.topic_write is not None or p.topic_read is not None:
            proc = _ctl(
                "set_topic_permissions",
                "-p",
                self.vhost,
                user.name,
                EXCHANGE_AGENTS,
                p.topic_write or ".*",
                p.topic_read or ".*",
            )
            if proc.returncode != 0:
                raise StepFailed(
                    f"rabbitmqctl set_topic_permissions for {user.name} failed on {where}"
                )


class KeyPairStep(Step[bool]):
    """An Ed25519 key pair ``DIR/NAME.key`` (0600) and ``NAME.pub``, made once."""

    def __init__(self, name: str, directory: Path, key_name: str, *, phase: str) -> None:
        self.name = name
        self.directory = directory
        self.key_name = key_name
        self.phase = phase
        self.description = f"signing key {directory / (key_name + '.key')}"

    @property
    def private(self) -> Path:
        return self.directory / f"{self.key_name}.key"

    def check(self, ctx: RunContext) -> bool:
        return self.private.exists() and (self.directory / f"{self.key_name}.pub").exists()

    def plan(self, ctx: RunContext, observed: bool) -> list[str]:
        return [] if observed else [f"generate key pair {self.private} (+ .pub)"]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.private.exists():  # only the public half is missing: derive it again
            key = SigningKey.load(self.private)
            atomic_write(self.directory / f"{self.key_name}.pub", key.public_pem(), mode=0o644)
        else:
            SigningKey.generate(self.key_name).save(self.directory)


class CopyFileStep(Step[bool]):
    """``target`` holds the same bytes as ``source`` (enrolment of a public key, a password
    handed from the controller); a missing source fails with what to copy by hand."""

    def __init__(
        self,
        name: str,
        source: Path,
        target: Path,
        *,
        mode: int,
        phase: str,
        hint: str,
        only_where: Path | None = None,
    ) -> None:
        #: Copy only where this directory exists (the controller's, on an all-in-one node).
        self.only_where = only_where
        self.name = name
        self.source = source
        self.target = target
        self.mode = mode
        self.phase = phase
        self.hint = hint
        self.description = f"{target} from {source}"

    def check(self, ctx: RunContext) -> bool:
        if self.only_where is not None and not self.only_where.exists():
            ctx.note(f"{self.only_where} is not on this node: {self.hint}")
            return True
        try:
            return self.target.read_bytes() == self.source.read_bytes()
        except FileNotFoundError:
            return False

    def plan(self, ctx: RunContext, observed: bool) -> list[str]:
        return [] if observed else [f"copy {self.source} to {self.target}"]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        try:
            data = self.source.read_bytes()
        except FileNotFoundError as exc:
            raise StepFailed(f"{self.source} does not exist on this node", hint=self.hint) from exc
        self.target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.target, data.decode(), mode=self.mode)


class TextFileStep(Step[str | None]):
    """A file whose whole content provisioning owns."""

    def __init__(self, name: str, path: Path, content: str, *, phase: str) -> None:
        self.name = name
        self.path = path
        self.content = content
        self.phase = phase
        self.description = f"write {path}"

    def check(self, ctx: RunContext) -> str | None:
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return None

    def plan(self, ctx: RunContext, observed: str | None) -> list[str]:
        if observed is None:
            return [f"create {self.path}"]
        return [f"update {self.path}"] if observed != self.content else []

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.path, self.content, mode=0o640)


def _toml_str(value: object) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def bus_url(site: Site) -> str:
    return f"amqp://{site.rabbit_host}:{site.rabbit_port}"


def console_agents_toml(site: Site) -> str:
    bus = site.bus_dir
    return "\n".join(
        [
            "# Written by novaconsole provisioning: how the console reaches the agent bus.",
            "[bus]",
            f"urls = [{_toml_str(bus_url(site))}]",
            f"vhost = {_toml_str(DEFAULT_VHOST)}",
            f"user = {_toml_str(CONSOLE_USER)}",
            f"password_file = {_toml_str(bus / 'console.password')}",
            "",
            "[keys]",
            f"signing_key = {_toml_str(bus / (CONSOLE_KEY_NAME + '.key'))}",
            f"trusted = {_toml_str(bus / 'agent-keys')}",
            "",
        ]
    )


def agent_toml(site: Site) -> str:
    host = site.compute_host
    adir = site.agent_dir
    lines = [
        "# Written by novaconsole provisioning (compute node): the compute agent's config.",
        f"host = {_toml_str(host)}",
        'libvirt_uri = "qemu:///system"',
        f"heartbeat_interval = {site.agent_heartbeat_interval}",
        f"state_dir = {_toml_str(adir / 'state')}",
    ]
    log = site.services_dir / "logs" / "nova-compute.log"
    lines.append(f"nova_compute_log = {_toml_str(log)}")
    lines += [
        "",
        "[bus]",
        f"urls = [{_toml_str(bus_url(site))}]",
        f"vhost = {_toml_str(DEFAULT_VHOST)}",
        f"user = {_toml_str(agent_user(host))}",
        f"password_file = {_toml_str(adir / 'bus.password')}",
        "",
        "[keys]",
        f"signing_key = {_toml_str(adir / (host + '.key'))}",
        f"trusted = {_toml_str(adir / 'console-keys')}",
        "",
    ]
    return "\n".join(lines)


#: The agent's environment under its service keeper. glibc may give each thread that
#: allocates an arena of its own (up to eight per core); two cap what a burst of work in
#: the daemon's command or bus thread can leave spread over arenas. (Idle it made no
#: measurable difference: bench/RESULTS.md, "Compute agent footprint".)
AGENT_ENV: dict[str, str] = {"MALLOC_ARENA_MAX": "2"}


def agent_python(site: Site) -> Path:
    """The interpreter that has ``novaconsole[agent]`` (the site's, or this one)."""
    return site.agent_python or Path(sys.executable)


def agent_spec(site: Site) -> ServiceSpec:
    config = site.agent_dir / "agent.toml"
    digest = hashlib.sha256()
    python = agent_python(site)
    # What the agent runs: its config, its key and, where the interpreter's environment
    # records what it installed (the lab's venvs do), that record, so new agent code
    # restarts the service instead of leaving the old process running.
    installed = python.parent.parent / ".novaconsole-packages.json"
    for path in (config, site.agent_dir / f"{site.compute_host}.key", installed):
        try:
            digest.update(path.read_bytes())
        except FileNotFoundError:
            digest.update(b"-")
    return ServiceSpec(
        name=SERVICE,
        argv=(
            str(python),
            # -P: the keeper's working directory (wherever lab up or supervisord was
            # started, maybe another checkout) must not shadow the installed package.
            "-P",
            "-m",
            "novaconsole",
            "--plugin",
            "compute-agent",
            "--config",
            str(config),
        ),
        env={**AGENT_ENV, DIGEST_ENV: digest.hexdigest()[:16]},
        stop_signal="TERM",
        stop_wait=10,
    )


class AgentServiceStep(Step[dict[str, Any]]):
    """The compute agent kept running by the site's service keeper."""

    name = "agent.service"
    phase = "services"

    def __init__(self, site: Site) -> None:
        self.site = site
        self.description = f"{SERVICE} running on {site.compute_host}"

    def check(self, ctx: RunContext) -> dict[str, Any]:
        keeper = keeper_for_site(self.site)
        state = keeper.status().get(SERVICE)
        return {
            "pending": bool(keeper.pending([agent_spec(self.site)])),
            "state": state.state if state else None,
            "noun": keeper.noun,
        }

    def plan(self, ctx: RunContext, observed: dict[str, Any]) -> list[str]:
        if observed["pending"]:
            return [f"install {observed['noun']} {SERVICE} and (re)start it"]
        if observed["state"] != "RUNNING":
            return [f"start {SERVICE} (now {observed['state'] or 'not running'})"]
        return []

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        keeper = keeper_for_site(self.site)
        changed = keeper.install([agent_spec(self.site)])
        state = keeper.status().get(SERVICE)
        restart = [SERVICE] if not changed and state and state.state != "RUNNING" else []
        keeper.apply(restart=restart)

    def verify(self, ctx: RunContext) -> None:
        keeper_for_site(self.site).wait_running([SERVICE], timeout=60)
        super().verify(ctx)


def controller_steps(site: Site) -> list[Step[Any]]:
    return [
        AgentBusBrokerStep(site),
        KeyPairStep("agent.bus.console-key", site.bus_dir, CONSOLE_KEY_NAME, phase="prepare"),
        TextFileStep(
            "agent.bus.console-config",
            site.bus_dir / "agents.toml",
            console_agents_toml(site),
            phase="prepare",
        ),
    ]


def compute_steps(site: Site) -> list[Step[Any]]:
    host = site.compute_host
    adir, bus = site.agent_dir, site.bus_dir
    from_controller = f"copy it from the controller's {bus} (provision role controller there first)"
    return [
        KeyPairStep("agent.key", adir, host, phase="config"),
        # Enrolment: the console trusts exactly this key for this host, and the agent
        # trusts the console's key; copied, never learnt on first use.
        CopyFileStep(
            "agent.enrol",
            adir / f"{host}.pub",
            bus / "agent-keys" / f"{host}.pub",
            mode=0o644,
            phase="config",
            hint=f"copy {adir / (host + '.pub')} to the controller's {bus / 'agent-keys'}",
            only_where=bus,
        ),
        CopyFileStep(
            "agent.console-key",
            bus / f"{CONSOLE_KEY_NAME}.pub",
            adir / "console-keys" / f"{CONSOLE_KEY_NAME}.pub",
            mode=0o644,
            phase="config",
            hint=from_controller,
        ),
        CopyFileStep(
            "agent.bus-password",
            bus / "agents" / f"{host}.password",
            adir / "bus.password",
            mode=0o600,
            phase="config",
            hint=from_controller,
        ),
        TextFileStep("agent.config", adir / "agent.toml", agent_toml(site), phase="config"),
        AgentServiceStep(site),
    ]
