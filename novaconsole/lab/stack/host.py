"""The lab's host: Debian packages, the Python venvs, noVNC's web files, the instances directory."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from novaconsole.errors import StepFailed
from novaconsole.lab.config import LabConfig
from novaconsole.lab.generic import run_quiet
from novaconsole.lab.venvs import ensure_venvs, lab_venvs
from novaconsole.steps import RunContext, Step

#: Debian packages the lab needs on the host, by the binary or file that shows they are there.
SYSTEM_PACKAGES: dict[str, str] = {
    "libvirt-daemon-system": "/usr/sbin/libvirtd",
    "qemu-system-x86": "/usr/bin/qemu-system-x86_64",
    # Only "recommended" by qemu-system-x86, so absent on a minimal host; nova's libvirt
    # driver runs qemu-img on every image it caches (a build aborts without it).
    "qemu-utils": "/usr/bin/qemu-img",
    "libvirt-dev": "/usr/include/libvirt/libvirt.h",
    "pkg-config": "/usr/bin/pkg-config",
    "memcached": "/usr/bin/memcached",
    "novnc": "/usr/share/novnc/vnc_lite.html",
}

#: With networking on (ML2/OVN): Open vSwitch, OVN's central and host parts, the haproxy
#: the metadata agent runs in each network's namespace, and iproute2's ``ip``.
NETWORKING_PACKAGES: dict[str, str] = {
    "openvswitch-switch": "/usr/sbin/ovs-vswitchd",
    "ovn-central": "/usr/bin/ovn-northd",
    "ovn-host": "/usr/bin/ovn-controller",
    "haproxy": "/usr/sbin/haproxy",
    "iproute2": "/usr/sbin/ip",
}

#: A database server for Neutron when the rest of the lab is on SQLite.
MARIADB_PACKAGES: dict[str, str] = {"mariadb-server": "/usr/sbin/mariadbd"}


class SystemPackagesStep(Step[list[str]]):
    """Debian packages for libvirt/QEMU, memcached and noVNC (installed when root)."""

    name = "lab.system-packages"
    phase = "prepare"
    description = "host packages: libvirt, QEMU, memcached, noVNC"

    def __init__(self, extra: dict[str, str] | None = None) -> None:
        self.packages = {**SYSTEM_PACKAGES, **(extra or {})}
        if extra:
            self.description += ", " + ", ".join(extra)

    def check(self, ctx: RunContext) -> list[str]:
        return [pkg for pkg, path in self.packages.items() if not Path(path).exists()]

    def plan(self, ctx: RunContext, observed: list[str]) -> list[str]:
        return [f"apt-get install {' '.join(observed)}"] if observed else []

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        missing = self.check(ctx)
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise StepFailed(
                f"missing host packages: {', '.join(missing)}",
                hint="install them with your package manager (root needed), then re-run lab up",
            )
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        run_quiet(["apt-get", "update", "-qq"], env=env, what="apt-get update")
        run_quiet(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            env=env,
            what=f"apt-get install {' '.join(missing)}",
        )


class VenvsStep(Step[list[str]]):
    """The lab's Python environments (uv when available)."""

    name = "lab.venvs"
    phase = "prepare"
    description = "OpenStack services installed from PyPI into lab venvs"

    def __init__(self, config: LabConfig) -> None:
        self.config = config

    def check(self, ctx: RunContext) -> list[str]:
        return [v.name for v in lab_venvs(self.config.venvs_dir).values() if not v.is_current()]

    def plan(self, ctx: RunContext, observed: list[str]) -> list[str]:
        return [f"install venv {name}" for name in observed]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        ensure_venvs(self.config.venvs_dir, log_path=self.config.state_dir / "logs" / "install.log")


class NoVNCStep(Step[bool]):
    """noVNC's web files for nova-novncproxy (the Debian package, or unpacked from it)."""

    name = "lab.novnc"
    phase = "prepare"
    description = "noVNC web files"

    def __init__(self, config: LabConfig) -> None:
        self.config = config

    @property
    def target(self) -> Path:
        return novnc_dir(self.config)

    def check(self, ctx: RunContext) -> bool:
        return (self.target / "vnc_lite.html").exists()

    def plan(self, ctx: RunContext, observed: bool) -> list[str]:
        return [] if observed else [f"unpack Debian's novnc into {self.target}"]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            run_quiet(
                ["apt-get", "download", "novnc"], what="apt-get download novnc", cwd=Path(tmp)
            )
            unpacked = Path(tmp) / "root"
            for deb in Path(tmp).glob("novnc_*.deb"):
                run_quiet(["dpkg-deb", "-x", str(deb), str(unpacked)], what="unpack novnc")
            shutil.copytree(unpacked / "usr/share/novnc", self.target, dirs_exist_ok=True)


def dead_mount(path: Path) -> bool:
    """A mount at ``path`` whose server is gone: a FUSE client that was killed (a reboot,
    or the session that ran the lab ended) leaves it answering ENOTCONN to everything."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


class InstancesDirStep(Step[list[str]]):
    """The guests' disk directory, traversable by QEMU (which runs as libvirt-qemu)."""

    name = "lab.instances-dir"
    phase = "prepare"

    def __init__(self, config: LabConfig) -> None:
        self.path = config.instances_dir
        self.description = f"instances directory {self.path}"

    def _chain(self) -> list[Path]:
        # The directory and the parents we create (never chmod a system directory).
        return [self.path, *[p for p in self.path.parents if "novaconsole" in p.name]]

    def check(self, ctx: RunContext) -> list[str]:
        if dead_mount(self.path):
            # The shared-instances step mounts the volume again once glusterd runs.
            return [f"detach the dead mount at {self.path} (its FUSE client is gone)"]
        problems = []
        for directory in self._chain():
            if not directory.is_dir():
                problems.append(f"create {directory}")
            elif directory.stat().st_mode & 0o011 != 0o011:
                problems.append(f"allow traversal (0711) of {directory}")
        return problems

    def plan(self, ctx: RunContext, observed: list[str]) -> list[str]:
        return observed

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        if dead_mount(self.path):
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)
            if dead_mount(self.path):
                raise StepFailed(
                    f"{self.path}: a dead mount (Transport endpoint is not connected) "
                    "that umount -l could not detach",
                    hint=f"umount -l {self.path}",
                )
        self.path.mkdir(parents=True, exist_ok=True)
        for directory in self._chain():
            directory.chmod(directory.stat().st_mode | 0o711)


def novnc_dir(config: LabConfig) -> Path:
    """Where noVNC's files are: the system's package if installed, else the lab's copy."""
    system = Path("/usr/share/novnc")
    return system if (system / "vnc_lite.html").exists() else config.data_dir / "novnc"


class DevKvmStep(Step[str | None]):
    """``/dev/kvm`` owned by group ``kvm`` with mode 0660, as Debian's udev rule makes it.

    Where no udev runs (containers, CI sandboxes) the node stays ``root:root 0600``. QEMU
    probes then find KVM (libvirtd probes as root) while libvirt's later check, made as
    the ``libvirt-qemu`` user, finds it unusable, so libvirt throws its capabilities
    cache away on *every* lookup and probes each QEMU binary again ("KVM was enabled when
    probing ..., but it is not available now"): seconds per call, minutes under load,
    and nova-compute's libvirt connection times out. Even when the lab runs guests under
    TCG (kvm_pvm), the device's permissions must agree with the probe.
    """

    name = "lab.dev-kvm"
    phase = "prepare"
    description = "/dev/kvm group kvm, mode 0660 (Debian's udev rule)"
    device = Path("/dev/kvm")

    def check(self, ctx: RunContext) -> str | None:
        import grp

        if not self.device.exists() or os.geteuid() != 0:
            return None
        try:
            kvm_gid = grp.getgrnam("kvm").gr_gid
        except KeyError:
            return None  # no kvm group: libvirt's package is not installed yet
        st = self.device.stat()
        if st.st_gid == kvm_gid and (st.st_mode & 0o660) == 0o660:
            return None
        return f"{st.st_uid}:{st.st_gid} {st.st_mode & 0o777:o}"

    def plan(self, ctx: RunContext, observed: str | None) -> list[str]:
        return [] if observed is None else [f"chgrp kvm, chmod 0660 {self.device} (is {observed})"]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        import grp

        os.chown(self.device, -1, grp.getgrnam("kvm").gr_gid)
        os.chmod(self.device, 0o660)
