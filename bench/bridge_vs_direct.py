"""Console bridge vs direct TCP vs nova-novncproxy: round-trip latency, throughput, 50 sessions.

    python -m bench bridge_vs_direct [--server NAME] [--rounds 200] [--frames 20]
                                     [--sessions 50] [--write]

One lab server's VNC console is reached four ways: TCP straight to the compute node's VNC
port (``direct``), nova-novncproxy's websocket (``novncproxy``), our bridge in front of
the direct route (``bridge``) and our bridge in front of nova-novncproxy
(``bridge+novncproxy``). Each path completes the RFB handshake, asks for Raw encoding and
times non-incremental FramebufferUpdateRequest -> FramebufferUpdate round trips (a 16x16
region: latency) and full-screen updates (throughput). Then a bridge in a process of its
own serves ``--sessions`` concurrent sessions (handshake plus one full frame each) while
its RSS and CPU time are read from /proc. Without ``--server`` a ``bridge-bench-*`` server
is booted from the lab's smallest image and deleted afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench._common import machine_facts, write_section
from novaconsole.vnc.probe import (
    RfbHandshake,
    SocketTransport,
    Transport,
    TransportClosed,
    WebSocketTransport,
    perform_handshake,
)

HEADING = "Console bridge vs direct"
CLOUD = "novaconsole-lab"


class Stream:
    """Exact reads over a probe Transport; :meth:`skip` discards pixels without copying
    them into one buffer (the client's own cost stays out of the path's figures)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.buffer = bytearray()

    def read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.buffer += self.transport.receive()
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def skip(self, n: int) -> None:
        taken = min(n, len(self.buffer))
        del self.buffer[:taken]
        n -= taken
        while n > 0:
            chunk = self.transport.receive()
            if len(chunk) > n:
                self.buffer += memoryview(chunk)[n:]
                return
            n -= len(chunk)


class LeanWebSocketTransport:
    """websocket-client's upgrade and (masked) sends; receives decoded straight off the
    socket, one ``recv`` per chunk as :class:`SocketTransport` does.

    websocket-client decodes each frame in Python (three to seven ``recv`` calls, joins)
    and cost this process more CPU than the bridge's whole relay; a browser decodes in
    C++. Measuring with it measured the client, so the websocket rows use this reader
    (the same for our bridge and for stock websockify) and one row keeps websocket-client.
    """

    CHUNK = 65536

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._sock = ws.sock
        self._left = 0  # payload bytes of the current data frame not read yet
        self._header = bytearray()

    def _exact(self, n: int) -> bytes:
        while len(self._header) < n:
            data = self._sock.recv(n - len(self._header))
            if not data:
                raise TransportClosed()
            self._header += data
        out = bytes(self._header[:n])
        del self._header[:n]
        return out

    def receive(self) -> bytes:
        while self._left == 0:
            b1, b2 = self._exact(2)
            length = b2 & 0x7F
            if length == 126:
                (length,) = struct.unpack(">H", self._exact(2))
            elif length == 127:
                (length,) = struct.unpack(">Q", self._exact(8))
            if b2 & 0x80:
                raise RuntimeError("the server sent a masked frame")
            opcode = b1 & 0x0F
            if opcode == 0x8:
                raise TransportClosed("close frame")
            if opcode in (0x9, 0xA):  # ping/pong: not data
                self._exact(length)
                continue
            self._left = length
        data = self._sock.recv(min(self._left, self.CHUNK))
        if not data:
            raise TransportClosed()
        self._left -= len(data)
        return bytes(data)

    def send(self, data: bytes) -> None:
        self._ws.send_binary(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ws.close(timeout=1.0)


def set_raw(transport: Transport) -> None:
    # SetEncodings: Raw only, so every reply is w*h*bpp/8 bytes of pixels.
    transport.send(struct.pack(">BxHi", 2, 1, 0))


def request(transport: Transport, x: int, y: int, w: int, h: int) -> None:
    transport.send(struct.pack(">BBHHHH", 3, 0, x, y, w, h))


def read_update(stream: Stream, bytes_per_pixel: int) -> int:
    """One FramebufferUpdate (Raw rects); returns its pixel bytes."""
    while True:
        kind = stream.read(1)[0]
        if kind == 0:
            break
        if kind == 2:  # Bell
            continue
        if kind == 3:  # ServerCutText
            (length,) = struct.unpack(">xxxI", stream.read(7))
            stream.read(length)
            continue
        raise RuntimeError(f"unexpected RFB server message type {kind}")
    (rects,) = struct.unpack(">xH", stream.read(3))
    total = 0
    for _ in range(rects):
        _, _, w, h, encoding = struct.unpack(">HHHHi", stream.read(12))
        if encoding != 0:
            raise RuntimeError(f"unexpected encoding {encoding} (asked for Raw only)")
        total += w * h * bytes_per_pixel
        stream.skip(w * h * bytes_per_pixel)
    return total


@dataclass
class PathResult:
    name: str
    where: str
    rtt_ms: list[float]
    throughput_mb_s: float

    def row(self, direct: PathResult | None) -> str:
        p50 = statistics.median(self.rtt_ms)
        p95 = sorted(self.rtt_ms)[int(len(self.rtt_ms) * 0.95) - 1]
        added = f"{p50 - statistics.median(direct.rtt_ms):+.3f}" if direct else "-"
        ratio = f"{self.throughput_mb_s / direct.throughput_mb_s:.0%}" if direct else "-"
        return (
            f"| {self.name} | {self.where} | {p50:.3f} | {p95:.3f} | {added} | "
            f"{self.throughput_mb_s:.1f} | {ratio} |"
        )


def measure(name: str, where: str, transport: Transport, rounds: int, frames: int) -> PathResult:
    hs: RfbHandshake = perform_handshake(transport, where)
    bpp = hs.pixel_format.bits_per_pixel // 8
    stream = Stream(transport)
    set_raw(transport)
    for _ in range(5):  # warm-up
        request(transport, 0, 0, 16, 16)
        read_update(stream, bpp)
    rtts: list[float] = []
    for _ in range(rounds):
        start = time.perf_counter()
        request(transport, 0, 0, 16, 16)
        read_update(stream, bpp)
        rtts.append((time.perf_counter() - start) * 1000)
    moved = 0
    start = time.perf_counter()
    for _ in range(frames):
        request(transport, 0, 0, hs.width, hs.height)
        moved += read_update(stream, bpp)
    elapsed = time.perf_counter() - start
    transport.close()
    return PathResult(name, where, rtts, moved / elapsed / 1e6)


def websocket_transport(url: str, origin: str | None, *, lean: bool = True) -> Transport:
    from novaconsole.vnc.probe import open_websocket, parse_console_url

    ws = open_websocket(parse_console_url(url), origin, 30)
    return LeanWebSocketTransport(ws) if lean else WebSocketTransport(ws)


# -- a VNC server that answers at once (QEMU waits for its refresh timer) ------------------


class InstantRfbServer:
    """RFB 3.8, security None, 720x400x32; every FramebufferUpdateRequest answered at once
    with Raw pixels, so a round trip measures the path, not QEMU's update timer."""

    WIDTH, HEIGHT = 720, 400

    def __init__(self) -> None:
        import socket

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.pixels = bytes(range(256)) * (self.WIDTH * self.HEIGHT * 4 // 256)
        self.pixels_view = memoryview(self.pixels)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: Any) -> None:
        import socket

        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = Stream(SocketTransport(conn))
        try:
            conn.sendall(b"RFB 003.008\n")
            stream.read(12)
            conn.sendall(b"\x01\x01")
            stream.read(1)
            conn.sendall(struct.pack(">I", 0))
            stream.read(1)
            name = b"instant"
            conn.sendall(
                struct.pack(">HHBBBBHHHBBBxxx", self.WIDTH, self.HEIGHT, 32, 24, 0, 1,
                            255, 255, 255, 16, 8, 0)
                + struct.pack(">I", len(name)) + name
            )  # fmt: skip
            while True:
                kind = stream.read(1)[0]
                if kind == 0:
                    stream.read(19)
                elif kind == 2:
                    (count,) = struct.unpack(">xH", stream.read(3))
                    stream.read(4 * count)
                elif kind == 3:
                    _, x, y, w, h = struct.unpack(">BHHHH", stream.read(9))
                    conn.sendall(struct.pack(">BxHHHHHi", 0, 1, x, y, w, h, 0))
                    conn.sendall(self.pixels_view[: w * h * 4])
                elif kind == 4:
                    stream.read(7)
                elif kind == 5:
                    stream.read(5)
                elif kind == 6:
                    (length,) = struct.unpack(">xxxI", stream.read(7))
                    stream.read(length)
                else:
                    return
        except Exception:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


def serve_instant() -> int:
    """Child mode: an InstantRfbServer; prints its port, runs until stdin ends."""
    server = InstantRfbServer()
    print(json.dumps({"port": server.port}), flush=True)
    sys.stdin.read()
    server.close()
    return 0


class InstantServerProcess:
    """The instant VNC server in a process of its own: it never competes with the
    measuring client for one interpreter's GIL."""

    def __init__(self) -> None:
        self.child = subprocess.Popen(
            [sys.executable, "-m", "bench.bridge_vs_direct", "--serve-instant"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        assert self.child.stdout is not None
        self.port = int(json.loads(self.child.stdout.readline())["port"])

    def close(self) -> None:
        if self.child.stdin:
            self.child.stdin.close()
        self.child.wait(timeout=30)


# -- 50 sessions against a bridge process ------------------------------------------------


def serve(host: str, port: int, sessions: int) -> int:
    """Child mode: a bridge to host:port; prints its websocket URLs, runs until stdin ends."""
    from novaconsole.vnc.bridge import ConsoleBridge
    from novaconsole.vnc.routes import TcpRoute

    with ConsoleBridge() as bridge:
        bridge.add_route(TcpRoute("bench", host, port))
        urls = [
            bridge.websocket_url("bench", bridge.issue_ticket("bench")) for _ in range(sessions)
        ]
        _, vnc_port = bridge.open_vnc_port("bench")
        print(json.dumps({"pid": os.getpid(), "urls": urls, "vnc_port": vnc_port}), flush=True)
        sys.stdin.read()
    return 0


def proc_usage(pid: int) -> tuple[int, float]:
    """(RSS in KiB, user+system CPU seconds) of ``pid``."""
    rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks


class BridgeProcess:
    """A bridge in a process of its own (so its CPU and memory are its own)."""

    def __init__(self, host: str, port: int, tickets: int) -> None:
        self.child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.bridge_vs_direct",
                "--serve",
                f"{host}:{port}",
                str(tickets),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        assert self.child.stdout is not None
        info = json.loads(self.child.stdout.readline())
        self.pid = int(info["pid"])
        self.urls: list[str] = list(info["urls"])
        self.vnc_port = int(info["vnc_port"])

    def close(self) -> None:
        if self.child.stdin:
            self.child.stdin.close()
        self.child.wait(timeout=30)


def first_frame(transport: Transport, label: str) -> Transport:
    """One session's handshake and first full frame (Raw): what each concurrent one does."""
    hs = perform_handshake(transport, label)
    set_raw(transport)
    request(transport, 0, 0, hs.width, hs.height)
    read_update(Stream(transport), hs.pixel_format.bits_per_pixel // 8)
    return transport


def direct_concurrent_sessions(host: str, port: int, count: int) -> dict[str, Any]:
    """The peer of :func:`concurrent_sessions`: the same sessions straight to the VNC
    server over TCP, all held open at once (how many the server itself serves)."""
    import socket

    opened: list[Transport] = []
    errors: list[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(count + 1)
    release = threading.Event()

    def one() -> None:
        try:
            sock = socket.create_connection((host, port), timeout=10)
            sock.settimeout(10)
            transport = first_frame(SocketTransport(sock), "direct")
            with lock:
                opened.append(transport)
        except Exception as exc:
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
        ready.wait()
        release.wait()

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    ready.wait()
    release.set()
    for transport in opened:
        transport.close()
    for thread in threads:
        thread.join(timeout=10)
    return {"sessions": len(opened), "errors": errors[:3]}


def concurrent_sessions(host: str, port: int, count: int) -> dict[str, Any]:
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.bridge_vs_direct", "--serve", f"{host}:{port}", str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        info = json.loads(child.stdout.readline())
        pid, urls = int(info["pid"]), list(info["urls"])
        rss_idle, cpu_idle = proc_usage(pid)
        transports: list[Transport] = []
        errors: list[str] = []
        lock = threading.Lock()
        opened = threading.Barrier(count + 1)
        release = threading.Event()

        def one(url: str) -> None:
            try:
                transport = first_frame(websocket_transport(url, None), "bridge")
                with lock:
                    transports.append(transport)
            except Exception as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
            opened.wait()
            release.wait()

        start = time.perf_counter()
        threads = [threading.Thread(target=one, args=(u,), daemon=True) for u in urls]
        for thread in threads:
            thread.start()
        opened.wait()
        elapsed = time.perf_counter() - start
        rss_busy, cpu_busy = proc_usage(pid)
        release.set()
        for transport in transports:
            transport.close()
        for thread in threads:
            thread.join(timeout=10)
        return {
            "sessions": len(transports),
            "errors": errors[:3],
            "seconds": elapsed,
            "rss_idle_mib": rss_idle / 1024,
            "rss_busy_mib": rss_busy / 1024,
            "cpu_s": cpu_busy - cpu_idle,
        }
    finally:
        if child.stdin:
            child.stdin.close()
        child.wait(timeout=30)


def local_paths(port: int, rounds: int, frames: int, repeat: int) -> list[PathResult]:
    """Each path to the instant server at ``port``, ``repeat`` times interleaved (so load
    spikes hit every path alike): the RTTs pooled, the median throughput of the runs."""
    import socket

    names = [
        ("direct", f"TCP 127.0.0.1:{port}"),
        ("bridge", "our bridge (own process) -> TCP"),
        ("bridge, websocket-client", "the same, read with websocket-client"),
        ("bridge VNC port", "our bridge's TCP port -> TCP"),
        ("websockify", "stock websockify 0.13 process -> TCP"),
    ]
    runs: dict[str, list[PathResult]] = {name: [] for name, _ in names}
    # Stock websockify (what nova-novncproxy is built on) to the same server: the
    # websocket framing's own cost, for comparison with ours.
    ws_port = _free_port()
    stock = subprocess.Popen(
        [sys.executable, "-m", "websockify", f"127.0.0.1:{ws_port}", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_port(ws_port)
        for _ in range(repeat):
            runs["direct"].append(
                measure(
                    "direct",
                    "",
                    SocketTransport(socket.create_connection(("127.0.0.1", port))),
                    rounds,
                    frames,
                )
            )
            separate = BridgeProcess("127.0.0.1", port, 2)
            try:
                runs["bridge"].append(
                    measure(
                        "bridge", "", websocket_transport(separate.urls[0], None), rounds, frames
                    )
                )
                runs["bridge, websocket-client"].append(
                    measure(
                        "bridge",
                        "",
                        websocket_transport(separate.urls[1], None, lean=False),
                        rounds,
                        frames,
                    )
                )
                vnc = socket.create_connection(("127.0.0.1", separate.vnc_port))
                runs["bridge VNC port"].append(
                    measure("bridge VNC port", "", SocketTransport(vnc), rounds, frames)
                )
            finally:
                separate.close()
            runs["websockify"].append(
                measure(
                    "websockify",
                    "",
                    websocket_transport(f"ws://127.0.0.1:{ws_port}/?token=none", None),
                    rounds,
                    frames,
                )
            )
    finally:
        os.killpg(stock.pid, 15)
        stock.wait(timeout=30)
    return [
        PathResult(
            name,
            where,
            [rtt for run in runs[name] for rtt in run.rtt_ms],
            statistics.median(run.throughput_mb_s for run in runs[name]),
        )
        for name, where in names
    ]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- the run -------------------------------------------------------------------------------


def local_only(args: argparse.Namespace) -> int:
    """The local server's table alone (no cloud): for working on the bridge's own cost."""
    instant = InstantServerProcess()
    try:
        local = local_paths(instant.port, args.rounds, args.frames, args.local_repeat)
    finally:
        instant.close()
    print(machine_facts())
    print(
        "| path | via | RTT p50 (ms) | RTT p95 (ms) | added p50 vs direct (ms) | MB/s | vs direct |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    print(local[0].row(None))
    for r in local[1:]:
        print(r.row(local[0]))
    return 0


def _boot(conn: Any) -> Any:
    images = [i for i in conn.image.images() if i.status == "active"]
    image = min(images, key=lambda i: i.size or 0)
    flavor = min(
        (f for f in conn.compute.flavors() if f.ram >= (image.min_ram or 0)),
        key=lambda f: (f.ram, f.vcpus, f.disk),
    )
    server = conn.compute.create_server(
        name=f"bridge-bench-{uuid.uuid4().hex[:8]}",
        image_id=image.id,
        flavor_id=flavor.id,
        networks="none",
    )
    return conn.compute.wait_for_server(server, status="ACTIVE", failures=["ERROR"], wait=600)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench bridge_vs_direct")
    parser.add_argument("--server", help="an ACTIVE lab server (default: boot one)")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument(
        "--local-repeat", type=int, default=5, help="runs of each path to the local server"
    )
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    parser.add_argument(
        "--local-only",
        action="store_true",
        help="only the local instant server's paths (no lab); prints, never writes",
    )
    parser.add_argument("--serve", nargs=2, metavar=("HOST:PORT", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-instant", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_instant:
        return serve_instant()
    if args.serve:
        host, _, port = args.serve[0].rpartition(":")
        return serve(host, int(port), int(args.serve[1]))

    if args.local_only:
        return local_only(args)

    import openstack

    from novaconsole.vnc.bridge import ConsoleBridge
    from novaconsole.vnc.routes import DirectRoute, NovaRoute, ServerInfo, find_server

    conn = openstack.connect(cloud=CLOUD)
    booted = None if args.server else _boot(conn)
    try:
        name = str(args.server) if booted is None else str(booted.id)
        info: ServerInfo = find_server(conn, name, CLOUD)
        direct_route, nova_route = DirectRoute(conn, info), NovaRoute(conn, info)
        host, port, _ = direct_route.target()
        import socket

        results: list[PathResult] = []

        def run(name: str, where: str, make: Callable[[], Transport]) -> None:
            results.append(measure(name, where, make(), args.rounds, args.frames))

        run(
            "direct",
            f"TCP {host}:{port}",
            lambda: SocketTransport(socket.create_connection((host, port), timeout=30)),
        )

        def via_novncproxy() -> Transport:
            from novaconsole.vnc.routes import PeerTransport

            return PeerTransport(nova_route.open(30), 30)

        run("novncproxy", "nova-novncproxy websocket", via_novncproxy)
        with ConsoleBridge() as bridge:
            bridge.add_route(direct_route)
            url = bridge.websocket_url(info.id, bridge.issue_ticket(info.id))
            run("bridge", "our bridge -> TCP", lambda: websocket_transport(url, None))
            bridge.add_route(nova_route)
            url = bridge.websocket_url(info.id, bridge.issue_ticket(info.id))
            run(
                "bridge+novncproxy",
                "our bridge -> nova-novncproxy",
                lambda: websocket_transport(url, None),
            )
        qemu_many = concurrent_sessions(host, port, args.sessions)
        time.sleep(5)  # QEMU lets go of the bridge's sessions before its peer's
        qemu_direct = direct_concurrent_sessions(host, port, args.sessions)
        instant = InstantServerProcess()
        try:
            local = local_paths(instant.port, args.rounds, args.frames, args.local_repeat)
            many = concurrent_sessions("127.0.0.1", instant.port, args.sessions)
        finally:
            instant.close()
    finally:
        if booted is not None:
            conn.compute.delete_server(booted)
            conn.compute.wait_for_delete(booted, wait=600)

    direct = results[0]
    table_head = [
        "| path | via | RTT p50 (ms) | RTT p95 (ms) | added p50 vs direct (ms) | MB/s | vs direct |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lines = [
        f"## {HEADING}",
        "",
        f"Command: `python -m bench bridge_vs_direct {' '.join(argv or sys.argv[1:])}`".rstrip()
        + "  ",
        machine_facts() + "  ",
        f"{args.rounds} 16x16 FramebufferUpdateRequest -> FramebufferUpdate round trips and "
        f"{args.frames} full frames (Raw) per path.",
        "",
        f"### To the lab guest's QEMU ({info.name}, VNC at {host}:{port})",
        "",
        *table_head,
        *[r.row(None if r is direct else direct) for r in results],
        "",
        "QEMU answers a request on its display refresh timer, not at once, so these round "
        "trips mostly measure QEMU; the paths differ by less than the timer's jitter.",
        "",
        f"{qemu_many['sessions']} of {args.sessions} concurrent sessions through a bridge "
        f"process to this QEMU succeeded"
        + (f" (the rest: {qemu_many['errors'][0]})" if qemu_many["errors"] else "")
        + f"; straight to its VNC port over TCP, {qemu_direct['sessions']} of {args.sessions}"
        + (f" (the rest: {qemu_direct['errors'][0]})" if qemu_direct["errors"] else "")
        + ": how many sessions at once QEMU's VNC server itself completes.",
        "",
        "### To a local VNC server that answers at once (the path's own cost)",
        "",
        *table_head,
        local[0].row(None),
        *[r.row(local[0]) for r in local[1:]],
        "",
        f"Each path {args.local_repeat} times, interleaved; RTTs pooled, MB/s the median "
        "run. The server runs in a process of its own, every bridge in another; the "
        "websocket rows are read by a lean frame reader (one `recv` per chunk, as the "
        "direct row), except the one read with websocket-client, which decodes each "
        "frame in Python. One request in flight at a time, as noVNC does.",
        "",
        f"{many['sessions']} concurrent sessions through a bridge process (handshake + one "
        f"full frame each, {many['seconds']:.2f} s to open all): RSS {many['rss_idle_mib']:.1f} "
        f"MiB idle, {many['rss_busy_mib']:.1f} MiB with all open; {many['cpu_s']:.2f} s CPU"
        + (f"; errors: {'; '.join(many['errors'])}" if many["errors"] else "")
        + ".",
    ]
    added = statistics.median(local[1].rtt_ms) - statistics.median(local[0].rtt_ms)
    ratio = local[1].throughput_mb_s / local[0].throughput_mb_s
    lines += [
        "",
        f"Goals (local server): added latency p50 {added:.3f} ms (goal <= 1 ms: "
        f"{'met' if added <= 1 else 'not met'}); throughput {ratio:.0%} of direct "
        f"(goal >= 90%: {'met' if ratio >= 0.9 else 'not met'}).",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(HEADING, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
