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
from collections.abc import Callable
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
#: OpenStack's own API test suite, the lab's acceptance test (``novaconsole lab tempest``).
#: Its own venv: tempest pins oslo and the clients for itself, and it runs no service.
TEMPEST_PACKAGES = ("tempest==47.0.0",)

#: This checkout, when the lab runs from one: the compute agent gets a venv of its own with
#: ``novaconsole[agent]`` installed from it, as a hypervisor would have (not the console's
#: environment, whose path changes with every checkout and hatch environment).
REPO_ROOT = Path(__file__).resolve().parents[2]
AGENT_PROJECT = f"{REPO_ROOT}[agent]"
AGENT_PACKAGES = (AGENT_PROJECT,)


def in_checkout() -> bool:
    """Whether this novaconsole runs from a source checkout (the agent venv needs one)."""
    return (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "plugins").is_dir()


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
        pins = hashlib.sha256(self.constraints.read_bytes()).hexdigest()[:16]
        wanted = []
        for package in self.packages:
            local = LOCAL_PROJECTS.get(package)
            wanted.append(f"{local[0]}#{local[1]()}" if local else package)
        return [*wanted, f"constraints#{pins}"]

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


def source_tree_digest(root: Path) -> str:
    """A digest of this checkout's installable sources (code, plugins, themes, metadata)."""
    digest = hashlib.sha256()
    files = [root / "pyproject.toml"]
    for top in ("novaconsole", "plugins", "themes"):
        files += [
            f
            for f in (root / top).rglob("*")
            if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"
        ]
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


#: Local projects by the string a venv lists: (distribution name, digest of its content).
LOCAL_PROJECTS: dict[str, tuple[str, Callable[[], str]]] = {
    SQLITE_PLUGIN: (SQLITE_PLUGIN_NAME, lambda: local_project_digest(Path(SQLITE_PLUGIN))),
    AGENT_PROJECT: ("novaconsole", lambda: source_tree_digest(REPO_ROOT)),
}


def lab_venvs(root: Path) -> dict[str, Venv]:
    """The lab's venvs under ``root`` (``<state>/venvs``)."""
    venvs = {
        "openstack": Venv("openstack", root / "openstack", OPENSTACK_PACKAGES),
        "neutron": Venv("neutron", root / "neutron", NEUTRON_PACKAGES),
    }
    if in_checkout():
        venvs["agent"] = Venv("agent", root / "agent", AGENT_PACKAGES)
    return venvs


def on_demand_venvs(root: Path) -> dict[str, Venv]:
    """Venvs built only when a command asks for them, never by ``lab up`` (which stays as
    fast as it was): tempest's, for ``novaconsole lab tempest``."""
    return {"tempest": Venv("tempest", root / "tempest", TEMPEST_PACKAGES)}


def ensure_venv(venv: Venv, *, log_path: Path) -> Venv:
    """Install ``venv`` if it is missing or outdated; return it."""
    if not venv.is_current():
        install_venv(venv, log_path=log_path)
    return venv


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
        # Our local projects keep their version when their code changes: always rebuild them.
        local = [p for p in venv.packages if p in LOCAL_PROJECTS]
        if uv:
            install = [uv, "pip", "install", "-q", "--python", str(venv.python)]
            reinstall = [a for p in local for a in ("--reinstall-package", LOCAL_PROJECTS[p][0])]
            commands = [
                [uv, "venv", "--allow-existing", "-q", "-p", sys.executable, str(venv.path)],
                [*install, *pins, *reinstall, *venv.packages],
            ]
        else:
            install = [str(venv.python), "-m", "pip", "install", "-q"]
            commands = [
                [sys.executable, "-m", "venv", str(venv.path)],
                [*install, *pins, *venv.packages],
                *([*install, "--force-reinstall", "--no-deps", p] for p in local),
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
