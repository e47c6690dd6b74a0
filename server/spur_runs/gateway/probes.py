"""HTTP health for load balancers and orchestrators that speak only HTTP:

- `GET /healthz` (liveness): 200 while the process serves, on a connection
  still open while it drains too (a liveness probe failing during the grace
  period would get it killed);
- `GET /readyz` (readiness): 200 only while gRPC health of the whole server
  ("") is SERVING, else 503 with a google.rpc.Status. It asks the gRPC server
  itself (Health/Check over the gateway's channel), so it says what a gRPC
  probe would, whoever implements health.

Neither needs a token (gRPC health is public too). Both answer
`{"status": "SERVING"}` when well: grpc.health.v1.HealthCheckResponse's JSON.
"""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
from aiohttp import web
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health_pb2

from .access import called
from .openapi import STATUS_REF
from .replies import error

HEALTHZ = "/healthz"
READYZ = "/readyz"
_CHECK = "/grpc.health.v1.Health/Check"
# A readiness answer slower than this is a no: the server is stuck or
# overloaded, and a probe must not queue behind it.
_CHECK_TIMEOUT = 2.0
_SERVING = b'{"status":"SERVING"}'
_SCHEMA = "grpc.health.v1.HealthCheckResponse"


def _status(
    http: int, code: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return error(status_pb2.Status(code=code, message=message), http, headers)


class Probes:
    def __init__(self, channel: Any, prefix: str = "") -> None:
        """`channel`: the gateway's, a grpc.aio.Channel or anything with its
        unary_unary (a pool of them)."""
        # --http-path-prefix: the probes live under it, as every path does.
        self._paths = {prefix + HEALTHZ: HEALTHZ, prefix + READYZ: READYZ}
        self._check = channel.unary_unary(
            _CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )

    async def answer(self, request: web.BaseRequest, closing: bool) -> web.Response | None:
        """The answer if `request` is for a probe's path, else None."""
        path = self._paths.get(request.raw_path.partition("?")[0])
        if path is None:
            return None
        if request.method not in ("GET", "HEAD"):  # HEAD: GET's answer, no body (mux.py)
            return _status(
                405,
                code_pb2.UNIMPLEMENTED,
                f"method not allowed for {path}; use GET or HEAD",
                {"Allow": "GET, HEAD"},
            )
        if path == HEALTHZ:
            return web.Response(body=_SERVING, content_type="application/json")
        if closing:
            return _status(503, code_pb2.UNAVAILABLE, "not ready: the server is shutting down")
        called()  # (the Check's access line stands for this answer)
        try:
            reply = await self._check(
                health_pb2.HealthCheckRequest(service=""), timeout=_CHECK_TIMEOUT
            )
        except grpc.aio.AioRpcError as error:
            return _status(503, code_pb2.UNAVAILABLE, f"not ready: gRPC health {error.code().name}")
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            return _status(503, code_pb2.UNAVAILABLE, f"not ready: gRPC health is {name}")
        return web.Response(body=_SERVING, content_type="application/json")


def document_probes(openapi: dict[str, Any]) -> None:
    """Add the probes to the gateway's OpenAPI document."""
    ok = {
        "description": "Serving.",
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{_SCHEMA}"}}},
    }
    error = {
        "description": "An error.",
        "content": {"application/json": {"schema": {"$ref": STATUS_REF}}},
    }
    openapi["paths"][HEALTHZ] = {
        "get": {
            "operationId": "Healthz",
            "tags": ["Health"],
            "summary": "Liveness: 200 while the process serves.",
            "responses": {"200": ok, "default": error},
        }
    }
    openapi["paths"][READYZ] = {
        "get": {
            "operationId": "Readyz",
            "tags": ["Health"],
            "summary": "Readiness: 200 while gRPC health is SERVING, else 503.",
            "responses": {
                "200": ok,
                "503": {**error, "description": "Not ready: gRPC health is not SERVING."},
                "default": error,
            },
        }
    }
    openapi["components"]["schemas"][_SCHEMA] = {
        "type": "object",
        "properties": {
            "status": {
                "type": "string",
                "enum": ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"],
            }
        },
        "required": ["status"],
    }
