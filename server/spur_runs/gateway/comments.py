"""The comments of the protos, by the full name of what they document.

protoc leaves source info (comments) out of the descriptors it embeds in the
_pb2 modules, so protos/generate.py also writes a FileDescriptorSet with
source info, generated/spur/runs/v1/descriptor_set.binpb, installed with
the `spur.runs.v1` package. Reading it needs no protoc, no .proto files and no network at run
time, and it is regenerated (and checked for staleness) with the rest of
generated/.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from importlib import resources

from google.protobuf import descriptor_pb2

log = logging.getLogger(__name__)

# (package, resource) of the descriptor sets to read.
DESCRIPTOR_SETS = (("spur.runs.v1", "descriptor_set.binpb"),)

# Field numbers of FileDescriptorProto / DescriptorProto / ... that make up
# the paths of SourceCodeInfo.Location (see descriptor.proto).
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM = 2, 3, 4
_ENUM_VALUE, _SERVICE_METHOD = 2, 2


def load_comments(sets: Iterable[tuple[str, str]] = DESCRIPTOR_SETS) -> dict[str, str]:
    """Full name -> leading comment; empty when a descriptor set is missing."""
    comments: dict[str, str] = {}
    for package, name in sets:
        try:
            data = resources.files(package).joinpath(name).read_bytes()
        except (FileNotFoundError, ModuleNotFoundError) as error:
            log.warning("no proto comments for the OpenAPI document: %s", error)
            continue
        comments.update(comments_of(descriptor_pb2.FileDescriptorSet.FromString(data)))
    return comments


def comments_of(descriptor_set: descriptor_pb2.FileDescriptorSet) -> dict[str, str]:
    comments: dict[str, str] = {}
    for file in descriptor_set.file:
        by_path = {
            tuple(location.path): _clean(location.leading_comments)
            for location in file.source_code_info.location
            if location.leading_comments
        }
        prefix = f"{file.package}." if file.package else ""
        for i, message in enumerate(file.message_type):
            _message(comments, by_path, (_FILE_MESSAGE, i), prefix + message.name, message)
        for i, enum in enumerate(file.enum_type):
            _enum(comments, by_path, (_FILE_ENUM, i), prefix + enum.name, enum, prefix)
        for i, service in enumerate(file.service):
            path = (_FILE_SERVICE, i)
            name = prefix + service.name
            _put(comments, by_path, path, name)
            for j, method in enumerate(service.method):
                _put(comments, by_path, (*path, _SERVICE_METHOD, j), f"{name}.{method.name}")
    return comments


def _put(
    comments: dict[str, str],
    by_path: Mapping[tuple[int, ...], str],
    path: tuple[int, ...],
    name: str,
) -> None:
    text = by_path.get(path)
    if text:
        comments[name] = text


def _message(
    comments: dict[str, str],
    by_path: Mapping[tuple[int, ...], str],
    path: tuple[int, ...],
    name: str,
    message: descriptor_pb2.DescriptorProto,
) -> None:
    _put(comments, by_path, path, name)
    for i, field in enumerate(message.field):
        _put(comments, by_path, (*path, _MESSAGE_FIELD, i), f"{name}.{field.name}")
    for i, nested in enumerate(message.nested_type):
        _message(comments, by_path, (*path, _MESSAGE_NESTED, i), f"{name}.{nested.name}", nested)
    for i, enum in enumerate(message.enum_type):
        # Enum values are scoped like their enum's siblings, not inside it.
        _enum(comments, by_path, (*path, _MESSAGE_ENUM, i), f"{name}.{enum.name}", enum, f"{name}.")


def _enum(
    comments: dict[str, str],
    by_path: Mapping[tuple[int, ...], str],
    path: tuple[int, ...],
    name: str,
    enum: descriptor_pb2.EnumDescriptorProto,
    scope: str,
) -> None:
    _put(comments, by_path, path, name)
    for i, value in enumerate(enum.value):
        _put(comments, by_path, (*path, _ENUM_VALUE, i), scope + value.name)


def _clean(comment: str) -> str:
    """`// text` lines as protoc keeps them (" text\\n") -> "text"."""
    lines = [line[1:] if line.startswith(" ") else line for line in comment.splitlines()]
    return "\n".join(lines).strip()
