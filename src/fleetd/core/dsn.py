"""PostgreSQL DSNs as fleetd shows them: never with their password.

A DSN (``postgresql://USER:PASSWORD@HOST:PORT/DB?sslmode=...``, or libpq's ``key=value`` pairs) may carry a
password in its user info or as a ``password`` parameter. Whatever fleetd prints or logs about a database (the
start banner, an error that names the DSN, a settings repr) goes through :func:`redact` or :func:`scrub` first.
No psycopg here: a SQLite server never loads it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

SCHEMES = ("postgresql://", "postgres://")
HIDDEN = "***"

# The password parameter in a URL's query string, or in libpq's key=value form (quoted or not).
_PARAM = re.compile(r"""(?P<key>(?:^|[?&\s])password\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|[^&\s]*)""", re.IGNORECASE)


def is_dsn(location: object) -> bool:
    """Whether a store location is a PostgreSQL database (a ``postgresql://`` or ``postgres://`` URL)."""
    return isinstance(location, str) and location.startswith(SCHEMES)


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_AUTHORITY_END = re.compile(r"[/?#]")


def _authority(dsn: str) -> tuple[int, int] | None:
    """Where a URL's user info and hosts are (start, end), or None for libpq's key=value form. Any scheme: a
    mistyped one (``postgresq://``) is shown in the error that refuses it, also without its password."""
    m = _SCHEME.match(dsn)
    if m is None:
        return None
    end = _AUTHORITY_END.search(dsn, m.end())
    return m.end(), end.start() if end else len(dsn)


def redact(dsn: str) -> str:
    """``dsn`` with its password (user info or ``password=`` parameter) replaced by ``***``; the rest as given."""
    span = _authority(dsn)
    if span is not None:
        start, end = span
        userinfo, at, hosts = dsn[start:end].rpartition("@")
        if at and ":" in userinfo:
            dsn = f"{dsn[:start]}{userinfo.split(':', 1)[0]}:{HIDDEN}@{hosts}{dsn[end:]}"
    return _PARAM.sub(lambda m: m.group("key") + HIDDEN, dsn)


def secrets_of(dsn: str) -> list[str]:
    """The password(s) written in ``dsn``, as written and percent-decoded (to take out of any text)."""
    found: list[str] = []
    span = _authority(dsn)
    if span is not None:
        userinfo, at, _ = dsn[span[0]:span[1]].rpartition("@")
        if at and ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
    found += [m.group("value").strip("'") for m in _PARAM.finditer(dsn)]
    return sorted({s for raw in found if raw for s in (raw, unquote(raw))}, key=len, reverse=True)


def scrub(text: str, dsn: str) -> str:
    """``text`` (e.g. a driver's error message about ``dsn``) with the DSN's password taken out wherever it
    appears, and the DSN itself shown redacted."""
    text = text.replace(dsn, redact(dsn))
    for secret in secrets_of(dsn):
        text = text.replace(secret, HIDDEN)
    return text
