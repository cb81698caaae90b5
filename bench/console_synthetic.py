"""Console on a synthetic cloud (10,000 servers and 2,000 hypervisors unless told): keystroke
to table, input during refreshes, memory. Each size has its own subsection in RESULTS.md
(10k, 30k and 100k are recorded so growth shows).

    python -m bench console_synthetic [--servers 10000] [--hypervisors 2000] [--write]

Runs the real app headless (Textual's ``run_test``) over the tests' ``FakeCloudSource``
serving a generated cloud as an API would (compressed JSON pages of 1,000 servers and
hypervisors, decoded on each call), so the process's memory and work are the console's.
Each console runs in a fresh process of its own (spawned), as a console runs:

* keystroke to filtered table: ``/`` then typing into the filter of the Servers pane; each
  keystroke is timed from posting the key to the first painted frame showing the filtered
  table, plus the filter step alone;
* input during refreshes: the same typing while the Servers pane auto-refreshes all its
  rows back to back (a second console), against the same typing with no refresh;
* memory: the process's resident set before the app starts, with all panes loaded, after
  the busy run, and its peak (VmHWM) from the console's start.

Goals (issue 10): at 100,000 servers and 10,000 hypervisors, keystroke-to-filtered-table
p95 < 50 ms, refreshes do not stall typing, RSS < 300 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import gc
import json
import multiprocessing
import os
import statistics
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

from textual import events

from bench.console_results import machine_line, tests_ui_on_path, write_subsection
from novaconsole.sources.openstack_source import PAGE_SIZE
from novaconsole.sources.rawstore import ApiPage, decode_page

GOAL_MS = 50.0
#: Kept with every rewrite: frame pacing moves with the machine's load.
HISTORY = (
    "History: p95 72 ms (NOT met; median 44 ms) on 2026-11-24 under load (another lab's "
    "tests running); p95 36-40 ms (met) in two runs later that day on an idle machine. The "
    "console's filter code did not change in between; on this shared 2-core machine the p95 is "
    "Textual's frame pacing competing for a core, so read both figures as the range. "
    "Before raw bodies were kept compressed per API page (issue 10): 134 MiB at 10,000 "
    "servers, 287 MiB at 30,000 (about 6 KB a server); 100,000 did not finish in 10 minutes. "
    "The same bench before that change (main at c644933, its fake holding decoded bodies) "
    "on 2026-12-04 19:23 UTC, 10,000 servers and 1,000 hypervisors, load 3-4: p95 39.0 ms "
    "idle, 59.0 ms refreshing, 134 MiB loaded."
)
TYPED = "host-12"  # narrows 10,000 rows step by step (h, ho, hos, ...)


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    """Start VmHWM again from the current resident set (Linux: ``clear_refs`` 5)."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def peak_rss_mib() -> float:
    """The process's peak resident set so far (VmHWM)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _servers(base: dict[str, Any], servers: int, hypervisors: int) -> Iterator[dict[str, Any]]:
    server0 = base["servers"][0]
    statuses = ["ACTIVE"] * 8 + ["SHUTOFF", "ERROR"]
    for i in range(servers):
        yield {**server0, "id": f"{i:08d}-1111-4222-8333-444455556666", "name": f"srv-{i:05d}",
               "status": statuses[i % 10], "OS-EXT-SRV-ATTR:host": f"host-{i % hypervisors:04d}",
               "addresses": {"net": [{"addr": f"10.2.{i // 256 % 256}.{i % 256}"}]},
               "tenant_id": f"project-{i % 50:02d}"}  # fmt: skip


def synthetic_recording(
    servers: int, hypervisors: int, *, server_list: bool = True
) -> dict[str, Any]:
    """A recording shaped like the lab's, scaled up (ids and names are deterministic).

    Its ``servers`` is a list; :class:`SyntheticCloudSource` keeps them as the API would
    send them instead (compressed pages), so the process's memory is the console's.
    """
    tests_ui_on_path()
    from fake_source import load_recording

    base = load_recording()
    hyp0 = base["hypervisors"][0]
    rp0 = next(iter(base["resource_providers"].values()))
    services = [s for s in base["services"] if s["binary"] != "nova-compute"]
    hyps, rps = [], {}
    for h in range(hypervisors):
        host = f"host-{h:04d}"
        uuid = f"00000000-0000-4000-8000-{h:012d}"
        services.append({**base["services"][-1], "id": f"svc-{h}", "host": host,
                         "state": "down" if h % 97 == 0 else "up"})  # fmt: skip
        hyps.append({**hyp0, "id": uuid, "hypervisor_hostname": host, "host_ip": f"10.1.{h // 256}.{h % 256}",
                     "service": {"host": host, "id": f"svc-{h}", "disabled_reason": None},
                     "servers": [{"uuid": f"s-{i}", "name": f"srv-{i:05d}"} for i in range(h, servers, hypervisors)]})  # fmt: skip
        rps[uuid] = {**rp0, "name": host, "usages": {"VCPU": h % 9, "MEMORY_MB": 64 * (h % 7), "DISK_GB": h % 5}}  # fmt: skip
    images = [{**base["images"][0], "id": f"img-{i}", "name": f"image-{i:03d}"} for i in range(200)]
    return {**base, "services": services, "hypervisors": hyps, "resource_providers": rps,
            "servers": list(_servers(base, servers, hypervisors)) if server_list else [],
            "images": images}  # fmt: skip


def _packed(value: Any) -> bytes:
    return zlib.compress(json.dumps(value, separators=(",", ":")).encode(), 1)


def synthetic_source(servers: int, hypervisors: int, page_size: int = PAGE_SIZE) -> Any:
    """A :class:`SyntheticCloudSource` (built page by page: no list of all servers)."""
    tests_ui_on_path()
    from fake_source import FakeCloudSource, load_recording

    class SyntheticCloudSource(FakeCloudSource):
        """The tests' fake over a generated cloud, holding the big lists as an API server
        would send them (compressed JSON pages), not as Python objects in this process;
        every call decodes fresh bodies, as the wire would give them."""

        def __init__(self) -> None:
            base = load_recording()
            recording = synthetic_recording(servers, hypervisors, server_list=False)
            hyps = recording.pop("hypervisors")
            self._hypervisor_pages = [
                _packed({"hypervisors": hyps[start : start + page_size]})
                for start in range(0, max(1, len(hyps)), page_size)
            ]
            del hyps
            self._services = _packed(recording["services"])
            self._providers = _packed(recording.pop("resource_providers"))
            recording["services"] = []
            super().__init__(recording, name="synthetic")
            del recording
            self._pages: list[bytes] = []
            page: list[dict[str, Any]] = []
            for server in _servers(base, servers, hypervisors):
                page.append(server)
                if len(page) == page_size:
                    self._pages.append(_packed({"servers": page}))
                    page = []
            if page or not self._pages:
                self._pages.append(_packed({"servers": page}))

        def raw_services(self) -> list[dict[str, Any]]:
            self._call("raw_services")
            services: list[dict[str, Any]] = json.loads(zlib.decompress(self._services))
            return services

        def raw_hypervisors(
            self,
        ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, dict[str, Any]]]:
            pages, services, providers = self.raw_hypervisor_parts()
            return [e for page in pages for e in page.entries], services, providers

        def raw_hypervisor_parts(
            self,
        ) -> tuple[Iterator[ApiPage], list[dict[str, Any]], dict[str, dict[str, Any]]]:
            self._call("raw_hypervisors")

            def pages() -> Iterator[ApiPage]:
                for packed in self._hypervisor_pages:
                    content = zlib.decompress(packed)
                    yield decode_page(content, "hypervisors")

            return (
                pages(),
                json.loads(zlib.decompress(self._services)),
                json.loads(zlib.decompress(self._providers)),
            )

        def raw_server_pages(self, deleted: bool = False) -> Iterator[ApiPage]:
            self._call("raw_deleted_servers" if deleted else "raw_servers")
            for packed in [] if deleted else self._pages:
                content = zlib.decompress(packed)
                yield decode_page(content, "servers")

        def raw_servers(self) -> list[dict[str, Any]]:
            return [e for page in self.raw_server_pages() for e in page.entries]

    return SyntheticCloudSource()


def _stats(values: Sequence[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[max(0, round(0.95 * len(ordered)) - 1)]
    return f"{statistics.median(values):.1f} | {p95:.1f} | {max(values):.1f} | {len(values)}"


async def _measure(servers: int, hypervisors: int, phase: str) -> dict[str, Any]:
    """One console in this process: ``idle`` (load, then typing) or ``busy`` (typing while
    the Servers pane refreshes back to back)."""
    tests_ui_on_path()
    from console_helpers import frozen_clock, settle

    from novaconsole.ui.app import make_app
    from novaconsole.ui.settings import ConsoleSettings

    source = synthetic_source(servers, hypervisors)
    gc.collect()
    rss_before = rss_mib()
    reset_peak_rss()  # the peak from here on is the console's, not building the fake cloud
    results: dict[str, Any] = {"rss_before": rss_before, "load_before": os.getloadavg()}

    async def typing_latencies(pilot: Any, rounds: int) -> tuple[list[float], list[float]]:
        """Per keystroke: from sending the key to the first painted frame showing the
        filtered table (the screen's compositor refresh, wrapped below); and the filter
        step alone. Pilot's own idle waits (about 100 ms per press even on 3 rows) are
        not counted: the next key is sent once the frame is measured."""
        app = pilot.app
        pane = app.pane("servers")
        screen = app.screen
        frames: list[tuple[float, str]] = []
        original = screen._compositor_refresh

        def painted() -> None:
            original()
            frames.append((time.perf_counter(), pane.filter_text))

        screen._compositor_refresh = painted
        frame_ms, filter_ms = [], []
        try:
            for _ in range(rounds):
                await pilot.press("slash", "ctrl+u")
                for count in range(1, len(TYPED) + 1):
                    expected = TYPED[:count]
                    frames.clear()
                    start = time.perf_counter()
                    app.post_message(events.Key(TYPED[count - 1], TYPED[count - 1]))
                    while not any(text == expected for _, text in frames):
                        await asyncio.sleep(0.0005)
                        if time.perf_counter() - start > 10:
                            raise RuntimeError(f"no frame showed the filter {expected!r}")
                    done = next(t for t, text in frames if text == expected)
                    frame_ms.append((done - start) * 1000)
                    # The filter step alone, from scratch on the same text.
                    pane.table.row_filter = None
                    start = time.perf_counter()
                    pane.set_filter(expected)
                    filter_ms.append((time.perf_counter() - start) * 1000)
                results["matches"] = len(pane.table.shown)
                await pilot.press("enter", "escape")
        finally:
            screen._compositor_refresh = original
        return frame_ms, filter_ms

    if phase == "idle":
        # 1. Keystrokes, no refresh running.
        app = make_app(connect=lambda name: source, settings=ConsoleSettings(refresh=0),
                       clock=frozen_clock, remember_theme=False)  # fmt: skip
        async with app.run_test(size=(160, 50)) as pilot:
            start = time.perf_counter()
            await settle(pilot)
            results["load_s"] = time.perf_counter() - start
            await pilot.press("5")
            await settle(pilot)
            assert len(app.pane("servers").table.data.rows) == servers
            assert len(app.pane("hypervisors").table.data.rows) == hypervisors
            gc.collect()
            results["rss_loaded"] = rss_mib()
            results["idle_press"], results["filter_only"] = await typing_latencies(pilot, 5)
    else:
        # 2. The same typing while the Servers pane refreshes back to back.
        app = make_app(connect=lambda name: source, settings=ConsoleSettings(refresh=0.05),
                       clock=frozen_clock, remember_theme=False)  # fmt: skip
        async with app.run_test(size=(160, 50)) as pilot:
            await settle(pilot)
            await pilot.press("5")
            await settle(pilot)
            pane = app.pane("servers")
            before = pane.refresh_count
            start = time.perf_counter()
            results["busy_press"], _ = await typing_latencies(pilot, 5)
            results["busy_s"] = time.perf_counter() - start
            results["refreshes_during"] = pane.refresh_count - before
            gc.collect()
            results["rss_busy"] = rss_mib()
    results["rss_peak"] = peak_rss_mib()
    return results


def _phase(servers: int, hypervisors: int, phase: str) -> dict[str, Any]:
    return asyncio.run(_measure(servers, hypervisors, phase))


def measure(servers: int, hypervisors: int, phase: str) -> dict[str, Any]:
    """:func:`_measure` in a fresh process: one console per process, as in use. (In one
    process, a finished ``run_test`` app stays referenced by Textual's per-thread print
    capture and copied contexts, so a second console's RSS included the first's rows.)"""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_phase, servers, hypervisors, phase).result()


def report(res: dict[str, Any], argv: Sequence[str], servers: int, hypervisors: int) -> str:
    p95 = sorted(res["idle_press"])[max(0, round(0.95 * len(res["idle_press"])) - 1)]
    verdict = "met" if p95 < GOAL_MS else "NOT met"
    lines = [
        *machine_line(argv),
        "",
        f"Synthetic cloud: {servers} servers, {hypervisors} hypervisors (+ their services and "
        "Placement providers), 200 images; all five panes loaded in "
        f"{res['load_s']:.2f} s headless. Typing `{TYPED}` into the Servers filter "
        f"({len(TYPED)} keystrokes x 5 rounds; the last keeps {res['matches']} rows).",
        "",
        "| keystroke to filtered table (ms) | median | p95 | max | n |",
        "|---|---:|---:|---:|---:|",
        f"| key sent to painted frame, no refresh running | {_stats(res['idle_press'])} |",
        f"| filter step alone, from scratch on all rows | {_stats(res['filter_only'])} |",
        f"| key sent to painted frame, 10-server cloud (floor) | {_stats(res['floor_press'])} |",
        f"| key sent to painted frame, Servers refreshing back to back | {_stats(res['busy_press'])} |",
        "",
        f"Goal keystroke-to-filtered-table < {GOAL_MS:.0f} ms (p95, no refresh): **{verdict}**. "
        f"During the busy run {res['refreshes_during']} full refreshes of {servers} servers "
        f"completed in {res['busy_s']:.1f} s of typing.",
        "",
        f"Memory (VmRSS): {res['rss_before']:.0f} MiB with the data generated and nothing "
        f"shown; {res['rss_loaded']:.0f} MiB with the console running and every pane loaded "
        f"(+{res['rss_loaded'] - res['rss_before']:.0f} MiB); {res['rss_busy']:.0f} MiB after "
        f"the busy run (a console of its own, in a fresh process); peak {res['rss_peak']:.0f} "
        "MiB (VmHWM from the console's start, loads and refreshes included). Load average (1/5 min): "
        f"{res['load_before'][0]:.1f}/{res['load_before'][1]:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f}/{os.getloadavg()[1]:.1f} when done (2 cores, shared).",
        "",
        HISTORY,
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench console_synthetic", description=__doc__)
    parser.add_argument("--servers", type=int, default=10_000)
    parser.add_argument("--hypervisors", type=int, default=2_000)
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args(argv)
    res = measure(args.servers, args.hypervisors, "idle")
    busy = measure(args.servers, args.hypervisors, "busy")
    res.update(
        busy_press=busy["busy_press"], busy_s=busy["busy_s"], rss_busy=busy["rss_busy"],
        refreshes_during=busy["refreshes_during"], rss_peak=max(res["rss_peak"], busy["rss_peak"]),
    )  # fmt: skip
    # The same typing on a 10-server cloud: what a frame costs here whatever the data.
    res["floor_press"] = measure(10, 2, "idle")["idle_press"]
    command = ["python", "-m", "bench", "console_synthetic", *(argv or [])]
    text = report(res, command, args.servers, args.hypervisors)
    print(text)
    if args.write:
        write_subsection(
            f"Synthetic cloud, {args.servers:,} servers: keystrokes, refreshes, memory", text
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
