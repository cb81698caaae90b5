"""``novaconsole`` with no sub-command: open the console (Textual is imported only here, late).

Settings come from ``$XDG_CONFIG_HOME/novaconsole/config.toml`` and the command line wins.
Mutating actions are logged to ``$XDG_STATE_HOME/novaconsole/console.log``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING

from novaconsole.cloud import default_cloud_name
from novaconsole.errors import EXIT_OK, ConfigError
from novaconsole.terminal_graphics import (
    ENV_VAR,
    TerminalGraphics,
    check_mode,
    resolve_graphics,
)
from novaconsole.ui.settings import ConsoleSettings, load_settings, state_dir

if TYPE_CHECKING:
    from novaconsole.sources.openstack_source import OpenStackSource


def settings_from_args(args: argparse.Namespace, base: ConsoleSettings) -> ConsoleSettings:
    """The config file's settings with the command-line flags applied on top."""
    settings = base
    if getattr(args, "theme", None):
        settings = replace(settings, theme=args.theme)
    if getattr(args, "refresh", None) is not None:
        if args.refresh < 0:
            raise ConfigError(f"--refresh {args.refresh:g}: must be 0 (off) or more seconds")
        settings = replace(settings, refresh=float(args.refresh))
    if getattr(args, "readonly", False):
        settings = replace(settings, readonly=True)
    from_env = os.environ.get(ENV_VAR)
    if from_env:
        settings = replace(settings, graphics=check_mode(from_env.strip(), ENV_VAR))
    if getattr(args, "graphics", None):
        settings = replace(settings, graphics=check_mode(args.graphics, "--graphics"))
    return settings


def terminal_graphics(mode: str) -> TerminalGraphics:
    """Ask the controlling terminal (before Textual takes it) what ``mode`` resolves to."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return resolve_graphics(mode, fd=None)
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return resolve_graphics(mode, fd=None)
    try:
        return resolve_graphics(mode, fd=fd)
    finally:
        os.close(fd)


def _log_actions_to_file() -> None:
    path = state_dir() / "console.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the console's action log {path}: {exc}") from exc
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("novaconsole.console")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _cloud_names() -> list[str]:
    import openstack.config

    names: list[str] = openstack.config.OpenStackConfig().get_cloud_names()
    return names


def prefetching_connect(
    cloud: str | None, timeout: float
) -> Callable[[str | None], OpenStackSource]:
    """A source factory whose first cloud is already being connected in a thread.

    Importing openstacksdk and authenticating take longer than importing Textual and
    drawing the first screen; starting them first overlaps the two (the console's launch
    benchmark uses this same path).
    """
    from novaconsole.sources.openstack_source import open_cloud_source

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="novaconsole-connect")
    first: Future[OpenStackSource] | None = pool.submit(open_cloud_source, cloud, timeout=timeout)
    pool.shutdown(wait=False)

    def connect(name: str | None) -> OpenStackSource:
        nonlocal first
        if first is not None and name == cloud:
            pending, first = first, None
            return pending.result()
        return open_cloud_source(name, timeout=timeout)

    return connect


def run_console(args: argparse.Namespace) -> int:
    """Run the TUI until the operator quits; bad settings fail before the screen changes."""
    settings = settings_from_args(args, load_settings())
    cloud = default_cloud_name(getattr(args, "os_cloud", None))
    _log_actions_to_file()
    connect = prefetching_connect(cloud, settings.timeout)

    from novaconsole.agents.feed import open_agent_feed
    from novaconsole.ui.app import make_app

    # Never blocks: without an agents config the Agents pane says how to make one.
    feed = open_agent_feed()
    app = make_app(
        connect=connect,
        cloud=cloud,
        settings=settings,
        plugin_manager=args.plugin_manager,
        cloud_names=_cloud_names,
        agent_feed=feed,
    )
    app.graphics = terminal_graphics(settings.graphics)
    try:
        result = app.run()
    finally:
        feed.stop()
    return EXIT_OK if result is None else int(result)
