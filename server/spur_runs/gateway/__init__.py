"""HTTP/JSON gateway: routes from the services' google.api.http annotations,
served by calling the gRPC server itself (see app.py)."""

from .app import HttpGateway

__all__ = ["HttpGateway"]
