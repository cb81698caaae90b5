"""The built-in consoles plugin: our VNC bridge behind ``c`` and ``novaconsole console``.

``novaconsole_open_console`` (the Servers pane's ``c``) starts one bridge per process on
127.0.0.1 and returns its noVNC URL with a one-time ticket; ``novaconsole_add_commands``
adds ``novaconsole console SERVER`` and ``verify --console``. The bridge and its routes
load on first use: most commands never open a console.
"""

from __future__ import annotations

from typing import Any

from novaconsole.hookspecs import hookimpl


@hookimpl
def novaconsole_add_commands(subparsers: Any) -> None:
    from novaconsole_consoles.command import add_console_command, add_verify_console_option

    add_console_command(subparsers)
    add_verify_console_option(subparsers)


@hookimpl
def novaconsole_open_console(server_id: str, cloud: str | None) -> str | None:
    """Our bridge's noVNC URL for ``server_id`` (a fresh one-time ticket each call)."""
    from novaconsole_consoles.session import open_console_url

    return open_console_url(server_id, cloud)
