"""Reusable lab steps: a generated file, a one-shot command, a set of running services."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from novaconsole.errors import NovaconsoleError, StepFailed
from novaconsole.fileutil import atomic_write
from novaconsole.redact import scrub_secrets
from novaconsole.services import ServiceKeeper, ServiceSpec, port_owner
from novaconsole.steps import RunContext, Step


def render_ini(sections: Mapping[str, Mapping[str, object]]) -> str:
    """A whole INI file for a configuration the lab owns outright."""
    out = ["# written by novaconsole lab; rewritten on every `lab up`"]
    for section, options in sections.items():
        out.append(f"\n[{section}]")
        for key, value in options.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            out.append(f"{key} = {value}")
    return "\n".join(out) + "\n"


class FileStep(Step[str | None]):
    """A file whose whole content the lab owns (configs, clouds.yaml entries, openrc)."""

    def __init__(
        self, name: str, path: Path, render: Callable[[], str], *, mode: int = 0o640, phase: str
    ) -> None:
        self.name = name
        self.path = path
        self.render = render
        self.mode = mode
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
        if observed != self.render():
            return [f"update {self.path}"]
        if (self.path.stat().st_mode & 0o777) != self.mode:
            return [f"chmod {self.mode:o} {self.path}"]
        return []

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        atomic_write(self.path, self.render(), mode=self.mode)


def run_quiet(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    what: str,
    input_text: str | None = None,
    timeout: float = 600,
    secrets: Sequence[str] = (),
    cwd: Path | None = None,
) -> str:
    """Run a command; on failure raise naming ``what`` with its scrubbed last output line."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    try:
        proc = subprocess.run(
            list(argv),
            env=full_env,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise StepFailed(f"{what}: timed out after {timeout:.0f}s") from exc
    except FileNotFoundError as exc:
        raise StepFailed(f"{what}: {argv[0]} not found") from exc
    if proc.returncode != 0:
        text = scrub_secrets(proc.stderr.strip() or proc.stdout.strip(), secrets)
        raise StepFailed(f"{what} failed (exit {proc.returncode}): {key_error_line(text)[:300]}")
    return proc.stdout


_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d [\d:.]+ \d+ [A-Z]+ \S+ ?")
_EXCEPTION = re.compile(r"^[\w.]*(Error|Exception|Failure|Exit|Refused)\w*: ")


def key_error_line(text: str) -> str:
    """The line of a tool's output that says what went wrong (the exception, not the log noise)."""
    lines = [_LOG_PREFIX.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("(Background on this error")]
    for line in reversed(lines):
        if _EXCEPTION.match(line):
            return line
    return lines[-1] if lines else "no output"


class CommandStep(Step[bool]):
    """A one-shot command (schema sync, key setup) guarded by a 'needed?' check."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        needed: Callable[[], bool],
        phase: str,
        env: Mapping[str, str] | None = None,
        description: str = "",
        secrets: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.needed = needed
        self.phase = phase
        self.env = dict(env or {})
        self.secrets = list(secrets)
        self.description = description or " ".join(Path(self.argv[0]).name.split()) + " ..."

    def check(self, ctx: RunContext) -> bool:
        return self.needed()

    def plan(self, ctx: RunContext, observed: bool) -> list[str]:
        return [f"run {self.description}"] if observed else []

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        run_quiet(self.argv, env=self.env, what=self.description, secrets=self.secrets)


def http_health(url: str, timeout: float = 3.0) -> str | None:
    """None when ``url`` answers HTTP below 500, else a short reason."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return None if resp.status < 500 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return None if exc.code < 500 else f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{reason}"


class ServicesStep(Step[dict[str, object]]):
    """Services kept running by the service keeper; restarted when their config files change."""

    def __init__(
        self,
        name: str,
        keeper: ServiceKeeper,
        specs: Sequence[ServiceSpec],
        *,
        watched: Mapping[str, Sequence[Path]] | None = None,
        health: Mapping[str, str] | None = None,
        phase: str = "services",
        start_timeout: float = 90.0,
    ) -> None:
        self.name = name
        self.keeper = keeper
        self.specs = list(specs)
        self.watched = {k: list(v) for k, v in (watched or {}).items()}
        self.health = dict(health or {})
        self.phase = phase
        self.start_timeout = start_timeout
        self.description = "services " + ", ".join(s.name for s in self.specs)

    @property
    def _hash_file(self) -> Path:
        return self.keeper.state_dir / "config-hashes.json"

    def _hashes(self) -> dict[str, str]:
        out = {}
        for spec in self.specs:
            digest = hashlib.sha256()
            for path in [*self.watched.get(spec.name, []), *spec.watch]:
                try:
                    digest.update(path.read_bytes())
                except FileNotFoundError:
                    digest.update(b"<missing>")
            out[spec.name] = digest.hexdigest()
        return out

    def _recorded(self) -> dict[str, str]:
        try:
            data = json.loads(self._hash_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()}

    def check(self, ctx: RunContext) -> dict[str, object]:
        status = self.keeper.status()
        return {
            "pending": self.keeper.pending(self.specs),
            "running": {n for n, s in status.items() if s.state == "RUNNING"},
            "hashes": self._hashes(),
            "recorded": self._recorded(),
        }

    def plan(self, ctx: RunContext, observed: dict[str, object]) -> list[str]:
        pending = observed["pending"]
        running = observed["running"]
        hashes = observed["hashes"]
        recorded = observed["recorded"]
        assert isinstance(pending, list)
        assert isinstance(running, set)
        assert isinstance(hashes, dict)
        assert isinstance(recorded, dict)
        changes = []
        for spec in self.specs:
            if spec.name in pending:
                changes.append(f"configure and start {spec.name}")
            elif spec.name not in running:
                changes.append(f"start {spec.name}")
            elif hashes.get(spec.name) != recorded.get(spec.name):
                changes.append(f"restart {spec.name} (configuration changed)")
        return changes

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        status = self.keeper.status()
        for spec in self.specs:
            # A keeper that was itself restarted (the machine rebooted, the session that
            # ran it ended) starts every program at once: one still STARTING has no pid
            # yet but may already hold its port.
            ours = spec.name in status and (
                status[spec.name].pid is not None or status[spec.name].state == "STARTING"
            )
            if spec.port and not ours and port_owner("127.0.0.1", spec.port):
                raise NovaconsoleError(
                    f"port {spec.port} on 127.0.0.1 is already taken; {spec.name} cannot listen there",
                    hint="stop what holds it or choose another port (lab up --port NAME=PORT)",
                )
        self.keeper.install(self.specs)
        restart = [c.split()[1] for c in changes if c.startswith(("restart ", "start "))]
        self.keeper.apply(restart=restart)
        self.keeper.wait_running([s.name for s in self.specs], timeout=self.start_timeout)
        self.wait_healthy()
        recorded = self._recorded()
        recorded.update(self._hashes())
        atomic_write(self._hash_file, json.dumps(recorded, indent=2), mode=0o600)

    def wait_healthy(self) -> None:
        import time

        for service, url in self.health.items():
            deadline = time.monotonic() + self.start_timeout
            while True:
                problem = http_health(url)
                if problem is None:
                    break
                state = self.keeper.status().get(service)
                if time.monotonic() > deadline or (state and state.state in ("FATAL", "EXITED")):
                    log = self.keeper.log_dir / f"{service}.log"
                    raise StepFailed(f"{service} does not answer at {url} ({problem}); see {log}")
                time.sleep(0.5)

    def verify(self, ctx: RunContext) -> None:
        # apply() already waited for RUNNING and health; re-planning would race restarts.
        return None
