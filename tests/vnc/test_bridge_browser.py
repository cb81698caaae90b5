"""noVNC in Debian's headless Chromium through our bridge, to a real QEMU guest.

The page is our bridge's own noVNC URL (one-time ticket); the canvas it draws is compared
with the screen our RFB client decodes from the same QEMU over plain TCP, and a key typed
into the page reaches the guest.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from novnc_browser import canvas_rgb, chromium_available, crop_rgb, headless_chromium
from novnc_browser import wait_connected as wait_novnc_connected
from qemu_guest import QEMU, seabios_guest, text_rows
from test_rfb import _wait_rows

from novaconsole.vnc.bridge import ConsoleBridge
from novaconsole.vnc.framebuffer import Rect
from novaconsole.vnc.routes import TcpRoute
from novaconsole.vnc.session import RfbSession

SERVER = "browser-test-server"
#: SeaBIOS's banner and "Press ESC" rows: stable text (the cursor blinks further down).
TOP = 48

pytestmark = pytest.mark.skipif(
    QEMU is None or not chromium_available(),
    reason="needs qemu-system-x86_64 and Debian's chromium + chromium-driver",
)


@pytest.fixture
def guest_port() -> Iterator[int]:
    with seabios_guest("bridge-test-browser") as port:
        yield port


def _canvas_matches(driver: object, expected_top: bytes, timeout: float = 60) -> bytes:
    """Readiness: wait until the canvas's top rows are the expected pixels; the canvas."""
    deadline = time.monotonic() + timeout
    last: bytes = b""
    while time.monotonic() < deadline:
        shot = canvas_rgb(driver)
        if shot is not None:
            width, _, rgb = shot
            last = rgb
            if width == 720 and crop_rgb(width, rgb, 0, TOP) == expected_top:
                return rgb
        time.sleep(0.2)
    raise AssertionError(f"canvas never showed the guest's top rows ({len(last)} bytes seen)")


def test_novnc_in_chromium_shows_the_guest_and_types_into_it(guest_port: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    with (
        RfbSession.open_tcp("127.0.0.1", guest_port) as direct,
        ConsoleBridge() as bridge,
        headless_chromium() as driver,
    ):
        bridge.add_route(TcpRoute(SERVER, "127.0.0.1", guest_port))
        _wait_rows(direct, lambda r: r[:2] == [0, 2] and 6 not in r)
        expected = direct.snapshot().crop(Rect(0, 0, 720, TOP))
        ticket = bridge.issue_ticket(SERVER)
        url = bridge.novnc_url(SERVER, ticket)
        driver.get(url)
        status = wait_novnc_connected(driver)
        assert status.startswith("Connected"), status
        rgb = _canvas_matches(driver, expected)
        assert len(set(rgb[i : i + 3] for i in range(0, len(rgb), 3))) > 1  # not one colour

        # A key typed into the page reaches the guest: Escape opens SeaBIOS's boot menu,
        # which our own client (a second, shared session) then sees.
        driver.find_element(By.CSS_SELECTOR, "#screen canvas").send_keys(Keys.ESCAPE)
        rows = _wait_rows(direct, lambda r: 6 in r)
        assert rows[:3] == [0, 2, 4]

        # The page's ticket is spent: the same URL again is refused before the upgrade.
        driver.get(url)
        assert wait_novnc_connected(driver) == "Something went wrong, connection is closed"
        assert [s.client for s in bridge.sessions] == ["websocket"]
        assert text_rows(direct.snapshot())[:3] == [0, 2, 4]


def test_chromium_opened_with_the_launch_file(guest_port: int, tmp_path: object) -> None:
    """What `console --browser` gives a browser: a private file's path, no ticket in argv.

    The file posts its launch ticket; the bridge answers with the websocket ticket in a
    cookie and sends the browser on to noVNC's page, whose URL holds no secret.
    """
    from pathlib import Path

    with ConsoleBridge() as bridge, headless_chromium() as driver:
        bridge.add_route(TcpRoute(SERVER, "127.0.0.1", guest_port))
        page = bridge.launch_file(SERVER, directory=Path(str(tmp_path)))
        driver.get(page.as_uri())
        status = wait_novnc_connected(driver)
        assert status.startswith("Connected"), status
        assert driver.current_url == (
            f"http://127.0.0.1:{bridge.address[1]}"
            f"/vnc_lite.html?autoconnect=true&path=websockify%2F{SERVER}"
        )
        assert not page.exists()  # spent, so removed
        assert [s.client for s in bridge.sessions] == ["websocket"]
        # Reloading the page has no ticket left to present: refused before the upgrade.
        driver.refresh()
        assert wait_novnc_connected(driver) == "Something went wrong, connection is closed"
