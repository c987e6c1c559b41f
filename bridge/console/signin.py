"""Signing in and out of the console: the admin token once, then a session cookie.

The token is compared in constant time and never echoed, logged or put in a URL; wrong
ones are logged (`admin.unauthorized`) and throttled per client address. The sign-in
form carries its own CSRF token, bound to a short-lived cookie, since no session exists
yet. See `session.py` for the cookie and `site.py` for the guard every other page passes.
"""

from __future__ import annotations

from typing import Final

import structlog
from aiohttp import web

from bridge.console.session import SESSION_TTL_S, same_secret
from bridge.console.site import (
    CONSOLE,
    NEXT,
    PREFIX,
    admin_token,
    cookie_name,
    render,
    see_other,
    session_of,
    set_cookie,
    signer_of,
)
from bridge.runtime import RUNTIME

log = structlog.get_logger("bridge.console")

MAX_TOKEN_CHARS: Final = 1000  # a longer "token" is not compared, only refused
SIGN_IN_COOKIE_TTL_S: Final = 3600


def _next(value: object) -> str:
    text = value if isinstance(value, str) else ""
    return text if NEXT.fullmatch(text) and "//" not in text else f"{PREFIX}/"


def _sign_in_page(request: web.Request, status: int, message: str | None) -> web.Response:
    runtime = request.config_dict[RUNTIME]
    nonce, token = signer_of(request).sign_in_nonce()
    response = render(
        request,
        "sign_in.html",
        status=status,
        message=message,
        csrf=token,
        signed_in=False,
        next=_next(request.query.get("next")),
    )
    set_cookie(response, runtime, cookie_name(runtime, "vb_sign_in"), nonce, SIGN_IN_COOKIE_TTL_S)
    return response


async def sign_in_form(request: web.Request) -> web.StreamResponse:
    if session_of(request) is not None:
        return see_other(f"{PREFIX}/")
    message = "Signed out." if "signed_out" in request.query else None
    return _sign_in_page(request, 200, message)


async def sign_in(request: web.Request) -> web.StreamResponse:
    runtime = request.config_dict[RUNTIME]
    console = request.config_dict[CONSOLE]
    client = request.remote or "unknown"
    now = runtime.clock()
    wait = console.throttle.wait(client, now)
    if wait > 0:
        log.warning("admin.unauthorized", path=request.path, remote=client, reason="throttled")
        page = _sign_in_page(request, 429, f"Too many wrong tokens: try again in {wait:.0f} s.")
        page.headers["Retry-After"] = str(int(wait) + 1)
        return page
    form = await request.post()
    nonce = request.cookies.get(cookie_name(runtime, "vb_sign_in"))
    given_csrf = form.get("csrf")
    if not signer_of(request).sign_in_ok(
        nonce, given_csrf if isinstance(given_csrf, str) else None
    ):
        log.warning("console.csrf_refused", path=request.path, remote=client)
        return _sign_in_page(request, 403, "The sign-in form expired: sign in again.")
    given = form.get("token")
    token = admin_token(runtime)
    assert token is not None
    if not isinstance(given, str) or len(given) > MAX_TOKEN_CHARS or not same_secret(given, token):
        console.throttle.failed(client, now)
        log.warning("admin.unauthorized", path=request.path, remote=client)
        return _sign_in_page(request, 401, "That is not the admin token.")
    console.throttle.succeeded(client)
    console.revoked.forget_expired(now)
    _, value = signer_of(request).issue(now)
    response = see_other(_next(form.get("next")))
    set_cookie(response, runtime, cookie_name(runtime), value, int(SESSION_TTL_S))
    set_cookie(response, runtime, cookie_name(runtime, "vb_sign_in"), "", 0)
    log.info("console.signed_in", remote=client)
    return response


async def sign_out(request: web.Request) -> web.StreamResponse:
    runtime = request.config_dict[RUNTIME]
    session = session_of(request)
    if session is not None:
        request.config_dict[CONSOLE].revoked.add(session)
    response = see_other(f"{PREFIX}/sign-in?signed_out=1")
    set_cookie(response, runtime, cookie_name(runtime), "", 0)
    log.info("console.signed_out", remote=request.remote)
    return response
