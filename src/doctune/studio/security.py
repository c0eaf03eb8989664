"""Every request needs the studio's token, as Jupyter's server does.

The printed URL carries ``?token=...``; the first request with it gets a cookie (HttpOnly,
SameSite=Strict, so that no other site's page can send it) and is redirected to the same
page without the token. Requests without a valid token or cookie get 403, and requests for
another host name get 403 too (a web page cannot reach the studio by DNS rebinding).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

Scope = MutableMapping[str, Any]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]"}


def new_token() -> str:
    """A fresh per-start token (48 hex characters)."""
    return secrets.token_hex(24)


class TokenGate:
    """ASGI middleware: the token (query or cookie) on every request, a local Host header."""

    def __init__(self, app: ASGIApp, *, token: str, port: int, hosts: set[str] | None) -> None:
        self.app = app
        self.token = token
        self.cookie = f"doctune-studio-{port}"
        self.hosts = hosts

    def _ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "").rsplit(":", 1)[0]
        if self.hosts is not None and host not in self.hosts:
            await _plain(send, 403, f"doctune studio answers only as {sorted(self.hosts)[0]}.")
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        cookies = SimpleCookie(headers.get("cookie", ""))
        from_cookie = cookies[self.cookie].value if self.cookie in cookies else None
        if self._ok(query.get("token")):
            if scope["method"] == "GET" and not scope["path"].startswith("/api/"):
                rest = urlencode({k: v for k, v in query.items() if k != "token"})
                await self._redirect(send, scope["path"] + (f"?{rest}" if rest else ""))
                return
        elif not self._ok(from_cookie):
            await _plain(send, 403, "doctune studio: this needs the token. Open the URL that "
                         "`doctune studio` printed (it ends with ?token=...).")
            return
        await self.app(scope, receive, send)

    async def _redirect(self, send: Send, location: str) -> None:
        cookie = f"{self.cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict"
        await send({"type": "http.response.start", "status": 303, "headers": [
            (b"location", location.encode("latin-1")), (b"set-cookie", cookie.encode()),
            (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode("utf-8")
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
