"""Answers that are api.spliced.Spliced are serialized by themselves.

The servicer answers GetRun, ListRuns and GetChildRuns with a Spliced when
runtime/server.py asks it to (`RunService(splice=True)`): the message
without its runs' workflow versions, which its SerializeToString puts in as
cached bytes. The methods' own serializers (the generated
`Response.SerializeToString`) take messages only: this hook wraps them, once
per method, so that a Spliced serializes itself and a message as before.
"""

from __future__ import annotations

from typing import Any

from ..api.spliced import Spliced
from .chain import Handler, Hook, Serializer


def _either(serializer: Serializer) -> Serializer:
    def serialize(response: Any) -> bytes:
        if type(response) is Spliced:
            return response.SerializeToString()
        return serializer(response)

    return serialize


class EncodeHook(Hook):
    def serializer(self, handler: Handler, serializer: Serializer) -> Serializer:
        # Unary answers only: no streaming method answers a Spliced.
        return serializer if handler.response_streaming else _either(serializer)
