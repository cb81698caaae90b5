"""``NovaConsoleApp``: the k9s-style console over one cloud at a time.

:func:`make_app` builds it for the CLI and for tests alike (posting's habit): tests hand it
a recorded fake source, the CLI the real openstacksdk one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path, PurePath
from typing import Any, ClassVar

from textual import events, on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.screen import ModalScreen, Screen
from textual.theme import Theme
from textual.widgets import ContentSwitcher, Footer, Input
from textual.worker import Worker, WorkerState

from novaconsole.agents.feed import AgentFeed
from novaconsole.agents.model import FEED_CHANGED
from novaconsole.errors import NovaconsoleError
from novaconsole.plugins import PluginManager
from novaconsole.sources.base import CloudSource
from novaconsole.sources.console_api import ConsoleAction, ConsoleColumn, ConsolePane
from novaconsole.sources.rows import CloudInfo
from novaconsole.terminal_graphics import TerminalGraphics
from novaconsole.ui.agents_pane import (
    AgentPaneBase,
    AgentsChanged,
    AgentsPane,
    DriftPane,
    rebuild_rows,
)
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


def typed_ahead_keys(data: bytes) -> list[events.Key]:
    """The key events of ``data`` typed at the terminal before the app read it, parsed
    by the parser Textual's own driver reads the terminal with (so they are the events
    the driver would have made of them)."""
    if not data:
        return []
    from textual._xterm_parser import XTermParser

    parser = XTermParser()
    text = data.decode("utf-8", errors="replace")
    parsed = [*parser.feed(text), *parser.feed("")]  # "" ends input: a lone ESC is a key
    return [event for event in parsed if isinstance(event, events.Key)]


class NovaConsoleApp(App[int]):
    """Header, pane tabs, one pane at a time, the prompt bar and the footer."""

    TITLE = "novaconsole"
    BINDINGS: ClassVar[list[BindingType]] = [
        # Priority, so ``:``/``/`` move focus to the prompt before the keys typed after
        # them are handed to the table (type-ahead: see ``check_action``).
        Binding("colon", "command_mode", "Command", key_display=":", priority=True),
        Binding("slash", "filter_mode", "Filter", key_display="/", priority=True),
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
        agent_feed: AgentFeed | None = None,
    ) -> None:
        dirs = [builtin_theme_dir(), *theme_dirs]
        super().__init__(css_path=list[str | PurePath](stylesheet_paths(dirs)))
        self.connect = connect
        self.cloud_name = cloud
        self.settings = settings
        self.readonly = settings.readonly
        self.plugin_manager = plugin_manager
        self.clock = clock
        #: ``time.monotonic()`` of the last key or click (see :meth:`on_event`).
        self.last_input_at = 0.0
        self.cloud_names = cloud_names
        self.remember_theme = remember_theme
        self.source: CloudSource | None = None
        #: Open console sessions from a URL (None: the real RFB / serial clients); tests
        #: put their recorded fakes here.
        self.console_opener: Callable[[str], Any] | None = None
        self.serial_opener: Callable[[str], Any] | None = None
        #: Where console screenshots go (None: the current directory).
        self.screenshot_dir: Path | None = None
        #: How the console screen draws a guest's framebuffer (None: half-block cells);
        #: the CLI asks the terminal before the app starts.
        self.graphics: TerminalGraphics | None = None
        self.info: CloudInfo | None = None
        self.connect_error: str | None = None
        self.known_clouds: list[str] = []
        self.theme_names: list[str] = []
        for theme in load_themes(dirs):
            self._add_theme(theme)
        self.theme = resolve_theme_name(settings.theme, self.available_themes)
        self.pane_classes: list[type[ResourcePane]] = list(BUILTIN_PANES)
        # The agent panes exist whenever the console has a feed (the CLI always gives one;
        # without an agents config the panes say how to configure it).
        self.agent_feed = agent_feed
        if agent_feed is not None:
            self.pane_classes += [AgentsPane, DriftPane]
        self._agents_flush_pending = False
        #: Panes whose rows changed on the bus while they were not visible.
        self._agents_dirty: set[str] = set()
        self._agents_last_live = 0.0
        taken = {p.pane_name for p in self.pane_classes}
        for spec in _flatten(plugin_manager.hook.novaconsole_console_panes()):
            if not isinstance(spec, ConsolePane):
                raise NovaconsoleError(f"a plugin returned {spec!r} from novaconsole_console_panes")
            cls = pane_class(spec, taken)
            taken.add(spec.name)
            self.pane_classes.append(cls)
        self.active_pane_name = self.pane_classes[0].pane_name

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """``:`` and ``/`` open the prompt only on the main screen, outside any input.

        They are priority bindings: the app runs them as the key arrives, before it
        forwards the keys queued behind them, so a burst like ``:cat`` + Enter lands in
        the prompt in order. Anywhere a key is text (the prompt itself, a reason field,
        a modal screen), the binding stands aside and the key goes on as typed.
        """
        if action in ("command_mode", "filter_mode"):
            return self.screen is self.screen_stack[0] and not isinstance(self.focused, Input)
        return True

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
        if cls is ServersPane and self.agent_feed is not None:
            feed = self.agent_feed
            columns.append(ConsoleColumn("hypervisor", "Hypervisor", feed.hypervisor_state))
        actions = [
            a
            for a in _flatten(hook.novaconsole_console_actions(pane=cls.pane_name))
            if isinstance(a, ConsoleAction)
        ]
        pane = cls(
            clock=self.clock,
            readonly=self.readonly,
            extra_columns=columns,
            extra_actions=actions,
        )
        if cls is ServersPane and self.agent_feed is not None:
            # The hypervisor's view belongs next to Nova's power state, not after the ID.
            keys = [c.key for c in pane.columns]
            column = pane.columns.pop(keys.index("hypervisor"))
            pane.columns.insert(keys.index("power_state") + 1, column)
        return pane

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

    def on_load(self) -> None:
        """Before the driver starts reading the terminal: queue the keys typed while the
        terminal was asked about graphics, so they come before any it reads."""
        for event in typed_ahead_keys(self.graphics.typed_ahead if self.graphics else b""):
            event.set_sender(self)
            self.post_message(event)

    async def on_event(self, event: events.Event) -> None:
        # When the operator last typed or clicked: long refreshes wait for a pause in the
        # input before going on (ResourcePane.pace), so typing never waits for them.
        if isinstance(event, events.Key | events.MouseDown):
            self.last_input_at = time.monotonic()
        await super().on_event(event)

    def on_mount(self) -> None:
        self._show_header()
        self._show_tabs()
        self.active_pane.table.focus()
        self.theme_changed_signal.subscribe(self, self._theme_changed)
        if self.settings.refresh > 0:
            self.set_interval(self.settings.refresh, self.poll_visible_pane, name="auto-refresh")
        self.switch_cloud(self.cloud_name)
        self._load_cloud_names()
        if self.agent_feed is not None:
            # Called on the bus thread; post_message is thread-safe and never blocks it.
            self.agent_feed.directory.set_on_dirty(self._wake_agents)
            self.set_interval(1.0, self._agents_tick, name="agents-tick")

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
        else:
            self._rebuild_live(pane)
        self._show_tabs()
        self._show_header()
        self.refresh_bindings()

    def action_show_pane(self, index: int) -> None:
        if index < len(self.pane_classes):
            self.show_pane(self.pane_classes[index].pane_name)

    def poll_visible_pane(self) -> None:
        """The timer: only the visible pane polls, never while a dialog or a console
        screen (VNC, serial) covers the panes."""
        if (
            len(self.screen_stack) > 1
            or isinstance(self.screen, ModalScreen)
            or self.source is None
        ):
            return
        try:
            pane = self.active_pane
        except NoMatches:  # the app is closing: its panes are already being removed
            return
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

    # -- live agent updates ------------------------------------------------------------

    #: Seconds the app waits after a wake-up before draining, so bursts coalesce.
    AGENTS_FLUSH_DELAY = 0.5

    def _wake_agents(self) -> None:
        self.post_message(AgentsChanged())

    @on(AgentsChanged)
    def _agents_changed(self) -> None:
        if not self._agents_flush_pending:
            self._agents_flush_pending = True
            self.set_timer(self.AGENTS_FLUSH_DELAY, self._flush_agents)

    def _flush_agents(self) -> None:
        self._agents_flush_pending = False
        feed = self.agent_feed
        if feed is None:
            return
        changed = feed.directory.drain_changes()
        if not changed:
            return
        for pane in self.panes:
            if isinstance(pane, AgentPaneBase) and FEED_CHANGED in changed:
                pane.refresh_data()  # connected or lost: load again, error or rows
            elif isinstance(pane, AgentPaneBase) and pane.loaded_at is not None:
                self._agents_dirty.add(pane.pane_name)
        try:
            servers = self.pane(ServersPane.pane_name)
        except NoMatches:  # the app is shutting down and its panes are gone
            return
        if any(getattr(r, "host", None) in changed for r in servers.table.data.rows):
            self._agents_dirty.add(servers.pane_name)
        # Only the visible pane redraws now; the others when they are shown (show_pane).
        self._rebuild_live(self.active_pane)

    def _rebuild_live(self, pane: ResourcePane) -> None:
        if pane.pane_name not in self._agents_dirty:
            return
        self._agents_dirty.discard(pane.pane_name)
        self._agents_last_live = time.monotonic()
        if isinstance(pane, AgentPaneBase):
            pane.agents_changed()
        else:
            rows = list(pane.table.data.rows)
            rebuild_rows(pane, lambda: rows)

    def _agents_tick(self) -> None:
        """Heartbeat ages and stale marks change with time alone: redraw the visible pane."""
        try:
            pane = self.active_pane
        except NoMatches:
            return
        recent = time.monotonic() - self._agents_last_live < 1.0  # a live redraw just ran
        if isinstance(pane, AgentPaneBase) and pane.loaded_at is not None and not recent:
            pane.agents_changed()

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
    agent_feed: AgentFeed | None = None,
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
        agent_feed=agent_feed,
    )
