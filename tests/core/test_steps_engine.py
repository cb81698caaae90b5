"""The step engine: statuses, ordering by phase, dry runs, failures and exit codes."""

from __future__ import annotations

from typing import Any

import pytest

from novaconsole.errors import ConfigError, StepFailed
from novaconsole.steps import (
    PHASES,
    RunContext,
    Status,
    Step,
    order_by_phase,
    run_steps,
)


class CounterStep(Step[int]):
    """Wants a counter at ``target``; records every apply."""

    def __init__(
        self, name: str, state: dict[str, int], target: int, phase: str = "config"
    ) -> None:
        self.name = name
        self.state = state
        self.target = target
        self.phase = phase
        self.applied = 0

    def check(self, ctx: RunContext) -> int:
        return self.state.get(self.name, 0)

    def plan(self, ctx: RunContext, observed: int) -> list[str]:
        return [] if observed == self.target else [f"set {self.name} to {self.target}"]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        self.applied += 1
        self.state[self.name] = self.target


class BrokenApply(CounterStep):
    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        raise StepFailed(f"{self.name}: cannot apply")


class LyingApply(CounterStep):
    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        self.applied += 1  # claims success but changes nothing


def test_first_run_changes_then_converges() -> None:
    state: dict[str, int] = {}
    steps = [CounterStep("a", state, 1), CounterStep("b", state, 2)]
    first = run_steps(steps, RunContext())
    assert [r.status for r in first.results] == [Status.CHANGED, Status.CHANGED]
    assert first.results[0].changes == ["set a to 1"]
    second = run_steps(steps, RunContext())
    assert [r.status for r in second.results] == [Status.OK, Status.OK]
    assert second.changed == []
    assert second.exit_code == 0
    assert [s.applied for s in steps] == [1, 1]


def test_dry_run_plans_and_changes_nothing() -> None:
    state: dict[str, int] = {}
    step = CounterStep("a", state, 1)
    report = run_steps([step], RunContext(dry_run=True))
    assert report.results[0].status is Status.PLANNED
    assert state == {}
    assert step.applied == 0


def test_failure_skips_the_rest_and_sets_exit_code() -> None:
    state: dict[str, int] = {}
    later = CounterStep("c", state, 1)
    report = run_steps(
        [CounterStep("a", state, 1), BrokenApply("b", state, 1), later], RunContext()
    )
    assert [r.status for r in report.results] == [Status.CHANGED, Status.FAILED, Status.SKIPPED]
    assert report.results[1].error == "b: cannot apply"
    assert report.exit_code == 1
    assert later.applied == 0


def test_bad_input_failure_exits_2() -> None:
    class BadInput(CounterStep):
        def check(self, ctx: RunContext) -> int:
            raise ConfigError("site file x.toml: unknown setting 'y'")

    report = run_steps([BadInput("a", {}, 1)], RunContext())
    assert report.exit_code == 2
    assert "unknown setting" in (report.results[0].error or "")


def test_apply_that_does_not_converge_fails_verification() -> None:
    report = run_steps([LyingApply("a", {}, 1)], RunContext())
    assert report.results[0].status is Status.FAILED
    assert "still not converged" in (report.results[0].error or "")


def test_unexpected_exception_becomes_a_failed_step_not_a_crash() -> None:
    class Crashes(CounterStep):
        def check(self, ctx: RunContext) -> int:
            raise KeyError("boom")

    report = run_steps([Crashes("a", {}, 1)], RunContext())
    assert report.results[0].status is Status.FAILED
    assert report.results[0].error == "KeyError: 'boom'"


def test_dry_run_check_depending_on_earlier_plan_is_planned() -> None:
    class NeedsEarlier(CounterStep):
        def check(self, ctx: RunContext) -> int:
            raise ConfigError("cloud 'x' not found")

    state: dict[str, int] = {}
    report = run_steps(
        [CounterStep("a", state, 1), NeedsEarlier("b", state, 1)], RunContext(dry_run=True)
    )
    assert report.results[1].status is Status.PLANNED
    # Without an earlier planned change the same error is a real failure.
    alone = run_steps([NeedsEarlier("b", state, 1)], RunContext(dry_run=True))
    assert alone.results[0].status is Status.FAILED


def test_order_by_phase_is_stable_within_a_phase() -> None:
    state: dict[str, int] = {}
    steps: list[Step[Any]] = [
        CounterStep("svc", state, 1, phase="services"),
        CounterStep("conf1", state, 1, phase="config"),
        CounterStep("db", state, 1, phase="database"),
        CounterStep("conf2", state, 1, phase="config"),
    ]
    assert [s.name for s in order_by_phase(steps)] == ["db", "conf1", "conf2", "svc"]
    assert PHASES[0] == "prepare"
    assert PHASES[-1] == "finish"


def test_order_by_phase_rejects_unknown_phase() -> None:
    with pytest.raises(ValueError, match="unknown phase"):
        order_by_phase([CounterStep("x", {}, 1, phase="later")])


def test_notes_are_recorded_once() -> None:
    lines: list[str] = []
    ctx = RunContext(log=lines.append)
    ctx.note("translated vncserver_listen")
    ctx.note("translated vncserver_listen")
    assert ctx.notes == ["translated vncserver_listen"]
    assert lines == ["note: translated vncserver_listen"]
