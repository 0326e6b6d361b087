"""Who may call the server: one ASGI layer in front of every route, the page and its files included.

- A token (required on a non-loopback bind): `Authorization: Bearer T`, or the cookie the page gets
  by opening `/?token=T` once (HttpOnly, SameSite=Lax). Lax, as the client id's cookie: a link to the
  page from another site must bring it, or the user who opened `/?token=T` gets the 401 page. What
  Lax lets another site's request carry it on is a top-level GET, and no GET changes anything: the
  routes that do (POST /api/jobs, PUT .../input, DELETE /api/jobs/ID) never get it from another
  site, and the Origin check below refuses them anyway.
- No CORS: a request whose Origin is another site is refused, so a page elsewhere cannot make a
  visitor's browser queue jobs on a server it can reach (localhost included).
- On a loopback bind, only loopback Host names are served: a DNS-rebinding site cannot pose as it.
"""
from __future__ import annotations

import secrets
from urllib.parse import unquote, urlsplit

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, RedirectResponse

from srtrt.engine.serve.settings import ServeConfig, is_loopback

COOKIE = "srtrt_token"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


class Guard:
    def __init__(self, app, config: ServeConfig):
        self.app, self.config = app, config
        self._token = config.token.encode() if config.token else None
        self._names = LOOPBACK_NAMES | {config.host} if is_loopback(config.host) else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        response = self._refusal(scope, headers) or self._login(scope)
        if response is not None:
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)

    def _refusal(self, scope, headers: Headers):
        host, origin = headers.get("host", ""), headers.get("origin")
        try:  # a malformed Host or Origin ("[", "http://[") is no name this server has
            name = _hostname(host)
            cross = origin is not None and urlsplit(origin).netloc != host
        except ValueError:
            return _refuse(400, "malformed Host or Origin header")
        if self._names is not None and name not in self._names:
            return _refuse(403, f"Host {host!r} is not this server's loopback name")
        if cross:
            return _refuse(403, "cross-origin requests are refused (the server sends no CORS headers)")
        if self._token is None or self._authorised(scope, headers):
            return None
        return _refuse(401, "needs the server's token: Authorization: Bearer TOKEN (or open the page as /?token=TOKEN)",
                       {"WWW-Authenticate": "Bearer"})

    def _authorised(self, scope, headers: Headers) -> bool:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self._matches(given.strip()):
            return True
        cookie = HTTPConnection(scope).cookies.get(COOKIE, "")  # Starlette parses the Cookie header, as for a route
        return self._matches(cookie) or (scope["path"] == "/" and self._matches(_query_token(scope)))

    def _matches(self, given: str) -> bool:
        return bool(given) and secrets.compare_digest(given.encode(), self._token)

    def _login(self, scope):
        """`/?token=T` (checked above): keep the token in a cookie and drop it from the address bar."""
        if self._token is None or scope["path"] != "/" or not _query_token(scope):
            return None
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, self.config.token, httponly=True, samesite="lax")
        return response


def _query_token(scope) -> str:
    """`token` from the query, percent-decoded. A "+" stays a "+", not a space as in a form: a token
    has no spaces, and base64 tokens (`openssl rand -base64`) have "+"."""
    for pair in scope.get("query_string", b"").decode("latin-1").split("&"):
        name, _, value = pair.partition("=")
        if name == "token":
            return unquote(value)
    return ""


def _hostname(host: str) -> str:
    return (urlsplit(f"//{host}").hostname or "").strip("[]")


def _refuse(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)
