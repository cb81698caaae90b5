"""libvirtd and virtlogd running, and ``qemu:///system`` answering (for the libvirt driver).

Where libvirt's socket already answers (systemd runs libvirtd, or an operator did) the step
leaves it alone. Otherwise both daemons run in the foreground under the shared keeper,
so ``lab down`` stops them by pid like every other service. The proof is in-process:
libvirt-python opens ``qemu:///system`` and, for KVM, asks for KVM domain capabilities.
"""

from __future__ import annotations

import grp
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from novaconsole.errors import StepFailed
from novaconsole.services import ServiceSpec, ServiceState
from novaconsole.steps import RunContext, Step
from novaconsole_compute.facts import libvirt_socket_answers, probe_libvirt
from novaconsole_compute.runtime import facts_for, keeper_for

if TYPE_CHECKING:
    from novaconsole.site import Site

LIBVIRT_URI = "qemu:///system"
#: Our program names in the supervisor, in start order.
LIBVIRT_PROGRAMS = ("virtlogd", "libvirtd")


def libvirt_specs(libvirtd: str, listen: bool = False) -> list[ServiceSpec]:
    """virtlogd (QEMU's log handler) and libvirtd, both in the foreground (no ``-d``).

    ``listen``: libvirtd ``--listen``, without which it opens no TCP/TLS listener whatever
    libvirtd.conf says (libvirt >= 5.6); live migration *to* this host needs one.
    """
    sbin = libvirtd.rsplit("/", 1)[0]
    return [
        ServiceSpec(name="virtlogd", argv=(f"{sbin}/virtlogd",), stop_wait=10),
        ServiceSpec(
            name="libvirtd", argv=(libvirtd, "--listen") if listen else (libvirtd,), stop_wait=15
        ),
    ]


def _libvirt_module() -> Any:
    try:
        import libvirt
    except ImportError:
        return None
    # libvirt prints every error to stderr by default; we report them ourselves.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def libvirt_answers(uri: str = LIBVIRT_URI, virt_type: str | None = None) -> str:
    """Open ``uri`` with libvirt-python; return "QEMU 7.2.0, libvirt 9.0.0"-style facts.

    With ``virt_type`` ("kvm"), also require libvirt to offer domains of that type. Raises
    :class:`StepFailed` naming the URI when it does not answer. Without libvirt-python the
    socket is probed instead (and the text says so).
    """
    libvirt = _libvirt_module()
    if libvirt is None:
        socket_path = libvirt_socket_answers()
        if socket_path is None:
            raise StepFailed(f"libvirtd does not answer at {uri} (no socket accepts)")
        return f"{socket_path} accepts (libvirt-python not installed: pip install libvirt-python)"
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise StepFailed(f"libvirt at {uri} does not answer: {exc.get_error_message()}") from None
    try:
        hv_version = conn.getVersion()
        lib_version = conn.getLibVersion()
        facts = f"{conn.getType()} {_version(hv_version)}, libvirt {_version(lib_version)}"
        if virt_type:
            try:
                conn.getDomainCapabilities(None, None, None, virt_type, 0)
            except libvirt.libvirtError as exc:
                raise StepFailed(
                    f"libvirt at {uri} offers no {virt_type} domains: {exc.get_error_message()}",
                    hint="set virt_type = qemu, or check /dev/kvm and the kvm module",
                ) from None
            facts += f", {virt_type} domains offered"
        return facts
    finally:
        conn.close()


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


@dataclass
class LibvirtObserved:
    """What runs now: whose libvirtd, and which of our programs need work."""

    needed: bool  #: the libvirt driver was chosen
    external: bool  #: a libvirtd we do not manage answers
    pending: list[str]  #: our programs whose configuration is missing or differs
    not_running: list[str]
    noun: str = "service"
    #: What would let QEMU open /dev/kvm, when it cannot (None: nothing to do).
    kvm_fix: str | None = None


#: The group Debian's QEMU runs guests in (libvirt-qemu:kvm) and udev gives /dev/kvm to.
KVM_GROUP = "kvm"


def kvm_device_fix(device: Path = Path("/dev/kvm"), group: str = KVM_GROUP) -> str | None:
    """What to change so that QEMU (group ``kvm``) can open ``device``; None if it can.

    udev's rule makes /dev/kvm ``root:kvm 0660``; where no udev runs (containers, these
    sandboxes) the node stays ``root:root 0600``, root's probe works and every guest then
    fails with "Could not access KVM kernel module: Permission denied".
    """
    try:
        gid = grp.getgrnam(group).gr_gid
        st = device.stat()
    except (KeyError, OSError):
        return None  # no such group or device: nothing we can fix here
    if st.st_gid == gid and st.st_mode & 0o060 == 0o060:
        return None
    return f"give {device} to group {group}, mode 0660 (udev's rule; no udev set it here)"


def apply_kvm_device_fix(device: Path = Path("/dev/kvm"), group: str = KVM_GROUP) -> None:
    os.chown(device, -1, grp.getgrnam(group).gr_gid)
    os.chmod(device, 0o660)


class LibvirtdStep(Step[LibvirtObserved]):
    """libvirtd and virtlogd running (ours under the service keeper, or someone else's)."""

    name = "compute.libvirtd"
    phase = "services"
    description = "libvirtd and virtlogd running, qemu:///system answering, /dev/kvm open to QEMU"

    def __init__(self, site: Site, kvm_device: Path = Path("/dev/kvm")) -> None:
        self.site = site
        self.kvm_device = kvm_device

    def _specs(self, ctx: RunContext) -> list[ServiceSpec]:
        facts = facts_for(ctx, self.site)
        libvirtd = probe_libvirt().libvirtd
        if libvirtd is None:
            raise StepFailed(f"libvirtd is not installed ({facts.libvirt})")
        return libvirt_specs(libvirtd, listen=self.site.libvirtd_listen)

    def check(self, ctx: RunContext) -> LibvirtObserved:
        facts = facts_for(ctx, self.site)
        if facts.driver != "libvirt":
            return LibvirtObserved(False, False, [], [])
        kvm_fix = kvm_device_fix(self.kvm_device) if facts.virt_type == "kvm" else None
        if shutil.which("qemu-img") is None:
            raise StepFailed(
                "qemu-img is not installed: nova's libvirt driver needs it for every image "
                "it boots (builds abort with 'Disk info file is invalid')",
                hint="apt-get install qemu-utils",
            )
        keeper = keeper_for(self.site)
        states: dict[str, ServiceState] = keeper.status()
        ours = any(keeper.is_installed(n) for n in LIBVIRT_PROGRAMS)
        if not ours and libvirt_socket_answers() is not None:
            ctx.note("libvirtd already answers (not started by novaconsole): left as it is")
            return LibvirtObserved(True, True, [], [], kvm_fix=kvm_fix)
        specs = self._specs(ctx)
        not_running = [
            s.name for s in specs if s.name not in states or states[s.name].state != "RUNNING"
        ]
        return LibvirtObserved(
            True, False, keeper.pending(specs), not_running, keeper.noun, kvm_fix
        )

    def plan(self, ctx: RunContext, observed: LibvirtObserved) -> list[str]:
        plan = [observed.kvm_fix] if observed.kvm_fix else []
        plan += [f"install {observed.noun} {name}" for name in observed.pending]
        plan += [f"start {name}" for name in observed.not_running if name not in observed.pending]
        return plan

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        observed = self.check(ctx)
        if observed.kvm_fix:
            apply_kvm_device_fix(self.kvm_device)
        if observed.external:
            return
        keeper = keeper_for(self.site)
        specs = self._specs(ctx)
        changed = keeper.install(specs)
        states = keeper.status()
        stopped = [
            s.name
            for s in specs
            if s.name not in changed and (s.name in states and states[s.name].state != "RUNNING")
        ]
        keeper.apply(restart=stopped)
        keeper.wait_running([s.name for s in specs], timeout=30)

    def verify(self, ctx: RunContext) -> None:
        facts = facts_for(ctx, self.site)
        virt_type = facts.virt_type if facts.driver == "libvirt" else None
        deadline = time.monotonic() + 30
        while True:
            try:
                ctx.log(f"  {LIBVIRT_URI}: {libvirt_answers(LIBVIRT_URI, virt_type)}")
                break
            except StepFailed:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        super().verify(ctx)


def stop_guests(uri: str = LIBVIRT_URI) -> list[str]:
    """Destroy every running domain at ``uri`` (for tearing a lab down); return their names.

    QEMU guests run in a session of their own, so stopping libvirtd (even killing its
    process group) leaves them running: call this first. Nothing answering means no guests.
    """
    libvirt = _libvirt_module()
    if libvirt is None:
        return []
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return []
    try:
        names = []
        for domain in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            domain.destroy()
            names.append(domain.name())
        return names
    finally:
        conn.close()
