"""A real aiohttp server on 127.0.0.1 in a background thread, for the load generator's tests
(synthetic and replayed traffic): one handler, any method, on ``route``."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any


@contextlib.contextmanager
def serve(handle: Callable[[Any], Awaitable[Any]], route: str = "/", *,
          handler_cancellation: bool = False) -> Iterator[str]:
    """Serve ``handle`` until the block ends; yields the server's URL (``http://.../``)."""
    from aiohttp import web

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_route("*", route, handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5,
                           handler_cancellation=handler_cancellation)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
