"""``python -m bench``: list the benchmark modules, or run some of them.

A benchmark is any module in this package (name not starting with ``_``) that defines
``main``; ``main(argv)`` receives the arguments after the module's name and returns an exit
code (``None`` counts as 0). ``main()`` without parameters is called without arguments.

    python -m bench                      # list benchmarks
    python -m bench verify_vs_cli --repeat 5 --write
    python -m bench --all                # run every benchmark with its defaults
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

import bench


@dataclass(frozen=True)
class Benchmark:
    """A discovered benchmark module (or one that failed to import)."""

    name: str
    summary: str
    main: Callable[..., int | None] | None
    error: str | None = None


def _summary(module: ModuleType) -> str:
    doc = (module.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def discover() -> list[Benchmark]:
    """Every module of the ``bench`` package that has a callable ``main``, sorted by name."""
    found: list[Benchmark] = []
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.ispkg:
            continue
        try:
            module = importlib.import_module(f"bench.{info.name}")
        except Exception as exc:  # one broken benchmark must not hide the others
            error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            found.append(Benchmark(info.name, "", None, error))
            continue
        main = getattr(module, "main", None)
        if callable(main):
            found.append(Benchmark(info.name, _summary(module), main))
    return found


def run(benchmark: Benchmark, argv: Sequence[str]) -> int:
    """Call a benchmark's ``main`` with ``argv`` (or with nothing if it takes nothing)."""
    if benchmark.main is None:
        print(f"bench: {benchmark.name} cannot be imported: {benchmark.error}", file=sys.stderr)
        return 2
    takes_argv = bool(inspect.signature(benchmark.main).parameters)
    result = benchmark.main(list(argv)) if takes_argv else benchmark.main()
    return int(result or 0)


def _print_list(benchmarks: Sequence[Benchmark]) -> None:
    width = max((len(b.name) for b in benchmarks), default=0)
    for b in benchmarks:
        text = b.summary if b.error is None else f"(broken: {b.error})"
        print(f"{b.name.ljust(width)}  {text}")
    if not benchmarks:
        print("no benchmarks found")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench``."""
    args = list(sys.argv[1:] if argv is None else argv)
    benchmarks = discover()
    by_name = {b.name: b for b in benchmarks}
    if not args or args[0] in ("-l", "--list"):
        _print_list(benchmarks)
        return 0
    if args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if args[0] == "--all":
        worst = 0
        for b in benchmarks:
            print(f"== {b.name}", flush=True)
            worst = max(worst, run(b, []))
        return worst
    name = args[0].removeprefix("bench.").removesuffix(".py")
    if name not in by_name:
        known = ", ".join(by_name) or "none"
        print(f"bench: no benchmark named {args[0]!r} (known: {known})", file=sys.stderr)
        return 2
    return run(by_name[name], args[1:])


if __name__ == "__main__":
    sys.exit(main())
