"""What the compute steps share: the run's host facts, binaries, the service keeper, paths."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from novaconsole.errors import ConfigError
from novaconsole.services import ServiceKeeper, keeper_for_site
from novaconsole_compute.facts import ComputeFacts, host_facts

if TYPE_CHECKING:
    from novaconsole.site import Site
    from novaconsole.steps import RunContext

#: Key of the facts in :attr:`RunContext.cache` (probed once per run).
FACTS_CACHE_KEY = "novaconsole_compute.facts"


def facts_for(ctx: RunContext, site: Site) -> ComputeFacts:
    """This run's host facts (probed on first use, then shared by every compute step)."""
    cached = ctx.cache.get(FACTS_CACHE_KEY)
    if isinstance(cached, ComputeFacts):
        return cached
    facts = host_facts(site)
    ctx.cache[FACTS_CACHE_KEY] = facts
    return facts


def nova_binary(site: Site, name: str) -> Path:
    """A Nova/oslo program (``nova-compute``, ``privsep-helper``...) from nova_bin_dir or PATH."""
    if site.nova_bin_dir is not None:
        candidate = site.nova_bin_dir / name
        if candidate.exists():
            return candidate
        raise ConfigError(f"{name} not found in nova_bin_dir {site.nova_bin_dir} ({site.source})")
    found = shutil.which(name)
    if found is None:
        raise ConfigError(
            f"{name} is not on PATH (set nova_bin_dir in {site.source})",
            hint="install Nova (pip install nova) or point nova_bin_dir at its venv's bin",
        )
    return Path(found)


def keeper_for(site: Site) -> ServiceKeeper:
    """The service keeper every plugin shares (``site.services_dir``)."""
    return keeper_for_site(site)


def compute_conf_path(site: Site) -> Path:
    """nova-compute's own config file, read after nova.conf (its per-driver ``state_path``).

    In an all-in-one node the controller owns ``[DEFAULT] state_path`` of the shared
    nova.conf; the fake driver needs a state_path of its own (node identity), so
    nova-compute gets ``--config-file nova.conf --config-file nova-compute.conf``.
    """
    return site.nova_conf.with_name("nova-compute.conf")


def config_digest(*paths: Path) -> str:
    """A short digest of config files' contents (a changed digest restarts nova-compute)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path).encode())
        try:
            digest.update(path.read_bytes())
        except FileNotFoundError:
            digest.update(b"\0missing")
    return digest.hexdigest()[:16]
