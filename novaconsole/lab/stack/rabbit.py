"""RabbitMQ for the lab: a broker on 127.0.0.1 (started if none answers) and OpenStack's account."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from novaconsole.errors import ConnectionFailure, StepFailed
from novaconsole.fileutil import atomic_write
from novaconsole.lab.config import RABBIT_USER, LabConfig
from novaconsole.lab.generic import run_quiet
from novaconsole.services import port_owner
from novaconsole.steps import RunContext, Step


class RabbitStep(Step[dict[str, bool]]):
    """A RabbitMQ account for OpenStack on the broker at 127.0.0.1:5672 (started if needed)."""

    name = "lab.rabbitmq"
    phase = "prepare"

    def __init__(self, config: LabConfig, password: str) -> None:
        self.config = config
        self.password = password
        self.description = (
            f"RabbitMQ user {RABBIT_USER} on {config.rabbit_host}:{config.rabbit_port}"
        )

    def _ctl(self, *args: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["rabbitmqctl", "-q", *args],
            input=input_text,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def check(self, ctx: RunContext) -> dict[str, bool]:
        up = port_owner(self.config.rabbit_host, self.config.rabbit_port)
        if not up or not shutil.which("rabbitmqctl"):
            return {"up": up, "auth": False, "perms": False}
        # The password travels on stdin, never on the command line.
        auth = self._ctl("authenticate_user", RABBIT_USER, input_text=self.password).returncode == 0
        perms = False
        if auth:
            listing = self._ctl("list_user_permissions", RABBIT_USER).stdout
            perms = any(
                line.split("\t")[:4] == ["/", ".*", ".*", ".*"] for line in listing.splitlines()
            )
        return {"up": True, "auth": auth, "perms": perms}

    def plan(self, ctx: RunContext, observed: dict[str, bool]) -> list[str]:
        changes = []
        if not observed["up"] and not shutil.which("rabbitmq-server"):
            changes.append("install rabbitmq-server (Debian) and start it (none answers on 5672)")
        elif not observed["up"]:
            changes.append("start a local rabbitmq-server (none answers on 5672)")
        if not observed["auth"]:
            changes.append(f"create or reset RabbitMQ user {RABBIT_USER}")
        if not observed["perms"]:
            changes.append(f"grant {RABBIT_USER} all permissions on vhost /")
        return changes

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        where = f"{self.config.rabbit_host}:{self.config.rabbit_port}"
        if not port_owner(self.config.rabbit_host, self.config.rabbit_port):
            if os.geteuid() != 0:
                raise ConnectionFailure(
                    f"RabbitMQ is unreachable at {where}",
                    hint="start a broker there (guest/guest admin access via rabbitmqctl) or run lab up as root",
                )
            if not shutil.which("rabbitmq-server"):
                env = {"DEBIAN_FRONTEND": "noninteractive"}
                run_quiet(["apt-get", "update", "-qq"], env=env, what="apt-get update")
                run_quiet(
                    ["apt-get", "install", "-y", "-qq", "rabbitmq-server"],
                    env=env,
                    what="install rabbitmq-server",
                )
            env = {
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            }
            # Debian's package may already have started the broker from its postinst.
            if not port_owner(self.config.rabbit_host, self.config.rabbit_port):
                run_quiet(
                    ["rabbitmq-server", "-detached"], env=env, what="rabbitmq-server -detached"
                )
            # Ours now: lab down stops it again.
            atomic_write(self.config.rabbit_marker, "started by novaconsole lab up\n")
            deadline = time.monotonic() + 120
            while not port_owner(self.config.rabbit_host, self.config.rabbit_port):
                if time.monotonic() > deadline:
                    raise ConnectionFailure(f"RabbitMQ did not come up at {where} within 120 s")
                time.sleep(1)
        if not shutil.which("rabbitmqctl"):
            raise ConnectionFailure(f"rabbitmqctl not found; cannot manage users on {where}")
        users = self._ctl("list_users").stdout
        exists = any(line.split("\t")[0] == RABBIT_USER for line in users.splitlines())
        if exists:
            proc = self._ctl("change_password", RABBIT_USER, input_text=self.password)
        else:
            proc = self._ctl("add_user", RABBIT_USER, input_text=self.password)
        if proc.returncode != 0:
            raise StepFailed(f"rabbitmqctl could not set up user {RABBIT_USER} on {where}")
        proc = self._ctl("set_permissions", "-p", "/", RABBIT_USER, ".*", ".*", ".*")
        if proc.returncode != 0:
            raise StepFailed(f"rabbitmqctl could not grant permissions to {RABBIT_USER} on {where}")
