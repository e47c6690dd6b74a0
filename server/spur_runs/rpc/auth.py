"""Bearer-token authentication and the one table of who may call what.

Tokens come from files (`--reader-tokens-file`, `--admin-tokens-file`), one
per line. A caller sends `authorization: Bearer <token>` metadata (the HTTP
gateway forwards its Authorization header as that metadata, so HTTP callers
go through the same check).

METHOD_SCOPES is the whole policy. The server refuses to start when a method
of a service it registers has no entry (`check_coverage`), and a method with
no entry is denied anyway: a new RPC cannot be left open by accident.

With no token file configured, authentication is off (the server says so at
start-up): that is the local development mode, not a production one.
"""

from __future__ import annotations

import enum
import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from ..config import Config, ConfigError
from .chain import Hook, Refusal

log = logging.getLogger(__name__)


class Scope(enum.IntEnum):
    """What a method needs; a token of a higher scope may call it too."""

    PUBLIC = 0
    READER = 1
    ADMIN = 2


_RUNS = "spur.runs.v1.RunService"
_HEALTH = "grpc.health.v1.Health"
_REFLECTION = "grpc.reflection.v1alpha.ServerReflection"

# Full method name -> scope it needs. Health stays public so that load
# balancers and orchestrators can probe without a secret. Reflection needs a
# reader token: it holds a stream open for as long as its client likes, and
# lists every method; grpcurl sends the token with
# -H 'authorization: Bearer TOKEN' (or switch reflection off, --no-reflection).
METHOD_SCOPES: dict[str, Scope] = {
    f"/{_RUNS}/GetRun": Scope.READER,
    f"/{_RUNS}/GetRunStatus": Scope.READER,
    f"/{_RUNS}/ListRuns": Scope.READER,
    f"/{_RUNS}/GetRunTasks": Scope.READER,
    f"/{_RUNS}/GetChildRuns": Scope.READER,
    f"/{_RUNS}/WatchRun": Scope.READER,
    f"/{_RUNS}/DeleteRun": Scope.ADMIN,
    f"/{_HEALTH}/Check": Scope.PUBLIC,
    f"/{_HEALTH}/List": Scope.PUBLIC,
    f"/{_HEALTH}/Watch": Scope.PUBLIC,
    f"/{_REFLECTION}/ServerReflectionInfo": Scope.READER,
}

# The same words for a missing, malformed or unknown token: the answer must
# not tell a prober anything about which tokens exist.
UNAUTHENTICATED_MESSAGE = "missing or invalid bearer token (send 'authorization: Bearer <token>')"


def check_coverage(services: Iterable[ServiceDescriptor]) -> None:
    """Raise when a method of `services` has no entry in METHOD_SCOPES."""
    missing = [
        f"/{service.full_name}/{method.name}"
        for service in services
        for method in service.methods
        if f"/{service.full_name}/{method.name}" not in METHOD_SCOPES
    ]
    if missing:
        raise RuntimeError(f"auth.METHOD_SCOPES has no entry for {', '.join(missing)}")


def read_tokens(path: str, setting: str) -> list[bytes]:
    """The tokens of a file: one per line; blank lines and `#` comments
    skipped. ConfigError naming `setting`, the Config field that named the
    file, when there is none or one is no token."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the file: {_reason(error)}", setting) from None
    tokens = [line.strip() for line in lines]
    tokens = [t for t in tokens if t and not t.startswith("#")]
    if not tokens:
        # An empty file most likely means a broken secret mount; serving
        # without authentication then would be the wrong failure.
        raise ConfigError("the file holds no token", setting)
    for token in tokens:
        if any(c.isspace() for c in token) or not token.isprintable() or not token.isascii():
            raise ConfigError("the file has a line that is not one printable ASCII token", setting)
    return [t.encode("ascii") for t in tokens]


def _reason(error: Exception) -> str:
    return error.strerror or str(error) if isinstance(error, OSError) else str(error)


@dataclass(frozen=True)
class Tokens:
    # (token, scope) pairs; never logged, never shown in a repr.
    entries: tuple[tuple[bytes, Scope], ...] = ()

    def __repr__(self) -> str:
        return f"Tokens({len(self.entries)} tokens)"

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    @classmethod
    def from_config(cls, config: Config) -> Tokens:
        entries: list[tuple[bytes, Scope]] = []
        if config.reader_tokens_file:
            entries += [
                (t, Scope.READER)
                for t in read_tokens(config.reader_tokens_file, "reader_tokens_file")
            ]
        if config.admin_tokens_file:
            entries += [
                (t, Scope.ADMIN) for t in read_tokens(config.admin_tokens_file, "admin_tokens_file")
            ]
        return cls(tuple(entries))

    def scope_of(self, presented: bytes) -> Scope | None:
        """The highest scope of a token equal to `presented`, or None.

        Every configured token is compared, with hmac.compare_digest, whatever
        matched before: the time taken does not depend on which token (if any)
        matched, nor on how much of it did.
        """
        found: Scope | None = None
        for token, scope in self.entries:
            if hmac.compare_digest(token, presented) and (found is None or scope > found):
                found = scope
        return found


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> bytes | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            token = token.strip()
            # Tokens are printable ASCII (read_tokens); a value beyond it
            # matches none. grpc hands valid UTF-8 over as text ("€"), which
            # latin-1 cannot encode: the call ended UNKNOWN, with a traceback
            # logged, before any token was looked at.
            if scheme.lower() == "bearer" and token and token.isascii():
                return token.encode("ascii")
            return None
    return None


class AuthHook(Hook):
    """Lets a call through only with a token whose scope covers its method.
    A refused call never runs its behavior (for a non-blocking streaming
    method too: what would start watching never runs), nor the hooks inside
    this one (chain.wrap)."""

    def __init__(self, tokens: Tokens) -> None:
        self._tokens = tokens

    def refusal(self, details: grpc.HandlerCallDetails) -> Refusal | None:
        if not self._tokens.enabled:
            return None
        method = details.method
        needed = METHOD_SCOPES.get(method)
        if needed is None:
            log.error("%s has no entry in auth.METHOD_SCOPES: denied", method)
            return Refusal(grpc.StatusCode.PERMISSION_DENIED, "this method is not allowed")
        if needed is Scope.PUBLIC:
            return None
        presented = bearer_token(details.invocation_metadata)
        scope = self._tokens.scope_of(presented) if presented is not None else None
        if scope is None:
            return _UNAUTHENTICATED
        if scope < needed:
            name = method.rsplit("/", 1)[-1]
            return Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{name} needs a token of scope {needed.name.lower()}",
            )
        return None


_UNAUTHENTICATED = Refusal(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
