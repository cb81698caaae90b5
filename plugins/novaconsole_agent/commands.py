"""The commands an agent runs for a console, each already verified by the bus.

Read-only by default; the mutating ones (``restart_service``, ``destroy_unknown_domain``)
run only when ``[commands] allowed`` names them, and every mutating run is audited in the
log with the key that signed it. Unknown and refused commands get an error reply and a
log line, and nothing else happens.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import subprocess
from collections.abc import Callable
from typing import Any

import libvirt

from novaconsole.agentbus.envelope import Message
from novaconsole.agentbus.messages import CommandReply, CommandRequest, Inventory
from novaconsole_agent.config import MUTATING_COMMANDS, READ_ONLY_COMMANDS, AgentConfig
from novaconsole_agent.hypervisor import Hypervisor, describe_domain
from novaconsole_agent.node import tail_lines

log = logging.getLogger("novaconsole.agent")

#: The most a screenshot may weigh (bytes) before base64.
MAX_SCREENSHOT = 16 * 1024 * 1024


class CommandError(Exception):
    """A command that cannot be done as asked: its one-line reply error."""


class Commands:
    """Dispatch of verified command requests (the bus's handler)."""

    def __init__(
        self,
        config: AgentConfig,
        hypervisor: Hypervisor,
        inventory: Callable[[str], Inventory],
    ) -> None:
        self.config = config
        self.hypervisor = hypervisor
        self.inventory = inventory
        self._table: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "inventory": self._inventory,
            "domain_xml": self._domain_xml,
            "log_tail": self._log_tail,
            "screenshot": self._screenshot,
            "stats": self._stats,
            "vnc_target": self._vnc_target,
            "restart_service": self._restart_service,
            "destroy_unknown_domain": self._destroy_unknown_domain,
        }

    def __call__(self, message: Message, request: CommandRequest) -> CommandReply:
        name = request.command
        who = f"key {message.keyid}"
        if name not in READ_ONLY_COMMANDS + MUTATING_COMMANDS:
            log.warning("command rejected: unknown command %r (%s)", name[:64], who)
            return CommandReply("", False, error=f"unknown command {name[:64]!r}")
        if name not in self.config.allowed:
            log.warning("command rejected: %s is not enabled on this agent (%s)", name, who)
            return CommandReply(
                "", False, error=f"command {name} is not enabled on this agent ([commands] allowed)"
            )
        mutating = name in MUTATING_COMMANDS
        if mutating:
            log.warning(
                "AUDIT: %s %s requested (%s, command id %s)",
                name,
                _args(request.args),
                who,
                message.id,
            )
        try:
            result = self._table[name](request.args)
        except (CommandError, LookupError) as exc:
            error = str(exc).strip("'\"")
            if mutating:
                log.warning("AUDIT: %s refused: %s (%s)", name, error, who)
            else:
                log.info("command %s: %s (%s)", name, error, who)
            return CommandReply("", False, error=error)
        except libvirt.libvirtError as exc:
            error = f"libvirt: {' '.join(str(exc).split())[:300]}"
            log.warning("command %s failed: %s (%s)", name, error, who)
            return CommandReply("", False, error=error)
        if mutating:
            log.warning("AUDIT: %s done (%s)", name, who)
        else:
            log.info("command %s done (%s)", name, who)
        return CommandReply("", True, result=result)

    # -- read-only -------------------------------------------------------------------

    def _inventory(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"inventory": self.inventory("request").to_dict()}

    def _domain_xml(self, args: dict[str, Any]) -> dict[str, Any]:
        dom = self.hypervisor.lookup(args)
        return {"uuid": dom.UUIDString(), "name": dom.name(), "xml": dom.XMLDesc(0)}

    def _log_tail(self, args: dict[str, Any]) -> dict[str, Any]:
        service = args.get("service", "nova-compute")
        lines = args.get("lines", 100)
        if not isinstance(lines, int) or isinstance(lines, bool) or not 1 <= lines <= 5000:
            raise CommandError("log_tail: lines must be 1 to 5000")
        # Only the files the config names: a console never picks a path on the host.
        path = self.config.logs.get(str(service))
        if path is None:
            known = ", ".join(sorted(self.config.logs)) or "none"
            raise CommandError(f"log_tail: no log configured for {service!r} (known: {known})")
        try:
            return {"service": service, "path": str(path), "lines": tail_lines(path, lines)}
        except OSError as exc:
            raise CommandError(f"log_tail: {path}: {exc.strerror}") from exc

    def _screenshot(self, args: dict[str, Any]) -> dict[str, Any]:
        screen = args.get("screen", 0)
        if not isinstance(screen, int) or isinstance(screen, bool) or screen < 0:
            raise CommandError("screenshot: screen must be a number")
        uuid = self.hypervisor.lookup(args).UUIDString()
        # libvirt refuses virDomainScreenshot on a read-only connection: a short-lived
        # read-write one takes the picture and is closed at once.
        conn = self.hypervisor.open_read_write()
        try:
            dom = conn.lookupByUUIDString(uuid)
            stream = conn.newStream(0)
            try:
                mime = dom.screenshot(stream, screen, 0)
                chunks: list[bytes] = []
                size = 0
                while True:
                    chunk = stream.recv(262144)
                    if not isinstance(chunk, bytes) or not chunk:
                        break
                    size += len(chunk)
                    if size > MAX_SCREENSHOT:
                        stream.abort()
                        raise CommandError(f"screenshot: larger than {MAX_SCREENSHOT} bytes")
                    chunks.append(chunk)
                stream.finish()
            except BaseException:
                with contextlib.suppress(libvirt.libvirtError):
                    stream.abort()
                raise
        finally:
            conn.close()
        data = b"".join(chunks)
        return {
            "uuid": uuid,
            "mime": mime,
            "size": len(data),
            "data": base64.b64encode(data).decode(),
        }

    def _stats(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"stats": self.hypervisor.stats()}

    def _vnc_target(self, args: dict[str, Any]) -> dict[str, Any]:
        domain = describe_domain(self.hypervisor.lookup(args))
        vnc = domain.vnc()
        if vnc is None:
            raise CommandError(f"domain {domain.name} has no VNC console")
        if vnc.port is None:
            raise CommandError(f"domain {domain.name} has no VNC port (state: {domain.state})")
        address = vnc.listen
        if address in ("", "0.0.0.0", "::"):
            address = self.config.console_address or "127.0.0.1"
        return {
            "uuid": domain.uuid,
            "name": domain.name,
            "listen": vnc.listen,
            "address": address,
            "port": vnc.port,
        }

    # -- mutating --------------------------------------------------------------------

    def _restart_service(self, args: dict[str, Any]) -> dict[str, Any]:
        name = args.get("service")
        service = self.config.service(str(name)) if isinstance(name, str) else None
        if service is None or service.restart is None:
            offered = ", ".join(s.name for s in self.config.services if s.restart) or "none"
            raise CommandError(
                f"restart_service: no restart configured for {name!r} (offered: {offered})"
            )
        proc = subprocess.run(
            list(service.restart), capture_output=True, text=True, timeout=120, check=False
        )
        if proc.returncode != 0:
            tail = " ".join((proc.stderr or proc.stdout).split())[-300:]
            raise CommandError(f"restart_service {service.name}: exit {proc.returncode}: {tail}")
        return {"service": service.name, "exit": proc.returncode}

    def _destroy_unknown_domain(self, args: dict[str, Any]) -> dict[str, Any]:
        dom = self.hypervisor.lookup(args)
        domain = describe_domain(dom)
        if domain.nova is not None:
            # Nova's metadata says Nova made it: that is Nova's (or an operator's) to delete.
            raise CommandError(
                f"destroy_unknown_domain: {domain.name} carries Nova's metadata; refused"
            )
        dom.destroy()
        return {"uuid": domain.uuid, "name": domain.name, "destroyed": True}


def _args(args: dict[str, Any]) -> str:
    return " ".join(f"{k}={str(v)[:64]}" for k, v in sorted(args.items()))
