"""GET /metrics on the HTTP port: the hook the gateway (gateway/mux.py)
calls, kept here so that the gateway knows nothing of Prometheus.

Not behind bearer tokens: Prometheus scrapers rarely carry one, and the
numbers name methods and codes, never data. With --tls-client-ca the HTTP
port demands a client certificate like the gRPC port, scrapers included.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from .metrics import Metrics

METRICS_PATH = "/metrics"


async def metrics_response(metrics: Metrics) -> web.Response:
    # Off the event loop: with --workers it reads every worker's files.
    body, content_type = await asyncio.get_running_loop().run_in_executor(None, metrics.exposition)
    # (aiohttp's content_type= takes no parameters; Prometheus wants its version one.)
    return web.Response(body=body, headers={"Content-Type": content_type})
