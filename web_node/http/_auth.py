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
import hmac
import os
import secrets
import stat
import tempfile
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from quart import request
from quart_trio import QuartTrio

from web_node.errors import MemberError
from web_node.http._app import error_response

if TYPE_CHECKING:
    from web_node.members import MemberContext

TOKEN_BYTES = 32  # secrets.token_urlsafe: 43 characters


def parse_token(value: object) -> str | None:
    """``Option.parse`` for a token: unset or ``""`` means "generate one"."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or any(c.isspace() for c in value):
        raise ValueError("a token must be a string without spaces (or leave it out to have one generated into data_dir)")
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

    Endpoints named in ``exempt`` stay open; so do routes that are not the
    member's endpoints (``/healthz``), and unknown routes and wrong methods,
    which answer 404 and 405 whoever asks. ``hint`` tells the caller where
    the token comes from.
    """
    guarded = {e.name for e in ctx.member.endpoints} - set(exempt)
    expected = token.encode()
    where = hint or f"[members.{ctx.member.name}] token, or the token file in data_dir when that is unset"

    def refuse(message: str) -> Any:
        response = error_response(401, message)
        response.headers["WWW-Authenticate"] = f'Bearer realm="web-node {ctx.member.name}"'
        return response

    @app.before_request
    async def authenticate() -> Any:
        rule = request.url_rule
        if rule is None or rule.endpoint not in guarded:
            return None
        header = request.headers.get("Authorization")
        if not header:
            return refuse(f"missing token: send 'Authorization: Bearer <token>' with the {where}")
        scheme, _, given = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return refuse(f"the Authorization header must be 'Bearer <token>', not {scheme!r}; the token is the {where}")
        # compare_digest: the time taken does not tell how much of a guess was right.
        if not hmac.compare_digest(given.strip().encode(), expected):
            return refuse(f"wrong token: the token is the {where}")
        return None


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
