"""Where the console's agents.toml is: one rule, importable without loading the bus.

``verify`` decides whether to add its agents check by this file's existence, and must not
pay for cryptography and pika to find out.
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_ENV = "NOVACONSOLE_AGENTS_CONFIG"


def console_config_path(environ: dict[str, str] | None = None) -> Path:
    """The console's agents.toml: ``$NOVACONSOLE_AGENTS_CONFIG``, else the XDG config
    dir's; where that does not exist but a lab on this machine wrote one
    (``<lab state>/bus/agents.toml``), the lab's, so the console on the lab finds its
    agents with no extra step."""
    env = os.environ if environ is None else environ
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    home = Path(env.get("HOME", "~")).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(home / ".config")
    path = Path(base) / "novaconsole" / "agents.toml"
    if not path.exists():
        data = env.get("XDG_DATA_HOME") or str(home / ".local" / "share")
        lab = Path(env.get("NOVACONSOLE_LAB_DIR") or Path(data) / "novaconsole" / "lab")
        if (lab / "bus" / "agents.toml").exists():
            return lab / "bus" / "agents.toml"
    return path
