"""The ``/`` filter: substring or regular expression, ``!`` to invert (k9s habits)."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RowFilter:
    """A parsed filter; matches against a row's joined cell texts, case-insensitively.

    The text is tried as a regular expression first; text that is not a valid expression
    (``a(b``) is matched literally, so a half-typed filter never errors. A leading ``!``
    keeps the rows that do *not* match.
    """

    text: str
    pattern: re.Pattern[str]
    inverted: bool
    is_regex: bool

    @classmethod
    def parse(cls, text: str) -> RowFilter | None:
        """The filter for ``text``, or ``None`` when it filters nothing."""
        inverted = text.startswith("!")
        body = text[1:] if inverted else text
        if not body:
            return None
        try:
            pattern = re.compile(body, re.IGNORECASE)
            is_regex = re.escape(body) != body
        except re.error:
            pattern = re.compile(re.escape(body), re.IGNORECASE)
            is_regex = False
        return cls(text=text, pattern=pattern, inverted=inverted, is_regex=is_regex)

    def matches(self, haystack: str) -> bool:
        return (self.pattern.search(haystack) is None) is self.inverted

    def select(self, haystacks: list[str], indices: list[int]) -> list[int]:
        """The subset of ``indices`` whose haystack matches, in order."""
        search = self.pattern.search
        if self.inverted:
            return [i for i in indices if search(haystacks[i]) is None]
        return [i for i in indices if search(haystacks[i]) is not None]
