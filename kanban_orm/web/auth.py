"""The board's access token and CSRF guard, as one ASGI middleware around every route
(pages, fragments, the live stream, /metrics and the static files alike).

A request is let in with ``Authorization: Bearer <token>`` or the session cookie. The
URL printed at start carries the token once as ``?token=``: that request is answered
with a redirect to the same URL without it, setting the cookie (HttpOnly, so page
scripts cannot read it; SameSite=Strict, so another site's page cannot send it).
A write authenticated by the cookie must also carry the CSRF token the page embeds
(``X-CSRF-Token``), and a cross-origin ``Origin`` is refused: a bearer header is never
sent by a browser on its own, so a bearer request needs neither.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "kanban_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Sent with every response: no inline script or style runs, so even a string that
#: escaped the templates could not execute; no framing; no Referer with a token in it.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def new_token() -> str:
    return secrets.token_urlsafe(24)


def csrf_token(token: str) -> str:
    """The CSRF token for pages served under ``token``: derived, so it needs no state
    and changes whenever the access token does."""
    return hmac.new(token.encode(), b"kanban-csrf", hashlib.sha256).hexdigest()


class TokenAuth:
    """Refuses every request without the token: 401 with none given, 403 with a wrong
    one or a write that fails the CSRF check."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ValueError("the web board needs a non-empty token")
        self.app = app
        self.token = token
        self.csrf = csrf_token(token)

    def _matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        method = scope["method"]
        response = self._check(scope, headers, method)
        if response is not None:
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                present = {k.lower() for k, _ in raw}
                for name, value in SECURITY_HEADERS.items():
                    if name.encode() not in present:
                        raw.append((name.encode(), value.encode()))
                message["headers"] = raw
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _check(self, scope: Scope, headers: Headers, method: str) -> Response | None:
        authorization = headers.get("authorization", "")
        if authorization[:7].lower() == "bearer ":
            if self._matches(authorization[7:].strip()):
                return None
            return _refuse(403, "wrong token")
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = dict(query).get("token")
        if given is not None and method in SAFE_METHODS:
            if not self._matches(given):
                return _refuse(403, "wrong token")
            return self._set_cookie(scope, headers, [(k, v) for k, v in query if k != "token"])
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is the same as none
            cookie = SimpleCookie()
        morsel = cookie.get(COOKIE)
        if morsel is None:
            return _refuse(401, "a token is required")
        if not self._matches(morsel.value):
            return _refuse(403, "wrong token")
        if method in SAFE_METHODS:
            return None
        if not _same_origin(headers):
            return _refuse(403, "cross-origin write refused")
        if not hmac.compare_digest(headers.get(CSRF_HEADER, "").encode(), self.csrf.encode()):
            return _refuse(403, "missing or wrong CSRF token")
        return None

    def _set_cookie(self, scope: Scope, headers: Headers, rest: list[tuple[str, str]]) -> Response:
        root = scope.get("root_path", "") or ""
        path = scope["path"]
        # Starlette keeps the mount prefix in both path and root_path; a bare ASGI
        # server may put it only in root_path.
        full = path if path.startswith(root) else root + path
        location = full + ("?" + urlencode(rest) if rest else "")
        response = RedirectResponse(location, status_code=303)
        response.set_cookie(
            COOKIE,
            self.token,
            path=(root or "/"),
            httponly=True,
            samesite="strict",
            secure=scope.get("scheme") == "https",
        )
        return response


def _same_origin(headers: Headers) -> bool:
    origin = headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == headers.get("host", "")


def _refuse(status: int, why: str) -> Response:
    extra = {"www-authenticate": 'Bearer realm="kanban"'} if status == 401 else {}
    return PlainTextResponse(f"{status}: {why}\n", status_code=status, headers=extra)
