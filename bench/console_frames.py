"""In-terminal console on the lab: ``c`` to first frame, frames/s and CPU, key to screen.

    python -m bench console_frames [--os-cloud novaconsole-lab] [--repeat 5] [--seconds 10] [--write]

Boots a server of its own (``rfb-bench-...``, the lab's Linux guest, no network; deleted
afterwards) and waits for its shell on VNC (tty1). Then, in this process, the console
(``make_app`` over the real source, headless, 160x44) is driven with Pilot:

- **c to first frame**: from pressing ``c`` on the server to the first non-blank frame
  drawn (Nova's console URL, websocket to nova-novncproxy, RFB handshake, first update),
  ``--repeat`` rounds, leaving with ``ctrl+]`` between them;
- **frames/s and CPU while the screen changes**: the guest runs ``while :; do date; done``
  on its VNC console for ``--seconds``; frames drawn, RFB updates received, and this
  process's CPU time (TUI plus RFB threads) per wall second;
- **key to updated screen**: one ``#`` typed at the prompt until the framebuffer shows
  it (lit pixels above the blinking cursor's maximum), ``--repeat`` keys.

Goals (issue 8): first frame <= 2 s; key press to updated screen <= 150 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench._common import machine_facts, write_section

FIRST_FRAME_GOAL_S = 2.0
KEY_GOAL_MS = 150.0
GUEST_IMAGE = "novaconsole-lab-guest"
#: Kept with every rewrite: the figures move with the machine's load.
HISTORY = (
    "History: first run 2026-12-02 01:19 UTC (load average 5.5, other helpers' tests "
    "running), before the renderer sampled boxes with C-level gathers: first frame 3.18 s "
    "median (NOT met; handshake 1.29 s, first update to drawn 0.89 s), key to screen 154 ms "
    "(NOT met), 2.9 frames drawn/s from 9.5 updates/s (a full 720x400 render took ~136 ms, "
    "now ~22 ms)."
)


_BRIGHT = bytes(range(129, 256))


def _lit(pixels: bytes | bytearray) -> int:
    """Bright pixels (text is light grey on black in the Linux console), counted in C."""
    green = bytes(pixels[1::3])
    return len(green) - len(green.translate(None, _BRIGHT))


def _drawn(console: Any) -> bytes:
    """The framebuffer as last drawn by the screen (not merely received)."""
    from novaconsole.ui.framebuffer_view import FramebufferView

    fb = console.query_one(FramebufferView)._framebuffer
    return bytes(fb.pixels) if fb is not None else b""


def _boot(conn: Any) -> Any:
    image = conn.image.find_image(GUEST_IMAGE, ignore_missing=False)
    flavors = [f for f in conn.compute.flavors() if f.ram >= (image.min_ram or 0)]
    flavor = min(flavors, key=lambda f: (f.ram, f.vcpus, f.disk))
    server = conn.compute.create_server(
        name=f"rfb-bench-{uuid.uuid4().hex[:8]}",
        image_id=image.id,
        flavor_id=flavor.id,
        networks="none",
    )
    return conn.compute.wait_for_server(
        server, status="ACTIVE", failures=["ERROR"], interval=1, wait=600
    )


async def _until(pilot: Any, check: Callable[[], bool], what: str, timeout: float = 180) -> float:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"console_frames: timed out waiting for {what}")
        await pilot.pause(0.005)
    return time.monotonic()


async def _measure(pilot: Any, server_name: str, repeat: int, seconds: float) -> dict[str, Any]:
    from novaconsole.ui.console_screen import ConsoleScreen

    app = pilot.app
    results: dict[str, Any] = {"first_frame": [], "stages": [], "keys_ms": []}
    for _ in range(60):
        await pilot.pause(0.1)
        if app.pane("servers").table.data.rows:
            break
    await pilot.press("5", "slash", *server_name, "enter")
    await pilot.pause(0.5)

    def screen() -> ConsoleScreen | None:
        current = app.screen
        return current if isinstance(current, ConsoleScreen) else None

    # Wait (untimed) for the guest's shell prompt on tty1 before measuring anything.
    await pilot.press("c")
    await _until(
        pilot, lambda: (s := screen()) is not None and "first_frame" in s.timings, "a first frame"
    )
    console = screen()
    assert console is not None
    assert console.session is not None
    session = console.session
    await pilot.press("enter")
    await _until(pilot, lambda: _lit(session.snapshot().pixels) > 300, "the guest's prompt", 300)
    await pilot.press("ctrl+right_square_bracket")
    await pilot.pause(0.5)

    for _ in range(repeat):
        pressed = time.monotonic()
        await pilot.press("c")
        done = await _until(
            pilot,
            lambda: (s := screen()) is not None and "first_frame" in s.timings,
            "a first frame",
        )
        s = screen()
        assert s is not None
        results["first_frame"].append(done - pressed)
        t = s.timings
        results["stages"].append(
            (t["url"] - t["opened"], t["connected"] - t["url"], t["first_frame"] - t["connected"])
        )
        await pilot.press("ctrl+right_square_bracket")
        await pilot.pause(0.3)

    # Key to updated screen, then frames/s under a scrolling screen, in one session.
    await pilot.press("c")
    await _until(
        pilot, lambda: (s := screen()) is not None and "first_frame" in s.timings, "a first frame"
    )
    console = screen()
    assert console is not None
    assert console.session is not None
    session = console.session
    await pilot.press("ctrl+u")
    for _ in range(repeat):
        baseline = 0
        end = time.monotonic() + 1.2  # both states of the blinking cursor
        while time.monotonic() < end:
            baseline = max(baseline, _lit(_drawn(console)))
            await pilot.pause(0.05)
        pressed = time.monotonic()
        await pilot.press("#")
        done = await _until(
            pilot,
            lambda baseline=baseline: _lit(_drawn(console)) > baseline + 20,  # type: ignore[misc]
            "the typed key drawn on the console screen",
            30,
        )
        results["keys_ms"].append((done - pressed) * 1000)
    await pilot.press("ctrl+u")

    await pilot.press(*"while :; do date; done", "enter")
    await pilot.pause(1.0)
    frames0, updates0 = console.frames_drawn, session.update_count
    cpu0, wall0 = time.process_time(), time.monotonic()
    await pilot.pause(seconds)
    wall = time.monotonic() - wall0
    results["fps"] = (console.frames_drawn - frames0) / wall
    results["ups"] = (session.update_count - updates0) / wall
    results["cpu"] = (time.process_time() - cpu0) / wall
    results["encodings"] = dict(session.client.encoding_counts)
    await pilot.press("ctrl+c")
    await pilot.pause(0.5)
    await pilot.press("ctrl+right_square_bracket")
    return results


def _row(label: str, values: Sequence[float], unit_scale: float = 1.0) -> str:
    xs = [v * unit_scale for v in values]
    return f"| {label} | {statistics.median(xs):.2f} | {min(xs):.2f} | {max(xs):.2f} | {len(xs)} |"


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench console_frames")
    parser.add_argument("--os-cloud", default="novaconsole-lab")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args(list(argv))

    import openstack

    from novaconsole.sources.openstack_source import open_cloud_source
    from novaconsole.ui.app import make_app
    from novaconsole.ui.settings import ConsoleSettings

    conn = openstack.connect(cloud=args.os_cloud)
    server = _boot(conn)
    source = open_cloud_source(args.os_cloud, timeout=30)
    try:
        app = make_app(
            connect=lambda name: source,
            cloud=source.name,
            settings=ConsoleSettings(refresh=0, timeout=30),
            remember_theme=False,
        )
        app.screenshot_dir = Path("/tmp")
        results: dict[str, Any] = {}

        async def run() -> None:
            async with app.run_test(size=(160, 44)) as pilot:
                results.update(await _measure(pilot, server.name, args.repeat, args.seconds))

        asyncio.run(run())
    finally:
        source.close()
        conn.compute.delete_server(server, ignore_missing=True)
        conn.compute.wait_for_delete(server, interval=1, wait=600)
        conn.close()

    first = results["first_frame"]
    keys = results["keys_ms"]
    stages = results["stages"]
    first_ok = statistics.median(first) <= FIRST_FRAME_GOAL_S
    key_ok = statistics.median(keys) <= KEY_GOAL_MS
    command = "python -m bench console_frames"
    if list(argv):
        command += " " + " ".join(argv)
    text = "\n".join(
        [
            "## In-terminal console",
            "",
            f"Command: `{command}`  ",
            machine_facts(),
            "",
            f"A server of its own from `{GUEST_IMAGE}` on cloud `{args.os_cloud}` (TCG guest), "
            "the console headless at 160x44 driven by Pilot in the benchmark's process, "
            "through nova-novncproxy.",
            "",
            "| what | median | min | max | n |",
            "|---|---:|---:|---:|---:|",
            _row("`c` to first frame drawn (s)", first),
            _row("  Nova's console URL (s)", [s[0] for s in stages]),
            _row("  websocket + RFB handshake (s)", [s[1] for s in stages]),
            _row("  first update to drawn (s)", [s[2] for s in stages]),
            _row("key press to updated screen (ms)", keys),
            "",
            f"While the guest's screen scrolls (`while :; do date; done` on tty1, "
            f"{args.seconds:g} s): {results['fps']:.1f} frames drawn/s from "
            f"{results['ups']:.1f} RFB updates/s, process CPU {results['cpu'] * 100:.0f}% of one "
            f"core (TUI and RFB threads); rectangles by encoding {results['encodings']}.",
            "",
            f"Goal first frame <= {FIRST_FRAME_GOAL_S:g} s: **{'met' if first_ok else 'NOT met'}**. "
            f"Goal key to screen <= {KEY_GOAL_MS:g} ms: **{'met' if key_ok else 'NOT met'}**.",
            "",
            HISTORY,
        ]
    )
    print(text)
    if args.write:
        write_section("In-terminal console", text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
