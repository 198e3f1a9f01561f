"""An aiohttp application on a real 127.0.0.1 socket, served by its own event loop in a thread,
for tests whose client is synchronous code (the gateway's HTTP sink and priors source)."""

from __future__ import annotations

import asyncio
import socket
import threading

from aiohttp import web


class ThreadedServer:
    """Bound at construction (so ``url`` is known before the app is built); ``start(app)``
    serves it, ``stop()`` ends the loop and its thread."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None

    def start(self, app: web.Application) -> None:
        self.runner = web.AppRunner(app)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(self.runner), self.loop).result(30)

    async def _start(self, runner: web.AppRunner) -> None:
        await runner.setup()
        await web.SockSite(runner, self.sock).start()

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()
