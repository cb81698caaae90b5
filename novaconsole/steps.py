"""The provisioning step engine: check -> plan -> apply -> verify, idempotent by design.

A :class:`Step` looks at what is there (``check``), says what it would change (``plan``),
makes it so (``apply``) and proves it (``verify``). :func:`run_steps` runs a list of them,
reports each as ok / changed / failed / skipped with its time, and stops at the first
failure so nothing builds on a broken step. With ``dry_run`` it only plans.
"""

from __future__ import annotations

import abc
import enum
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from novaconsole.errors import NovaconsoleError, StepFailed

Observed = TypeVar("Observed")

#: The order in which steps of different owners (controller plugin, compute plugin, the lab)
#: interleave: a step's ``phase`` places it; steps keep their relative order inside a phase.
PHASES: tuple[str, ...] = (
    "prepare",  # packages, venvs, host facts, message queue, memcached
    "database",  # databases, grants
    "identity-bootstrap",  # keystone itself (lab only), clouds.yaml, admin-openrc
    "identity",  # keystone users, roles, services, endpoints
    "dependencies",  # services Nova depends on (lab: glance, placement, neutron)
    "config",  # nova.conf (controller and compute sections)
    "schema",  # nova-manage syncs and cell mappings
    "services",  # long-running services started and healthy
    "discover",  # cell_v2 discover_hosts and friends
    "finish",  # images, flavors, checks
)


def order_by_phase(steps: Iterable[Step[Any]]) -> list[Step[Any]]:
    """Sort steps by :data:`PHASES` (stable, so each owner's order within a phase holds)."""
    rank = {phase: i for i, phase in enumerate(PHASES)}
    listed = list(steps)
    for step in listed:
        if step.phase not in rank:
            raise ValueError(f"step {step.name} has unknown phase {step.phase!r}")
    return sorted(listed, key=lambda step: rank[step.phase])


class Status(enum.Enum):
    """The outcome of one step."""

    OK = "ok"  #: already as wanted, nothing done
    CHANGED = "changed"  #: changes applied and verified
    PLANNED = "planned"  #: dry run: changes that would be applied
    FAILED = "failed"
    SKIPPED = "skipped"  #: not run because an earlier step failed


@dataclass
class RunContext:
    """What steps share during one run: options, a log, and a cache of open clients."""

    dry_run: bool = False
    #: Progress lines for the operator (never pass a secret here).
    log: Callable[[str], None] = lambda _line: None
    #: Lazily opened clients (database connections, openstacksdk connections) by key.
    cache: dict[str, Any] = field(default_factory=dict)
    #: Notes collected during the run (translations of old option names, choices made).
    notes: list[str] = field(default_factory=list)
    #: Set once a dry run has planned a change (later checks may depend on it).
    planned_before: bool = False

    def note(self, text: str) -> None:
        """Record a note once (shown after the run)."""
        if text not in self.notes:
            self.notes.append(text)
            self.log(f"note: {text}")


class Step(abc.ABC, Generic[Observed]):
    """One idempotent provisioning action."""

    #: Stable dotted identifier, e.g. ``controller.database.nova_api``.
    name: str = "step"
    #: One line for humans, e.g. "database nova_api and grants for 'nova'".
    description: str = ""
    #: Where the step goes in a combined run (one of :data:`PHASES`).
    phase: str = "config"

    @abc.abstractmethod
    def check(self, ctx: RunContext) -> Observed:
        """Look at the current state; must not change anything."""

    @abc.abstractmethod
    def plan(self, ctx: RunContext, observed: Observed) -> list[str]:
        """The changes needed to reach the wanted state; empty when already there."""

    @abc.abstractmethod
    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        """Make the planned changes."""

    def verify(self, ctx: RunContext) -> None:
        """Prove the wanted state holds; the default re-checks and expects an empty plan."""
        remaining = self.plan(ctx, self.check(ctx))
        if remaining:
            raise StepFailed(f"{self.name}: still not converged after apply: {remaining[0]}")


@dataclass
class StepResult:
    """How one step went."""

    name: str
    description: str
    status: Status
    seconds: float
    changes: list[str] = field(default_factory=list)
    error: str | None = None
    #: For failures: 2 when the cause is bad input or an unreachable service, else 1.
    exit_code: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "status": self.status.value,
            "seconds": round(self.seconds, 3),
            "changes": self.changes,
            "error": self.error,
        }


class Reporter(Protocol):
    """Receives live progress of a run."""

    def started(self, step: Step[Any]) -> None: ...

    def finished(self, result: StepResult) -> None: ...


class SilentReporter:
    """A reporter that shows nothing (library use, tests)."""

    def started(self, step: Step[Any]) -> None:
        return None

    def finished(self, result: StepResult) -> None:
        return None


@dataclass
class RunReport:
    """All step results of one run."""

    results: list[StepResult]
    notes: list[str]

    @property
    def failed(self) -> list[StepResult]:
        return [r for r in self.results if r.status is Status.FAILED]

    @property
    def changed(self) -> list[StepResult]:
        return [r for r in self.results if r.status in (Status.CHANGED, Status.PLANNED)]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def exit_code(self) -> int:
        """0 when all went well; else the highest exit code among failed steps."""
        return max((r.exit_code or 1 for r in self.failed), default=0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "changed": len(self.changed),
            "steps": [r.as_dict() for r in self.results],
            "notes": self.notes,
        }


def run_step(step: Step[Any], ctx: RunContext) -> StepResult:
    """Run one step through check, plan, apply and verify."""
    start = time.monotonic()
    changes: list[str] = []
    try:
        try:
            observed = step.check(ctx)
        except NovaconsoleError as exc:
            if not (ctx.dry_run and ctx.planned_before):
                raise
            # In a dry run, earlier planned changes (a service not yet started, a cloud not
            # yet written) may be what this check needs: report it as planned, not failed.
            return StepResult(
                step.name,
                step.description,
                Status.PLANNED,
                time.monotonic() - start,
                [f"decided once earlier steps are applied ({exc.one_line()})"],
            )
        changes = step.plan(ctx, observed)
        if not changes:
            status = Status.OK
        elif ctx.dry_run:
            status = Status.PLANNED
            ctx.planned_before = True
        else:
            step.apply(ctx, changes)
            step.verify(ctx)
            status = Status.CHANGED
    except NovaconsoleError as exc:
        return StepResult(
            step.name,
            step.description,
            Status.FAILED,
            time.monotonic() - start,
            changes,
            exc.one_line(),
            exc.exit_code,
        )
    except Exception as exc:  # an unexpected failure still becomes a reported step failure
        return StepResult(
            step.name,
            step.description,
            Status.FAILED,
            time.monotonic() - start,
            changes,
            f"{type(exc).__name__}: {' '.join(str(exc).split())}",
            1,
        )
    return StepResult(step.name, step.description, status, time.monotonic() - start, changes)


def run_steps(
    steps: Iterable[Step[Any]], ctx: RunContext, reporter: Reporter | None = None
) -> RunReport:
    """Run steps in order; after a failure the rest are reported as skipped."""
    reporter = reporter or SilentReporter()
    results: list[StepResult] = []
    failed = False
    for step in steps:
        if failed:
            result = StepResult(step.name, step.description, Status.SKIPPED, 0.0)
        else:
            reporter.started(step)
            result = run_step(step, ctx)
            failed = result.status is Status.FAILED
        results.append(result)
        reporter.finished(result)
    return RunReport(results, list(ctx.notes))
