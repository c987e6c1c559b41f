"""The console's web edge: the guard every request passes, sessions, rendering, static files.

The guard, in order: the console is off (404) once a reload removed `admin.token`; pages
other than sign-in and static files need a session cookie that verifies with the
current token (a changed token signs everyone out); a request that changes anything
(any method but GET and HEAD) needs the session's CSRF token and, when the browser
says where it comes from, our own origin. Every answer, errors and redirects included,
carries the security headers (`SECURITY_HEADERS`). No error becomes a traceback page:
the guard is the console's one boundary and logs what it did not expect, once.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final
from urllib.parse import quote, urlsplit

import jinja2
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from bridge.console import views
from bridge.console.activity import RequestRate
from bridge.console.session import Revoked, Session, Signer, Throttle
from bridge.errors import RequestRejected, StorageError
from bridge.runtime import RUNTIME, Runtime

log = structlog.get_logger("bridge.console")

PREFIX: Final = "/admin/ui"
SAFE_METHODS: Final = frozenset({"GET", "HEAD"})
PUBLIC_ROUTES: Final = frozenset({"sign_in", "sign_in_form", "static"})

# No inline script or style at all: the one script and the one stylesheet are files.
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it, browsers send `Origin: null` on our own form posts.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
# Where sign-in may send the browser afterwards: a console page, nothing else.
NEXT = re.compile(r"/admin/ui/[A-Za-z0-9/_.\-?=&%+]*")


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    version: str  # a digest of the body: URLs carry it, so it may be cached for long


@dataclass
class Console:
    """The console's in-memory state for one process."""

    templates: jinja2.Environment
    static: dict[str, StaticFile]
    throttle: Throttle = field(default_factory=Throttle)
    revoked: Revoked = field(default_factory=Revoked)
    rate: RequestRate = field(default_factory=RequestRate)
    playground: asyncio.Lock = field(default_factory=asyncio.Lock)  # one run at a time


CONSOLE = web.AppKey("console", Console)


def load_static() -> dict[str, StaticFile]:
    """The console's static files, read once from the package (a wheel carries them)."""
    types = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
    found: dict[str, StaticFile] = {}
    for item in (resources.files("bridge.console") / "static").iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if item.is_file() and suffix in types:
            body = item.read_bytes()
            found[item.name] = StaticFile(
                body, types[suffix], hashlib.sha256(body).hexdigest()[:12]
            )
    return found


def templates(static: dict[str, StaticFile]) -> jinja2.Environment:
    """The page templates: autoescaped, and a missing variable is an error, not a blank."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("bridge.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(utc=views.utc, age=views.age, pretty=views.pretty)
    env.globals.update(
        base=PREFIX,
        static=lambda name: f"{PREFIX}/static/{name}?v={static[name].version}",
    )
    return env


# --- sessions -------------------------------------------------------------------------


def admin_token(runtime: Runtime) -> str | None:
    token = runtime.bundle.config.admin.token
    return None if token is None else token.get_secret_value()


def signer_of(request: web.Request) -> Signer:
    """The signer of the current admin token (the guard has checked there is one)."""
    token = admin_token(request.config_dict[RUNTIME])
    assert token is not None
    return Signer.for_token(token)


def secure_cookies(runtime: Runtime) -> bool:
    return runtime.bundle.config.server.public_url.startswith("https://")


def cookie_name(runtime: Runtime, base: str = "vb_console") -> str:
    # The __Secure- prefix makes the browser refuse the cookie unless it is Secure.
    return f"__Secure-{base}" if secure_cookies(runtime) else base


def session_of(request: web.Request) -> Session | None:
    """The request's verified session, unless signed out in this process."""
    runtime = request.config_dict[RUNTIME]
    token = admin_token(runtime)
    if token is None:
        return None
    session = Signer.for_token(token).verify(
        request.cookies.get(cookie_name(runtime)), runtime.clock()
    )
    if session is None or session in request.config_dict[CONSOLE].revoked:
        return None
    return session


def set_cookie(
    response: web.StreamResponse, runtime: Runtime, name: str, value: str, ttl: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=ttl,
        path=PREFIX,
        httponly=True,
        samesite="Strict",
        secure=secure_cookies(runtime) or None,
    )


# --- answers --------------------------------------------------------------------------


def render(request: web.Request, name: str, *, status: int = 200, **context: Any) -> web.Response:
    """A page: the template with what every page needs (the CSRF token of the session)."""
    console = request.config_dict[CONSOLE]
    session = session_of(request)
    context.setdefault("csrf", signer_of(request).csrf(session) if session else "")
    context.setdefault("signed_in", session is not None)
    context.setdefault("path", request.path)
    html = console.templates.get_template(name).render(**context)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    console = request.config_dict[CONSOLE]
    html = console.templates.get_template("error.html").render(
        status=status, message=message, signed_in=False, csrf="", path=request.path
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def see_other(location: str) -> web.Response:
    """303: after a POST, the browser GETs `location` (a page of ours)."""
    return web.Response(status=303, headers={"Location": location})


def _secure(response: web.StreamResponse, *, cacheable: bool) -> None:
    response.headers.update(SECURITY_HEADERS)
    if not cacheable:
        response.headers["Cache-Control"] = "no-store"


# --- the guard ------------------------------------------------------------------------


def _same_origin(request: web.Request, runtime: Runtime) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:  # not sent by this client; the CSRF token still decides
        return True
    ours = {request.host, urlsplit(runtime.bundle.config.server.public_url).netloc}
    return urlsplit(origin).netloc in ours


async def _checked(request: web.Request, handler: Handler) -> web.StreamResponse:
    runtime = request.config_dict[RUNTIME]
    if admin_token(runtime) is None:  # removed by a reload: the console is off again
        return error_page(request, 404, "The console is off: admin.token is not set.")
    if request.match_info.route.name in PUBLIC_ROUTES:
        return await handler(request)
    session = session_of(request)
    if session is None:
        if request.method in SAFE_METHODS:
            target = request.path_qs if NEXT.fullmatch(request.path_qs) else f"{PREFIX}/"
            return see_other(f"{PREFIX}/sign-in?next={quote(target, safe='')}")
        return error_page(request, 401, "Your session ended: sign in again.")
    if request.method not in SAFE_METHODS:
        form = await request.post()
        given = form.get("csrf")
        if not _same_origin(request, runtime) or not signer_of(request).csrf_ok(
            session, given if isinstance(given, str) else None
        ):
            log.warning("console.csrf_refused", path=request.path, remote=request.remote)
            return error_page(request, 403, "Refused: this form did not come from the console.")
    return await handler(request)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authentication, CSRF, security headers and error pages for every console request."""
    try:
        response = await _checked(request, handler)
    except web.HTTPException as exc:  # the router's 404/405, a body over the size limit
        response = error_page(request, exc.status, exc.reason)
    except RequestRejected as exc:
        response = error_page(request, exc.status, exc.reason)
    except StorageError as exc:
        log.error("admin.storage_unavailable", path=request.path, error=str(exc))
        response = error_page(request, 503, "The store is unavailable; try again shortly.")
    except Exception:  # the console's boundary: logged once, never shown
        log.exception("console.failed", path=request.path)
        response = error_page(request, 500, "Something went wrong; the log says what.")
    _secure(
        response, cacheable=request.match_info.route.name == "static" and response.status == 200
    )
    return response


# --- static files ---------------------------------------------------------------------


async def static_file(request: web.Request) -> web.StreamResponse:
    found = request.config_dict[CONSOLE].static.get(request.match_info["name"])
    if found is None:
        raise web.HTTPNotFound(reason="Not Found")
    response = web.Response(body=found.body, content_type=found.content_type)
    response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    return response
