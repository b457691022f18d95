"""The run pages, served by the scheduler process (tornado, as Dask's own dashboard) on the
address it is given, read-only. Access is the tailnet's: the farm's policy opens this port to
operators and orchestrators only (components/render/tailnet_policy.py)."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import Executor
from typing import Any

from .pages import run_page, runs_page
from .store import RunStore

_RUN_ID = re.compile(r"[0-9a-f]{32}")
HEADERS = {"Content-Type": "text/html; charset=utf-8", "X-Content-Type-Options": "nosniff",
           # No scripts at all, styles inline: a report's text can never run in a browser.
           "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


def make_app(store: RunStore, reader: Executor) -> Any:
    import tornado.web

    class Page(tornado.web.RequestHandler):
        def set_default_headers(self) -> None:
            for name, value in HEADERS.items():
                self.set_header(name, value)

        async def read(self, function, *args):  # noqa: ANN001, ANN002, ANN202 - SQLite off the loop
            return await asyncio.get_running_loop().run_in_executor(reader, function, *args)

    class Runs(Page):
        async def get(self) -> None:
            self.finish(runs_page(await self.read(store.recent, 100)))

    class Run(Page):
        async def get(self, run_id: str) -> None:
            run = await self.read(store.get, run_id) if _RUN_ID.fullmatch(run_id) else None
            if run is None:
                self.set_status(404)
                self.finish("<!DOCTYPE html><title>not found</title><p>No such run. <a href=\"/\">runs</a></p>")
                return
            self.finish(run_page(run))

    return tornado.web.Application([(r"/", Runs), (r"/runs/([^/]+)", Run)])  # anything else: tornado's 404


def serve(store: RunStore, reader: Executor, address: str, port: int) -> tuple[Any, int]:
    """Listen on `address:port` on the running loop: the tornado HTTPServer and the port it got."""
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    sockets = bind_sockets(port, address)
    server = HTTPServer(make_app(store, reader), xheaders=False)
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]
