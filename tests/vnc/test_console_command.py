"""``novaconsole console`` and ``verify --console``: usage errors are one line, exit 2,
before any cloud is contacted (the real command line, in this process)."""

from __future__ import annotations

import pytest

from novaconsole.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ("console", "srv", "--listen", "nowhere"),
            "novaconsole: error: --listen 'nowhere': expected ADDR:PORT, e.g. 127.0.0.1:6081",
        ),
        (
            ("console", "srv", "--listen", "127.0.0.1:99999"),
            "novaconsole: error: --listen '127.0.0.1:99999': expected ADDR:PORT, e.g. 127.0.0.1:6081",
        ),
        (
            ("console", "srv", "--ticket-ttl", "0"),
            "novaconsole: error: ticket policy: connect_ttl_s must be a positive number, not 0.0",
        ),
        (
            ("console", "srv", "--serial", "--via", "direct"),
            "novaconsole: error: --serial goes through nova-serialproxy only (--via nova)",
        ),
        (
            ("console", "srv", "--proxy-url", "ftp://h:1"),
            "novaconsole: error: --proxy-url 'ftp://h:1': expected http(s)://HOST[:PORT]",
        ),
        (
            ("console", "srv", "--proxy-url", "http://h:99999"),
            "novaconsole: error: --proxy-url 'http://h:99999': expected http(s)://HOST[:PORT]",
        ),
        (
            ("console", "srv", "--via", "direct", "--proxy-url", "http://h:6080"),
            "novaconsole: error: --proxy-url names nova-novncproxy: it goes with --via nova only",
        ),
        (
            ("console", "srv", "--url", "--vnc"),
            "novaconsole: error: novaconsole console: argument --vnc: not allowed with "
            "argument --url",
        ),
        (
            ("console", "srv", "--vnc", "--browser"),
            "novaconsole: error: novaconsole console: argument --browser: not allowed with "
            "argument --vnc",
        ),
    ],
)
def test_usage_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], line: str
) -> None:
    code, err = _run(capsys, *argv)
    assert code == 2
    assert err == line


def test_verify_has_a_console_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    assert "--console [SERVER]" in capsys.readouterr().out


def test_plugins_lists_the_consoles_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "-f", "json"]) == 0
    assert '"name": "consoles"' in capsys.readouterr().out


def test_proxy_url_keeps_nova_s_path_and_token() -> None:
    from novaconsole.vnc.routes import _on_proxy

    nova = "http://controller:6080/vnc_lite.html?path=%3Ftoken%3Dabc"
    assert _on_proxy(nova, "https://10.0.0.5:443") == (
        "https://10.0.0.5:443/vnc_lite.html?path=%3Ftoken%3Dabc"
    )
