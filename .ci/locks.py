"""Lock files for the development environments and the lab's venvs, and their CI check.

The product keeps version ranges (others install it as a library); only environments are
locked. Each lock is a plain ``name==version`` list that ``uv`` applies as constraints:

- ``locks/ENV.txt`` for the hatch environments (``default``, ``test``, ``lint``, ``bench``),
  applied through ``UV_CONSTRAINT`` in each environment's ``env-vars`` (hatch.toml);
- ``novaconsole/lab/constraints/VENV.txt`` for the lab's OpenStack venvs, applied by
  ``novaconsole/lab/venvs.py`` with ``uv pip install -c`` (OpenStack's own deployment
  tools install against a release's upper-constraints for the same reason).

Usage::

    python .ci/locks.py check            # CI: exit 1 if a lock no longer matches its inputs
    python .ci/locks.py update           # re-resolve after changing pyproject/hatch.toml,
                                         # keeping every pin that still fits
    python .ci/locks.py update --upgrade # move every pin to the newest release that fits

``check`` resolves each environment's inputs again with the committed lock as uv's
preference (``--output-file``): when nothing asked for changed, uv keeps every pin and the
result is byte-identical, whatever was released since; a dependency added, removed or
re-ranged shows as a difference. (hatch's own ``env lock --check`` re-resolves from
scratch, so any upstream release would turn it red, and its PEP 751 files record
download URLs; a constraints list records neither.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK_DIR = ROOT / "locks"
LAB_LOCK_DIR = ROOT / "novaconsole" / "lab" / "constraints"
HATCH_ENVS = ("default", "test", "lint", "bench")
PYTHON_VERSION = "3.11"


def _uv() -> str:
    found = shutil.which("uv")
    if not found:
        raise SystemExit("locks: uv is not on PATH (pip install uv)")
    return found


def hatch_env_inputs(name: str) -> list[str]:
    """What hatch installs into environment ``name``: the project's dependencies, the
    environment's features and its own dependencies (the project itself excluded)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    envs = tomllib.loads((ROOT / "hatch.toml").read_text()).get("envs", {})
    env = envs.get(name, {})
    wanted = list(project.get("dependencies", []))
    for feature in env.get("features", []):
        wanted += project.get("optional-dependencies", {})[feature]
    wanted += env.get("dependencies", [])
    return sorted(set(wanted), key=str.lower)


def lab_venv_inputs() -> dict[str, list[str]]:
    """Each lab venv's packages, as ``novaconsole/lab/venvs.py`` asks for them (local
    projects, like the SQLite plugin, are not locked: they are part of this repository)."""
    sys.path.insert(0, str(ROOT))
    from novaconsole.lab.venvs import AGENT_PROJECT, lab_venvs, on_demand_venvs

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    inputs: dict[str, list[str]] = {}
    root = Path("/nonexistent")
    for name, venv in {**lab_venvs(root), **on_demand_venvs(root)}.items():
        wanted = [p for p in venv.packages if not p.startswith("/")]
        if AGENT_PROJECT in venv.packages:  # novaconsole[agent] from this checkout
            wanted += project["dependencies"] + project["optional-dependencies"]["agent"]
        inputs[name] = sorted(set(wanted), key=str.lower)
    return inputs


def every_lock() -> dict[Path, list[str]]:
    locks = {LOCK_DIR / f"{name}.txt": hatch_env_inputs(name) for name in HATCH_ENVS}
    for name, packages in lab_venv_inputs().items():
        locks[LAB_LOCK_DIR / f"{name}.txt"] = packages
    return locks


def compile_lock(inputs: list[str], output: Path, *, upgrade: bool = False) -> None:
    """``uv pip compile`` ``inputs`` into ``output`` (its current pins are preferences)."""
    argv = [
        _uv(),
        "pip",
        "compile",
        "-",
        "--quiet",
        "--no-header",
        "--no-annotate",
        "--python-version",
        PYTHON_VERSION,
        "--output-file",
        str(output),
    ]
    if upgrade:
        argv.append("--upgrade")
    # A lock is resolved against the registry alone, never an ambient constraint.
    env = {k: v for k, v in os.environ.items() if k not in ("UV_CONSTRAINT", "PIP_CONSTRAINT")}
    proc = subprocess.run(
        argv, input="\n".join(inputs) + "\n", text=True, capture_output=True, env=env, check=False
    )
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"locks: resolving {output.relative_to(ROOT)} failed: {detail}")


def update(upgrade: bool) -> int:
    for path, inputs in every_lock().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        compile_lock(inputs, path, upgrade=upgrade)
        print(f"locks: wrote {path.relative_to(ROOT)} ({len(inputs)} inputs)")
    return 0


def check() -> int:
    stale: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for path, inputs in every_lock().items():
            rel = path.relative_to(ROOT)
            if not path.exists():
                stale.append(f"{rel} is missing")
                continue
            fresh = Path(tmp) / path.name
            shutil.copyfile(path, fresh)
            compile_lock(inputs, fresh)
            if fresh.read_text() != path.read_text():
                stale.append(f"{rel} does not match what its environment asks for")
    for line in stale:
        print(f"locks: {line}; run `python .ci/locks.py update` and commit", file=sys.stderr)
    if not stale:
        print("locks: every lock matches pyproject.toml, hatch.toml and the lab's venvs")
    return 1 if stale else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="locks", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="exit 1 if a lock no longer matches its inputs")
    up = sub.add_parser("update", help="re-resolve the locks")
    up.add_argument("--upgrade", action="store_true", help="move every pin to the newest")
    args = parser.parse_args(argv)
    return check() if args.command == "check" else update(args.upgrade)


if __name__ == "__main__":
    raise SystemExit(main())
