"""The console: web pages for the on-call operator at `/admin/ui/`, when `admin.token` is set.

Server-rendered HTML (Jinja2, autoescaped) over the admin operations of `bridge.admin`;
one small script makes the overview refresh itself and the dead-letter list selectable,
and every page reads the same without it. Sign-in (`signin.py`) takes the admin token
once and sets a signed session cookie (`session.py`); `site.py` guards every page and
renders; `pages.py` holds the pages over the store; `playground.py` (its page:
`playground_page.py`) tries an edited rule on stored or pasted events, storing nothing.
No storage of its own: what it shows beyond the store is the runtime's, kept in memory.
"""

from __future__ import annotations

import time

from aiohttp import web

from bridge.console import pages, playground_page, signin, site
from bridge.console.activity import sample_forever
from bridge.runtime import Runtime


def console_app(runtime: Runtime) -> web.Application:
    """The `/admin/ui` sub-application for `runtime`; `mount` adds it."""
    static = site.load_static()
    app = web.Application(middlewares=[site.guard])
    app[site.CONSOLE] = site.Console(templates=site.templates(static), static=static)
    r = app.router
    r.add_get("/", pages.overview, name="overview")
    r.add_get("/sign-in", signin.sign_in_form, name="sign_in_form")
    r.add_post("/sign-in", signin.sign_in, name="sign_in")
    r.add_post("/sign-out", signin.sign_out, name="sign_out")
    r.add_get("/dead-letters", pages.dead_letters, name="dead_letters")
    r.add_post("/dead-letters/retry", pages.retry, name="retry")
    r.add_get("/leads", pages.lead, name="lead")
    r.add_get("/events", pages.events, name="events")
    r.add_get("/events/{pk}", pages.event, name="event")
    r.add_post("/events/{pk}/replay", pages.replay, name="replay")
    r.add_get("/playground", playground_page.playground_form, name="playground_form")
    r.add_post("/playground", playground_page.playground_run, name="playground")
    r.add_get("/static/{name}", site.static_file, name="static")

    async def start_sampling(app: web.Application) -> None:
        rate = app[site.CONSOLE].rate
        runtime.supervisor.start(
            "console-sampler", lambda: sample_forever(rate, runtime.metrics, time.monotonic)
        )

    app.on_startup.append(start_sampling)
    return app


def mount(app: web.Application, runtime: Runtime) -> None:
    """Add `/admin/ui/` to `app` when `admin.token` is set; without it the pages do not exist."""
    if runtime.bundle.config.admin.token is not None:
        app.router.add_get(site.PREFIX, _with_slash)
        app.add_subapp(site.PREFIX, console_app(runtime))


async def _with_slash(request: web.Request) -> web.StreamResponse:
    return site.see_other(f"{site.PREFIX}/")
