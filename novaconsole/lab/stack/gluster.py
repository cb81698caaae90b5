"""Shared instance storage for a lab with more than one compute node: a GlusterFS volume.

Why a real shared filesystem: the nodes of ``lab up --computes N`` keep their guests'
disks in one instances directory, and libvirt refuses a live migration whose disks sit on
a local filesystem, shared or not ("Unsafe migration: Migration without shared storage is
unsafe", ``qemuMigrationSrcIsSafe``). libvirt counts NFS, GFS2, OCFS2, CephFS, GPFS and
the FUSE mounts of GlusterFS and Quobyte as shared (``virFileIsSharedFS``). This kernel has
no NFS client, but it has FUSE, and GlusterFS is in Debian: one volume with one brick under
the lab's state directory, mounted over the instances directory with GlusterFS's FUSE
client, is what a small real cloud uses for shared instance storage, and Nova and libvirt
see exactly that (Nova's shared-path test finds its file; libvirt finds
``fuse.glusterfs``), so live migration moves memory only, and cold migration and
evacuation keep using the disk where it is.

A one-node lab does not get it (the lab stays light); once a lab has the volume it keeps
it, also back at ``--computes 1``: its guests' disks live there.

glusterd is the lab's own (working directory, socket and log under ``STATE/gluster``)
and listens on 127.0.0.1 only, and so do the brick processes it starts
(``transport.socket.bind-address``). glusterd rejects ``localhost``/``127.0.0.1`` as a
brick's host, so the brick is named by this machine's host name.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from novaconsole.errors import StepFailed
from novaconsole.lab.config import LabConfig
from novaconsole.lab.generic import FileStep, ServicesStep, run_quiet
from novaconsole.lab.stack.host import dead_mount
from novaconsole.services import ServiceKeeper, ServiceSpec
from novaconsole.steps import RunContext, Step

#: Debian packages of the shared storage, by the binary that shows they are there.
GLUSTER_PACKAGES: dict[str, str] = {
    "glusterfs-server": "/usr/sbin/glusterd",
    "glusterfs-client": "/sbin/mount.glusterfs",
}
#: The volume holding the guests' disks.
VOLUME = "novaconsole-instances"


def gluster_dir(config: LabConfig) -> Path:
    return config.state_dir / "gluster"


def socket_path(config: LabConfig) -> Path:
    return gluster_dir(config) / "glusterd.socket"


def brick_dir(config: LabConfig) -> Path:
    return gluster_dir(config) / "brick"


def wanted(config: LabConfig) -> bool:
    """More than one node now, or a volume made for more nodes before (its disks stay)."""
    return config.computes > 1 or (gluster_dir(config) / "lib" / "vols" / VOLUME).is_dir()


def glusterd_vol(config: LabConfig) -> str:
    """glusterd's own configuration: the lab's directories, loopback only."""
    base = gluster_dir(config)
    return (
        "# written by novaconsole lab; rewritten on every lab up (no backticks: its parser reads them)\n"
        "volume management\n"
        "    type mgmt/glusterd\n"
        f"    option working-directory {base / 'lib'}\n"
        f"    option glusterd-sockfile {socket_path(config)}\n"
        "    option transport-type socket\n"
        f"    option transport.socket.bind-address {config.host}\n"
        f"    option transport.socket.listen-port {config.ports['glusterd']}\n"
        "    option ping-timeout 0\n"
        "    option event-threads 1\n"
        "end-volume\n"
    )


def gluster(
    config: LabConfig, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The ``gluster`` CLI against the lab's glusterd (its own socket)."""
    return subprocess.run(
        ["gluster", "--mode=script", f"--glusterd-sock={socket_path(config)}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def mounted_type(path: Path) -> str | None:
    """The filesystem type mounted exactly at ``path`` in this mount namespace, if any."""
    target = str(path.resolve())
    found = None
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3 and fields[1].replace("\\040", " ") == target:
                found = fields[2]  # the last mount at a path is the one seen
    return found


def storage_status(config: LabConfig) -> dict[str, Any]:
    """What ``lab status`` says of the instances' storage."""
    kind = mounted_type(config.instances_dir)
    if kind == "fuse.glusterfs":
        return {
            "kind": "glusterfs",
            "volume": VOLUME,
            "brick": str(brick_dir(config)),
            "why": "shared by the compute nodes (live migration needs storage libvirt "
            "calls shared)",
        }
    return {
        "kind": "local",
        "why": "one compute node" if not wanted(config) else "GlusterFS volume NOT mounted",
    }


def gluster_steps(config: LabConfig, keeper: ServiceKeeper) -> list[Step[Any]]:
    """glusterd under the service keeper, then the volume mounted over the instances dir."""
    if not wanted(config):
        return []
    vol_file = gluster_dir(config) / "glusterd.vol"
    spec = ServiceSpec(
        "glusterd",
        (
            "/usr/sbin/glusterd",
            "--no-daemon",
            "-f",
            str(vol_file),
            f"--log-file={gluster_dir(config) / 'glusterd.log'}",
        ),
        port=config.ports["glusterd"],
        watch=(vol_file,),
    )
    return [
        FileStep(
            "lab.gluster.config",
            vol_file,
            lambda: glusterd_vol(config),
            mode=0o644,
            phase="prepare",
        ),
        ServicesStep("lab.glusterd", keeper, [spec], phase="prepare", start_timeout=60),
        SharedInstancesStep(config),
    ]


@dataclass
class VolumeObserved:
    exists: bool
    started: bool
    mounted: str | None  #: filesystem type at the instances directory


class SharedInstancesStep(Step[VolumeObserved]):
    """The GlusterFS volume created, started and mounted over the instances directory."""

    name = "lab.shared-instances"
    phase = "prepare"

    def __init__(self, config: LabConfig) -> None:
        self.config = config
        self.path = config.instances_dir
        self.description = f"GlusterFS volume {VOLUME} mounted at {self.path}"

    def check(self, ctx: RunContext) -> VolumeObserved:
        info = gluster(self.config, "volume", "info", VOLUME)
        exists = info.returncode == 0
        started = exists and "Status: Started" in info.stdout
        if started:
            # A started volume whose brick process is gone (lab down, reboot) serves nothing.
            status = gluster(self.config, "volume", "status", VOLUME, "detail")
            started = "Online               : Y" in status.stdout
        mounted = None if dead_mount(self.path) else mounted_type(self.path)
        return VolumeObserved(exists, started, mounted)

    def plan(self, ctx: RunContext, observed: VolumeObserved) -> list[str]:
        plan = []
        if not observed.exists:
            plan.append(f"create GlusterFS volume {VOLUME} on {brick_dir(self.config)}")
        if not observed.started:
            plan.append(f"start volume {VOLUME}")
        if observed.mounted != "fuse.glusterfs":
            plan.append(f"mount {VOLUME} at {self.path} (moving what is there into it)")
        return plan

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        observed = self.check(ctx)
        host = socket.gethostname()
        if not observed.exists:
            if host in ("localhost", "localhost.localdomain"):
                raise StepFailed(
                    f"GlusterFS volume {VOLUME}: glusterd refuses 'localhost' as a brick's host",
                    hint="give this machine a host name (hostnamectl set-hostname NAME)",
                )
            brick_dir(self.config).mkdir(parents=True, exist_ok=True)
            self._cli("volume", "create", VOLUME, f"{host}:{brick_dir(self.config)}", "force")
        if not observed.started:
            self._cli("volume", "start", VOLUME, "force")
        if observed.mounted != "fuse.glusterfs":
            self._mount(host)

    def _cli(self, *args: str) -> None:
        proc = gluster(self.config, *args)
        if proc.returncode != 0:
            last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:]
            raise StepFailed(
                f"gluster {' '.join(args[:2])} {VOLUME}: {last[0] if last else 'failed'}",
                hint=f"see {gluster_dir(self.config) / 'glusterd.log'}",
            )

    def _mount_at(self, host: str, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        log = gluster_dir(self.config) / f"mount-{target.name}.log"
        run_quiet(
            [
                "mount",
                "-t",
                "glusterfs",
                "-o",
                f"server-port={self.config.ports['glusterd']},log-file={log}",
                f"{host}:/{VOLUME}",
                str(target),
            ],
            what=f"mount GlusterFS volume {VOLUME} at {target}",
            timeout=120,
        )

    def _mount(self, host: str) -> None:
        """Mount the volume over the instances directory, moving its content in first.

        Refused while this machine's libvirt has guests: their QEMUs hold the local disk
        files open, and a copy taken under them would be inconsistent.
        """
        from novaconsole.lab.nodes import domain_names

        local = [p for p in self.path.iterdir()] if self.path.is_dir() else []
        guests = domain_names("qemu:///system")
        if local and guests:
            raise StepFailed(
                f"shared instance storage: {self.path} holds the disks of guests on this "
                f"machine ({', '.join(guests[:3])}); they cannot move under a running QEMU",
                hint="delete those servers (or shelve them) and re-run lab up --computes N",
            )
        if local:
            seed = gluster_dir(self.config) / "seed"
            self._mount_at(host, seed)
            try:
                run_quiet(
                    ["cp", "-a", f"{self.path}/.", str(seed)],
                    what=f"copy {self.path} into volume {VOLUME}",
                )
            finally:
                subprocess.run(["umount", str(seed)], capture_output=True, check=False)
            for entry in local:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        self._mount_at(host, self.path)
        # QEMU runs as libvirt-qemu: it must traverse the volume's root, as the local one.
        os.chmod(self.path, os.stat(self.path).st_mode | 0o711)


def unmount_shared_instances(config: LabConfig) -> bool:
    """``lab down``: unmount the volume and stop its brick; glusterd stops with the lab.

    Returns whether it was mounted. Runs after the guests are destroyed.
    """
    was_mounted = mounted_type(config.instances_dir) == "fuse.glusterfs"
    if was_mounted:
        subprocess.run(["umount", str(config.instances_dir)], capture_output=True, check=False)
        if mounted_type(config.instances_dir) == "fuse.glusterfs":
            # Busy (a shell or a leftover process inside it): detach it lazily.
            subprocess.run(
                ["umount", "-l", str(config.instances_dir)], capture_output=True, check=False
            )
    if socket_path(config).exists():
        gluster(config, "volume", "stop", VOLUME, "force", timeout=60)
    return was_mounted
