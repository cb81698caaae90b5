"""Errors that the CLI turns into one clear line and an exit code."""

from __future__ import annotations

#: Exit codes shared by every command: 0 all good, 1 a check failed, 2 usage or connection error.
EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2


class NovaconsoleError(Exception):
    """An expected failure: bad input, an unreachable service, a port taken.

    The message must name *what* failed and *where* (host:port, file, cloud name), fit on
    one line, and never contain a secret. The CLI prints it as ``novaconsole: error: ...``
    and exits with :attr:`exit_code`.
    """

    exit_code: int = EXIT_USAGE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        """The message (and hint, if any) as a single line."""
        text = " ".join(str(self).split())
        if self.hint:
            text += f" (hint: {' '.join(self.hint.split())})"
        return text


class ConfigError(NovaconsoleError):
    """A malformed site file, clouds.yaml entry or option."""


class ConnectionFailure(NovaconsoleError):
    """A service (database, broker, API) that could not be reached or refused us."""


class StepFailed(NovaconsoleError):
    """A provisioning step that could not converge; carries a diagnosis."""

    exit_code = EXIT_CHECK_FAILED
