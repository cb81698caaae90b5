"""A real three-node RabbitMQ cluster of a test's own on 127.0.0.1.

The machine's broker (``rabbit@localhost`` on 5672) is left alone: each node here has its
own node name, AMQP and distribution ports (free ones, picked at start), data, log, config,
enabled-plugins and env files under a temporary directory, and the nodes share an Erlang
cookie through ``HOME`` (``$HOME/.erlang.cookie``, mode 0400; never on a command line).
EPMD on 4369 is shared with the machine's broker, which is how Erlang works: a node
registers its name there.

The nodes run in the foreground under :class:`subprocess.Popen`, each in a session of its
own, so :meth:`RabbitCluster.close` can always end them (``rabbitmqctl stop``, then SIGKILL
of the process group): no beam process outlives the test. The scripts in
``/usr/lib/rabbitmq/bin`` are used directly (Debian's ``/usr/sbin`` wrappers ``su`` to the
``rabbitmq`` user and use its cookie and ``/etc/rabbitmq``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from agenttools import rabbit_password_hash

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Node:
    """One node: ``name`` (``nc-test-PID-a@localhost``), its ports, its process."""

    letter: str
    name: str
    amqp_port: int
    dist_port: int
    root: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://127.0.0.1:{self.amqp_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output_tail(self, lines: int = 15) -> str:
        try:
            text = (self.root / "server.out").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ClusterError(RuntimeError):
    pass


class RabbitCluster:
    """Three RabbitMQ nodes clustered on 127.0.0.1 (see module doc)."""

    def __init__(self, root: Path, letters: str = "abc") -> None:
        self.root = root
        tag = f"nc-test-{os.getpid()}"
        self.nodes = [
            Node(letter, f"{tag}-{letter}@localhost", free_port(), free_port(), root / letter)
            for letter in letters
        ]
        self.vhost = "/novaconsole-cluster-test"
        self.user = "nc-cluster-test"
        self.password = secrets.token_urlsafe(18)
        self.startup_seconds = 0.0

    def node(self, letter: str) -> Node:
        return next(n for n in self.nodes if n.letter == letter)

    # -- environment -----------------------------------------------------------------

    def _env(self, node: Node | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env["HOME"] = str(self.root)
        # Not /etc/rabbitmq/rabbitmq-env.conf: it names the machine's node.
        env["RABBITMQ_CONF_ENV_FILE"] = str(self.root / "rabbitmq-env.conf")
        env["LANG"] = env["LC_ALL"] = "C.UTF-8"
        if node is not None:
            env.update(
                RABBITMQ_NODENAME=node.name,
                RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
                RABBITMQ_NODE_PORT=str(node.amqp_port),
                RABBITMQ_DIST_PORT=str(node.dist_port),
                RABBITMQ_CONFIG_FILE=str(node.root / "rabbitmq.conf"),
                RABBITMQ_ADVANCED_CONFIG_FILE=str(node.root / "advanced.config"),
                RABBITMQ_MNESIA_BASE=str(node.root / "mnesia"),
                RABBITMQ_LOG_BASE=str(node.root / "log"),
                RABBITMQ_PID_FILE=str(node.root / "pid"),
                RABBITMQ_ENABLED_PLUGINS_FILE=str(self.root / "enabled_plugins"),
                RABBITMQ_PLUGINS_EXPAND_DIR=str(node.root / "plugins-expand"),
                # Distribution on the loopback only, like every server of the tests.
                RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            )
        return env

    def ctl(self, node: Node, *args: str, input: str | None = None, timeout: float = 60) -> str:
        """``rabbitmqctl -n NODE ARGS`` with the cluster's cookie; raise with its output."""
        proc = subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-q", "-n", node.name, *args],
            env=self._env(),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            detail = " ".join((proc.stderr or proc.stdout).split())[:400]
            raise ClusterError(f"rabbitmqctl -n {node.name} {args[0]}: {detail}")
        return proc.stdout

    # -- life cycle ------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> None:
        begun = time.monotonic()
        if not (RABBIT_BIN / "rabbitmq-server").exists():
            raise ClusterError(
                f"{RABBIT_BIN / 'rabbitmq-server'}: not found (Debian package rabbitmq-server)"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        cookie = self.root / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)
        (self.root / "rabbitmq-env.conf").write_text("")
        (self.root / "enabled_plugins").write_text("[].\n")
        for node in self.nodes:
            node.root.mkdir(parents=True)
            # Quick failure detection for the test (default net_ticktime 60 s).
            (node.root / "rabbitmq.conf").write_text("loopback_users = none\n")
            (node.root / "advanced.config").write_text("[{kernel, [{net_ticktime, 10}]}].\n")
        for node in self.nodes:
            self._launch(node)
        for node in self.nodes:
            self._await(node, begun + timeout)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
        for node in self.nodes:
            self.ctl(node, "await_startup", "--timeout", "60")
        running = json.loads(self.ctl(first, "cluster_status", "--formatter", "json"))
        if sorted(running.get("running_nodes", [])) != sorted(n.name for n in self.nodes):
            raise ClusterError(f"cluster did not form: {running.get('running_nodes')}")
        self._add_vhost_and_user(first)
        self.startup_seconds = time.monotonic() - begun

    def _launch(self, node: Node) -> None:
        out = (node.root / "server.out").open("wb")
        try:
            node.process = subprocess.Popen(
                [str(RABBIT_BIN / "rabbitmq-server")],
                env=self._env(node),
                cwd=node.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()

    def _await(self, node: Node, deadline: float) -> None:
        # await_startup fails at once while the node has not registered with EPMD yet.
        while True:
            if not node.running:
                raise ClusterError(f"{node.name} exited while starting:\n{node.output_tail()}")
            try:
                self.ctl(node, "await_startup", "--timeout", "30", timeout=45)
                return
            except (ClusterError, subprocess.TimeoutExpired) as exc:
                if time.monotonic() > deadline:
                    raise ClusterError(f"{node.name} did not start: {exc}") from exc
            time.sleep(0.5)

    def _add_vhost_and_user(self, node: Node) -> None:
        self.ctl(node, "add_vhost", self.vhost)
        # The password as a salted hash on standard input, never an argument.
        defs = {
            "users": [
                {
                    "name": self.user,
                    "password_hash": rabbit_password_hash(self.password),
                    "hashing_algorithm": "rabbit_password_hashing_sha256",
                    "tags": "",
                }
            ],
            "permissions": [
                {
                    "user": self.user,
                    "vhost": self.vhost,
                    "configure": ".*",
                    "write": ".*",
                    "read": ".*",
                }
            ],
        }
        self.ctl(node, "import_definitions", input=json.dumps(defs))
        deadline = time.monotonic() + 30
        while not any(
            line.split("\t")[0] == self.user
            for line in self.ctl(node, "list_permissions", "-p", self.vhost).splitlines()
        ):
            if time.monotonic() > deadline:
                raise ClusterError(f"user {self.user} never got its permissions")
            time.sleep(0.2)

    def start_node(self, node: Node, timeout: float = 120.0) -> None:
        """Start a stopped node again: it rejoins the cluster from its own data."""
        self._launch(node)
        self._await(node, time.monotonic() + timeout)
        status = json.loads(self.ctl(node, "cluster_status", "--formatter", "json"))
        if sorted(status.get("running_nodes", [])) != sorted(n.name for n in self.nodes):
            raise ClusterError(f"{node.name} did not rejoin: {status.get('running_nodes')}")

    def stop_node(self, node: Node, timeout: float = 60.0) -> None:
        """Stop one node the way an operator would (``rabbitmqctl stop``) and wait for it."""
        self.ctl(node, "stop", timeout=timeout)
        if node.process is not None:
            node.process.wait(timeout)

    def kill_node(self, node: Node, timeout: float = 30.0) -> None:
        """Crash one node: SIGKILL to its process group (no goodbye to clients or peers)."""
        assert node.process is not None
        os.killpg(node.process.pid, signal.SIGKILL)
        node.process.wait(timeout)

    def connection_nodes(self, ask: Node) -> dict[str, str]:
        """Client connection name -> the node it is on, for the test's vhost (asked
        through ``ask``). ``list_connections`` has no node column; a connection's
        ``port`` is the server's AMQP port, which names the node."""
        by_port = {n.amqp_port: n.name for n in self.nodes}
        rows = json.loads(
            self.ctl(
                ask, "list_connections", "port", "vhost", "client_properties", "--formatter", "json"
            )
        )
        found: dict[str, str] = {}
        for row in rows:
            if row.get("vhost") != self.vhost:
                continue
            name = ""
            for entry in row.get("client_properties") or []:
                if isinstance(entry, list) and entry and entry[0] == "connection_name":
                    name = str(entry[-1])
            found[name] = by_port.get(int(row.get("port", 0)), "?")
        return found

    def close(self) -> None:
        """Stop every node of ours still running; SIGKILL what does not stop in time."""
        for node in self.nodes:
            if node.running:
                with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
                    self.ctl(node, "stop", timeout=30)
        for node in self.nodes:
            if node.process is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(15)
            # The session holds beam.smp and its helpers (erl_child_setup, inet_gethost).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(node.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(10)
