"""What this host can run: KVM or QEMU (TCG), the libvirt driver or the fake one, and why.

The install guide decides ``virt_type`` with ``egrep -c '(vmx|svm)' /proc/cpuinfo``. That is
only a hint: a nested VM may hide the flags while ``/dev/kvm`` works (this machine does), or
show them while ``/dev/kvm`` is missing. So the decision rests on a real probe of
``/dev/kvm`` (open it, ``KVM_GET_API_VERSION`` must answer 12, ``KVM_CREATE_VM`` must work)
and reports both facts. The decisions are pure functions over plain inputs so they can be
tested as a table; :func:`host_facts` gathers the inputs on the real machine.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from novaconsole.errors import ConfigError

if TYPE_CHECKING:
    from novaconsole.site import Site

#: ioctl numbers from <linux/kvm.h>: _IO(KVMIO=0xAE, 0x00) and _IO(KVMIO, 0x01).
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
#: The only KVM API version Linux has ever shipped (stable since 2.6.22).
KVM_API_VERSION = 12
#: Kernel modules that provide /dev/kvm, by what /sys/module shows.
KVM_PROVIDERS = ("kvm_pvm", "kvm_intel", "kvm_amd")

#: Why the lab's guests run under TCG where /dev/kvm is PVM (measured on such a host).
PVM_REASON = (
    "/dev/kvm works but is kvm_pvm (PVM: a hypervisor for nested guests without hardware "
    "virtualisation), which runs only PVM-enabled guest kernels at speed; a stock kernel "
    "crawls under it (Debian's 6.1 took 45 s to print its first line and was still in "
    "early memory set-up after 110 s, against a 7 s boot under TCG), so QEMU emulation "
    "(TCG); set virt_type = kvm to use it anyway"
)

#: Where libvirtd listens for ``qemu:///system`` (``/var/run`` is a link to ``/run``).
LIBVIRT_SOCKETS = (Path("/run/libvirt/libvirt-sock"), Path("/var/run/libvirt/libvirt-sock"))
#: Where Debian puts daemons that are not on a normal user's PATH.
_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")

#: nova.conf ``compute_driver`` values by our short driver name.
DRIVER_CLASSES = {"libvirt": "libvirt.LibvirtDriver", "fake": "fake.FakeDriver"}

#: What a fresh Debian machine needs for the libvirt driver (the lab notes it when missing).
LIBVIRT_PACKAGES = (
    "libvirt-daemon-system qemu-system-x86 (and libvirt-dev pkg-config to build libvirt-python)"
)


@dataclass(frozen=True)
class KvmProbe:
    """The result of trying ``/dev/kvm`` for real."""

    usable: bool
    detail: str  #: one line: "API version 12, VM created" or why not
    #: The kernel module behind /dev/kvm (kvm_intel, kvm_amd, kvm_pvm) or "" if unknown.
    provider: str = ""


@dataclass(frozen=True)
class LibvirtProbe:
    """Whether libvirtd answers, or could be started, on this host."""

    socket_answers: bool
    libvirtd: str | None  #: path of the libvirtd binary, if installed
    qemu: str | None  #: path of qemu-system-x86_64 (or the host architecture's), if installed
    can_start: bool  #: installed, runs (``--version``) and we are root
    detail: str  #: one line for the report


@dataclass(frozen=True)
class ComputeFacts:
    """The compute plugin's decisions for this host, with their reasons, as plain data."""

    driver: str  #: "libvirt" or "fake"
    driver_class: str  #: nova.conf ``compute_driver``
    driver_reason: str
    virt_type: str  #: "kvm" or "qemu" (``[libvirt] virt_type``; unused by the fake driver)
    virt_type_reason: str
    cpu_virt_flags: bool  #: /proc/cpuinfo shows vmx or svm
    kvm: str  #: what the /dev/kvm probe found
    libvirt: str  #: what the libvirt probe found
    compute_host: str  #: ``[DEFAULT] host`` of nova-compute for this driver
    state_path: str  #: nova-compute's ``state_path`` for this driver (node identity lives here)

    def as_dict(self) -> dict[str, str]:
        """Facts as short one-line strings (what ``lab status`` shows)."""
        return {k: str(v) for k, v in asdict(self).items()}


# -- pure decisions ---------------------------------------------------------------------------


def cpu_has_virt_flags(cpuinfo: str) -> bool:
    """True when any processor's ``flags`` line lists ``vmx`` (Intel) or ``svm`` (AMD)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags" and {"vmx", "svm"} & set(value.split()):
            return True
    return False


def decide_virt_type(
    requested: str, cpu_flags: bool, kvm: KvmProbe, *, source: str = "site"
) -> tuple[str, str]:
    """Choose ``[libvirt] virt_type`` ("kvm" or "qemu") and say why.

    ``requested`` is the site's ``virt_type`` (auto, kvm or qemu). Asking for kvm on a host
    where KVM does not work is the guide's trap: instances would fail to spawn, so it is a
    :class:`ConfigError` here, before anything is written.
    """
    flags = "vmx/svm in /proc/cpuinfo" if cpu_flags else "no vmx/svm in /proc/cpuinfo"
    if requested == "qemu":
        extra = " (KVM would work here)" if kvm.usable else ""
        return "qemu", f"virt_type = qemu set in {source}{extra}"
    if requested not in ("auto", "kvm"):
        raise ConfigError(f"{source}: virt_type must be auto, kvm or qemu, not {requested!r}")
    if kvm.usable and kvm.provider == "kvm_pvm" and requested == "auto":
        return "qemu", PVM_REASON
    if kvm.usable:
        why = f"/dev/kvm works ({kvm.detail}); {flags}"
        if not cpu_flags:
            why += " (a nested or virtualised CPU hides the flag; the probe is what counts)"
        return "kvm", (
            "virt_type = kvm set in " + source + ": " if requested == "kvm" else ""
        ) + why
    if requested == "kvm":
        raise ConfigError(
            f"{source}: virt_type = kvm but this host has no working KVM "
            f"(/dev/kvm: {kvm.detail}; {flags})",
            hint="set virt_type = qemu (or auto) or enable hardware virtualisation",
        )
    return "qemu", f"no working KVM (/dev/kvm: {kvm.detail}; {flags}): QEMU emulation (TCG)"


def decide_driver(
    requested: str, libvirt: LibvirtProbe, *, source: str = "site"
) -> tuple[str, str]:
    """Choose the compute driver ("libvirt" or "fake") and say why."""
    if requested == "fake":
        return "fake", f"compute_driver = fake set in {source}"
    if requested not in ("auto", "libvirt"):
        raise ConfigError(
            f"{source}: compute_driver must be auto, libvirt or fake, not {requested!r}"
        )
    if libvirt.socket_answers or libvirt.can_start:
        prefix = f"compute_driver = libvirt set in {source}: " if requested == "libvirt" else ""
        return "libvirt", prefix + f"libvirtd can run here ({libvirt.detail})"
    if requested == "libvirt":
        raise ConfigError(
            f"{source}: compute_driver = libvirt but libvirtd cannot run here ({libvirt.detail})",
            hint=f"apt-get install {LIBVIRT_PACKAGES}, or set compute_driver = fake",
        )
    return "fake", f"libvirtd cannot run here ({libvirt.detail}): fake.FakeDriver"


def compute_identity(site: Site, driver: str) -> tuple[str, Path]:
    """nova-compute's ``host`` and ``state_path`` for ``driver``.

    Nova refuses to start a compute host whose name once ran another driver ("No local node
    identity found ... Refusing to start") and keeps the node identity (``compute_id``) in
    ``state_path``; so the libvirt driver uses the site's names as they are and the fake
    driver gets its own (``HOST-fake``, ``STATE_PATH/fake-compute``).
    """
    if driver == "libvirt":
        return site.compute_host, site.state_path
    return f"{site.compute_host}-{driver}", site.state_path / f"{driver}-compute"


# -- probes of the real machine ---------------------------------------------------------------


def kvm_provider(sys_module: Path = Path("/sys/module")) -> str:
    """The loaded module behind /dev/kvm (``kvm_pvm``, ``kvm_intel``, ``kvm_amd``) or ""."""
    for name in KVM_PROVIDERS:
        if (sys_module / name).is_dir():
            return name
    return ""


def probe_kvm(device: Path = Path("/dev/kvm"), sys_module: Path = Path("/sys/module")) -> KvmProbe:
    """Open ``device``, ask for the KVM API version and create (and drop) an empty VM."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return KvmProbe(False, f"{device} does not exist")
    except PermissionError:
        return KvmProbe(False, f"{device} is not accessible (permission denied; group kvm?)")
    except OSError as exc:
        return KvmProbe(False, f"cannot open {device}: {exc.strerror or exc}")
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
        if version != KVM_API_VERSION:
            return KvmProbe(False, f"{device} answers KVM API version {version}, not 12")
        try:
            vm = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            return KvmProbe(False, f"{device} API version 12 but KVM_CREATE_VM fails ({name})")
        os.close(vm)
        provider = kvm_provider(sys_module)
        by = f" ({provider})" if provider else ""
        return KvmProbe(True, f"{device} API version 12, KVM_CREATE_VM works{by}", provider)
    except OSError as exc:
        return KvmProbe(False, f"{device} does not answer KVM ioctls ({exc.strerror or exc})")
    finally:
        os.close(fd)


def _find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def libvirt_socket_answers(sockets: tuple[Path, ...] = LIBVIRT_SOCKETS) -> Path | None:
    """The libvirtd socket that accepts a connection, if any."""
    for path in sockets:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            try:
                sock.connect(str(path))
            except OSError:
                continue
            return path
    return None


def qemu_binary_name() -> str:
    """``qemu-system-ARCH`` for this host's architecture."""
    machine = os.uname().machine
    return "qemu-system-" + {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def probe_libvirt() -> LibvirtProbe:
    """Whether libvirtd answers now, or is installed and can be started by us."""
    libvirtd = _find_binary("libvirtd")
    qemu = _find_binary(qemu_binary_name())
    answering = libvirt_socket_answers()
    if answering is not None:
        return LibvirtProbe(True, libvirtd, qemu, bool(libvirtd), f"{answering} answers")
    if libvirtd is None:
        return LibvirtProbe(False, None, qemu, False, "libvirtd is not installed")
    if qemu is None:
        return LibvirtProbe(False, libvirtd, None, False, f"{qemu_binary_name()} is not installed")
    if os.geteuid() != 0:
        return LibvirtProbe(
            False, libvirtd, qemu, False, "libvirtd is not running and only root may start it"
        )
    try:
        proc = subprocess.run(
            [libvirtd, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return LibvirtProbe(False, libvirtd, qemu, False, f"{libvirtd} does not run: {exc}")
    if proc.returncode != 0:
        return LibvirtProbe(
            False, libvirtd, qemu, False, f"{libvirtd} --version exits {proc.returncode}"
        )
    version = proc.stdout.strip().rsplit(" ", 1)[-1] or "?"
    return LibvirtProbe(
        False, libvirtd, qemu, True, f"libvirtd {version} installed, not running yet; we start it"
    )


def read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> str:
    """``/proc/cpuinfo`` (empty when unreadable: no flags seen)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def host_facts(site: Site) -> ComputeFacts:
    """Probe this machine and decide driver and virt_type for ``site``.

    Raises :class:`ConfigError` when the site asks for what the host cannot do (kvm without
    working KVM, libvirt without libvirtd).
    """
    cpu_flags = cpu_has_virt_flags(read_cpuinfo())
    kvm = probe_kvm()
    libvirt = probe_libvirt()
    driver, driver_reason = decide_driver(site.compute_driver, libvirt, source=site.source)
    try:
        virt_type, virt_reason = decide_virt_type(
            site.virt_type, cpu_flags, kvm, source=site.source
        )
    except ConfigError:
        if driver == "libvirt":
            raise
        # The fake driver runs no guests: a kvm wish it cannot honour harms nothing.
        virt_type, virt_reason = "qemu", "unused by the fake driver (no working KVM here)"
    host, state_path = compute_identity(site, driver)
    return ComputeFacts(
        driver=driver,
        driver_class=DRIVER_CLASSES[driver],
        driver_reason=driver_reason,
        virt_type=virt_type,
        virt_type_reason=virt_reason,
        cpu_virt_flags=cpu_flags,
        kvm=kvm.detail,
        libvirt=libvirt.detail,
        compute_host=host,
        state_path=str(state_path),
    )
