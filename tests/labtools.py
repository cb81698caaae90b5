"""Helpers for tests that drive the ``novaconsole`` command of this checkout, and for lab
tests that boot a server of their own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

#: When this test session started, as oslo.log stamps lines (local time, to the second).
SESSION_START = time.strftime("%Y-%m-%d %H:%M:%S")


def novaconsole_cmd(*args: str) -> list[str]:
    """The argv that runs this checkout's ``novaconsole``."""
    return [sys.executable, "-m", "novaconsole", *args]


def run_novaconsole(
    *args: str, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        novaconsole_cmd(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        check=False,
    )


#: The lab's Linux guest (a shell on tty1 and the serial console); see novaconsole.lab.guest.
GUEST_IMAGE = "novaconsole-lab-guest"
#: Readiness deadline for a boot on this shared 2-core machine (not a speed assertion).
BOOT_WAIT = 600


@dataclass(frozen=True)
class BootedServer:
    """A server a test booted on the lab: the SDK connection, the server, its image's name."""

    conn: Any
    server: Any
    image: str


def pick_image_and_flavor(
    conn: Any, *, image: str | None = None, flavor: str | None = None, prefer_guest: bool = False
) -> tuple[Any, Any]:
    """``image``/``flavor`` by name, else the lab's guest image (``prefer_guest``) or its
    smallest bootable image (not a guest's ``-kernel``/``-ramdisk``), and the smallest
    flavor that fits it."""
    if image is not None:
        found = conn.image.find_image(image, ignore_missing=True)
        assert found is not None, f"the lab has no image {image!r} (lab up uploads it)"
    else:
        images = [i for i in conn.image.images() if i.status == "active"]
        bootable = [i for i in images if not i.name.endswith(("-kernel", "-ramdisk"))]
        guests = [i for i in bootable if i.name == GUEST_IMAGE] if prefer_guest else []
        assert bootable, "the lab has no active image"
        found = guests[0] if guests else min(bootable, key=lambda i: i.size or 0)
    if flavor is not None:
        return found, conn.compute.find_flavor(flavor, ignore_missing=False)
    fits = [
        f
        for f in conn.compute.flavors()
        if f.ram >= (found.min_ram or 0) and (f.disk == 0 or f.disk >= (found.min_disk or 0))
    ]
    assert fits, f"no flavor fits image {found.name!r}"
    return found, min(fits, key=lambda f: (f.ram, f.vcpus, f.disk))


@contextmanager
def boot_lab_server(
    cloud: str,
    prefix: str,
    *,
    image: str | None = None,
    flavor: str | None = None,
    prefer_guest: bool = False,
    wait: int = BOOT_WAIT,
) -> Iterator[BootedServer]:
    """Boot ``PREFIX-<8 hex>`` with no network (``--nic none``) through Nova, wait for
    ACTIVE (a fault fails the test with Nova's message), and delete it afterwards."""
    import openstack

    conn = openstack.connect(cloud=cloud)
    try:
        chosen, size = pick_image_and_flavor(
            conn, image=image, flavor=flavor, prefer_guest=prefer_guest
        )
        server = conn.compute.create_server(
            name=f"{prefix}-{uuid.uuid4().hex[:8]}",
            image_id=chosen.id,
            flavor_id=size.id,
            networks="none",
        )
        try:
            try:
                server = conn.compute.wait_for_server(
                    server, status="ACTIVE", failures=["ERROR"], interval=1, wait=wait
                )
            except openstack.exceptions.ResourceFailure:
                fault = conn.compute.get_server(server).fault or {}
                pytest.fail(f"server went to ERROR: {fault.get('message', 'no fault recorded')}")
            yield BootedServer(conn, server, str(chosen.name))
        finally:
            conn.compute.delete_server(server, ignore_missing=True)
            conn.compute.wait_for_delete(server, interval=1, wait=BOOT_WAIT)
    finally:
        conn.close()
