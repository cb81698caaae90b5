"""libvirtd/virtlogd programs and the in-process libvirt check (libvirt-python, for real).

The system libvirtd is shared with the lab, so starting it for real is tested against the
lab (``test_compute_lab.py``); here libvirt's own ``test:///default`` driver answers, and
a socket that does not exist does not.
"""

from __future__ import annotations

import grp
import os
import shutil
import stat
from pathlib import Path

import pytest
from compute_helpers import context

from novaconsole.errors import StepFailed
from novaconsole.site import Site
from novaconsole.steps import Status, run_step
from novaconsole_compute.libvirtd import (
    KVM_GROUP,
    LibvirtdStep,
    apply_kvm_device_fix,
    kvm_device_fix,
    libvirt_answers,
    libvirt_specs,
    stop_guests,
)

pytest.importorskip("libvirt")


def test_daemons_run_in_the_foreground() -> None:
    specs = libvirt_specs("/usr/sbin/libvirtd")
    assert [s.name for s in specs] == ["virtlogd", "libvirtd"]
    assert specs[0].argv == ("/usr/sbin/virtlogd",)
    assert specs[1].argv == ("/usr/sbin/libvirtd",)
    for spec in specs:
        assert "-d" not in spec.argv  # supervisord keeps the pid; `lab down` stops it
    # A host that takes live migrations: libvirtd opens its TCP/TLS listeners only so.
    listening = libvirt_specs("/usr/sbin/libvirtd", listen=True)
    assert listening[1].argv == ("/usr/sbin/libvirtd", "--listen")


def test_libvirt_answers_in_process() -> None:
    facts = libvirt_answers("test:///default")
    assert facts.startswith("TEST ")
    assert "libvirt " in facts


def test_missing_domain_type_is_diagnosed() -> None:
    with pytest.raises(StepFailed) as err:
        libvirt_answers("test:///default", virt_type="kvm")
    assert "offers no kvm domains" in err.value.one_line()
    assert "virt_type = qemu" in err.value.one_line()


def test_no_daemon_is_one_line(tmp_path: Path) -> None:
    uri = f"qemu+unix:///system?socket={tmp_path}/libvirt-sock"
    with pytest.raises(StepFailed) as err:
        libvirt_answers(uri)
    line = err.value.one_line()
    assert uri in line
    assert "\n" not in line


def test_fake_driver_needs_no_libvirtd(site: Site) -> None:
    result = run_step(LibvirtdStep(site), context(site, driver="fake"))
    assert result.status is Status.OK
    assert result.changes == []
    assert not site.services_dir.exists()  # nothing installed, no supervisor started


def test_stop_guests_destroys_running_domains() -> None:
    # libvirt's test driver starts with one running domain, "test" (per connection).
    assert stop_guests("test:///default") == ["test"]


def test_stop_guests_without_a_daemon(tmp_path: Path) -> None:
    assert stop_guests(f"qemu+unix:///system?socket={tmp_path}/libvirt-sock") == []


def test_libvirt_driver_without_qemu_img_is_refused_before_anything_starts(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A minimal host has QEMU but not qemu-utils; every build would abort later."""
    real_which = shutil.which
    monkeypatch.setattr(
        "novaconsole_compute.libvirtd.shutil.which",
        lambda name, *a, **k: None if name == "qemu-img" else real_which(name, *a, **k),
    )
    result = run_step(LibvirtdStep(site), context(site, driver="libvirt"))
    assert result.status is Status.FAILED
    assert result.error is not None
    assert result.error.startswith("qemu-img is not installed")
    assert "apt-get install qemu-utils" in result.error
    assert not site.services_dir.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's group needs root")
def test_kvm_device_is_given_to_qemus_group_like_udev_would(tmp_path: Path) -> None:
    """No udev here: /dev/kvm stays root:root 0600 and QEMU (libvirt-qemu:kvm) cannot open it."""
    try:
        kvm_gid = grp.getgrnam(KVM_GROUP).gr_gid
    except KeyError:
        pytest.skip("no kvm group on this machine")
    device = tmp_path / "kvm"
    device.write_text("")
    os.chown(device, 0, 0)
    device.chmod(0o600)
    fix = kvm_device_fix(device)
    assert fix == f"give {device} to group kvm, mode 0660 (udev's rule; no udev set it here)"
    apply_kvm_device_fix(device)
    st = device.stat()
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (kvm_gid, 0o660)
    assert kvm_device_fix(device) is None  # converged
    assert kvm_device_fix(tmp_path / "absent") is None
