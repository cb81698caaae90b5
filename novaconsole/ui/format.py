"""Small formatters shared by panes (ages, sizes, used/total)."""

from __future__ import annotations

from novaconsole.sources.rows import ResourceUse


def age(seconds: object) -> str:
    """``42s``, ``3m05s``, ``2h10m``, ``4d3h``; empty when unknown."""
    if not isinstance(seconds, int | float):
        return ""
    total = int(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600}h"


def size(value: object) -> str:
    """Bytes as B/KiB/MiB/GiB/TiB with one decimal."""
    if not isinstance(value, int | float):
        return ""
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"


def usage(value: object, scale: float = 1.0, unit: str = "") -> str:
    """A :class:`ResourceUse` as ``used/capacity`` (optionally scaled, e.g. MiB -> GiB)."""
    if not isinstance(value, ResourceUse):
        return ""
    if scale == 1.0:
        return f"{value.used}/{value.capacity}{unit}"
    return f"{value.used / scale:.1f}/{value.capacity / scale:.1f}{unit}"


def usage_ratio(value: object) -> float | None:
    """Sort key for a usage cell: the used fraction."""
    if not isinstance(value, ResourceUse) or value.capacity <= 0:
        return None
    return value.used / value.capacity
