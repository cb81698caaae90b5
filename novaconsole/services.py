"""Keeping services running: systemd units where systemd runs, supervisord elsewhere.

A :class:`ServiceSpec` says how to run one service. A :class:`ServiceKeeper` installs a set
of them (one log file per service), starts them, restarts those whose definition changed,
reports their state and stops them all, checking by pid that nothing is left:

* :class:`SystemdUnits` writes one ``PREFIX-NAME.service`` unit per service (enabled, so
  they come back after a reboot; ``Restart=on-failure``; output appended to the service's
  log file) and drives them with ``systemctl``.
* :class:`Supervisor` runs a supervisord (from PyPI) of its own where systemd is not PID 1
  (containers, CI machines, this lab's sandboxes): a program file per service, applied with
  ``reread``/``update``.

:func:`keeper_for_site` picks one (``service_manager`` = auto, systemd or supervisord).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from novaconsole.errors import ConfigError, NovaconsoleError
from novaconsole.fileutil import atomic_write

if TYPE_CHECKING:
    from novaconsole.site import Site


#: Seconds a service must stay up before it counts as RUNNING (supervisord's startsecs,
#: and its default). It was 3, but every keeper step waits it out, one after another
#: (eleven in a cold lab up: some 20 s of the lab's cold start), and it proved little:
#: the Python services take longer than that to import before reading their config, so
#: their config errors come later anyway. What proves a service up is its health check
#: (APIs) or the next step that uses it.
START_SECONDS = 1


@dataclass(frozen=True)
class ServiceSpec:
    """How to run one long-lived service."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    #: TCP port the service listens on (for health and "port taken" checks), if any.
    port: int | None = None
    #: Signal that asks it to stop, and how long to wait before SIGKILL.
    stop_signal: str = "TERM"
    stop_wait: int = 10
    directory: str | None = None
    #: Files whose change needs a restart (besides configuration the caller watches).
    watch: tuple[Path, ...] = ()


@dataclass(frozen=True)
class ServiceState:
    """What the keeper says of one service (supervisord's vocabulary for both keepers)."""

    name: str
    state: str  # RUNNING, STARTING, BACKOFF, FATAL, STOPPED, EXITED, ...
    pid: int | None


@dataclass(frozen=True)
class Orphan:
    """A process one of our programs started that outlived the keeper that kept it."""

    pid: int
    program: str


class ServiceKeeper(ABC):
    """What every service keeper offers (see the module docstring)."""

    #: "systemd" or "supervisord".
    kind: str
    #: How one of its services is called in plans ("systemd unit", "supervisord program").
    noun: str

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.log_dir = state_dir / "logs"

    @abstractmethod
    def pending(self, specs: Iterable[ServiceSpec]) -> list[str]:
        """Names of services whose installed definition differs from ``specs`` (or is missing)."""

    @abstractmethod
    def install(self, specs: Iterable[ServiceSpec]) -> list[str]:
        """Write each service's definition; return the names whose definition changed."""

    @abstractmethod
    def is_installed(self, name: str) -> bool:
        """Whether this keeper holds a definition for service ``name``."""

    @abstractmethod
    def apply(self, restart: Iterable[str] = ()) -> None:
        """Put what :meth:`install` wrote into effect: start new services, restart changed
        ones and those named in ``restart``. (systemd also starts any installed service
        that is down; supervisord leaves a stopped, unchanged one to ``restart``.)"""

    @abstractmethod
    def status(self) -> dict[str, ServiceState]:
        """Every installed service's state and main pid."""

    @abstractmethod
    def stop_all(self, timeout: float = 60.0) -> list[int]:
        """Stop every service (and the keeper's own daemon); return pids still alive."""

    def manager_pid(self) -> int | None:
        """The pid of a daemon of our own that keeps the services (supervisord), if any."""
        return None

    def stop_orphans(self, timeout: float = 30.0) -> list[Orphan]:
        """Stop processes our services started that no live keeper keeps; return them.

        systemd keeps every process of a unit in its cgroup, so it leaves none."""
        return []

    def describe(self) -> str:
        """Where the services are kept, for people."""
        return f"{self.kind} ({self.state_dir})"

    def wait_running(self, names: Iterable[str], timeout: float) -> dict[str, ServiceState]:
        """Wait until every named service is RUNNING; raise naming the first that is not."""
        wanted = list(names)
        deadline = time.monotonic() + timeout
        while True:
            states = self.status()
            bad = [n for n in wanted if states.get(n) is None or states[n].state != "RUNNING"]
            if not bad:
                return states
            fatal = [n for n in bad if n in states and states[n].state in ("FATAL", "EXITED")]
            if fatal or time.monotonic() > deadline:
                name = (fatal or bad)[0]
                state = states[name].state if name in states else "missing"
                raise NovaconsoleError(
                    f"service {name} is {state}, not RUNNING; see {self.log_dir / (name + '.log')}"
                )
            time.sleep(0.5)


_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_STATUS = re.compile(r"^(?P<name>\S+)\s+(?P<state>[A-Z]+)\s*(?:pid (?P<pid>\d+))?")


def _quote(value: str) -> str:
    # supervisord's config uses %-interpolation and its own quoting for environment values.
    return '"' + value.replace("%", "%%").replace('"', '\\"') + '"'


def render_program(spec: ServiceSpec, log_dir: Path) -> str:
    """The ``[program:NAME]`` section for one service."""
    if not _NAME.match(spec.name):
        raise NovaconsoleError(f"invalid service name {spec.name!r}")
    command = " ".join(
        _quote(a) if (" " in a or '"' in a) else a.replace("%", "%%") for a in spec.argv
    )
    lines = [
        f"[program:{spec.name}]",
        f"command={command}",
        "autostart=true",
        "autorestart=true",
        f"startsecs={START_SECONDS}",
        "startretries=3",
        f"stopsignal={spec.stop_signal}",
        f"stopwaitsecs={spec.stop_wait}",
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={log_dir / (spec.name + '.log')}",
        "stdout_logfile_maxbytes=20MB",
        "stdout_logfile_backups=2",
    ]
    if spec.directory:
        lines.append(f"directory={spec.directory}")
    if spec.env:
        env = ",".join(f"{k}={_quote(v)}" for k, v in sorted(spec.env.items()))
        lines.append(f"environment={env}")
    return "\n".join(lines) + "\n"


class Supervisor(ServiceKeeper):
    """A supervisord instance that owns a set of services under ``state_dir``."""

    kind = "supervisord"
    noun = "supervisord program"

    def __init__(self, state_dir: Path, bin_dir: Path) -> None:
        super().__init__(state_dir)
        self.bin_dir = bin_dir
        self.conf = state_dir / "supervisord.conf"
        self.socket = state_dir / "supervisor.sock"
        self.pidfile = state_dir / "supervisord.pid"

    # -- configuration ---------------------------------------------------------------

    @property
    def programs_dir(self) -> Path:
        """One ``NAME.conf`` per program, so several owners can add services independently."""
        return self.state_dir / "programs.d"

    def render_main(self) -> str:
        return (
            "; written by novaconsole: programs live in programs.d/, one log file each\n"
            "[unix_http_server]\n"
            f"file={self.socket}\n"
            "chmod=0700\n\n"
            "[supervisord]\n"
            f"logfile={self.log_dir / 'supervisord.log'}\n"
            f"pidfile={self.pidfile}\n"
            f"childlogdir={self.log_dir}\n"
            "nodaemon=false\n"
            "minfds=4096\n\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            "[supervisorctl]\n"
            f"serverurl=unix://{self.socket}\n\n"
            "[include]\n"
            f"files = {self.programs_dir}/*.conf\n"
        )

    def pending(self, specs: Iterable[ServiceSpec]) -> list[str]:
        """Names of programs whose configuration differs from ``specs`` (or is missing)."""
        changed = []
        for spec in specs:
            path = self.programs_dir / f"{spec.name}.conf"
            try:
                current = path.read_text()
            except FileNotFoundError:
                current = None
            if current != render_program(spec, self.log_dir):
                changed.append(spec.name)
        return changed

    def is_installed(self, name: str) -> bool:
        return (self.programs_dir / f"{name}.conf").exists()

    def install(self, specs: Iterable[ServiceSpec]) -> list[str]:
        """Write the main configuration and each program's file; return changed programs."""
        specs = list(specs)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.programs_dir.mkdir(parents=True, exist_ok=True)
        main = self.render_main()
        try:
            same = self.conf.read_text() == main
        except FileNotFoundError:
            same = False
        if not same:
            atomic_write(self.conf, main, mode=0o600)
        changed = self.pending(specs)
        for spec in specs:
            if spec.name in changed:
                atomic_write(
                    self.programs_dir / f"{spec.name}.conf",
                    render_program(spec, self.log_dir),
                    mode=0o600,
                )
        return changed

    # -- control ---------------------------------------------------------------------

    def manager_pid(self) -> int | None:
        return self.daemon_pid()

    def daemon_pid(self) -> int | None:
        """supervisord's pid if our supervisord is alive.

        The pid file outlives a killed supervisord (a reboot, a session's processes killed).
        Its pid then names a zombie nobody reaps (a container's PID 1 need not reap) or, once
        reused, an unrelated process: either way, asking its socket would be refused. So the
        pid counts only for a live process running supervisord with this configuration.
        """
        pid = self._recorded_pid()
        if pid is None or not _alive(pid):
            return None
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        # supervisord's console script runs as "python .../bin/supervisord -c CONF".
        words = [os.fsdecode(a) for a in argv]
        ours = any(Path(w).name == "supervisord" for w in words) and str(self.conf) in words
        return pid if ours else None

    def _recorded_pid(self) -> int | None:
        """The pid the pid file names (alive or not), None without a readable one."""
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def orphans(self) -> list[Orphan]:
        """Processes our programs started that outlived this supervisord (it was killed
        alone: by hand, by the OOM killer). They keep their ports, so a new supervisord's
        programs could not start; nothing would stop them either.

        Two marks name them. supervisord runs in a session of its own (its pid, in the pid
        file) and its programs stay in it, workers and wrappers' children included; and it
        puts its socket in each program's environment. The session is the sure one: Python
        services' setproctitle overwrites the environment /proc shows. The environment
        still names programs that left the session (a daemon's setsid). Guests are left
        alone: QEMU outlives libvirtd by design.
        """
        if self.daemon_pid() is not None:
            return []
        session = self._recorded_pid()
        if session is not None and _alive(session):
            session = None  # the number is another process's now: its session is not ours
        marker = f"SUPERVISOR_SERVER_URL=unix://{self.socket}".encode()
        ours = {os.getpid(), os.getppid()}
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in ours:
                continue
            pid = int(entry.name)
            try:
                fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
                environ = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, IndexError):
                continue
            if fields[0] == "Z" or not (int(fields[3]) == session or marker in environ):
                continue
            with contextlib.suppress(OSError):
                if Path(os.readlink(entry / "exe")).name.startswith("qemu-system"):
                    continue
            found.append(Orphan(pid, _program_name(entry, environ)))
        return found

    def stop_orphans(self, timeout: float = 30.0) -> list[Orphan]:
        found = self.orphans()
        for orphan in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(orphan.pid, signal.SIGTERM)
        reap([o.pid for o in found], timeout)
        return found

    def ctl(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(
            [str(self.bin_dir / "supervisorctl"), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            check=False,
        )
        # supervisorctl exits 3 when some program is not running; that is data, not failure.
        if check and proc.returncode not in (0, 3):
            raise NovaconsoleError(
                f"supervisorctl {' '.join(args)} failed (exit {proc.returncode}) for {self.conf}: "
                f"{' '.join((proc.stdout + proc.stderr).split())[:200]}"
            )
        return proc.stdout

    def start_daemon(self) -> None:
        if self.daemon_pid() is not None:
            return
        # What a killed supervisord left running would hold the new programs' ports.
        self.stop_orphans()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        from novaconsole.site import SECRET_NAMES

        # Every service inherits supervisord's environment: never the guide's passwords
        # a provisioning run was given through it.
        env = {k: v for k, v in os.environ.items() if k not in SECRET_NAMES}
        proc = subprocess.run(
            [str(self.bin_dir / "supervisord"), "-c", str(self.conf)],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
        if proc.returncode != 0:
            raise NovaconsoleError(
                f"supervisord failed to start with {self.conf}: "
                f"{' '.join((proc.stdout + proc.stderr).split())[:200]}"
            )
        deadline = time.monotonic() + 10
        while not self.socket.exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    def apply(self, restart: Iterable[str] = ()) -> None:
        """Start supervisord, or make a running one pick up configuration changes.

        ``update`` restarts programs whose own file changed; ``restart`` names programs to
        restart besides (their configuration files changed, not their command line).
        """
        if self.daemon_pid() is None:
            self.start_daemon()
            return
        self.ctl("reread")
        self.ctl("update")
        names = list(restart)
        if names:
            self.ctl("restart", *names)

    def status(self) -> dict[str, ServiceState]:
        if self.daemon_pid() is None:
            return {}
        states: dict[str, ServiceState] = {}
        for line in self.ctl("status", check=False).splitlines():
            m = _STATUS.match(line)
            if m:
                pid = int(m["pid"]) if m["pid"] else None
                states[m["name"]] = ServiceState(m["name"], m["state"], pid)
        return states

    def stop_all(self, timeout: float = 60.0) -> list[int]:
        """Stop every program and supervisord; SIGKILL leftovers. Returns pids still alive."""
        pids = [s.pid for s in self.status().values() if s.pid]
        daemon = self.daemon_pid()
        if daemon is not None:
            self.ctl("stop", "all", check=False)
            self.ctl("shutdown", check=False)
            pids.append(daemon)
        else:
            pids += [o.pid for o in self.stop_orphans(timeout)]
        return reap(pids, timeout)


#: Marks our unit files, and which state directory (which lab or site) each belongs to.
STATE_MARKER = "X-NovaconsoleStateDir"

#: systemd (ActiveState, SubState) → the keeper's common vocabulary.
_SYSTEMD_STATES = {
    ("active", "running"): "RUNNING",
    ("active", "exited"): "EXITED",
    ("activating", "auto-restart"): "BACKOFF",
    ("activating", "start"): "STARTING",
    ("activating", "start-pre"): "STARTING",
    ("deactivating", "stop"): "STOPPING",
    ("deactivating", "stop-sigterm"): "STOPPING",
    ("deactivating", "stop-sigkill"): "STOPPING",
}


def systemd_booted(run_dir: Path = Path("/run/systemd/system")) -> bool:
    """Whether systemd is this machine's init (``sd_booted()``: its runtime unit dir exists)."""
    return run_dir.is_dir()


def _systemd_word(value: str) -> str:
    """One ExecStart= word: ``%`` specifiers and ``$`` variables escaped, quoted if needed."""
    escaped = value.replace("%", "%%").replace("$", "$$")
    if escaped and not re.search(r"[\s\"'\\;]", escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _systemd_env(key: str, value: str) -> str:
    """One ``Environment=`` assignment (specifiers escaped; no ``$`` expansion there)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise NovaconsoleError(f"invalid environment variable name {key!r}")
    text = f"{key}={value}".replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
    return f'Environment="{text}"'


def render_unit(spec: ServiceSpec, log_dir: Path, state_dir: Path) -> str:
    """The ``.service`` unit for one service."""
    if not _NAME.match(spec.name):
        raise NovaconsoleError(f"invalid service name {spec.name!r}")
    log = log_dir / f"{spec.name}.log"
    if re.search(r"[\s%]", str(log)) or re.search(r"[\s%]", str(state_dir)):
        raise ConfigError(
            f"{state_dir}: systemd cannot append output to a path with spaces or %",
            hint="choose a services directory without them",
        )
    lines = [
        "# Written by novaconsole; the next run overwrites changes (edit the site file,",
        "# or add a drop-in under the .service.d directory instead).",
        "[Unit]",
        f"Description=novaconsole: {spec.name}",
        "After=network-online.target",
        "Wants=network-online.target",
        "StartLimitIntervalSec=60",
        "StartLimitBurst=5",
        f"{STATE_MARKER}={state_dir}",
        "",
        "[Service]",
        "Type=exec",
        "ExecStart=" + " ".join(_systemd_word(a) for a in spec.argv),
    ]
    lines += [_systemd_env(k, v) for k, v in sorted(spec.env.items())]
    if spec.directory:
        lines.append(f"WorkingDirectory={_systemd_word(spec.directory)}")
    lines += [
        "Restart=on-failure",
        "RestartSec=2",
        f"KillSignal=SIG{spec.stop_signal}",
        f"TimeoutStopSec={spec.stop_wait}",
        f"StandardOutput=append:{log}",
        "StandardError=inherit",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


class SystemdUnits(ServiceKeeper):
    """Services as systemd units ``PREFIX-NAME.service`` in ``unit_dir``, driven by systemctl.

    The units of one state directory are ours (the marker line in each file says whose),
    so several owners (controller, compute, the lab) share one keeper, and a unit of
    another state directory with the same name is refused rather than taken over.
    """

    kind = "systemd"
    noun = "systemd unit"

    def __init__(
        self,
        state_dir: Path,
        *,
        unit_dir: Path = Path("/etc/systemd/system"),
        prefix: str = "novaconsole-",
        systemctl: str = "systemctl",
    ) -> None:
        super().__init__(state_dir)
        self.unit_dir = unit_dir
        self.prefix = prefix
        self.systemctl = systemctl

    def unit(self, name: str) -> str:
        return f"{self.prefix}{name}.service"

    def unit_path(self, name: str) -> Path:
        return self.unit_dir / self.unit(name)

    def describe(self) -> str:
        return f"systemd units {self.prefix}*.service in {self.unit_dir}"

    # -- configuration ---------------------------------------------------------------

    def _owner(self, path: Path) -> str | None:
        try:
            text = path.read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None
        for line in text.splitlines():
            if line.startswith(STATE_MARKER + "="):
                return line.split("=", 1)[1]
        return ""

    def names(self) -> list[str]:
        """Our installed services (unit files of this state directory)."""
        found = []
        for path in sorted(self.unit_dir.glob(f"{self.prefix}*.service")):
            if self._owner(path) == str(self.state_dir):
                found.append(path.name[len(self.prefix) : -len(".service")])
        return found

    def is_installed(self, name: str) -> bool:
        return self._owner(self.unit_path(name)) == str(self.state_dir)

    def pending(self, specs: Iterable[ServiceSpec]) -> list[str]:
        changed = []
        for spec in specs:
            try:
                current: str | None = self.unit_path(spec.name).read_text()
            except (FileNotFoundError, NotADirectoryError):
                current = None
            if current != render_unit(spec, self.log_dir, self.state_dir):
                changed.append(spec.name)
        return changed

    def install(self, specs: Iterable[ServiceSpec]) -> list[str]:
        specs = list(specs)
        for spec in specs:
            owner = self._owner(self.unit_path(spec.name))
            if owner is not None and owner != str(self.state_dir):
                whose = f"the state directory {owner}" if owner else "someone else"
                raise ConfigError(
                    f"{self.unit_path(spec.name)} belongs to {whose}, not {self.state_dir}",
                    hint="stop that deployment first, or set systemd_unit_prefix",
                )
        changed = self.pending(specs)
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.unit_dir.mkdir(parents=True, exist_ok=True)
            for spec in specs:
                if spec.name in changed:
                    text = render_unit(spec, self.log_dir, self.state_dir)
                    atomic_write(self.unit_path(spec.name), text, mode=0o644)
        except OSError as exc:
            raise ConfigError(
                f"cannot write systemd units in {self.unit_dir}: {exc.strerror}",
                hint="run as root, or set systemd_unit_dir / service_manager",
            ) from exc
        return changed

    # -- control ---------------------------------------------------------------------

    def ctl(self, *args: str, check: bool = True) -> str:
        try:
            proc = subprocess.run(
                [self.systemctl, *args], capture_output=True, text=True, check=False, timeout=300
            )
        except FileNotFoundError:
            raise ConfigError(f"{self.systemctl} not found (service_manager systemd)") from None
        except subprocess.TimeoutExpired:
            raise NovaconsoleError(f"systemctl {' '.join(args)} did not return in 300 s") from None
        if check and proc.returncode != 0:
            raise NovaconsoleError(
                f"systemctl {' '.join(args)} failed (exit {proc.returncode}): "
                f"{' '.join((proc.stdout + proc.stderr).split())[:200]}"
            )
        return proc.stdout

    def show(self, names: Iterable[str], *props: str) -> dict[str, dict[str, str]]:
        """``systemctl show`` properties of our services, by service name."""
        names = list(names)
        if not names:
            return {}
        out = self.ctl(
            "show", "--property=" + ",".join(("Id", *props)), *(self.unit(n) for n in names)
        )
        blocks: dict[str, dict[str, str]] = {}
        for block in out.strip().split("\n\n"):
            values = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            unit = values.get("Id", "")
            if unit.startswith(self.prefix) and unit.endswith(".service"):
                blocks[unit[len(self.prefix) : -len(".service")]] = values
        return blocks

    def apply(self, restart: Iterable[str] = ()) -> None:
        names = self.names()
        if not names:
            return
        props = self.show(names, "NeedDaemonReload", "UnitFileState", "ActiveState")
        changed = [n for n in names if props.get(n, {}).get("NeedDaemonReload") == "yes"]
        if changed:
            self.ctl("daemon-reload")
        disabled = [n for n in names if props.get(n, {}).get("UnitFileState") != "enabled"]
        if disabled:
            self.ctl("enable", "--quiet", *(self.unit(n) for n in disabled))
        failed = [n for n in names if props.get(n, {}).get("ActiveState") == "failed"]
        if failed:
            self.ctl("reset-failed", *(self.unit(n) for n in failed))
        wanted = set(restart) & set(names)
        active = {n for n in names if props.get(n, {}).get("ActiveState") == "active"}
        again = sorted((set(changed) & active) | (wanted & active))
        if again:
            self.ctl("restart", *(self.unit(n) for n in again))
        self.ctl("start", *(self.unit(n) for n in names))

    def status(self) -> dict[str, ServiceState]:
        names = self.names()
        states = {}
        shown = self.show(
            names, "ActiveState", "SubState", "MainPID", "ActiveEnterTimestampMonotonic"
        )
        now_us = time.monotonic() * 1e6  # CLOCK_MONOTONIC, the clock systemd stamps with
        for name, props in shown.items():
            active, sub = props.get("ActiveState", ""), props.get("SubState", "")
            if active == "failed":
                state = "FATAL"
            elif active == "inactive":
                state = "STOPPED"
            else:
                state = _SYSTEMD_STATES.get((active, sub), active.upper() or "UNKNOWN")
            entered = int(props.get("ActiveEnterTimestampMonotonic") or 0)
            if state == "RUNNING" and now_us - entered < START_SECONDS * 1e6:
                # Type=exec is "running" once exec() succeeded; like supervisord's
                # startsecs, only a process that stays up a while counts as started.
                state = "STARTING"
            pid = int(props.get("MainPID") or 0) or None
            states[name] = ServiceState(name, state, pid)
        return states

    def _cgroup_pids(self, names: list[str]) -> list[int]:
        """Every process in our units' control groups (children such as workers included)."""
        pids: list[int] = []
        for props in self.show(names, "ControlGroup", "MainPID").values():
            group = props.get("ControlGroup", "")
            main = int(props.get("MainPID") or 0)
            if main:
                pids.append(main)
            if not group:
                continue
            for root in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup"):
                procs = Path(root + group) / "cgroup.procs"
                try:
                    pids += [int(x) for x in procs.read_text().split()]
                    break
                except (OSError, ValueError):
                    continue
        return sorted(set(pids))

    def stop_all(self, timeout: float = 60.0) -> list[int]:
        """Stop, disable and remove our units: systemd is left as it was before ``install``."""
        names = self.names()
        if not names:
            return []
        pids = self._cgroup_pids(names)
        units = [self.unit(n) for n in names]
        self.ctl("stop", *units, check=False)
        self.ctl("disable", "--quiet", *units, check=False)
        for name in names:
            self.unit_path(name).unlink(missing_ok=True)
        self.ctl("daemon-reload", check=False)
        self.ctl("reset-failed", *units, check=False)
        return reap(pids, timeout)


def choose_service_manager(wanted: str, state_dir: Path, *, booted: bool | None = None) -> str:
    """``systemd`` or ``supervisord`` for ``wanted`` (auto, systemd, supervisord).

    auto keeps a supervisord setup that ``state_dir`` already holds (switching keepers under
    running services would start a second copy of each), else takes systemd where it runs.
    """
    is_booted = systemd_booted() if booted is None else booted
    if wanted == "systemd":
        if not is_booted:
            raise ConfigError(
                "service_manager is systemd, but systemd is not running on this machine "
                "(no /run/systemd/system)",
                hint="use service_manager = auto or supervisord",
            )
        return "systemd"
    if wanted == "supervisord":
        return "supervisord"
    if wanted != "auto":
        raise ConfigError(f"unknown service manager {wanted!r} (auto, systemd or supervisord)")
    if (state_dir / "supervisord.conf").exists():
        return "supervisord"
    return "systemd" if is_booted else "supervisord"


def keeper_for_site(site: Site) -> ServiceKeeper:
    """The service keeper every plugin shares for ``site`` (``site.services_dir``)."""
    import shutil

    manager = choose_service_manager(site.service_manager, site.services_dir)
    if manager == "systemd":
        return SystemdUnits(
            site.services_dir, unit_dir=site.systemd_unit_dir, prefix=site.systemd_unit_prefix
        )
    bin_dir = site.supervisor_bin_dir or site.nova_bin_dir
    if bin_dir is None:
        found = shutil.which("supervisord")
        if found is None:
            raise ConfigError(
                f"supervisord not found: set supervisor_bin_dir in {site.source}",
                hint="pip install supervisor",
            )
        bin_dir = Path(found).parent
    return Supervisor(site.services_dir, bin_dir)


WSGI_SHIM = """\
# Written by novaconsole. oslo.config parses sys.argv, so the WSGI server's own arguments
# would crash the app ("unrecognized arguments"): hide them before the app is imported.
import sys

sys.argv = sys.argv[:1]
{prelude}from {module} import application  # noqa: E402,F401
"""


def wsgi_service(
    name: str,
    *,
    module: str,
    port: int,
    bin_dir: Path,
    shim_dir: Path,
    env: Mapping[str, str],
    host: str = "127.0.0.1",
    workers: int = 1,
    threads: int = 4,
    timeout: int = 120,
    prelude: tuple[str, ...] = (),
) -> ServiceSpec:
    """A gunicorn-served WSGI API (``module`` exposes ``application``).

    Writes a small shim module into ``shim_dir`` that resets ``sys.argv`` before importing
    the application (after the ``prelude`` statements); gunicorn runs with
    ``--no-control-socket`` so several can share a host.
    """
    shim_name = "wsgi_" + name.replace("-", "_")
    shim = shim_dir / f"{shim_name}.py"
    text = WSGI_SHIM.format(
        module=module, prelude="".join(f"{line}  # noqa: E402\n" for line in prelude)
    )
    try:
        current = shim.read_text()
    except FileNotFoundError:
        current = None
    if current != text:
        atomic_write(shim, text, mode=0o644)
    argv = (
        str(bin_dir / "gunicorn"),
        "--no-control-socket",
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--timeout",
        str(timeout),
        # gunicorn closes an idle keep-alive connection after 2 s by default: a client
        # polling every 2 s (openstacksdk's waits, the tests) then races the close and
        # gets "Remote end closed connection without response". Keep idle connections
        # well past any client's polling interval.
        "--keep-alive",
        "30",
        "--chdir",
        str(shim_dir),
        "--name",
        name,
        f"{shim_name}:application",
    )
    return ServiceSpec(name=name, argv=argv, env=dict(env), port=port, stop_wait=15, watch=(shim,))


def describe_orphans(orphans: Iterable[Orphan]) -> str:
    """``keystone (3 processes), memcached (pid 812)``: one entry per program."""
    groups: dict[str, list[int]] = {}
    for orphan in orphans:
        groups.setdefault(orphan.program, []).append(orphan.pid)
    return ", ".join(
        f"{name} (pid {pids[0]})" if len(pids) == 1 else f"{name} ({len(pids)} processes)"
        for name, pids in groups.items()
    )


def _program_name(entry: Path, environ: list[bytes]) -> str:
    """The supervisord program a process belongs to: from its environment, else from the
    title setproctitle gave it (``gunicorn: master [keystone]``, ``nova-conductor: ...``)."""
    key = b"SUPERVISOR_PROCESS_NAME="
    for item in environ:
        if item.startswith(key):
            return item[len(key) :].decode(errors="replace")
    try:
        title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return "?"
    if "[" in title and title.endswith("]"):
        inside = title.rsplit("[", 1)[1][:-1]
        if inside and " " not in inside and "/" not in inside:
            return inside  # gunicorn's --name
    return Path(title.split(":", 1)[0].split()[0]).name if title.strip() else "?"


def reap(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` for ``pids`` to end, SIGKILL the rest; return any still alive."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        if alive:
            time.sleep(0.2)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    return [p for p in alive if _alive(p)]


def port_owner(host: str, port: int) -> bool:
    """True when something already accepts TCP connections on ``host:port``."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False
