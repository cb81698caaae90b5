"""Our console bridge on the lab: each route to a real guest, the CLI, the TUI hook, verify,
and noVNC in headless Chromium.

Boots one server (``bridge-test-*``, no network) from the lab's guest image when the lab
has one (``novaconsole-lab-guest``), else its smallest image, and deletes it afterwards.
The guest image's tty1 shell takes typed commands (clear the screen, print lines); on the
blank image SeaBIOS halts at "No bootable device." and Ctrl-Alt-Del (QEMU extended key
events: raw scancodes) makes it reboot. Either way a key event visibly changes the screen.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

import pytest
from labtools import boot_lab_server, novaconsole_cmd, pick_image_and_flavor, run_novaconsole

from novaconsole.vnc.bridge import LOG, ConsoleBridge
from novaconsole.vnc.framebuffer import Framebuffer
from novaconsole.vnc.png import read_png_rgb
from novaconsole.vnc.probe import ProbeError, probe_vnc_server
from novaconsole.vnc.routes import ServerInfo, make_route
from novaconsole.vnc.session import RfbSession

pytestmark = pytest.mark.lab

GUEST_IMAGE = "novaconsole-lab-guest"


@dataclass
class LabServer:
    conn: Any
    server: Any
    info: ServerInfo
    image: str


@pytest.fixture(scope="module")
def lab_server(lab_cloud: str) -> Iterator[LabServer]:
    with boot_lab_server(lab_cloud, "bridge-test", prefer_guest=True) as booted:
        server = booted.server
        info = ServerInfo(server.id, server.name, server.status, server.compute_host)
        yield LabServer(booted.conn, server, info, booted.image)


@pytest.fixture
def captured() -> Iterator[list[str]]:
    import logging

    lines: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Handler()
    LOG.addHandler(handler)
    previous = LOG.level
    LOG.setLevel(logging.DEBUG)
    yield lines
    LOG.removeHandler(handler)
    LOG.setLevel(previous)


def bright_rows(fb: Framebuffer, glyph: int = 16) -> list[int]:
    """Which text rows hold any bright pixel."""
    rows: set[int] = set()
    stride = fb.width * 3
    for y in range(fb.height):
        if max(fb.pixels[y * stride : (y + 1) * stride], default=0) > 128:
            rows.add(y // glyph)
    return sorted(rows)


def wait_screen(
    session: RfbSession, predicate: Callable[[Framebuffer], bool], timeout: float = 120
) -> Framebuffer:
    """Readiness: the first screen (after an update) that satisfies ``predicate``."""
    deadline = time.monotonic() + timeout
    seen = -1
    while (left := deadline - time.monotonic()) > 0:
        if session.wait_for_update(min(left, 2), after=max(seen, 0) if seen >= 0 else None):
            seen = session.update_count
        fb = session.snapshot()
        if fb.width and predicate(fb):
            return fb
        if session.closed:
            break
    raise AssertionError(
        f"screen never matched; rows {bright_rows(session.snapshot())}, error {session.error}"
    )


def _bridged(bridge: ConsoleBridge, lab_server: LabServer, via: str) -> RfbSession:
    route = make_route(via, lab_server.conn, lab_server.info)
    bridge.add_route(route)
    ticket = bridge.issue_ticket(lab_server.info.id)
    return RfbSession.open_url(bridge.websocket_url(lab_server.info.id, ticket), timeout=60)


@pytest.mark.parametrize("via", ["nova", "direct", "agent"])
def test_route_through_the_bridge_shows_the_guest_and_takes_keys(
    lab_server: LabServer, via: str, captured: list[str]
) -> None:
    with ConsoleBridge() as bridge, _bridged(bridge, lab_server, via) as session:
        hs = session.handshake
        assert hs.version == (3, 8)
        assert lab_server.server.instance_name in hs.name  # QEMU names it after the domain
        shown = wait_screen(session, lambda fb: not fb.is_blank())
        assert (shown.width, shown.height) == (hs.width, hs.height) or shown.width > 0
        if lab_server.image == GUEST_IMAGE:
            # The guest's shell on tty1: clear the screen, then make it print lines.
            # Keys typed while the kernel still boots are lost when the shell opens tty1,
            # so "clear" is typed again every few seconds until the screen clears.
            deadline = time.monotonic() + 180
            while True:
                session.type_text("clear\n")
                try:
                    wait_screen(session, lambda fb: len(bright_rows(fb)) <= 2, timeout=5)
                    break
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise
            session.type_text("uname -a; echo bridge-$((6*7))\n")
            wait_screen(session, lambda fb: len(bright_rows(fb)) >= 3)
        else:
            # SeaBIOS halted at "No bootable device." (text rows 0-3 and 5); Ctrl-Alt-Del
            # reboots it: the "Boot failed" row goes, then comes back after the reboot.
            wait_screen(session, lambda fb: {0, 1, 2, 3, 5} <= set(bright_rows(fb)))
            session.press("ctrl+alt+delete")
            wait_screen(session, lambda fb: 3 not in bright_rows(fb))
            wait_screen(session, lambda fb: {0, 1, 2, 3, 5} <= set(bright_rows(fb)))
        upstream = bridge.sessions[0].upstream
    assert bridge.sessions[0].end_reason in ("client closed", "VNC server closed")
    assert upstream.startswith("nova-novncproxy at" if via == "nova" else "VNC server at")
    text = "\n".join(captured)
    assert "token=" not in text.replace("token=***", "")


def test_agent_route_without_agents_config_is_one_line(
    lab_server: LabServer, lab_cloud: str, tmp_path: Any
) -> None:
    missing = tmp_path / "no-agents.toml"
    proc = run_novaconsole(
        "console", lab_server.info.id, "--via", "agent", "--os-cloud", lab_cloud,
        env={"NOVACONSOLE_AGENTS_CONFIG": str(missing)}, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "novaconsole: error: this path needs the compute agent "
        f"(see `novaconsole --plugin compute-agent`): no agents config at {missing}"
    )


@pytest.mark.parametrize("via", ["nova", "direct", "agent"])
def test_cli_screenshot(lab_server: LabServer, lab_cloud: str, tmp_path: Any, via: str) -> None:
    out = tmp_path / f"screen-{via}.png"
    proc = run_novaconsole(
        "console", lab_server.info.name, "--via", via, "--screenshot", str(out), "-f", "json",
        "--os-cloud", lab_cloud, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["server"]["id"] == lab_server.info.id
    assert data["via"] == via
    assert data["blank"] is False
    width, height, rgb = read_png_rgb(out.read_bytes())
    assert (width, height) == (data["width"], data["height"])
    assert len(set(rgb)) > 1
    assert "token" not in proc.stdout + proc.stderr


def _read_json(stream: IO[str]) -> dict[str, Any]:
    text = ""
    while True:
        line = stream.readline()
        assert line, f"no JSON from the console command (got {text!r})"
        text += line
        try:
            return dict(json.loads(text))
        except json.JSONDecodeError:
            continue


def _console_process(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        novaconsole_cmd("console", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"console command did not end after its session: {err}") from None
    return proc.returncode, err


def test_cli_vnc_port_serves_one_client(lab_server: LabServer, lab_cloud: str) -> None:
    proc = _console_process(lab_server.info.id, "--vnc", "-f", "json", "--os-cloud", lab_cloud)
    try:
        data = _read_json(proc.stdout)  # type: ignore[arg-type]
        host, _, port = data["vnc"].rpartition(":")
        assert host == "127.0.0.1"
        password = data["vnc_password"]
        with pytest.raises(ProbeError, match="requires authentication"):
            probe_vnc_server(host, int(port), timeout=60)  # no password: not served
        hs = probe_vnc_server(host, int(port), timeout=60, password=password)
        assert lab_server.server.instance_name in hs.name
    finally:
        code, err = _finish(proc)
    assert code == 0, err
    assert "session ended (client closed)" in err
    assert "token" not in err
    assert password not in err


def test_cli_browser_with_chromium(lab_server: LabServer, lab_cloud: str) -> None:
    """noVNC in headless Chromium through `console --browser`, compared with our client."""
    from novnc_browser import canvas_rgb, chromium_available, headless_chromium, wait_connected

    if not chromium_available():
        pytest.skip("needs Debian's chromium and chromium-driver")
    proc = _console_process(lab_server.info.id, "--browser", "-f", "json", "--os-cloud", lab_cloud)
    try:
        data = _read_json(proc.stdout)  # type: ignore[arg-type]
        # No graphical browser in the test's environment: the one-time URL is printed.
        assert data["opened_in_browser"] is False
        url = data["url"]
        assert url.startswith("http://127.0.0.1:")
        assert "/launch/" in url
        assert data["upstream"].startswith("nova-novncproxy at")
        ticket = parse_qs(urlsplit(url).query)["ticket"][0]
        with (
            ConsoleBridge() as ours,
            _bridged(ours, lab_server, "direct") as reference,
            headless_chromium() as driver,
        ):
            driver.get(url)
            status = wait_connected(driver)
            assert status.startswith("Connected"), status
            assert lab_server.server.instance_name in status
            # Readiness: the canvas shows the same top rows as our own client decodes.
            wait_screen(reference, lambda fb: not fb.is_blank())
            deadline = time.monotonic() + 60
            match = False
            while not match and time.monotonic() < deadline:
                shot = canvas_rgb(driver)
                ref = reference.snapshot()
                if shot is not None and shot[0] == ref.width:
                    band = ref.width * 3 * 48
                    match = shot[2][:band] == bytes(ref.pixels[:band])
                time.sleep(0.2)
            assert match, "the canvas never showed the screen our RFB client decoded"
    finally:
        code, err = _finish(proc)
    assert code == 0, err
    assert ticket not in err
    assert "token=" not in err


def test_open_console_hook_gives_a_working_one_time_url(
    lab_server: LabServer, lab_cloud: str
) -> None:
    import http.client

    from novaconsole_consoles import novaconsole_open_console

    url = novaconsole_open_console(server_id=lab_server.info.id, cloud=lab_cloud)
    assert url is not None  # no graphical browser here: the one-time launch URL
    parts = urlsplit(url)
    assert parts.path == f"/launch/{lab_server.info.id}"

    def load() -> http.client.HTTPResponse:
        http_conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        http_conn.request("GET", f"{parts.path}?{parts.query}")
        return http_conn.getresponse()

    first = load()
    assert first.status == 303
    location = first.getheader("Location") or ""
    assert "ticket" not in location
    assert "token" not in location
    cookie = (first.getheader("Set-Cookie") or "").partition(";")[0]
    import websocket

    ws = websocket.create_connection(
        f"ws://{parts.netloc}/websockify/{lab_server.info.id}",
        timeout=60,
        subprotocols=["binary"],
        header=[f"Cookie: {cookie}"],
    )
    try:
        assert ws.recv()[:4] == b"RFB "
    finally:
        ws.close()
    assert load().status == 403  # spent: a copy of the URL opens nothing


def test_verify_console(lab_server: LabServer, lab_cloud: str) -> None:
    proc = run_novaconsole(
        "verify", "--console", lab_server.info.id, "-f", "json", "--os-cloud", lab_cloud,
        timeout=300,
    )  # fmt: skip
    report = json.loads(proc.stdout)
    console = next(c for c in report["checks"] if c["name"] == "console")
    assert console["ok"], console["summary"]
    assert console["facts"]["blank"] is False
    assert "token" not in proc.stdout.replace('"token', "")


def test_unknown_nova_token_is_one_line_without_the_token(lab_server: LabServer) -> None:
    """What the direct route says when Nova no longer knows a token (expired or forged)."""
    from openstack import exceptions

    from novaconsole.vnc.routes import nova_failure

    token = uuid.uuid4().hex + uuid.uuid4().hex[:4]
    with pytest.raises(exceptions.SDKException) as info:
        lab_server.conn.compute.validate_console_auth_token(token)
    assert token in str(info.value)  # the SDK's own message names it ...
    line = nova_failure(info.value, "GET /os-console-auth-tokens", secret=token).one_line()
    assert token not in line  # ... ours does not
    assert line.startswith("GET /os-console-auth-tokens: ")
    assert "\n" not in line


def test_taken_port_is_one_line(lab_server: LabServer, lab_cloud: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = run_novaconsole(
            "console", lab_server.info.id, "--listen", f"127.0.0.1:{port}",
            "--os-cloud", lab_cloud, timeout=120,
        )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"novaconsole: error: cannot listen on 127.0.0.1:{port} for the console bridge: "
        "address already in use (another process listens there)"
    )


def test_unknown_server_is_one_line(lab_cloud: str) -> None:
    proc = run_novaconsole("console", "bridge-test-no-such-server", "--os-cloud", lab_cloud)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "novaconsole: error: no server named or with ID 'bridge-test-no-such-server' "
        f"in cloud {lab_cloud!r}"
    )


def test_nova_proxy_down_is_one_line_and_direct_still_works(
    lab_server: LabServer, lab_cloud: str, tmp_path: Any
) -> None:
    """nova-novncproxy not answering, without stopping the shared lab's own: Nova's real
    console URL and token, sent to a port nothing listens on (``--proxy-url``), is what a
    stopped proxy looks like from here (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    out = tmp_path / "screen.png"
    proc = run_novaconsole(
        "console", lab_server.info.id, "--via", "nova", "--proxy-url", f"http://127.0.0.1:{dead}",
        "--screenshot", str(out), "--os-cloud", lab_cloud, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"novaconsole: error: nova-novncproxy at 127.0.0.1:{dead} (--proxy-url) is not "
        "answering: connection refused; `--via direct` reaches the compute node's VNC "
        "server without it"
    )
    assert not out.exists()
    # The same command's browser mode fails the same way before it serves anything.
    proc = run_novaconsole(
        "console", lab_server.info.id, "--proxy-url", f"http://127.0.0.1:{dead}", "--url",
        "--os-cloud", lab_cloud, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "(--proxy-url) is not answering: connection refused" in proc.stderr
    # Bypassing the proxy still shows the screen.
    proc = run_novaconsole(
        "console", lab_server.info.id, "--via", "direct", "--screenshot", str(out),
        "--os-cloud", lab_cloud, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert read_png_rgb(out.read_bytes())[0] > 0
    # And --proxy-url at the lab's real proxy works: the override itself is sound.
    proc = run_novaconsole(
        "console", lab_server.info.id, "--proxy-url", "http://127.0.0.1:6080",
        "--screenshot", str(out), "-f", "json", "--os-cloud", lab_cloud, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["upstream"] == "nova-novncproxy at 127.0.0.1:6080"


def test_server_in_error_is_one_line(lab_cloud: str) -> None:
    """A server Nova could not place (ERROR, no valid host: its flavor requires a trait no
    provider has) has no console: one line, exit 2."""
    import openstack

    conn = openstack.connect(cloud=lab_cloud)
    suffix = uuid.uuid4().hex[:8]
    flavor = conn.compute.create_flavor(name=f"consoles-nowhere-{suffix}", ram=128, vcpus=1, disk=0)
    server = None
    try:
        conn.compute.create_flavor_extra_specs(
            flavor, {"trait:CUSTOM_CONSOLES_NOWHERE": "required"}
        )
        image, _ = pick_image_and_flavor(conn)
        server = conn.compute.create_server(
            name=f"consoles-error-{suffix}", image_id=image.id, flavor_id=flavor.id, networks="none"
        )
        server = conn.compute.wait_for_server(
            server, status="ERROR", failures=["ACTIVE"], interval=1, wait=300
        )
        proc = run_novaconsole("console", server.id, "--os-cloud", lab_cloud, timeout=120)
        assert proc.returncode == 2
        assert proc.stdout == ""
        assert proc.stderr.strip() == (
            f"novaconsole: error: server {server.name} ({server.id}) in cloud {lab_cloud!r} "
            "is ERROR: Nova serves a console only while it runs"
        )
    finally:
        if server is not None:
            conn.compute.delete_server(server, ignore_missing=True)
            conn.compute.wait_for_delete(server, interval=1, wait=300)
        conn.compute.delete_flavor(flavor, ignore_missing=True)
        conn.close()


def test_cli_serial_runs_a_command_and_detaches(lab_server: LabServer, lab_cloud: str) -> None:
    """`console --serial` on a pipe: a command reaches the guest's ttyS0 shell, Ctrl-] detaches."""
    import select

    if lab_server.image != GUEST_IMAGE:
        pytest.skip(f"the blank image has no serial shell (needs {GUEST_IMAGE})")
    proc = subprocess.Popen(
        novaconsole_cmd("console", lab_server.info.id, "--serial", "--os-cloud", lab_cloud),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    seen = b""
    try:
        deadline = time.monotonic() + 180
        next_try = 0.0
        # Readiness: the shell may still be starting; the command is sent until answered.
        # The answer is a line of its own ("...: not found" would mean the line was cut);
        # both commands' answers, before detaching (on a busy machine `uname` answers later).
        answers = (b"\nbridge-serial-42\r", b"\nLinux\r")
        while not all(a in seen for a in answers) and time.monotonic() < deadline:
            if time.monotonic() >= next_try:
                proc.stdin.write(b"echo bridge-serial-$((6*7)); uname -s\n")
                proc.stdin.flush()
                next_try = time.monotonic() + 5
            ready, _, _ = select.select([proc.stdout], [], [], 1)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                seen += chunk
        proc.stdin.write(b"\x1d")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    seen += out
    assert b"\nbridge-serial-42\r" in seen
    assert b"\nLinux\r" in seen
    assert proc.returncode == 0, err.decode()
    assert b"token=" not in seen + err


def test_stopped_server_is_one_line(lab_server: LabServer, lab_cloud: str) -> None:
    """Last: it stops the module's server."""
    conn = lab_server.conn
    conn.compute.stop_server(lab_server.server)
    conn.compute.wait_for_server(lab_server.server, status="SHUTOFF", interval=1, wait=300)
    proc = run_novaconsole("console", lab_server.info.id, "--os-cloud", lab_cloud, timeout=120)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert line.startswith(
        f"novaconsole: error: server {lab_server.info.name} ({lab_server.info.id}) in cloud "
        f"{lab_cloud!r} is SHUTOFF: Nova serves a console only while it runs"
    )
    assert "\n" not in line
