"""The lab's real guest: Debian's kernel and a busybox initramfs, booted by Nova.

Three steps: the two Debian packages downloaded once into a cache shared by every lab on
the machine (the kernel package is ~70 MB), the guest built from them into the lab's state
directory (cached by content: the same packages and scripts give the same bytes, and a
re-run builds nothing), and three Glance images — the kernel (``aki``), the initramfs
(``ari``) and a small root disk whose ``kernel_id``, ``ramdisk_id`` and
``os_command_line`` properties make Nova's libvirt driver boot that kernel directly
(``_set_guest_for_inst_kernel`` in ``nova/virt/libvirt/driver.py``).

The guest prints :data:`BANNER` and its boot on the serial console (``ttyS0``, the one
Nova logs to ``console.log`` and nova-serialproxy serves) and on the Linux text console
(``tty0``, shown on VNC), and runs a shell on ``ttyS0`` and ``tty1``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from novaconsole.errors import StepFailed
from novaconsole.fileutil import atomic_write
from novaconsole.lab.config import LabConfig
from novaconsole.lab.generic import run_quiet
from novaconsole.lab.initramfs import Entry, write_newc
from novaconsole.steps import RunContext, Step

#: The bootable image tests and operators look for (its kernel and ramdisk images carry
#: the suffixes ``-kernel`` and ``-ramdisk``). Each of the three carries the property
#: ``novaconsole_guest_build`` (the build's content key).
GUEST_IMAGE = "novaconsole-lab-guest"
GUEST_KERNEL_IMAGE = f"{GUEST_IMAGE}-kernel"
GUEST_RAMDISK_IMAGE = f"{GUEST_IMAGE}-ramdisk"
BUILD_PROPERTY = "novaconsole_guest_build"

#: First words of the line the guest prints on ttyS0 and tty1 once it is up (the kernel
#: release follows); tests look for it in the console log.
BANNER = "novaconsole lab guest"
#: The shell prompt on both consoles (tests wait for it before typing).
PROMPT = "guest# "

#: Debian packages the guest is built from: the distribution kernel (through its
#: meta-package) and a statically linked busybox.
KERNEL_META_PACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"

#: The kernel command line. ttyS0 is named last, so /dev/console (and init's output) is
#: the serial port; the kernel's messages go to both. no_timer_check: under QEMU's TCG the
#: kernel's IO-APIC timer check can fail spuriously (Nova adds it for virt_type=qemu too,
#: but an image's os_command_line replaces Nova's whole line).
COMMAND_LINE = "console=tty0 console=ttyS0,115200 rdinit=/init no_timer_check panic=30"

#: The root disk Nova attaches (the guest never reads it: its root is the initramfs).
#: 2 MiB, so the lab's 1 MiB blank test image stays the smallest image.
ROOT_DISK_SIZE = 2 << 20

#: Bumped when the build recipe changes in a way the scripts below do not show.
RECIPE_VERSION = "3"

_INIT = """\
#!/bin/busybox sh
# novaconsole lab guest: /init of the initramfs (PID 1 until busybox init takes over).
/bin/busybox --install -s
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
exec /sbin/init
"""

_INITTAB = """\
::sysinit:/etc/rc.sysinit
ttyS0::respawn:-/bin/sh
tty1::respawn:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/umount -a -r
"""

#: Kernel modules the guest loads, in dependency order, from Debian's kernel package
#: (virtio's core and PCI transport are modules there too, not built in).
NET_MODULES = {
    name: rf"lib/modules/[^/]+/kernel/{path}/{name}\.ko"
    for name, path in (
        ("virtio_ring", "drivers/virtio"),
        ("virtio", "drivers/virtio"),
        ("virtio_pci_legacy_dev", "drivers/virtio"),
        ("virtio_pci_modern_dev", "drivers/virtio"),
        ("virtio_pci", "drivers/virtio"),
        ("failover", "net/core"),
        ("net_failover", "drivers/net"),
        ("virtio_net", "drivers/net"),
    )
}

_RC_SYSINIT = f"""\
#!/bin/sh
hostname novaconsole-guest
banner="{BANNER} $(uname -r) ($(uname -m)): busybox shell on ttyS0 and tty1"
for tty in /dev/ttyS0 /dev/tty1; do
    printf '\\n%s\\n' "$banner" > "$tty"
done
# Networking: virtio-net (a module in Debian's kernel), DHCP on the first NIC in the
# background (a server booted with --nic none has none), and a web page on port 80.
for m in {" ".join(NET_MODULES)}; do insmod /lib/modules/$m.ko 2>/dev/null; done
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
    udhcpc -i eth0 -s /etc/udhcpc.script -b -t 20 -T 2 -O staticroutes -O mtu \\
        >/dev/null 2>&1
fi
httpd -p 80 -h /www
"""

#: What ``udhcpc`` runs on each DHCP event: the address, the router, the MTU (OVN's
#: geneve networks offer 1442), and one line on ttyS0 that tests look for
#: (:data:`NET_LINE`), then the metadata service's instance UUID (:data:`METADATA_LINE`).
NET_LINE = "guest net: eth0"
METADATA_LINE = "guest metadata: uuid"
_UDHCPC_SCRIPT = f"""\
#!/bin/sh
case "$1" in
deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    # Option 121: OVN routes 169.254.169.254 to the network's metadata port this way.
    set -- $staticroutes
    while [ $# -ge 2 ]; do ip route replace "$1" via "$2" dev "$interface"; shift 2; done
    echo "{NET_LINE} $ip/$mask router ${{router:-none}}" > /dev/ttyS0
    (
        i=0
        while [ $i -lt 30 ]; do
            # busybox-static 1.35.0's wget segfaults here (even for an IP
            # literal); nc with a hand-written request does not.
            printf 'GET /openstack/latest/meta_data.json HTTP/1.0\\r\\nHost: 169.254.169.254\\r\\n\\r\\n' \\
                | nc -w 5 169.254.169.254 80 > /tmp/meta.json 2>/dev/null
            if grep -q '"uuid"' /tmp/meta.json; then
                uuid=$(sed -n 's/.*"uuid": *"\\([^"]*\\)".*/\\1/p' /tmp/meta.json)
                echo "{METADATA_LINE} $uuid" > /dev/ttyS0
                break
            fi
            i=$((i + 1)); sleep 2
        done
    ) &
    ;;
esac
"""

#: The page ``httpd`` serves on port 80 (tests fetch it through a floating IP).
WEB_PAGE = "novaconsole lab guest: hello over the network\n"


_PROFILE = f"""\
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PS1='{PROMPT}'
"""


def initramfs_entries(busybox: bytes, modules: dict[str, bytes] | None = None) -> list[Entry]:
    """Every member of the guest's initramfs, parents first."""
    mods = modules or {}
    return [
        *(Entry.directory(d) for d in ("bin", "dev", "etc", "proc", "root", "sbin", "sys")),
        *(Entry.directory(d) for d in ("lib", "lib/modules", "www")),
        *(Entry.file(f"lib/modules/{name}.ko", mods[name]) for name in NET_MODULES if name in mods),
        Entry.file("etc/udhcpc.script", _UDHCPC_SCRIPT.encode(), 0o755),
        Entry.file("www/index.html", WEB_PAGE.encode()),
        Entry.directory("tmp", 0o1777),
        *(Entry.directory(d) for d in ("usr", "usr/bin", "usr/sbin")),
        # The kernel opens /dev/console for /init before devtmpfs is mounted.
        Entry.char_device("dev/console", 5, 1),
        Entry.char_device("dev/null", 1, 3, 0o666),
        Entry.file("bin/busybox", busybox, 0o755),
        Entry.file("init", _INIT.encode(), 0o755),
        Entry.file("etc/inittab", _INITTAB.encode()),
        Entry.file("etc/rc.sysinit", _RC_SYSINIT.encode(), 0o755),
        Entry.file("etc/profile", _PROFILE.encode()),
        Entry.file("etc/hostname", b"novaconsole-guest\n"),
    ]


# -- the packages -----------------------------------------------------------------------


@dataclass(frozen=True)
class DebianPackage:
    """A package at one version, and the file ``apt-get download`` names it."""

    name: str
    version: str
    arch: str

    @property
    def filename(self) -> str:
        # apt-get download escapes the epoch's colon.
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"

    @property
    def spec(self) -> str:
        return f"{self.name}={self.version}"


def _apt_show(*names: str) -> dict[str, dict[str, str]]:
    """``apt-cache show`` of each package's candidate version: its fields, by package name
    (one call for all: apt-cache spends seconds loading its cache)."""
    try:
        proc = subprocess.run(
            ["apt-cache", "show", "--no-all-versions", *names],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return {}  # not a Debian host (apply says so), or apt is locked up
    found: dict[str, dict[str, str]] = {}
    for stanza in proc.stdout.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith(" ") and key not in fields:
                fields[key] = value.strip()
        if fields.get("Package") in names:
            found.setdefault(fields["Package"], fields)
    return found


def kernel_package_from_depends(depends: str) -> str | None:
    """The versioned kernel image package a ``linux-image-amd64`` Depends line names."""
    for alternative in depends.split(","):
        name = alternative.split("|")[0].split("(")[0].strip()
        if re.fullmatch(r"linux-image-\d[\w.+-]*", name):
            return name
    return None


def resolve_packages() -> list[DebianPackage] | None:
    """The kernel and busybox packages apt would install now, or None if apt knows neither."""
    meta = _apt_show(KERNEL_META_PACKAGE).get(KERNEL_META_PACKAGE, {})
    kernel_name = kernel_package_from_depends(meta.get("Depends", ""))
    if kernel_name is None:
        return None
    shown = _apt_show(kernel_name, BUSYBOX_PACKAGE)
    out = []
    for name in (kernel_name, BUSYBOX_PACKAGE):
        fields = shown.get(name, {})
        if not fields.get("Version"):
            return None
        out.append(DebianPackage(name, fields["Version"], fields.get("Architecture", "amd64")))
    return out


class GuestPackagesStep(Step[list[str]]):
    """Debian's kernel and busybox-static packages in the shared download cache."""

    name = "lab.guest.packages"
    phase = "prepare"

    def __init__(self, config: LabConfig) -> None:
        self.cache = config.guest_cache_dir
        self.description = (
            f"guest packages ({KERNEL_META_PACKAGE}, {BUSYBOX_PACKAGE}) in {self.cache}"
        )

    def wanted(self, ctx: RunContext) -> list[DebianPackage] | None:
        cached: list[DebianPackage] | None = ctx.cache.get("guest-packages")
        if cached is None:
            cached = resolve_packages()
            if cached is not None:
                ctx.cache["guest-packages"] = cached
        return cached

    def check(self, ctx: RunContext) -> list[str]:
        packages = self.wanted(ctx)
        if packages is None:
            return ["(apt knows no candidate yet)"]
        return [p.filename for p in packages if not (self.cache / p.filename).is_file()]

    def plan(self, ctx: RunContext, observed: list[str]) -> list[str]:
        if observed == ["(apt knows no candidate yet)"]:
            return [
                f"apt-get update, then download {KERNEL_META_PACKAGE}'s kernel and {BUSYBOX_PACKAGE}"
            ]
        return [f"download {name}" for name in observed]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        packages = self.wanted(ctx)
        if packages is None and shutil.which("apt-get") is None:
            raise StepFailed(
                "the lab's guest is built from Debian packages, and apt-get is not here",
                hint=f"run lab up on a Debian host (apt-get download {KERNEL_META_PACKAGE}'s "
                f"kernel and {BUSYBOX_PACKAGE})",
            )
        if packages is None:
            run_quiet(
                ["apt-get", "update", "-qq"],
                env={"DEBIAN_FRONTEND": "noninteractive"},
                what="apt-get update",
            )
            ctx.cache.pop("guest-packages", None)
            packages = self.wanted(ctx)
            if packages is None:
                raise StepFailed(
                    f"apt has no candidate for {KERNEL_META_PACKAGE} or {BUSYBOX_PACKAGE}",
                    hint="check /etc/apt/sources.list (Debian main is needed)",
                )
        self.cache.mkdir(parents=True, exist_ok=True)
        missing = [p for p in packages if not (self.cache / p.filename).is_file()]
        if not missing:
            return
        # Into a scratch directory first, so a failed download leaves no partial file
        # that a later run would take for a cached one.
        scratch = self.cache / ".download"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        try:
            run_quiet(
                ["apt-get", "download", *(p.spec for p in missing)],
                what=f"apt-get download {' '.join(p.spec for p in missing)}",
                cwd=scratch,
            )
            for package in missing:
                (scratch / package.filename).rename(self.cache / package.filename)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


# -- the build --------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_key(package_digests: dict[str, str]) -> str:
    """The content key of a build: the packages' digests, the scripts and the recipe."""
    parts = {
        "recipe": RECIPE_VERSION,
        "packages": dict(sorted(package_digests.items())),
        "init": _INIT,
        "inittab": _INITTAB,
        "rc.sysinit": _RC_SYSINIT,
        "udhcpc": _UDHCPC_SCRIPT,
        "web": WEB_PAGE,
        "modules": NET_MODULES,
        "profile": _PROFILE,
        "cmdline": COMMAND_LINE,
        "root_disk_size": ROOT_DISK_SIZE,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def extract_member(deb: Path, pattern: str) -> tuple[str, bytes]:
    """(name, content) of the first regular file in ``deb`` whose path matches ``pattern``."""
    return extract_members(deb, {"": pattern})[""]


def extract_members(deb: Path, patterns: dict[str, str]) -> dict[str, tuple[str, bytes]]:
    """(name, content) by key of the first regular file in ``deb`` matching each pattern.

    The package's data archive is streamed once through ``dpkg-deb --fsys-tarfile`` and
    read until every file has turned up (the rest of the kernel package is never unpacked).
    """
    found: dict[str, tuple[str, bytes]] = {}
    broken = StepFailed(
        f"{deb} is not a readable Debian package",
        hint="delete it; lab up downloads it again",
    )
    proc = subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
            for member in archive:
                name = member.name.removeprefix("./")
                if not member.isfile():
                    continue
                for key, pattern in patterns.items():
                    if key not in found and re.fullmatch(pattern, name):
                        handle = archive.extractfile(member)
                        if handle is not None:
                            found[key] = (name, handle.read())
                if len(found) == len(patterns):
                    return found
    except (tarfile.TarError, OSError) as exc:
        raise broken from exc
    finally:
        proc.stdout.close()
        proc.kill()
        code = proc.wait()
    if code not in (0, -9):
        raise broken
    missing = [p for k, p in patterns.items() if k not in found]
    raise StepFailed(f"{deb.name} has no file matching {', '.join(missing)}")


@dataclass(frozen=True)
class GuestBuild:
    """What a finished build left in the state directory (``build.json``)."""

    key: str
    kernel_release: str
    packages: list[str]
    files: dict[str, str]  #: file name -> sha256

    @classmethod
    def load(cls, directory: Path) -> GuestBuild | None:
        try:
            data = json.loads((directory / "build.json").read_text())
            return cls(
                str(data["key"]),
                str(data["kernel_release"]),
                [str(p) for p in data["packages"]],
                {str(k): str(v) for k, v in data["files"].items()},
            )
        except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def intact(self, directory: Path) -> bool:
        """Every file is there with the content the build recorded."""
        return all(
            (directory / name).is_file() and _sha256_file(directory / name) == digest
            for name, digest in self.files.items()
        )


KERNEL_FILE = "vmlinuz"
#: Not compressed (the kernel reads plain newc too): at ~2 MB it stays bigger than the
#: lab's 1 MiB blank image, which tests pick as "the smallest image" (gzip would make it
#: 1.0 MB, the smallest of all, and a server booted from a ramdisk image fails).
RAMDISK_FILE = "initramfs.cpio"
ROOT_DISK_FILE = "root.raw"


class GuestBuildStep(Step[dict[str, Any]]):
    """Kernel, initramfs and root disk built from the cached packages (rebuilt only when
    their content key changes)."""

    name = "lab.guest.build"
    phase = "prepare"

    def __init__(self, config: LabConfig, packages: GuestPackagesStep) -> None:
        self.packages = packages
        self.directory = config.guest_dir
        self.description = f"guest kernel and busybox initramfs in {self.directory}"

    def inputs(self, ctx: RunContext) -> dict[str, Path] | None:
        """The package files by package name, or None when the packages step is not done."""
        wanted = self.packages.wanted(ctx)
        if wanted is None:
            return None
        paths = {p.name: self.packages.cache / p.filename for p in wanted}
        return paths if all(p.is_file() for p in paths.values()) else None

    def wanted_key(self, ctx: RunContext) -> str | None:
        inputs = self.inputs(ctx)
        if inputs is None:
            return None
        key = ctx.cache.get("guest-build-key")
        if key is None:
            key = build_key({p.name: _sha256_file(p) for p in inputs.values()})
            ctx.cache["guest-build-key"] = key
        return str(key)

    def check(self, ctx: RunContext) -> dict[str, Any]:
        build = GuestBuild.load(self.directory)
        return {
            "wanted": self.wanted_key(ctx),
            "built": build.key if build is not None else None,
            "intact": build is not None and build.intact(self.directory),
        }

    def plan(self, ctx: RunContext, observed: dict[str, Any]) -> list[str]:
        if observed["wanted"] is None:
            return ["build the guest once its packages are downloaded"]
        if observed["built"] is None:
            return [f"build the guest into {self.directory}"]
        if observed["built"] != observed["wanted"]:
            return [f"rebuild the guest (its packages or scripts changed) in {self.directory}"]
        if not observed["intact"]:
            return [f"rebuild the guest (files in {self.directory} changed or are missing)"]
        return []

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        ctx.cache.pop("guest-build-key", None)
        inputs = self.inputs(ctx)
        key = self.wanted_key(ctx)
        if inputs is None or key is None:
            raise StepFailed("guest packages are missing from the download cache")
        kernel_deb = next(p for n, p in inputs.items() if n != BUSYBOX_PACKAGE)
        members = extract_members(kernel_deb, {"kernel": r"boot/vmlinuz-[\w.+-]+", **NET_MODULES})
        kernel_name, kernel = members["kernel"]
        _, busybox = extract_member(inputs[BUSYBOX_PACKAGE], r"bin/busybox")
        modules = {name: members[name][1] for name in NET_MODULES}
        ramdisk = write_newc(initramfs_entries(busybox, modules))
        self.directory.mkdir(parents=True, exist_ok=True)
        outputs = {
            KERNEL_FILE: kernel,
            RAMDISK_FILE: ramdisk,
            ROOT_DISK_FILE: bytes(ROOT_DISK_SIZE),
        }
        for name, content in outputs.items():
            atomic_write(self.directory / name, content, mode=0o644)
        for leftover in self.directory.iterdir():
            # Files of an older recipe (the build owns this directory).
            if leftover.name not in outputs and leftover.name != "build.json":
                leftover.unlink()
        build = {
            "key": key,
            "kernel_release": kernel_name.removeprefix("boot/vmlinuz-"),
            "packages": sorted(p.name for p in inputs.values()),
            "files": {name: hashlib.sha256(c).hexdigest() for name, c in outputs.items()},
        }
        atomic_write(self.directory / "build.json", json.dumps(build, indent=2) + "\n")


# -- Glance and a flavor it fits ------------------------------------------------------------

#: The guest's kernel needs more than the lab's 64 MB tiny flavor (its image alone unpacks
#: to ~65 MB), so the root image says min_ram and the lab offers a flavor that fits.
GUEST_MIN_RAM_MB = 128
GUEST_FLAVOR = "nc.small"


def _image_property(image: Any, key: str) -> str | None:
    """A Glance image property (openstacksdk keeps some as attributes, others in a dict)."""
    value = (getattr(image, "properties", None) or {}).get(key)
    if value is None:
        value = getattr(image, key, None)
    return None if value is None else str(value)


@dataclass(frozen=True)
class GuestImagesObserved:
    """The guest's images in Glance (all of them by name), and the build they should hold."""

    key: str | None
    images: dict[str, list[Any]]

    def current(self, name: str) -> Any | None:
        """The one active image named ``name`` holding this build, if it is the only one."""
        found = self.images.get(name, [])
        if len(found) != 1 or found[0].status != "active":
            return None
        image = found[0]
        return image if _image_property(image, BUILD_PROPERTY) == self.key else None


class GuestImagesStep(Step[GuestImagesObserved]):
    """The guest's kernel, ramdisk and bootable root images in Glance, holding this build."""

    name = "lab.guest.images"
    phase = "finish"
    description = f"guest images {GUEST_IMAGE} (+ -kernel, -ramdisk) in Glance"

    def __init__(self, config: LabConfig) -> None:
        self.directory = config.guest_dir

    def _conn(self, ctx: RunContext) -> Any:
        from novaconsole.lab.stack.common import lab_conn

        return lab_conn(ctx)

    def check(self, ctx: RunContext) -> GuestImagesObserved:
        build = GuestBuild.load(self.directory)
        names = (GUEST_KERNEL_IMAGE, GUEST_RAMDISK_IMAGE, GUEST_IMAGE)
        images: dict[str, list[Any]] = {name: [] for name in names}
        for image in self._conn(ctx).image.images():
            if image.name in images:
                images[image.name].append(image)
        return GuestImagesObserved(build.key if build else None, images)

    def plan(self, ctx: RunContext, observed: GuestImagesObserved) -> list[str]:
        if observed.key is None:
            return [f"upload {GUEST_IMAGE} once the guest is built"]
        kernel = observed.current(GUEST_KERNEL_IMAGE)
        ramdisk = observed.current(GUEST_RAMDISK_IMAGE)
        root = observed.current(GUEST_IMAGE)
        changes = []
        for name, image in ((GUEST_KERNEL_IMAGE, kernel), (GUEST_RAMDISK_IMAGE, ramdisk)):
            if image is None:
                changes.append(_upload_or_replace(name, observed.images[name]))
        linked = _root_linked(root, kernel, ramdisk)
        if not linked:
            changes.append(_upload_or_replace(GUEST_IMAGE, observed.images[GUEST_IMAGE]))
        return changes

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        observed = self.check(ctx)
        if observed.key is None:
            raise StepFailed(f"the guest is not built in {self.directory}")
        common = {"visibility": "public", "wait": True, "timeout": 300, "allow_duplicates": True}
        tag = {BUILD_PROPERTY: observed.key}
        kernel = observed.current(GUEST_KERNEL_IMAGE)
        ramdisk = observed.current(GUEST_RAMDISK_IMAGE)
        if kernel is None:
            kernel = self._replace(
                ctx, GUEST_KERNEL_IMAGE, observed, KERNEL_FILE, "aki", tag, common
            )
        if ramdisk is None:
            ramdisk = self._replace(
                ctx, GUEST_RAMDISK_IMAGE, observed, RAMDISK_FILE, "ari", tag, common
            )
        # The root image names the kernel and ramdisk by id: a new one of those means a new
        # root image as well.
        if not _root_linked(observed.current(GUEST_IMAGE), kernel, ramdisk):
            properties = {
                **tag,
                "kernel_id": kernel.id,
                "ramdisk_id": ramdisk.id,
                "os_command_line": COMMAND_LINE,
                "min_ram": GUEST_MIN_RAM_MB,
            }
            self._replace(ctx, GUEST_IMAGE, observed, ROOT_DISK_FILE, "raw", properties, common)

    def _replace(
        self,
        ctx: RunContext,
        name: str,
        observed: GuestImagesObserved,
        filename: str,
        disk_format: str,
        properties: dict[str, Any],
        common: dict[str, Any],
    ) -> Any:
        conn = self._conn(ctx)
        container = disk_format if disk_format in ("aki", "ari") else "bare"
        image = conn.image.create_image(
            name=name,
            data=(self.directory / filename).read_bytes(),
            disk_format=disk_format,
            container_format=container,
            **properties,
            **common,
        )
        # The old ones go only once the new one is active (servers booting from the old
        # ones keep working: Nova has already copied what it needs).
        for old in observed.images.get(name, []):
            if old.id != image.id:
                conn.image.delete_image(old, ignore_missing=True)
        return image


def _root_linked(root: Any | None, kernel: Any | None, ramdisk: Any | None) -> bool:
    """The root image boots exactly this kernel and ramdisk with our command line."""
    return (
        root is not None
        and kernel is not None
        and ramdisk is not None
        and _image_property(root, "kernel_id") == kernel.id
        and _image_property(root, "ramdisk_id") == ramdisk.id
        and _image_property(root, "os_command_line") == COMMAND_LINE
    )


def _upload_or_replace(name: str, existing: list[Any]) -> str:
    if not existing:
        return f"upload {name}"
    return f"replace {name} ({len(existing)} stale: other build, inactive or duplicate)"


class GuestFlavorStep(Step[bool]):
    """A flavor the guest fits (:data:`GUEST_MIN_RAM_MB`), next to the lab's tiny one."""

    name = "lab.guest.flavor"
    phase = "finish"
    description = f"flavor {GUEST_FLAVOR} ({GUEST_MIN_RAM_MB} MB, 1 vCPU, 1 GB)"

    def _conn(self, ctx: RunContext) -> Any:
        from novaconsole.lab.stack.common import lab_conn

        return lab_conn(ctx)

    def check(self, ctx: RunContext) -> bool:
        return self._conn(ctx).compute.find_flavor(GUEST_FLAVOR, ignore_missing=True) is not None

    def plan(self, ctx: RunContext, observed: bool) -> list[str]:
        return [] if observed else [f"create flavor {GUEST_FLAVOR}"]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        self._conn(ctx).compute.create_flavor(
            name=GUEST_FLAVOR, ram=GUEST_MIN_RAM_MB, vcpus=1, disk=1, is_public=True
        )


def guest_steps(config: LabConfig) -> list[Step[Any]]:
    """The guest's steps, in order."""
    packages = GuestPackagesStep(config)
    return [
        packages,
        GuestBuildStep(config, packages),
        GuestFlavorStep(),
        GuestImagesStep(config),
    ]


def guest_status(config: LabConfig, compute: dict[str, str] | None = None) -> dict[str, str]:
    """What ``lab status`` says about the guest (and, from the compute facts, what it runs on)."""
    build = GuestBuild.load(config.guest_dir)
    if build is None:
        return {"guest": f"not built (lab up builds it into {config.guest_dir})"}
    out = {
        "guest": f"image {GUEST_IMAGE} (flavor {GUEST_FLAVOR}): Linux {build.kernel_release} "
        f"+ busybox initramfs, build {build.key[:12]} in {config.guest_dir}",
    }
    compute = compute or {}
    if compute.get("driver") == "libvirt" and compute.get("virt_type"):
        accel = "KVM" if compute["virt_type"] == "kvm" else "QEMU emulation (TCG)"
        out["guest_runs_on"] = (
            f"{accel}, [libvirt] virt_type = {compute['virt_type']} (why: virt_type_reason)"
        )
    return out
