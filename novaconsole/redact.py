"""Removing secrets from text before it is shown: passwords in URLs and ``password =`` lines.

Output of tools such as ``nova-manage`` may carry connection URLs with their password
(``mysql+pymysql://nova:secret@host/nova``); :func:`scrub_secrets` masks them so the text
can go into a log, an error message or a report.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

# scheme://user:password@  (the password ends at the last '@' before the host part)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<secret>\S*)@")
# password = value / "password": "value" / password: value (config lines, JSON, tracebacks)
_KEY_VALUE = re.compile(
    r"(?P<head>\b[\w-]*(?:password|passwd|secret|token)[\w-]*\b['\"]?\s*[=:]\s*['\"]?)"
    r"(?P<secret>[^\s'\",}]+)",
    re.IGNORECASE,
)


def scrub_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """Mask URL passwords, ``password = ...`` values and every literal in ``secrets``.

    ``secrets`` are known secret values (from :attr:`novaconsole.site.Site.secrets`) that
    are replaced wherever they appear, also URL-quoted.
    """
    from urllib.parse import quote

    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
        quoted = quote(secret, safe="")
        if quoted != secret:
            text = text.replace(quoted, MASK)
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + "@", text)
    return _KEY_VALUE.sub(lambda m: m["head"] + MASK, text)
