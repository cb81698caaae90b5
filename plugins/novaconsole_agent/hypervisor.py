"""libvirt as the agent sees it: one connection, its events, and the inventory it gives.

As in Nova's ``nova/virt/libvirt/host.py``: libvirt's default event loop is registered
before any connection opens and runs in a thread of its own that only queues what the
callbacks saw; everything that calls libvirt back runs elsewhere. The connection has
keepalive and a close callback; :meth:`Hypervisor.connect` is called again (with backoff,
by the daemon) once it is lost, and the daemon then resyncs with a full inventory.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import libvirt

from novaconsole.agentbus.messages import (
    Disk,
    Domain,
    DomainEvent,
    Graphics,
    HostFacts,
    NovaMetadata,
    SerialConsole,
)
from novaconsole.errors import ConnectionFailure

log = logging.getLogger("novaconsole.agent")

NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.1"

#: virDomainState in virsh's words, so the inventory reads like ``virsh list --all``.
STATES = {
    0: "no state",
    1: "running",
    2: "idle",
    3: "paused",
    4: "in shutdown",
    5: "shut off",
    6: "crashed",
    7: "pmsuspended",
}

#: Each state's reasons (libvirt's virDomain*Reason enums), as ``virsh domstate --reason``.
REASONS: dict[int, tuple[str, ...]] = {
    0: ("unknown",),
    1: (
        "unknown",
        "booted",
        "migrated",
        "restored",
        "from snapshot",
        "unpaused",
        "migration canceled",
        "save canceled",
        "event wakeup",
        "crashed",
        "post-copy",
        "post-copy failed",
    ),
    2: ("unknown",),
    3: (
        "unknown",
        "user",
        "migrating",
        "saving",
        "dumping",
        "I/O error",
        "watchdog",
        "from snapshot",
        "shutting down",
        "creating snapshot",
        "crashed",
        "starting up",
        "post-copy",
        "post-copy failed",
        "api error",
    ),
    4: ("unknown", "user"),
    5: (
        "unknown",
        "shutdown",
        "destroyed",
        "crashed",
        "migrated",
        "saved",
        "failed",
        "from snapshot",
        "daemon",
    ),
    6: ("unknown", "panicked"),
    7: ("unknown",),
}

#: Lifecycle events (virDomainEventType) and their details.
LIFECYCLE: dict[int, tuple[str, tuple[str, ...]]] = {
    0: ("defined", ("added", "updated", "renamed", "from snapshot")),
    1: ("undefined", ("removed", "renamed")),
    2: ("started", ("booted", "migrated", "restored", "from snapshot", "wakeup", "recreated")),
    3: (
        "suspended",
        (
            "paused",
            "migrated",
            "I/O error",
            "watchdog",
            "restored",
            "from snapshot",
            "api error",
            "post-copy",
            "post-copy failed",
        ),
    ),
    4: ("resumed", ("unpaused", "migrated", "from snapshot", "post-copy", "post-copy failed")),
    5: (
        "stopped",
        ("shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from snapshot"),
    ),
    6: ("shutdown", ("finished", "guest", "host")),
    7: ("pmsuspended", ("memory", "disk")),
    8: ("crashed", ("panicked", "crashloaded")),
}

WATCHDOG_ACTIONS = ("none", "pause", "reset", "poweroff", "shutdown", "debug", "inject-nmi")
IO_ERROR_ACTIONS = ("none", "pause", "report")
GRAPHICS_PHASES = ("connect", "initialize", "disconnect")
CLOSE_REASONS = ("error", "eof", "keepalive", "client")


def _pick(table: tuple[str, ...], index: int) -> str:
    return table[index] if 0 <= index < len(table) else f"#{index}"


def state_words(state: int, reason: int) -> tuple[str, str]:
    return STATES.get(state, f"#{state}"), _pick(REASONS.get(state, ()), reason)


_loop_lock = threading.Lock()
_loop_started = False


def ensure_event_loop() -> None:
    """Register libvirt's default event loop (once per process) and run it in a thread.

    Must happen before the first connection opens, or that connection gets no events.
    """
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        # libvirt prints every error on stderr by default; we log the ones that matter.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                if libvirt.virEventRunDefaultImpl() < 0:
                    log.error("libvirt event loop: virEventRunDefaultImpl failed")
                    time.sleep(1.0)

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


class Hypervisor:
    """One libvirt connection with event callbacks that put what they see on ``events``.

    Items on ``events``: a :class:`DomainEvent`, or the string ``"closed:REASON"`` when
    libvirt closes the connection.
    """

    def __init__(self, uri: str, *, read_write: bool = False) -> None:
        self.uri = uri
        self.read_write = read_write
        self.events: queue.Queue[DomainEvent | str] = queue.Queue()
        self.conn: libvirt.virConnect | None = None
        self._callback_ids: list[int] = []
        self.last_error: str | None = None
        self.generation = 0
        #: What libvirt says of the host that only changes with libvirtd (see host_facts),
        #: and the connection generation it was read on.
        self._static_facts: tuple[int, dict[str, str]] | None = None

    # -- connection ------------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection and register callbacks, or raise :class:`ConnectionFailure`."""
        ensure_event_loop()
        self.close()
        try:
            conn = libvirt.open(self.uri) if self.read_write else libvirt.openReadOnly(self.uri)
        except libvirt.libvirtError as exc:
            self.last_error = f"libvirt {self.uri}: {_one_line(exc)}"
            raise ConnectionFailure(self.last_error) from exc
        if conn is None:
            self.last_error = f"libvirt {self.uri}: connection failed"
            raise ConnectionFailure(self.last_error)
        # Local drivers (test://, qemu:///embed) have no keepalive and no close callback:
        # only remote connections close under us (the heartbeat checks isAlive for all).
        with contextlib.suppress(libvirt.libvirtError):
            conn.setKeepAlive(5, 3)
        generation = self.generation + 1
        with contextlib.suppress(libvirt.libvirtError):
            conn.registerCloseCallback(self._on_close, generation)
        self.conn = conn
        self.generation = generation
        self.last_error = None
        self._register_events(conn)

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        for cid in self._callback_ids:
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(cid)
        self._callback_ids = []
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    def alive(self) -> bool:
        conn = self.conn
        if conn is None:
            return False
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    def open_read_write(self) -> libvirt.virConnect:
        """A short-lived read-write connection (libvirt refuses screenshots on read-only)."""
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise ConnectionFailure(f"libvirt {self.uri}: {_one_line(exc)}") from exc
        if conn is None:
            raise ConnectionFailure(f"libvirt {self.uri}: connection failed")
        return conn

    def _on_close(self, _conn: Any, reason: int, generation: int) -> None:
        # Event-loop thread: queue it, nothing else.
        if generation == self.generation:
            self.events.put(f"closed:{_pick(CLOSE_REASONS, reason)}")

    # -- events (all callbacks run in the event-loop thread and only queue) -------------

    def _register_events(self, conn: libvirt.virConnect) -> None:
        handlers: list[tuple[str, Callable[..., None]]] = [
            ("LIFECYCLE", self._lifecycle),
            ("REBOOT", self._simple("reboot")),
            ("WATCHDOG", self._watchdog),
            ("IO_ERROR_REASON", self._io_error),
            ("GRAPHICS", self._graphics),
            ("CONTROL_ERROR", self._simple("control-error")),
            ("DEVICE_ADDED", self._device("device-added")),
            ("DEVICE_REMOVED", self._device("device-removed")),
            ("JOB_COMPLETED", self._job_completed),
            ("METADATA_CHANGE", self._metadata),
        ]
        for name, handler in handlers:
            event_id = getattr(libvirt, f"VIR_DOMAIN_EVENT_ID_{name}", None)
            if event_id is None:
                continue
            try:
                self._callback_ids.append(
                    conn.domainEventRegisterAny(None, event_id, handler, None)
                )
            except libvirt.libvirtError as exc:
                log.info("libvirt %s: no %s events: %s", self.uri, name.lower(), _one_line(exc))

    def _put(self, dom: Any, event: str, detail: str = "", reason: str = "", **extra: Any) -> None:
        try:
            uuid, name = dom.UUIDString(), dom.name()
        except libvirt.libvirtError:
            uuid, name = "", ""
        self.events.put(
            DomainEvent(
                uuid=uuid,
                name=name,
                event=event,
                detail=detail,
                reason=reason,
                ts=time.time(),
                extra={k: v for k, v in extra.items() if v not in (None, "")},
            )
        )

    def _lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        name, details = LIFECYCLE.get(event, (f"#{event}", ()))
        self._put(dom, "lifecycle", name, _pick(details, detail))

    def _simple(self, event: str) -> Callable[..., None]:
        def handler(_conn: Any, dom: Any, _opaque: Any) -> None:
            self._put(dom, event)

        return handler

    def _device(self, event: str) -> Callable[..., None]:
        def handler(_conn: Any, dom: Any, alias: str, _opaque: Any) -> None:
            self._put(dom, event, alias)

        return handler

    def _watchdog(self, _conn: Any, dom: Any, action: int, _opaque: Any) -> None:
        self._put(dom, "watchdog", _pick(WATCHDOG_ACTIONS, action))

    def _io_error(
        self, _conn: Any, dom: Any, src: str, alias: str, action: int, reason: str, _opaque: Any
    ) -> None:
        self._put(dom, "io-error", _pick(IO_ERROR_ACTIONS, action), reason, path=src, device=alias)

    def _graphics(
        self,
        _conn: Any,
        dom: Any,
        phase: int,
        local: dict[str, str],
        remote: dict[str, str],
        scheme: str,
        _subject: Any,
        _opaque: Any,
    ) -> None:
        self._put(
            dom,
            "graphics",
            _pick(GRAPHICS_PHASES, phase),
            scheme,
            local=f"{local.get('node', '')}:{local.get('service', '')}",
            remote=f"{remote.get('node', '')}:{remote.get('service', '')}",
        )

    def _job_completed(self, _conn: Any, dom: Any, params: dict[str, Any], _opaque: Any) -> None:
        kept = {k: v for k, v in params.items() if isinstance(v, int | float | str)}
        self._put(dom, "job-completed", "", "", **kept)

    def _metadata(self, _conn: Any, dom: Any, mtype: int, nsuri: str, _opaque: Any) -> None:
        self._put(
            dom,
            "metadata-change",
            ("description", "title", "element")[mtype] if 0 <= mtype < 3 else "",
            nsuri or "",
        )

    # -- inventory (caller's thread) -------------------------------------------------

    def _require(self) -> libvirt.virConnect:
        if self.conn is None:
            raise ConnectionFailure(self.last_error or f"libvirt {self.uri}: not connected")
        return self.conn

    def host_facts(self, nova_host: str) -> HostFacts:
        """The host's facts. CPUs and memory are read each time (``getInfo``: cheap); the
        versions, hostname and virt type once per connection: ``getCapabilities`` and
        ``getVersion`` make libvirtd re-check (and, where its cache is not valid, re-probe)
        the QEMU binary, measured here at 12-40 s a call while the agent's main thread,
        which also publishes events, waited. They change when libvirtd restarts, which is
        a new connection."""
        conn = self._require()
        info = conn.getInfo()
        if self._static_facts is None or self._static_facts[0] != self.generation:
            caps = ET.fromstring(conn.getCapabilities())
            guest_types = {d.get("type") for d in caps.iter("domain")}
            hv_type = conn.getType()
            virt_type = (
                "kvm"
                if "kvm" in guest_types
                else ("qemu" if hv_type == "QEMU" else hv_type.lower())
            )
            static = {
                "hostname": conn.getHostname(),
                "libvirt_version": _version(conn.getLibVersion()),
                "hypervisor_version": _version(conn.getVersion()),
                "hypervisor_type": hv_type,
                "virt_type": virt_type,
            }
            self._static_facts = (self.generation, static)
        static = self._static_facts[1]
        return HostFacts(
            hostname=static["hostname"],
            nova_host=nova_host,
            libvirt_version=static["libvirt_version"],
            hypervisor_version=static["hypervisor_version"],
            hypervisor_type=static["hypervisor_type"],
            virt_type=static["virt_type"],
            arch=str(info[0]),
            cpus=int(info[2]),
            memory_mib=int(info[1]),
        )

    def stats(self) -> dict[str, dict[str, Any]]:
        """One bulk ``getAllDomainStats`` (NOWAIT: a busy domain never blocks it), by UUID."""
        conn = self._require()
        flags = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
        try:
            records = conn.getAllDomainStats(0, flags)
        except libvirt.libvirtError as exc:
            log.warning("libvirt %s: getAllDomainStats: %s", self.uri, _one_line(exc))
            return {}
        return {dom.UUIDString(): dict(values) for dom, values in records}

    def domains(self, with_stats: bool = True) -> list[Domain]:
        conn = self._require()
        stats = self.stats() if with_stats else {}
        out = []
        for dom in conn.listAllDomains(0):
            try:
                domain = describe_domain(dom)
            except libvirt.libvirtError as exc:
                # Gone between the listing and the look (undefined meanwhile).
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue
                raise
            domain.stats = stats.get(domain.uuid, {})
            out.append(domain)
        return out

    def lookup(self, args: dict[str, Any]) -> libvirt.virDomain:
        """The domain named by ``args['uuid']`` or ``args['name']``."""
        conn = self._require()
        try:
            if isinstance(args.get("uuid"), str):
                return conn.lookupByUUIDString(args["uuid"])
            if isinstance(args.get("name"), str):
                return conn.lookupByName(args["name"])
        except libvirt.libvirtError as exc:
            raise LookupError(f"no domain {args.get('uuid') or args.get('name')!r}") from exc
        raise LookupError("needs args.uuid or args.name")


def describe_domain(dom: libvirt.virDomain) -> Domain:
    state, reason = dom.state()
    state_name, reason_name = state_words(state, reason)
    domain = parse_domain_xml(dom.XMLDesc(0))
    domain.uuid = dom.UUIDString()
    domain.name = dom.name()
    domain.state = state_name
    domain.reason = reason_name
    domain.persistent = bool(dom.isPersistent())
    return domain


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def parse_domain_xml(xml: str) -> Domain:
    """Nova's metadata, consoles and disks from a domain's XML (identity and state: caller)."""
    root = ET.fromstring(xml)
    domain = Domain(uuid=root.findtext("uuid", ""), name=root.findtext("name", ""), state="")
    instance = root.find(f"metadata/{{{NOVA_NS}}}instance")
    if instance is not None:
        n = f"{{{NOVA_NS}}}"
        flavor = instance.find(f"{n}flavor")
        user = instance.find(f"{n}owner/{n}user")
        project = instance.find(f"{n}owner/{n}project")
        package = instance.find(f"{n}package")
        domain.nova = NovaMetadata(
            display_name=instance.findtext(f"{n}name", "") or "",
            flavor=flavor.get("name", "") if flavor is not None else "",
            project_id=project.get("uuid", "") if project is not None else "",
            project_name=(project.text or "") if project is not None else "",
            user_id=user.get("uuid", "") if user is not None else "",
            user_name=(user.text or "") if user is not None else "",
            created=instance.findtext(f"{n}creationTime", "") or "",
            package=package.get("version", "") if package is not None else "",
        )
    devices = root.find("devices")
    if devices is None:
        return domain
    for g in devices.findall("graphics"):
        listen = g.get("listen", "")
        child = g.find("listen")
        if child is not None and child.get("address"):
            listen = child.get("address", "")
        port = _int(g.get("port"))
        domain.graphics.append(
            Graphics(
                type=g.get("type", ""),
                port=port if port is not None and port > 0 else None,
                listen=listen,
                autoport=g.get("autoport") == "yes",
            )
        )
    for tag in ("serial", "console"):
        for s in devices.findall(tag):
            source = s.find("source")
            kind = s.get("type", "")
            if tag == "console" and any(
                x.type == kind and x.path == (source.get("path", "") if source is not None else "")
                for x in domain.serials
            ):
                continue  # a <console> that mirrors the first <serial>
            domain.serials.append(
                SerialConsole(
                    type=kind,
                    host=source.get("host", "") if source is not None else "",
                    port=_int(source.get("service")) if source is not None else None,
                    path=source.get("path", "") if source is not None else "",
                )
            )
    for d in devices.findall("disk"):
        source = d.find("source")
        target = d.find("target")
        driver = d.find("driver")
        src = ""
        if source is not None:
            src = source.get("file") or source.get("dev") or source.get("name") or ""
        domain.disks.append(
            Disk(
                target=target.get("dev", "") if target is not None else "",
                device=d.get("device", "disk"),
                source=src,
                driver_type=driver.get("type", "") if driver is not None else "",
                bus=target.get("bus", "") if target is not None else "",
            )
        )
    return domain
