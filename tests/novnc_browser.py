"""Debian's headless Chromium, driven by selenium, reading noVNC's canvas.

Used by the bridge's browser tests (fast: a local QEMU; lab: a lab server through Nova).
The flags are the environment's: no sandbox (root), no GPU, no network of its own, and a
fresh profile per run.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)

# noVNC 1.3's vnc_lite.html: the RFB object draws into a canvas inside #screen.
_CANVAS_RGBA = """
const canvas = document.querySelector('#screen canvas');
if (!canvas || !canvas.width || !canvas.height) { return null; }
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let binary = '';
for (let i = 0; i < data.length; i += 0x8000) {
  binary += String.fromCharCode.apply(null, data.subarray(i, i + 0x8000));
}
return [canvas.width, canvas.height, btoa(binary)];
"""


def chromium_available() -> bool:
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


@contextmanager
def headless_chromium() -> Iterator[Any]:
    """A selenium WebDriver on headless Chromium with a throw-away profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="novaconsole-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def novnc_status(driver: Any) -> str:
    return str(driver.execute_script("return document.getElementById('status').textContent"))


def canvas_rgb(driver: Any) -> tuple[int, int, bytes] | None:
    """noVNC's canvas as (width, height, RGB bytes), or None before it has a size."""
    result = driver.execute_script(_CANVAS_RGBA)
    if not result:
        return None
    width, height, encoded = result
    rgba = base64.b64decode(encoded)
    rgb = bytearray(len(rgba) // 4 * 3)
    rgb[0::3], rgb[1::3], rgb[2::3] = rgba[0::4], rgba[1::4], rgba[2::4]
    return int(width), int(height), bytes(rgb)


def wait_connected(driver: Any, timeout: float = 60) -> str:
    """Readiness: noVNC's status says it connected (or disconnected: returned as is)."""
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = novnc_status(driver)
        # noVNC 1.3 says "Connected (...) to: NAME", "Disconnected", or, when the websocket
        # never opened (our 403), "Something went wrong, connection is closed".
        if status.startswith(("Connected", "Disconnected", "Something went wrong")):
            return status
        time.sleep(0.1)
    return status


def crop_rgb(width: int, rgb: bytes, top: int, bottom: int) -> bytes:
    """Rows ``top``..``bottom`` of an RGB image ``width`` pixels wide."""
    return rgb[top * width * 3 : bottom * width * 3]
