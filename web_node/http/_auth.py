"""Bearer-token auth for http members.

A member that needs a token declares an ``Option`` for it (see
:func:`parse_token`), calls :func:`resolve_token` in ``make_app`` — the
configured token, or one generated once into a file in ``data_dir`` — and
:func:`require_bearer` to guard its endpoints::

    token = resolve_token(ctx, option="token", filename="api-token")
    require_bearer(app, ctx, token, exempt={"GetInfo"})

Token files are created atomically (written to a temporary file, then
hard-linked into place), so several processes starting at once — groups of
one node, or ``quickstart`` before its children — agree on one token.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from quart import request
from quart_trio import QuartTrio

from web_node.errors import MemberError
from web_node.http._app import gate_of
from web_node.http._gate import Bearer

if TYPE_CHECKING:
    from web_node.members import MemberContext

TOKEN_BYTES = 32  # secrets.token_urlsafe: 43 characters
MIN_TOKEN_CHARS = 16  # a configured token shorter than this is refused: guessable, or a placeholder left in


def parse_token(value: object) -> str | None:
    """``Option.parse`` for a token: unset or ``""`` means "generate one"; at least MIN_TOKEN_CHARS printable characters."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.isprintable() or any(c.isspace() for c in value):
        raise ValueError("a token must be a string without spaces or control characters "
                         "(or leave it out to have one generated into data_dir)")
    if len(value) < MIN_TOKEN_CHARS:
        raise ValueError(f"a token must be at least {MIN_TOKEN_CHARS} characters, this one has {len(value)}; make one with "
                         "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`, or leave it out to have one "
                         "generated into data_dir")
    return value


def load_or_create_token(path: str) -> tuple[str, bool]:
    """The token in ``path``, created (random, mode 0600) when the file does not exist.

    Returns ``(token, created)``. The new token is written and synced to a
    temporary file that is then hard-linked to ``path``: a reader never sees
    a partial file, and when two processes create at once the link of one
    fails and both read the token of the other.
    """
    with contextlib.suppress(FileNotFoundError):
        return _read_token(path), False
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(TOKEN_BYTES) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
            created = True
        except FileExistsError:
            created = False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return _read_token(path), created


def _read_token(path: str) -> str:
    with open(path) as f:
        token = f.read().strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"the token file {path} is empty or holds more than one word; delete it to have a new token "
                         "generated at the next start")
    return token


def resolve_token(ctx: MemberContext, *, option: str, filename: str) -> str:
    """The member's token: its ``option`` when configured, else the one in ``data_dir/filename``.

    Logs where the token comes from (never the token itself), so that an
    operator can find it; raises MemberError when the file cannot be used.
    """
    configured: str | None = ctx.option(option)
    section = f"[members.{ctx.member.name}] {option}"
    if configured is not None:
        ctx.log.info("bearer token from the configuration (%s)", section)
        return configured
    path = os.path.join(ctx.config.node.data_dir, filename)
    try:
        token, created = load_or_create_token(path)
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except (OSError, ValueError) as e:
        raise MemberError(f"member {ctx.member.name} cannot read or create its token file {path}: {e}; "
                          f"fix or delete the file, or set {section}", member=ctx.member.name) from e
    if created:
        ctx.log.info("generated a bearer token into %s (mode 0600); clients send 'Authorization: Bearer <its content>'", path)
    else:
        ctx.log.info("bearer token read from %s", path)
    if mode & 0o077:
        ctx.log.warning("token file %s can be read by other users (mode %04o): chmod 600 it", path, mode)
    return token


def require_bearer(app: QuartTrio, ctx: MemberContext, token: str, *, exempt: Iterable[str] = (), hint: str = "") -> None:
    """Answer 401 to calls of the member's endpoints that lack ``Authorization: Bearer <token>``.

    Only endpoints declared with ``auth="token"`` and not named in ``exempt`` are guarded; routes that are not the
    member's endpoints (``/healthz``), and unknown routes and wrong methods,
    which answer 404 and 405 whoever asks. ``hint`` tells the caller where
    the token comes from. The answer closes the connection without reading the body.
    """
    guarded = {e.name for e in ctx.member.endpoints if e.auth == "token"} - set(exempt)
    where = hint or f"[members.{ctx.member.name}] token, or the token file in data_dir when that is unset"
    # Checked by the request gate, from the request head: a refused body is never read (see _gate.py).
    gate_of(app).bearer = Bearer(token=token.encode(), guarded=frozenset(guarded), hint=where,
                                 realm=f"web-node {ctx.member.name}")


def drain_request_body(app: QuartTrio) -> None:
    """Read each request's body in full before its answer goes out.

    hypercorn 0.18 (h11) with quart-trio: when the answer is complete before
    the request's body has arrived (a 401 from :func:`require_bearer`, a 400
    for a bad name, a 404 for a disabled endpoint), the next request on that
    keep-alive connection may never be answered: the client waits until its
    timeout (seen here in 22 of 60 tries of "401 to a PUT with a body, then a GET";
    none of 60 with this hook).
    Bodies over quart's ``MAX_CONTENT_LENGTH`` are not read (that raises at
    once); they are the client's own problem.
    """

    @app.after_request
    async def read_rest_of_body(response: Any) -> Any:
        with contextlib.suppress(Exception):
            await request.get_data(cache=False)
        return response
