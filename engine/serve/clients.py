"""Who a request is for: each client sees, follows, fetches and cancels only the jobs it created.

A client is named by the `X-Srtrt-Client` header (a program choosing its own id), else by the
`srtrt_client` cookie; a request with neither gets a fresh random id, sent back as that cookie
(HttpOnly: the page never handles it) and in the `X-Srtrt-Client` response header, so a program
without a cookie jar can keep it. The cookie is SameSite=Lax: a link to the page from another site
must bring it, or the page would mint a new id and lose its jobs; other sites' requests that change
anything (POST, PUT, DELETE) never carry it, and security.Guard refuses them by their Origin anyway.
The token says who may use the server at all; this id keeps its users out of each other's files.
"""
from __future__ import annotations

import re
import secrets

from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse

COOKIE = "srtrt_client"
HEADER = "X-Srtrt-Client"
VALID = re.compile(r"[A-Za-z0-9_-]{16,128}")  # long enough not to be guessed, short enough for a header
MAX_AGE = 400 * 24 * 3600                     # the longest browsers keep a cookie


def client_of(request) -> str:
    return request.scope["state"]["client"]


class ClientId:
    """ASGI layer: puts the client id in `scope["state"]["client"]`, minting (and sending) one when none came."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        connection = HTTPConnection(scope)
        given = connection.headers.get(HEADER.lower())
        if given is not None and not VALID.fullmatch(given):
            response = JSONResponse({"detail": f"{HEADER}: 16 to 128 letters, digits, - or _"}, status_code=400)
            return await response(scope, receive, send)
        cookie = connection.cookies.get(COOKIE, "")  # Starlette parses the Cookie header, as for a route
        client = given or (cookie if VALID.fullmatch(cookie) else None)
        fresh = client is None
        if fresh:
            client = secrets.token_urlsafe(24)
        scope.setdefault("state", {})["client"] = client

        async def send_with_id(message):
            if fresh and message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                out.append("set-cookie", f"{COOKIE}={client}; Max-Age={MAX_AGE}; Path=/; HttpOnly; SameSite=lax")
                out.append(HEADER, client)
            await send(message)

        return await self.app(scope, receive, send_with_id)
