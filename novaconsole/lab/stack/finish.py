"""The lab's last steps: a test image and flavor, and every Nova service reporting up."""

from __future__ import annotations

import time

from novaconsole.errors import StepFailed
from novaconsole.lab.stack.common import lab_conn
from novaconsole.steps import RunContext, Step

TEST_IMAGE = "novaconsole-test-raw"
TEST_FLAVOR = "nc.tiny"


class TestImageStep(Step[str | None]):
    """A small raw test image, uploaded and active (1 MiB: the guest shows SeaBIOS)."""

    name = "lab.image"
    phase = "finish"
    description = f"image {TEST_IMAGE} active in Glance"

    def check(self, ctx: RunContext) -> str | None:
        image = lab_conn(ctx).image.find_image(TEST_IMAGE, ignore_missing=True)
        return None if image is None else str(image.status)

    def plan(self, ctx: RunContext, observed: str | None) -> list[str]:
        if observed == "active":
            return []
        if observed is None:
            return [f"upload {TEST_IMAGE} (raw, 1 MiB)"]
        return [f"replace {TEST_IMAGE} (status {observed})"]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        conn = lab_conn(ctx)
        old = conn.image.find_image(TEST_IMAGE, ignore_missing=True)
        if old is not None:
            conn.image.delete_image(old)
        conn.image.create_image(
            name=TEST_IMAGE,
            data=b"\0" * (1 << 20),
            disk_format="raw",
            container_format="bare",
            visibility="public",
            wait=True,
            timeout=120,
        )


class TestFlavorStep(Step[bool]):
    """A tiny flavor for test servers (64 MB RAM, 1 vCPU, 1 GB disk)."""

    name = "lab.flavor"
    phase = "finish"
    description = f"flavor {TEST_FLAVOR}"

    def check(self, ctx: RunContext) -> bool:
        return lab_conn(ctx).compute.find_flavor(TEST_FLAVOR, ignore_missing=True) is not None

    def plan(self, ctx: RunContext, observed: bool) -> list[str]:
        return [] if observed else [f"create flavor {TEST_FLAVOR}"]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        lab_conn(ctx).compute.create_flavor(
            name=TEST_FLAVOR, ram=64, vcpus=1, disk=1, is_public=True
        )


class ComputeServicesUpStep(Step[list[str]]):
    """Every nova service reports up before `lab up` says the lab is up.

    A nova-compute that was just (re)started keeps its old heartbeat until its first
    report (report_interval 10 s), so a lab that says "up" could still show it down.
    """

    name = "lab.compute-services-up"
    phase = "finish"
    description = "every Nova service reports up"
    timeout = 120.0

    def check(self, ctx: RunContext) -> list[str]:
        services = list(lab_conn(ctx).compute.services())
        if not services:
            return ["(no Nova service registered yet)"]
        return [f"{s.binary}@{s.host}" for s in services if s.state != "up"]

    def plan(self, ctx: RunContext, observed: list[str]) -> list[str]:
        return [f"wait for {name} to report up" for name in observed]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        from keystoneauth1 import exceptions as ka

        deadline = time.monotonic() + self.timeout
        while True:
            try:
                down = self.check(ctx)
            except ka.ConnectFailure as exc:
                # A just-started nova-api, or a keep-alive connection the server closed
                # just as this poll reused it (gunicorn keeps idle ones 2 s): ask again.
                if time.monotonic() > deadline:
                    raise StepFailed(f"nova-api does not answer: {exc}") from None
                down = ["nova-api"]
            if not down:
                return
            if time.monotonic() > deadline:
                raise StepFailed(
                    f"{', '.join(down)} still down after {self.timeout:.0f} s",
                    hint="see the service's log under the lab's services/logs",
                )
            time.sleep(1.5)
