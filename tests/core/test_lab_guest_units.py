"""The lab guest's steps without a lab: package names, the build's content cache, image plans.

The build runs for real on small .deb packages made here with ``dpkg-deb --build`` (the
same tool the step reads them with), standing in for Debian's 70 MB kernel package.
"""

from __future__ import annotations

import json
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from novaconsole.lab.config import LabConfig
from novaconsole.lab.guest import (
    BANNER,
    BUILD_PROPERTY,
    BUSYBOX_PACKAGE,
    COMMAND_LINE,
    GUEST_IMAGE,
    GUEST_KERNEL_IMAGE,
    GUEST_RAMDISK_IMAGE,
    KERNEL_FILE,
    RAMDISK_FILE,
    ROOT_DISK_FILE,
    DebianPackage,
    GuestBuild,
    GuestBuildStep,
    GuestImagesObserved,
    GuestImagesStep,
    GuestPackagesStep,
    guest_status,
    kernel_package_from_depends,
    resolve_packages,
)
from novaconsole.lab.initramfs import read_newc
from novaconsole.steps import RunContext, Status, run_step

KERNEL = DebianPackage("linux-image-9.9.9-test-amd64", "9.9.9-1", "amd64")
BUSYBOX = DebianPackage(BUSYBOX_PACKAGE, "1:1.35.0-4", "amd64")


@pytest.mark.parametrize(
    ("depends", "expected"),
    [
        ("linux-image-6.1.0-57-amd64 (= 6.1.192-3)", "linux-image-6.1.0-57-amd64"),
        ("linux-image-6.12.9+bpo-amd64", "linux-image-6.12.9+bpo-amd64"),
        (
            "initramfs-tools | linux-initramfs-tool, linux-image-6.1.0-9-amd64",
            "linux-image-6.1.0-9-amd64",
        ),
        ("linux-image-amd64-signed", None),
        ("", None),
    ],
)
def test_kernel_package_from_the_meta_packages_depends(depends: str, expected: str | None) -> None:
    assert kernel_package_from_depends(depends) == expected


def test_package_file_name_escapes_the_epoch() -> None:
    assert BUSYBOX.filename == "busybox-static_1%3a1.35.0-4_amd64.deb"
    assert BUSYBOX.spec == "busybox-static=1:1.35.0-4"


def test_apt_resolves_the_distribution_kernel_here() -> None:
    packages = resolve_packages()
    if packages is None:
        pytest.skip("apt has no package lists on this machine (apt-get update)")
    kernel, busybox = packages
    assert kernel.name.startswith("linux-image-")
    assert kernel.name[12].isdigit()
    assert busybox.name == BUSYBOX_PACKAGE
    assert all(p.version for p in packages)


def make_deb(directory: Path, package: DebianPackage, files: dict[str, bytes]) -> Path:
    """A real .deb holding ``files`` (built by dpkg-deb, as Debian's are)."""
    root = Path(tempfile.mkdtemp(prefix=f"deb-{package.name}-", dir=directory.parent))
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package.name}\nVersion: {package.version}\nArchitecture: {package.arch}\n"
        "Maintainer: novaconsole tests <t@example.invalid>\nDescription: test\n"
    )
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    deb = directory / package.filename
    subprocess.run(
        ["dpkg-deb", "-Zgzip", "--root-owner-group", "--build", str(root), str(deb)],
        capture_output=True,
        check=True,
    )
    return deb


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LabConfig:
    monkeypatch.setenv("NOVACONSOLE_LAB_DIR", str(tmp_path / "lab"))
    return LabConfig(state_dir=tmp_path / "lab")


def context() -> RunContext:
    ctx = RunContext()
    # What apt would pick (resolved once per run and cached there by the packages step).
    ctx.cache["guest-packages"] = [KERNEL, BUSYBOX]
    return ctx


def test_packages_step_plans_only_what_the_cache_lacks(config: LabConfig) -> None:
    step = GuestPackagesStep(config)
    ctx = context()
    assert step.plan(ctx, step.check(ctx)) == [
        f"download {KERNEL.filename}",
        f"download {BUSYBOX.filename}",
    ]
    config.guest_cache_dir.mkdir(parents=True)
    (config.guest_cache_dir / KERNEL.filename).write_bytes(b"deb")
    assert step.plan(ctx, step.check(ctx)) == [f"download {BUSYBOX.filename}"]
    (config.guest_cache_dir / BUSYBOX.filename).write_bytes(b"deb")
    assert step.plan(ctx, step.check(ctx)) == []


def _cache_debs(config: LabConfig, busybox: bytes = b"\x7fELF busybox") -> None:
    config.guest_cache_dir.mkdir(parents=True, exist_ok=True)
    make_deb(
        config.guest_cache_dir,
        KERNEL,
        {
            "boot/vmlinuz-9.9.9-test-amd64": b"MZ kernel",
            "lib/modules/9.9.9/x.ko": b"module",
            **{
                f"lib/modules/9.9.9/kernel/{where}/{name}.ko": f"{name} module".encode()
                for where, names in (
                    ("drivers/virtio", ("virtio", "virtio_ring", "virtio_pci")),
                    ("drivers/virtio", ("virtio_pci_legacy_dev", "virtio_pci_modern_dev")),
                    ("net/core", ("failover",)),
                    ("drivers/net", ("net_failover", "virtio_net")),
                )
                for name in names
            },
        },
    )
    make_deb(config.guest_cache_dir, BUSYBOX, {"bin/busybox": busybox})


def test_build_step_builds_once_then_changes_nothing(config: LabConfig) -> None:
    _cache_debs(config)
    packages = GuestPackagesStep(config)
    step = GuestBuildStep(config, packages)

    first = run_step(step, context())
    assert first.status is Status.CHANGED, first.error
    assert first.changes == [f"build the guest into {config.guest_dir}"]
    again = run_step(step, context())
    assert again.status is Status.OK
    assert again.changes == []

    guest = config.guest_dir
    assert (guest / KERNEL_FILE).read_bytes() == b"MZ kernel"
    assert (guest / ROOT_DISK_FILE).stat().st_size == 2 << 20
    members = {e.name: e for e in read_newc((guest / RAMDISK_FILE).read_bytes())}
    assert members["bin/busybox"].data == b"\x7fELF busybox"
    assert members["init"].mode & 0o755 == 0o755
    assert stat.S_ISCHR(members["dev/console"].mode)
    assert BANNER.encode() in members["etc/rc.sysinit"].data
    # Networking: the three modules from the kernel package, DHCP and a web page.
    for module in ("virtio", "virtio_pci", "failover", "net_failover", "virtio_net"):
        assert members[f"lib/modules/{module}.ko"].data == f"{module} module".encode()
        assert b"insmod /lib/modules/$m.ko" in members["etc/rc.sysinit"].data
    assert b"udhcpc -i eth0" in members["etc/rc.sysinit"].data
    assert members["etc/udhcpc.script"].mode & 0o755 == 0o755
    assert b"169.254.169.254" in members["etc/udhcpc.script"].data
    assert b"hello over the network" in members["www/index.html"].data
    assert b"ttyS0::respawn:" in members["etc/inittab"].data
    assert b"tty1::respawn:" in members["etc/inittab"].data
    build = json.loads((guest / "build.json").read_text())
    assert build["kernel_release"] == "9.9.9-test-amd64"
    status = guest_status(config)["guest"]
    assert GUEST_IMAGE in status
    assert guest_status(config, {"driver": "libvirt", "virt_type": "qemu"})[
        "guest_runs_on"
    ].startswith("QEMU emulation (TCG), [libvirt] virt_type = qemu")
    assert "Linux 9.9.9-test-amd64" in status


def test_build_is_reproducible(config: LabConfig, tmp_path: Path) -> None:
    _cache_debs(config)
    step = GuestBuildStep(config, GuestPackagesStep(config))
    run_step(step, context())
    first = (config.guest_dir / RAMDISK_FILE).read_bytes()
    (config.guest_dir / "build.json").unlink()
    assert run_step(step, context()).status is Status.CHANGED
    assert (config.guest_dir / RAMDISK_FILE).read_bytes() == first


def test_a_changed_file_or_package_means_a_rebuild(config: LabConfig) -> None:
    _cache_debs(config)
    step = GuestBuildStep(config, GuestPackagesStep(config))
    run_step(step, context())
    key = GuestBuild.load(config.guest_dir).key  # type: ignore[union-attr]

    (config.guest_dir / KERNEL_FILE).write_bytes(b"tampered")
    ctx = context()
    assert step.plan(ctx, step.check(ctx)) == [
        f"rebuild the guest (files in {config.guest_dir} changed or are missing)"
    ]
    assert run_step(step, context()).status is Status.CHANGED
    assert GuestBuild.load(config.guest_dir).key == key  # type: ignore[union-attr]

    _cache_debs(config, busybox=b"\x7fELF a newer busybox")
    ctx = context()
    assert step.plan(ctx, step.check(ctx)) == [
        f"rebuild the guest (its packages or scripts changed) in {config.guest_dir}"
    ]
    assert run_step(step, context()).status is Status.CHANGED
    assert GuestBuild.load(config.guest_dir).key != key  # type: ignore[union-attr]


def test_build_waits_for_its_packages(config: LabConfig) -> None:
    step = GuestBuildStep(config, GuestPackagesStep(config))
    ctx = context()
    assert step.plan(ctx, step.check(ctx)) == ["build the guest once its packages are downloaded"]


# -- the Glance plan, over image records as Glance lists them ---------------------------------


@dataclass
class ImageRecord:
    """The fields of a Glance image the plan reads (as openstacksdk's Image has them)."""

    name: str
    id: str
    status: str = "active"
    properties: dict[str, Any] = field(default_factory=dict)


def _images(key: str, **overrides: Any) -> dict[str, list[Any]]:
    kernel = ImageRecord(GUEST_KERNEL_IMAGE, "k1", properties={BUILD_PROPERTY: key})
    ramdisk = ImageRecord(GUEST_RAMDISK_IMAGE, "r1", properties={BUILD_PROPERTY: key})
    root = ImageRecord(
        GUEST_IMAGE,
        "g1",
        properties={
            BUILD_PROPERTY: key,
            "kernel_id": "k1",
            "ramdisk_id": "r1",
            "os_command_line": COMMAND_LINE,
        },
    )
    found: dict[str, list[Any]] = {
        GUEST_KERNEL_IMAGE: [kernel],
        GUEST_RAMDISK_IMAGE: [ramdisk],
        GUEST_IMAGE: [root],
    }
    found.update(overrides)
    return found


def _plan(config: LabConfig, observed: GuestImagesObserved) -> list[str]:
    return GuestImagesStep(config).plan(RunContext(), observed)


def test_images_plan_nothing_when_all_hold_this_build(config: LabConfig) -> None:
    assert _plan(config, GuestImagesObserved("abc", _images("abc"))) == []


def test_images_plan_uploads_when_glance_has_none(config: LabConfig) -> None:
    empty: dict[str, list[Any]] = {GUEST_KERNEL_IMAGE: [], GUEST_RAMDISK_IMAGE: [], GUEST_IMAGE: []}
    assert _plan(config, GuestImagesObserved("abc", empty)) == [
        f"upload {GUEST_KERNEL_IMAGE}",
        f"upload {GUEST_RAMDISK_IMAGE}",
        f"upload {GUEST_IMAGE}",
    ]


def test_images_of_another_build_are_all_replaced(config: LabConfig) -> None:
    plan = _plan(config, GuestImagesObserved("new", _images("old")))
    assert [change.split()[1] for change in plan] == [
        GUEST_KERNEL_IMAGE,
        GUEST_RAMDISK_IMAGE,
        GUEST_IMAGE,
    ]
    assert all(change.startswith("replace ") for change in plan)


def test_a_root_image_naming_another_kernel_is_replaced(config: LabConfig) -> None:
    images = _images("abc")
    images[GUEST_IMAGE][0].properties["kernel_id"] = "some-other-kernel"
    assert _plan(config, GuestImagesObserved("abc", images)) == [
        f"replace {GUEST_IMAGE} (1 stale: other build, inactive or duplicate)"
    ]


def test_duplicates_and_inactive_images_are_replaced(config: LabConfig) -> None:
    images = _images("abc")
    images[GUEST_RAMDISK_IMAGE].append(
        ImageRecord(GUEST_RAMDISK_IMAGE, "r2", properties={BUILD_PROPERTY: "abc"})
    )
    images[GUEST_KERNEL_IMAGE][0].status = "queued"
    plan = _plan(config, GuestImagesObserved("abc", images))
    assert plan[:2] == [
        f"replace {GUEST_KERNEL_IMAGE} (1 stale: other build, inactive or duplicate)",
        f"replace {GUEST_RAMDISK_IMAGE} (2 stale: other build, inactive or duplicate)",
    ]
    # A new kernel or ramdisk has a new id, which the root image must then name.
    assert plan[2].startswith(f"replace {GUEST_IMAGE}")


def test_images_wait_for_the_build(config: LabConfig) -> None:
    assert _plan(config, GuestImagesObserved(None, {})) == [
        f"upload {GUEST_IMAGE} once the guest is built"
    ]


def test_a_broken_cached_package_is_one_clear_error(config: LabConfig) -> None:
    _cache_debs(config)
    (config.guest_cache_dir / KERNEL.filename).write_bytes(b"not a deb, half a download")
    result = run_step(GuestBuildStep(config, GuestPackagesStep(config)), context())
    assert result.status is Status.FAILED
    assert result.error is not None
    assert f"{KERNEL.filename} is not a readable Debian package" in result.error
    assert not (config.guest_dir / "build.json").exists()  # nothing half-built


def test_a_package_without_the_file_is_named(config: LabConfig) -> None:
    config.guest_cache_dir.mkdir(parents=True)
    make_deb(config.guest_cache_dir, KERNEL, {"usr/share/doc/x": b"no kernel here"})
    make_deb(config.guest_cache_dir, BUSYBOX, {"bin/busybox": b"bb"})
    result = run_step(GuestBuildStep(config, GuestPackagesStep(config)), context())
    assert result.status is Status.FAILED
    assert result.error is not None
    assert "has no file matching boot/vmlinuz-" in result.error
