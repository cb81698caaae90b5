"""The end of an RFB session reaches every listener exactly once, even one that started
listening after the end (a proxy that hangs up at once: the console screen then stayed
"connected" forever; seen as an intermittent failure of
test_console_screen.py::test_the_proxy_hanging_up_is_shown_not_hidden)."""

from __future__ import annotations

import time

from fake_rfb import FakeRfbTransport

from novaconsole.vnc.session import Disconnected, RfbSession, SessionEvent

REASON = "fake console proxy closed the connection (close frame 1000 Target closed)"


def ended(session: RfbSession) -> None:
    deadline = time.monotonic() + 10
    while not session.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert session.closed


def test_a_listener_added_after_the_end_is_told_at_once() -> None:
    session = RfbSession(FakeRfbTransport(hang_up=True), "fake console proxy")
    session.start()
    ended(session)
    got: list[SessionEvent] = []
    session.add_listener(got.append)
    assert got == [Disconnected(REASON)]


def test_a_listener_added_before_the_end_hears_it_once() -> None:
    session = RfbSession(FakeRfbTransport(hang_up=True), "fake console proxy")
    got: list[SessionEvent] = []
    session.add_listener(got.append)
    session.start()
    ended(session)
    time.sleep(0.1)  # the reader thread tells its listeners just after it marks the end
    assert [e for e in got if isinstance(e, Disconnected)] == [Disconnected(REASON)]
