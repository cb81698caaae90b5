"""The virt_type and driver decisions as tables, the probes on real files, and this host."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from novaconsole.errors import ConfigError
from novaconsole.site import Site
from novaconsole.steps import RunContext, Status, run_step
from novaconsole_compute.facts import (
    KvmProbe,
    LibvirtProbe,
    compute_identity,
    cpu_has_virt_flags,
    decide_driver,
    decide_virt_type,
    host_facts,
    kvm_provider,
    libvirt_socket_answers,
    probe_kvm,
    read_cpuinfo,
)
from novaconsole_compute.prepare import HostFactsStep

INTEL = "processor\t: 0\nflags\t\t: fpu vme de pse vmx sse2\nvmx flags\t: vnmi\n"
AMD = "processor\t: 0\nflags\t\t: fpu svm sse2\n"
NESTED = "processor\t: 0\nflags\t\t: fpu vme de pse sse2 hypervisor\n"
# Newer kernels print a "vmx flags" line; only the "flags" line counts.
VMX_LINE_ONLY = "processor\t: 0\nflags\t\t: fpu sse2\nvmx flags\t: vnmi preemption_timer\n"

KVM_OK = KvmProbe(True, "/dev/kvm API version 12, KVM_CREATE_VM works")
KVM_MISSING = KvmProbe(False, "/dev/kvm does not exist")
KVM_PVM = KvmProbe(True, "/dev/kvm API version 12, KVM_CREATE_VM works (kvm_pvm)", "kvm_pvm")


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [(INTEL, True), (AMD, True), (NESTED, False), (VMX_LINE_ONLY, False), ("", False)],
)
def test_cpu_flags(cpuinfo: str, expected: bool) -> None:
    assert cpu_has_virt_flags(cpuinfo) is expected


@pytest.mark.parametrize(
    ("requested", "flags", "kvm", "virt_type", "reason_has"),
    [
        ("auto", True, KVM_OK, "kvm", "/dev/kvm works"),
        # This machine: no vmx/svm shown, yet KVM works; the probe decides and both are said.
        ("auto", False, KVM_OK, "kvm", "no vmx/svm in /proc/cpuinfo"),
        ("auto", True, KVM_MISSING, "qemu", "no working KVM"),
        ("auto", False, KVM_MISSING, "qemu", "QEMU emulation (TCG)"),
        ("kvm", False, KVM_OK, "kvm", "virt_type = kvm set in site"),
        ("qemu", True, KVM_OK, "qemu", "KVM would work here"),
        ("qemu", False, KVM_MISSING, "qemu", "virt_type = qemu set in site"),
        # This machine: /dev/kvm is PVM, under which a stock guest kernel crawls.
        ("auto", False, KVM_PVM, "qemu", "kvm_pvm"),
        ("kvm", False, KVM_PVM, "kvm", "virt_type = kvm set in site"),
    ],
)
def test_virt_type_table(
    requested: str, flags: bool, kvm: KvmProbe, virt_type: str, reason_has: str
) -> None:
    chosen, reason = decide_virt_type(requested, flags, kvm)
    assert chosen == virt_type
    assert reason_has in reason
    assert "\n" not in reason


@pytest.mark.parametrize("flags", [True, False])
def test_kvm_requested_without_kvm_is_the_guides_trap(flags: bool) -> None:
    with pytest.raises(ConfigError) as err:
        decide_virt_type("kvm", flags, KVM_MISSING, source="/etc/site.toml")
    line = err.value.one_line()
    assert "/etc/site.toml" in line
    assert "virt_type = kvm" in line
    assert "/dev/kvm does not exist" in line
    assert "qemu" in line  # the fix is named


def test_unknown_virt_type_names_the_file() -> None:
    with pytest.raises(ConfigError, match=r"site.toml: virt_type must be"):
        decide_virt_type("xen", True, KVM_OK, source="site.toml")


RUNNING = LibvirtProbe(
    True, "/usr/sbin/libvirtd", "/usr/bin/qemu-system-x86_64", True, "sock answers"
)
STARTABLE = LibvirtProbe(False, "/usr/sbin/libvirtd", "/usr/bin/qemu", True, "installed")
ABSENT = LibvirtProbe(False, None, None, False, "libvirtd is not installed")


@pytest.mark.parametrize(
    ("requested", "probe", "driver", "reason_has"),
    [
        ("auto", RUNNING, "libvirt", "sock answers"),
        ("auto", STARTABLE, "libvirt", "installed"),
        ("auto", ABSENT, "fake", "libvirtd cannot run here (libvirtd is not installed)"),
        ("libvirt", STARTABLE, "libvirt", "compute_driver = libvirt set in"),
        ("fake", RUNNING, "fake", "compute_driver = fake set in"),
    ],
)
def test_driver_table(requested: str, probe: LibvirtProbe, driver: str, reason_has: str) -> None:
    chosen, reason = decide_driver(requested, probe)
    assert chosen == driver
    assert reason_has in reason


def test_libvirt_requested_where_it_cannot_run() -> None:
    with pytest.raises(ConfigError) as err:
        decide_driver("libvirt", ABSENT, source="lab")
    assert "libvirtd is not installed" in err.value.one_line()
    assert "apt-get install libvirt-daemon-system" in err.value.one_line()


def test_each_driver_has_its_own_identity(tmp_path: Path) -> None:
    site = Site(compute_host="node1", state_path=tmp_path)
    assert compute_identity(site, "libvirt") == ("node1", tmp_path)
    host, state = compute_identity(site, "fake")
    assert host != "node1"
    assert host.startswith("node1")
    assert state != tmp_path


def test_fake_driver_ignores_an_impossible_kvm_wish(monkeypatch: pytest.MonkeyPatch) -> None:
    site = Site(virt_type="kvm", compute_driver="fake")
    facts = host_facts(site)
    assert facts.driver == "fake"
    assert facts.driver_class == "fake.FakeDriver"


# -- probes on real files ---------------------------------------------------------------


def test_probe_kvm_missing_device(tmp_path: Path) -> None:
    probe = probe_kvm(tmp_path / "kvm")
    assert not probe.usable
    assert "does not exist" in probe.detail


def test_probe_kvm_on_a_device_that_is_not_kvm() -> None:
    probe = probe_kvm(Path("/dev/null"))
    assert not probe.usable
    assert "/dev/null" in probe.detail


def test_kvm_provider_from_sys_module(tmp_path: Path) -> None:
    assert kvm_provider(tmp_path) == ""
    (tmp_path / "kvm").mkdir()
    (tmp_path / "kvm_amd").mkdir()
    assert kvm_provider(tmp_path) == "kvm_amd"
    (tmp_path / "kvm_pvm").mkdir()
    assert kvm_provider(tmp_path) == "kvm_pvm"


def test_libvirt_socket_probe(tmp_path: Path) -> None:
    path = tmp_path / "libvirt-sock"
    assert libvirt_socket_answers((path,)) is None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        assert libvirt_socket_answers((tmp_path / "nope", path)) == path


# -- this machine, for real -------------------------------------------------------------


def test_this_host() -> None:
    """The decision on this machine follows the real /dev/kvm probe, and says both facts."""
    facts = host_facts(Site())
    cpu_flags = cpu_has_virt_flags(read_cpuinfo())
    assert facts.cpu_virt_flags is cpu_flags
    kvm = probe_kvm()
    assert facts.kvm == kvm.detail
    assert facts.virt_type == ("kvm" if kvm.usable and kvm.provider != "kvm_pvm" else "qemu")
    assert (
        ("vmx/svm in /proc/cpuinfo" in facts.virt_type_reason)
        or ("unused by the fake driver" in facts.virt_type_reason)
        or (kvm.provider == "kvm_pvm" and "kvm_pvm" in facts.virt_type_reason)
    )
    if os.path.exists("/usr/sbin/libvirtd") and os.geteuid() == 0:
        assert facts.driver == "libvirt", facts.driver_reason
    assert set(facts.as_dict()) >= {"driver", "driver_reason", "virt_type", "virt_type_reason"}


def test_host_facts_step_reports_choice_and_reason() -> None:
    ctx = RunContext()
    result = run_step(HostFactsStep(Site()), ctx)
    assert result.status is Status.OK, result.error
    assert result.changes == []  # it decides; it never changes anything
    assert any(note.startswith("compute driver ") for note in ctx.notes)
    facts = host_facts(Site())
    if facts.driver == "libvirt":
        assert any(f"virt_type = {facts.virt_type}: " in note for note in ctx.notes)


def test_host_facts_step_fails_early_on_a_bad_wish() -> None:
    site = Site(compute_driver="hyperv", source="site.toml")
    result = run_step(HostFactsStep(site), RunContext())
    assert result.status is Status.FAILED
    assert result.error is not None
    assert result.error.startswith("site.toml: compute_driver must be")
