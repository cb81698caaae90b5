"""Record the lab's real API answers into ``tests/ui/data/lab_recording.json``.

    .venv/bin/python tests/ui/record_fixture.py [--os-cloud novaconsole-lab]

It stores the raw bodies the real :class:`OpenStackSource` fetched (services, token catalog,
probe results, images, hypervisors, Placement providers, servers, console logs), which
:class:`tests.ui.fake_source.FakeCloudSource` replays. Tokens are never part of these bodies.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from novaconsole.cloud import LAB_CLOUD
from novaconsole.sources.base import PROBE_TIMEOUT
from novaconsole.sources.openstack_source import open_cloud_source
from novaconsole.sources.parse import server_row

OUT = Path(__file__).parent / "data" / "lab_recording.json"


def record(cloud: str) -> dict[str, Any]:
    source = open_cloud_source(cloud, timeout=30)
    info = source.info()
    catalog = source.raw_catalog()
    urls = sorted({str(e["url"]) for s in catalog for e in s.get("endpoints", ())})
    hypervisors, services, providers = source.raw_hypervisors()
    images = source.raw_images()
    for visibility in ("community",):  # Glance lists these only when asked
        seen = {i["id"] for i in images}
        images += [i for i in source.raw_images(visibility) if i["id"] not in seen]
    servers = source.raw_servers()
    consoles = {}
    for raw in servers:
        try:
            consoles[raw["id"]] = source.console_output(server_row(raw), 60)
        except Exception as exc:  # a server without a console log is still worth recording
            consoles[raw["id"]] = f"(no console log: {exc})"
    return {
        "recorded_from": cloud,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "info": {
            "region": info.region,
            "user": info.user,
            "project": info.project,
            "versions": dict(info.versions),
            "is_admin": info.is_admin,
        },
        "services": services,
        "catalog": catalog,
        "probes": {url: list(source.probe(url, PROBE_TIMEOUT)) for url in urls},
        "images": images,
        "hypervisors": hypervisors,
        "resource_providers": providers,
        "servers": servers,
        "console_output": consoles,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--os-cloud", default=LAB_CLOUD)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    data = record(args.os_cloud)
    args.out.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(f"recorded {args.os_cloud} into {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
