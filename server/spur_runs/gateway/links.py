"""RFC 8288 `Link: <...>; rel="next"` headers for the routes whose body is a
bare list (an HttpRule `response_body` such as PySpur's `GET /run/`).

A bare JSON list has no room for `next_page_token`, and the seed says Get Run
Tasks and Get Child Runs return *all* of a run's tasks and children: a list
cut short without a word would hide what did not fit. So, as GitHub's REST
API does, the next page's address goes in a header. It is the request's own
path and query with `page_token` set to the response's `next_page_token`
(and `page` dropped: a token already says where the next page starts). The
link is an absolute path, resolved against the request's URL (RFC 3986):
it stays right behind a proxy that rewrites the host or the scheme.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from google.protobuf.descriptor import MethodDescriptor

TOKEN_FIELD = "page_token"
NEXT_TOKEN_FIELD = "next_page_token"
# Dropped from the next page's query: the token replaces both.
_REPLACED = frozenset((TOKEN_FIELD, "pageToken", "page"))  # (and its JSON name)


def pages_by_link(method: MethodDescriptor, response_body: str) -> bool:
    """Whether a route answers a bare list whose next page needs a Link:
    it answers one field of a response that has a next_page_token, and its
    request takes a page_token."""
    return (
        bool(response_body)
        and NEXT_TOKEN_FIELD in method.output_type.fields_by_name
        and TOKEN_FIELD in method.input_type.fields_by_name
    )


def next_link(path: str, query: str, token: str) -> str:
    """The Link header value of the page after this one. `path` is the raw
    path as the client sent it (any --http-path-prefix included), `query`
    its raw query string."""
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in _REPLACED]
    pairs.append((TOKEN_FIELD, token))
    return f'<{path}?{urlencode(pairs)}>; rel="next"'
