"""``ConsoleHeader``: cloud, region, user/project, API versions, last refresh; and pane tabs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from textual.content import Content
from textual.widgets import Static

from novaconsole.sources.rows import CloudInfo


class ConsoleHeader(Static):
    """Two lines: who/where, then API versions and the last refresh of the visible pane."""

    DEFAULT_CSS = """
    ConsoleHeader {
        height: 2;
        padding: 0 1;
        background: $panel;
        color: $foreground;
    }
    ConsoleHeader.-error {
        background: $error-muted;
        color: $text-error;
    }
    """

    def show(
        self,
        cloud: str,
        info: CloudInfo | None,
        last_refresh: datetime | None,
        error: str | None = None,
        readonly: bool = False,
    ) -> None:
        mode = "  [$warning]READ-ONLY[/]" if readonly else ""
        if error is not None:
            self.set_class(True, "-error")
            self.update(
                Content.from_markup(f"[b]cloud[/] $cloud{mode}\n$error", cloud=cloud, error=error)
            )
            return
        self.set_class(False, "-error")
        when = f"{last_refresh:%H:%M:%S}" if last_refresh else "never"
        if info is None:
            line1 = Content.from_markup(f"[b]cloud[/] $cloud  connecting…{mode}", cloud=cloud)
            self.update(line1)
            return
        versions = "  ".join(f"{k} {v}" for k, v in info.versions.items()) or "?"
        admin = " (admin)" if info.is_admin else ""
        self.update(
            Content.from_markup(
                "[b]cloud[/] $cloud  [b]region[/] $region  [b]user[/] $user$admin  "
                f"[b]project[/] $project  [b]refreshed[/] $when{mode}\n[b]API[/] $versions",
                cloud=info.cloud,
                region=info.region or "-",
                user=info.user,
                admin=admin,
                project=info.project,
                when=when,
                versions=versions,
            )
        )


class PaneTabs(Static):
    """One line naming the panes, the visible one highlighted, with their number keys."""

    DEFAULT_CSS = """
    PaneTabs {
        height: 1;
        padding: 0 1;
        background: $boost;
        color: $text-muted;
    }
    """

    def show(self, titles: Sequence[tuple[str, str]], active: str) -> None:
        parts = []
        for number, (name, title) in enumerate(titles, start=1):
            label = f" {number} {title} "
            if name == active:
                parts.append(Content.from_markup("[b reverse $accent]$label[/]", label=label))
            else:
                parts.append(Content(label))
        self.update(Content(" ").join(parts))
