"""Database URLs with their passwords hidden, for messages, logs and ``web-node plan``.

A PostgreSQL URL is read the way libpq reads it (``psycopg.conninfo.conninfo_to_dict``)
and the shown text is checked with the same parser, so a password is hidden
wherever libpq would find it: ``user:PASSWORD@``, ``?password=``,
``?sslpassword=``, ``password=`` in a keyword string. Passwords holding ``@``
are covered too: the userinfo is everything up to the *last* ``@``, so
``postgresql://ci:p@ss@db/ci`` shows as ``postgresql://ci:***@db/ci`` (libpq
itself would read the host as ``ss@db``). When the shown text still parses
to a password, nothing of it but the scheme is shown; a URL libpq cannot
read at all is shown with the same text rules (libpq will never use it, and
the operator needs to see what is wrong with it). Other URLs (``mysql://u:p@h/db``) get the same userinfo and query
treatment without the parser.
"""

from __future__ import annotations

import re

HIDDEN = "***"
SECRET_KEYS = ("password", "sslpassword")
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# ?password=... and &sslpassword=... in a URL's query; the value ends at '&' or the end.
_QUERY_SECRET = re.compile(r"([?&](?:ssl)?password=)[^&]*", re.IGNORECASE)
# password=... in a libpq keyword string: a quoted value (with \' escapes) or one word.
_KEYWORD_SECRET = re.compile(r"(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*(?:'|$)|\S*)", re.IGNORECASE)


def redact_database_url(url: str) -> str:
    """``url`` with every password replaced by ``***``; never raises."""
    if url.startswith("sqlite:"):
        return url  # a path: no credentials
    if "://" not in url:
        if "=" not in url:
            return url
        return _checked(url, _KEYWORD_SECRET.sub(lambda m: m.group(1) + HIDDEN, url), "a PostgreSQL connection string")
    shown = _redact_url_text(url)
    if url.startswith(_POSTGRES_SCHEMES):
        return _checked(url, shown, url.split("://", 1)[0] + "://")
    return shown


def _redact_url_text(url: str) -> str:
    scheme, _, rest = url.partition("://")
    userinfo, at, after = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:{HIDDEN}@{after}"
    return f"{scheme}://{_QUERY_SECRET.sub(lambda m: m.group(1) + HIDDEN, rest)}"


def _checked(original: str, shown: str, fallback: str) -> str:
    """``shown`` when libpq finds no password in it but ``***``; else only ``fallback``."""
    from psycopg.conninfo import conninfo_to_dict  # psycopg is imported only when PostgreSQL is used

    try:
        conninfo_to_dict(original)
    except Exception:  # psycopg.ProgrammingError, or whatever its parser may raise on odd text
        return shown
    try:
        params = conninfo_to_dict(shown)
    except Exception:
        params = {"password": "(unreadable)"}
    if any(params.get(key, HIDDEN) != HIDDEN for key in SECRET_KEYS):
        return f"{fallback} (not shown: its password could not be hidden reliably)"
    return shown
