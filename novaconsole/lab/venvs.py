"""The lab's Python environments: OpenStack services from PyPI, installed with uv.

Like openstack-ansible, each group of services gets its own venv: Nova, Keystone, Glance
and Placement share one; Neutron has its own (its pins clash with the others). uv is used
when present (seconds) and pip otherwise (minutes). Installs are idempotent: a venv whose
marker records the same package set is reused as is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from novaconsole.errors import NovaconsoleError

#: The lab's own SQLAlchemy plugin (BEGIN IMMEDIATE for SQLite), a local project.
SQLITE_PLUGIN = str(Path(__file__).resolve().parent / "sqlite_plugin")
SQLITE_PLUGIN_NAME = "novaconsole-sqlite-immediate"

#: Package sets per venv, pinned to the releases ARCHITECTURE.md was checked against.
OPENSTACK_PACKAGES = (
    "nova==34.0.0",
    "keystone==30.0.0",
    "glance==33.0.0",
    "openstack-placement==16.0.0",
    "python-openstackclient",
    "gunicorn",
    "PyMySQL",
    "python-memcached",
    "supervisor",
    "libvirt-python",
    SQLITE_PLUGIN,
)
NEUTRON_PACKAGES = ("neutron==29.0.0", "gunicorn", "PyMySQL", "python-memcached", SQLITE_PLUGIN)


#: Every package of each venv pinned, for the release above (``.ci/locks.py`` writes them):
#: a new oslo or SQLAlchemy release must not change the lab under us.
CONSTRAINTS_DIR = Path(__file__).resolve().parent / "constraints"


@dataclass(frozen=True)
class Venv:
    """One lab venv."""

    name: str
    path: Path
    packages: tuple[str, ...]

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    @property
    def constraints(self) -> Path:
        return CONSTRAINTS_DIR / f"{self.name}.txt"

    @property
    def marker(self) -> Path:
        return self.path / ".novaconsole-packages.json"

    def wanted(self) -> list[str]:
        """What the marker records: the package set, and our local project by content.

        Not by path: a second checkout of novaconsole with the same plugin must not make
        every lab venv reinstall (and every database re-sync) when it runs ``lab up``.
        """
        digest = local_project_digest(Path(SQLITE_PLUGIN))
        pins = hashlib.sha256(self.constraints.read_bytes()).hexdigest()[:16]
        return [
            *(f"{SQLITE_PLUGIN_NAME}#{digest}" if p == SQLITE_PLUGIN else p for p in self.packages),
            f"constraints#{pins}",
        ]

    def is_current(self) -> bool:
        try:
            recorded = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return False
        return bool(recorded == self.wanted() and self.python.exists())


def local_project_digest(directory: Path) -> str:
    """A digest of a local project's files (a changed file means: install it again)."""
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix in (".py", ".toml"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def lab_venvs(root: Path) -> dict[str, Venv]:
    """The lab's venvs under ``root`` (``<state>/venvs``)."""
    return {
        "openstack": Venv("openstack", root / "openstack", OPENSTACK_PACKAGES),
        "neutron": Venv("neutron", root / "neutron", NEUTRON_PACKAGES),
    }


def _uv() -> str | None:
    found = shutil.which("uv")
    if found:
        return found
    candidate = Path(sys.executable).parent / "uv"
    return str(candidate) if candidate.exists() else None


def install_venv(venv: Venv, *, log_path: Path) -> None:
    """Create ``venv`` and install its packages (uv if available, else pip)."""
    uv = _uv()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # Our pins only: a hatch environment's own UV_CONSTRAINT must not leak into the lab.
    env = {k: v for k, v in os.environ.items() if k not in ("UV_CONSTRAINT", "PIP_CONSTRAINT")}
    pins = ["-c", str(venv.constraints)]
    with log_path.open("ab") as log:
        # Our local project keeps its version when its code changes: always rebuild it.
        if uv:
            install = [uv, "pip", "install", "-q", "--python", str(venv.python)]
            commands = [
                [uv, "venv", "--allow-existing", "-q", "-p", sys.executable, str(venv.path)],
                [*install, *pins, "--reinstall-package", SQLITE_PLUGIN_NAME, *venv.packages],
            ]
        else:
            install = [str(venv.python), "-m", "pip", "install", "-q"]
            commands = [
                [sys.executable, "-m", "venv", str(venv.path)],
                [*install, *pins, *venv.packages],
                [*install, "--force-reinstall", "--no-deps", SQLITE_PLUGIN],
            ]
        for argv in commands:
            proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
            if proc.returncode != 0:
                raise NovaconsoleError(
                    f"installing the {venv.name} venv at {venv.path} failed "
                    f"(exit {proc.returncode}); see {log_path}",
                    hint="libvirt-python needs Debian's libvirt-dev and pkg-config",
                )
    venv.marker.write_text(json.dumps(venv.wanted()))


def ensure_venvs(root: Path, *, log_path: Path) -> dict[str, Venv]:
    """Install every lab venv that is missing or outdated; return them all."""
    venvs = lab_venvs(root)
    for venv in venvs.values():
        if not venv.is_current():
            install_venv(venv, log_path=log_path)
    return venvs


def default_state_dir() -> Path:
    """``$NOVACONSOLE_LAB_DIR``, else ``$XDG_DATA_HOME/novaconsole/lab``."""
    explicit = os.environ.get("NOVACONSOLE_LAB_DIR")
    if explicit:
        return Path(explicit)
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "novaconsole" / "lab"
