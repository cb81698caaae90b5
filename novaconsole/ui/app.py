"""``NovaConsoleApp``: the k9s-style console over one cloud at a time.

:func:`make_app` builds it for the CLI and for tests alike (posting's habit): tests hand it
a recorded fake source, the CLI the real openstacksdk one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path, PurePath
from typing import Any, ClassVar

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.screen import ModalScreen, Screen
from textual.theme import Theme
from textual.widgets import ContentSwitcher, Footer, Input
from textual.worker import Worker, WorkerState

from novaconsole.errors import NovaconsoleError
from novaconsole.plugins import PluginManager
from novaconsole.sources.base import CloudSource
from novaconsole.sources.console_api import ConsoleAction, ConsoleColumn, ConsolePane
from novaconsole.sources.rows import CloudInfo
from novaconsole.ui.catalog_pane import CatalogPane
from novaconsole.ui.commands import (
    PANE_ALIASES,
    Command,
    CommandError,
    completions,
    parse_command,
)
from novaconsole.ui.header import ConsoleHeader, PaneTabs
from novaconsole.ui.help_screen import HelpScreen
from novaconsole.ui.hypervisors_pane import HypervisorsPane
from novaconsole.ui.images_pane import ImagesPane
from novaconsole.ui.pane import Clock, ResourcePane, describe_exception
from novaconsole.ui.plugin_pane import pane_class
from novaconsole.ui.prompt import PromptBar, PromptInput
from novaconsole.ui.servers_pane import ServersPane
from novaconsole.ui.services_pane import ServicesPane
from novaconsole.ui.settings import ConsoleSettings, save_setting
from novaconsole.ui.table import ResourceTable
from novaconsole.ui.text_screen import TextScreen, to_yaml
from novaconsole.ui.themes import (
    builtin_theme_dir,
    load_themes,
    resolve_theme_name,
    stylesheet_paths,
)

LOG = logging.getLogger("novaconsole.console")

#: Connects to a cloud by name (``None``: the default cloud); blocking, runs in a thread.
SourceFactory = Callable[[str | None], CloudSource]

BUILTIN_PANES: tuple[type[ResourcePane], ...] = (
    ServicesPane,
    CatalogPane,
    ImagesPane,
    HypervisorsPane,
    ServersPane,
)


def local_now() -> datetime:
    """The default clock: local, zone-aware time."""
    return datetime.now().astimezone()


def _flatten(results: Iterable[Sequence[Any] | None]) -> list[Any]:
    return [item for result in results if result for item in result]


class NovaConsoleApp(App[int]):
    """Header, pane tabs, one pane at a time, the prompt bar and the footer."""

    TITLE = "novaconsole"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("colon", "command_mode", "Command", key_display=":"),
        Binding("slash", "filter_mode", "Filter", key_display="/"),
        Binding("r", "refresh_pane", "Refresh"),
        Binding("o", "sort", "Sort"),
        Binding("O", "sort(True)", "Reverse", show=False),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
        *(Binding(str(n), f"show_pane({n - 1})", show=False) for n in range(1, 10)),
    ]

    def __init__(
        self,
        *,
        connect: SourceFactory,
        cloud: str | None,
        settings: ConsoleSettings,
        plugin_manager: PluginManager,
        clock: Clock = local_now,
        cloud_names: Callable[[], list[str]] = list,
        theme_dirs: Sequence[Path] = (),
        remember_theme: bool = True,
    ) -> None:
        dirs = [builtin_theme_dir(), *theme_dirs]
        super().__init__(css_path=list[str | PurePath](stylesheet_paths(dirs)))
        self.connect = connect
        self.cloud_name = cloud
        self.settings = settings
        self.readonly = settings.readonly
        self.plugin_manager = plugin_manager
        self.clock = clock
        self.cloud_names = cloud_names
        self.remember_theme = remember_theme
        self.source: CloudSource | None = None
        #: Open console sessions from a URL (None: the real RFB / serial clients); tests
        #: put their recorded fakes here.
        self.console_opener: Callable[[str], Any] | None = None
        self.serial_opener: Callable[[str], Any] | None = None
        #: Where console screenshots go (None: the current directory).
        self.screenshot_dir: Path | None = None
        self.info: CloudInfo | None = None
        self.connect_error: str | None = None
        self.known_clouds: list[str] = []
        self.theme_names: list[str] = []
        for theme in load_themes(dirs):
            self._add_theme(theme)
        self.theme = resolve_theme_name(settings.theme, self.available_themes)
        self.pane_classes: list[type[ResourcePane]] = list(BUILTIN_PANES)
        taken = {p.pane_name for p in BUILTIN_PANES}
        for spec in _flatten(plugin_manager.hook.novaconsole_console_panes()):
            if not isinstance(spec, ConsolePane):
                raise NovaconsoleError(f"a plugin returned {spec!r} from novaconsole_console_panes")
            cls = pane_class(spec, taken)
            taken.add(spec.name)
            self.pane_classes.append(cls)
        self.active_pane_name = self.pane_classes[0].pane_name

    def _add_theme(self, theme: Theme) -> None:
        self.register_theme(theme)
        self.theme_names.append(theme.name)

    # -- layout ------------------------------------------------------------------------

    def _make_pane(self, cls: type[ResourcePane]) -> ResourcePane:
        hook = self.plugin_manager.hook
        columns = [
            c
            for c in _flatten(hook.novaconsole_console_columns(pane=cls.pane_name))
            if isinstance(c, ConsoleColumn)
        ]
        actions = [
            a
            for a in _flatten(hook.novaconsole_console_actions(pane=cls.pane_name))
            if isinstance(a, ConsoleAction)
        ]
        return cls(
            clock=self.clock,
            readonly=self.readonly,
            extra_columns=columns,
            extra_actions=actions,
        )

    def compose(self) -> ComposeResult:
        yield ConsoleHeader(id="header")
        yield PaneTabs(id="tabs")
        with ContentSwitcher(initial=f"pane-{self.active_pane_name}", id="panes"):
            for cls in self.pane_classes:
                yield self._make_pane(cls)
        yield Footer()
        yield PromptBar(self.complete_command)

    @property
    def panes(self) -> list[ResourcePane]:
        return list(self.query(ResourcePane).results(ResourcePane))

    def pane(self, name: str) -> ResourcePane:
        return self.query_one(f"#pane-{name}", ResourcePane)

    @property
    def active_pane(self) -> ResourcePane:
        return self.pane(self.active_pane_name)

    def on_mount(self) -> None:
        self._show_header()
        self._show_tabs()
        self.active_pane.table.focus()
        self.theme_changed_signal.subscribe(self, self._theme_changed)
        if self.settings.refresh > 0:
            self.set_interval(self.settings.refresh, self.poll_visible_pane, name="auto-refresh")
        self.switch_cloud(self.cloud_name)
        self._load_cloud_names()

    # -- clouds ------------------------------------------------------------------------

    def switch_cloud(self, name: str | None) -> None:
        """Connect (in a thread) and point every pane at the new cloud."""
        self.connecting_to = name
        self._connect(name)

    @work(thread=True, exclusive=True, exit_on_error=False, group="connect")
    def _connect(self, name: str | None) -> None:
        try:
            source = self.connect(name)
        except Exception as exc:
            self.call_from_thread(self._connect_failed, name, describe_exception(exc))
            return
        self.call_from_thread(self._connected, source)
        try:
            info = source.info()
        except Exception as exc:
            LOG.warning("header info of %s: %s", source.name, describe_exception(exc))
            return
        self.call_from_thread(self._info_loaded, source, info)

    def _connected(self, source: CloudSource) -> None:
        old, self.source = self.source, source
        self.cloud_name = source.name
        self.info, self.connect_error = None, None
        for pane in self.panes:
            pane.attach(source)
        if old is not None and old is not source:
            old.close()
        self._show_header()

    def _connect_failed(self, name: str | None, error: str) -> None:
        if self.source is None:
            self.connect_error = error
            self._show_header()
        self.notify(error, severity="error", timeout=10)

    def _info_loaded(self, source: CloudSource, info: CloudInfo) -> None:
        if source is self.source:
            self.info = info
            self._show_header()

    @work(thread=True, exit_on_error=False, group="cloud-names")
    def _load_cloud_names(self) -> None:
        try:
            names = self.cloud_names()
        except Exception as exc:
            LOG.debug("cloud names: %s", exc)
            return
        self.known_clouds = sorted(names)

    # -- header, tabs ------------------------------------------------------------------

    def _show_header(self) -> None:
        pane = self.active_pane
        self.query_one(ConsoleHeader).show(
            self.cloud_name or "(default)",
            self.info,
            pane.loaded_at,
            self.connect_error,
            self.readonly,
        )

    def _show_tabs(self) -> None:
        self.query_one(PaneTabs).show(
            [(cls.pane_name, cls.title) for cls in self.pane_classes], self.active_pane_name
        )

    @on(ResourcePane.Loaded)
    @on(ResourcePane.Failed)
    def _pane_updated(self) -> None:
        self._show_header()

    # -- panes -------------------------------------------------------------------------

    def show_pane(self, name: str) -> None:
        """Make a pane visible; refresh it if its data is older than the interval."""
        pane = self.pane(name)
        self.active_pane_name = name
        self.query_one(ContentSwitcher).current = pane.id
        pane.table.focus()
        interval = self.settings.refresh
        stale = pane.loaded_at is None or (
            interval > 0 and (self.clock() - pane.loaded_at).total_seconds() >= interval
        )
        if stale and pane.error is None and not pane.is_loading and pane.source is not None:
            pane.refresh_data()
        self._show_tabs()
        self._show_header()
        self.refresh_bindings()

    def action_show_pane(self, index: int) -> None:
        if index < len(self.pane_classes):
            self.show_pane(self.pane_classes[index].pane_name)

    def poll_visible_pane(self) -> None:
        """The timer: only the visible pane polls, never while a dialog is open."""
        if isinstance(self.screen, ModalScreen) or self.source is None:
            return
        pane = self.active_pane
        if not pane.is_loading:
            pane.refresh_data()

    def action_refresh_pane(self) -> None:
        self.active_pane.refresh_data()

    def action_sort(self, reverse: bool = False) -> None:
        self.active_pane.cycle_sort(reverse_only=reverse)

    # -- prompt: commands and filters --------------------------------------------------

    def pane_aliases(self) -> dict[str, tuple[str, ...]]:
        aliases = {name: tuple(a) for name, a in PANE_ALIASES.items()}
        for cls in self.pane_classes[len(BUILTIN_PANES) :]:
            aliases[cls.pane_name] = cls.aliases
        return aliases

    def complete_command(self, text: str) -> list[str]:
        short = sorted({n.removeprefix("novaconsole-") for n in self.theme_names})
        return completions(text, self.pane_aliases(), self.known_clouds, short)

    def action_command_mode(self) -> None:
        self.query_one(PromptBar).open("command")

    def action_filter_mode(self) -> None:
        pane = self.active_pane
        self._filter_before = pane.filter_text
        self.query_one(PromptBar).open("filter", pane.filter_text)

    def action_clear_filter(self) -> None:
        if self.active_pane.filter_text:
            self.active_pane.set_filter("")

    def _close_prompt(self) -> None:
        self.query_one(PromptBar).close()
        self.active_pane.table.focus()

    @on(Input.Changed, "#prompt-input")
    def _prompt_changed(self, event: Input.Changed) -> None:
        if self.query_one(PromptBar).mode == "filter":
            self.active_pane.set_filter(event.value)

    @on(Input.Submitted, "#prompt-input")
    def _prompt_submitted(self, event: Input.Submitted) -> None:
        bar = self.query_one(PromptBar)
        self._close_prompt()
        if bar.mode == "command":
            self.run_command(event.value)

    @on(PromptInput.Cancelled)
    def _prompt_cancelled(self) -> None:
        bar = self.query_one(PromptBar)
        if bar.mode == "filter":
            self.active_pane.set_filter(getattr(self, "_filter_before", ""))
        self._close_prompt()

    def run_command(self, text: str) -> None:
        """Run a ``:`` command line; unknown ones are reported in one line."""
        try:
            command = parse_command(text, self.pane_aliases())
        except CommandError as exc:
            self.notify(str(exc), severity="error")
            return
        self._run(command)

    def _run(self, command: Command) -> None:
        if command.kind == "cloud":
            self.switch_cloud(command.argument)
        elif command.kind == "theme":
            try:
                self.theme = resolve_theme_name(command.argument, self.available_themes)
            except NovaconsoleError as exc:
                self.notify(exc.one_line(), severity="error")
        elif command.kind == "help":
            self.action_help()
        elif command.kind == "quit":
            self.exit(0)
        else:
            self.show_pane(command.kind)

    # -- details, help -----------------------------------------------------------------

    @on(ResourceTable.Chosen)
    def _row_chosen(self, event: ResourceTable.Chosen) -> None:
        row = event.row
        raw = getattr(row, "raw", row)
        pane = self.active_pane
        title = f"{pane.title}: {pane.row_id(row)} (raw resource, YAML; Esc to close)"
        self.push_screen(TextScreen(title, to_yaml(raw)))

    def action_help(self) -> None:
        pane = self.active_pane
        self.push_screen(HelpScreen(pane.title, pane.pane_actions(), self.readonly))

    # -- themes, palette ---------------------------------------------------------------

    def _theme_changed(self, theme: Theme) -> None:
        if not self.remember_theme:
            return
        try:
            path = save_setting("theme", theme.name)
        except (OSError, NovaconsoleError) as exc:
            self.notify(f"could not remember theme {theme.name}: {exc}", severity="warning")
            return
        LOG.info("theme %s saved to %s", theme.name, path)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for name in self.theme_names:
            yield SystemCommand(
                f"Theme: {name.removeprefix('novaconsole-')}",
                f"Switch to the {name} theme (remembered in the config)",
                lambda name=name: setattr(self, "theme", name),
            )
        for cls in self.pane_classes:
            yield SystemCommand(
                f"Pane: {cls.title}",
                f"Show the {cls.title} pane",
                lambda n=cls.pane_name: self.show_pane(n),
            )
        yield SystemCommand("Refresh", "Refresh the visible pane now", self.action_refresh_pane)

    # -- failures ----------------------------------------------------------------------

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """One place that makes any unexpected worker failure visible (harlequin's habit)."""
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            text = describe_exception(event.worker.error)
            LOG.error("worker %s failed: %s", event.worker.name, text)
            self.notify(f"{event.worker.name}: {text}", severity="error", timeout=10)


def make_app(
    *,
    connect: SourceFactory,
    cloud: str | None = None,
    settings: ConsoleSettings | None = None,
    plugin_manager: PluginManager | None = None,
    clock: Clock = local_now,
    cloud_names: Callable[[], list[str]] = list,
    remember_theme: bool = True,
) -> NovaConsoleApp:
    """The console app, for the CLI and tests alike; theme errors are one line."""
    pm = plugin_manager if plugin_manager is not None else PluginManager()
    theme_dirs = [Path(d) for d in _flatten(pm.hook.novaconsole_theme_dirs())]
    return NovaConsoleApp(
        connect=connect,
        cloud=cloud,
        settings=settings or ConsoleSettings(),
        plugin_manager=pm,
        clock=clock,
        cloud_names=cloud_names,
        theme_dirs=theme_dirs,
        remember_theme=remember_theme,
    )
