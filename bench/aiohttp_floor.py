"""The REST floor: a bare aiohttp handler answering POST with a fixed JSON, no broker.

    build/gateway-venv/bin/python bench/aiohttp_floor.py PORT

The least a Python HTTP/1.1 service on aiohttp can spend per request: read the body, answer a
constant `{"task_key": ...}`. Its CPU per request plus raw aiormq's per confirmed message is
the REST floor the gateway's CPU per task is held to (docs/performance.md, "The targets"). It
runs in build/gateway-venv, on the gateway's aiohttp and uvloop, in one process, with the
gateway's listener settings that cost nothing per request (no access log, keep-alive).
"""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop
from aiohttp import web

PATH = "/api/v1/broker/publish"
ANSWER = b'{"task_key":"12345:image-generation:00000000-0000-4000-8000-000000000000"}'


async def publish(request: web.Request) -> web.Response:
    await request.read()  # the body is read, as any handler of the contract must
    return web.Response(body=ANSWER, content_type="application/json")


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_post(PATH, publish)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stopped.set)
    await stopped.wait()
    await runner.cleanup()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
