"""The baseline server: a bare Litestar hello-world JSON route on uvicorn, set up as `fleetd serve` sets up its own.

It answers GET and POST on any path with a small JSON object and never reads
the request body, so it measures the floor: TLS, HTTP parsing, Litestar's
routing and response, on one worker with the same uvicorn options.

    python -m tests.bench.hello_app --port 9000 --cert server.pem --key server.key
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from litestar import Litestar, route
from litestar.enums import HttpMethod


@route("/{path:path}", http_method=[HttpMethod.GET, HttpMethod.POST], status_code=200)
async def hello(path: str) -> dict[str, Any]:
    return {"hello": "world", "poll_interval": 60, "actions": []}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", help="TLS certificate (PEM); plain HTTP without it")
    p.add_argument("--key", help="TLS private key (PEM)")
    a = p.parse_args()
    app = Litestar(route_handlers=[hello], openapi_config=None, debug=False)
    tls = {"ssl_certfile": a.cert, "ssl_keyfile": a.key} if a.cert else {}
    # The same options as fleetd.cli.serve (log level warning, as the benchmark runs fleetd).
    uvicorn.Server(uvicorn.Config(
        app, host=a.host, port=a.port, log_level="warning", access_log=False, lifespan="on", server_header=False,
        log_config=None, timeout_graceful_shutdown=10, **tls)).run()


if __name__ == "__main__":
    main()
