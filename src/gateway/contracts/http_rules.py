"""The REST routes of the contracts: the `google.api.http` annotations of their RPCs.

The design makes the protos the source of truth for the REST shim too, so routes are read from
the descriptors at start-up (as grpc-gateway and Envoy's transcoder read them), never kept in a
hand-written list. A contract mistake (two RPCs on one route, a path variable that names no
request field) stops start-up with a message naming the RPC rather than surfacing as a 404.

Path templates follow google/api/http.proto:

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    Verb     = ":" LITERAL ;
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

# googleapis-common-protos ships .pyi stubs but no py.typed marker, so mypy will not read them.
from google.api import annotations_pb2
from google.protobuf.descriptor import Descriptor, FileDescriptor, MethodDescriptor

from gateway.errors import ConfigError

__all__ = ["HttpRule", "http_rules"]

# protoc's stubs type extensions as plain FieldDescriptors, which mypy cannot index with.
_HTTP_OPTION: Any = annotations_pb2.http

# Builds the error for a malformed template, naming the RPC and the template.
_Fail = Callable[[str], ConfigError]
_FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_LITERAL = re.compile(r"[^/{}*=:]+")
# A multi-segment value keeps "%2F" encoded, as the spec asks: decoding it would make an escaped
# slash indistinguishable from a segment separator.
_ENCODED_SLASH = re.compile(r"(%2[Ff])")


@dataclass(frozen=True)
class HttpRule:
    """One REST route of an RPC: its verb, its path template and what the body carries."""

    method: MethodDescriptor
    """The RPC the route calls."""
    verb: str
    """"GET", "POST", "PUT", "PATCH", "DELETE", or a custom kind as written."""
    path: str
    """The path template as written, e.g. "/api/v1/task-types/{task_type}/schema"."""
    body: str
    """"*" (the whole request), "" (no body) or the request field the body holds."""
    variables: tuple[str, ...]
    """The request field paths the path binds, in the order they appear."""
    shape: str = field(init=False, repr=False, compare=False)
    """The template with variables replaced by their patterns ("/a/{x}" is "/a/*"): two rules of
    one shape and verb would match the same requests."""
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)
    # Whether each variable spans several segments, whose values keep "%2F" encoded.
    _multi_segment: tuple[bool, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        template = _parse(self.path, f"rpc {self.method.full_name}")
        if template.variables != self.variables:
            raise ConfigError(
                f"rpc {self.method.full_name}: variables {self.variables} do not match "
                f"the path {self.path!r}, which binds {template.variables}"
            )
        # The dataclass is frozen for its callers; the compiled form is derived state.
        object.__setattr__(self, "shape", template.shape)
        object.__setattr__(self, "_pattern", re.compile(template.regex))
        object.__setattr__(self, "_multi_segment", template.multi_segment)

    def match(self, path: str) -> dict[str, str] | None:
        """The variables bound by a request path (raw, percent-encoded, no query), or None."""
        found = self._pattern.fullmatch(path)
        if found is None:
            return None
        values: dict[str, str] = {}
        for index, (name, multi) in enumerate(
            zip(self.variables, self._multi_segment, strict=True)
        ):
            raw = found.group(f"v{index}")
            values[name] = _decode_multi(raw) if multi else unquote(raw)
        return values


def http_rules(files: Iterable[FileDescriptor]) -> list[HttpRule]:
    """Every route declared by the files' RPCs, additional bindings included, in file order."""
    rules: list[HttpRule] = []
    seen: dict[tuple[str, str], HttpRule] = {}
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                for rule in _method_rules(method):
                    key = (rule.verb, rule.shape)
                    if (other := seen.get(key)) is not None:
                        raise ConfigError(
                            f"rpc {method.full_name}: {rule.verb} {rule.path} is already "
                            f"the route of rpc {other.method.full_name} ({other.verb} {other.path})"
                        )
                    seen[key] = rule
                    rules.append(rule)
    return rules


def _method_rules(method: MethodDescriptor) -> Iterator[HttpRule]:
    options = method.GetOptions()
    if not options.HasExtension(_HTTP_OPTION):
        return
    primary = options.Extensions[_HTTP_OPTION]
    origin = f"rpc {method.full_name}"
    yield _rule(method, primary, origin)
    for binding in primary.additional_bindings:
        if binding.additional_bindings:
            raise ConfigError(f"{origin}: an additional binding may not nest further bindings")
        yield _rule(method, binding, origin)


def _rule(method: MethodDescriptor, option: Any, origin: str) -> HttpRule:
    kind = option.WhichOneof("pattern")
    if kind is None:
        raise ConfigError(f"{origin}: google.api.http has no verb and path")
    if kind == "custom":
        verb, path = option.custom.kind, option.custom.path
        if not verb:
            raise ConfigError(f"{origin}: google.api.http custom pattern has an empty kind")
    else:
        verb, path = kind.upper(), getattr(option, kind)
    if option.response_body:
        # The shim answers with the whole response message; honouring only part of the contract
        # would silently change what clients receive.
        raise ConfigError(f"{origin}: response_body is not supported by the REST shim")
    request: Descriptor = method.input_type
    template = _parse(path, origin)
    for variable in template.variables:
        _check_variable(request, variable, f"{origin}: path {path!r}")
    body: str = option.body
    if body and body != "*":
        if body not in request.fields_by_name:
            raise ConfigError(
                f"{origin}: body {body!r} is not a field of request {request.full_name}"
            )
        if body in template.variables:
            raise ConfigError(f"{origin}: body {body!r} is also bound by the path {path!r}")
    if body and verb == "GET":
        raise ConfigError(f"{origin}: a GET route cannot carry a body (body: {body!r})")
    return HttpRule(method=method, verb=verb, path=path, body=body, variables=template.variables)


def _check_variable(request: Descriptor, variable: str, origin: str) -> None:
    """A path variable must name a singular scalar field, reached through singular messages."""
    message = request
    parts = variable.split(".")
    for position, part in enumerate(parts):
        target = message.fields_by_name.get(part)
        if target is None:
            raise ConfigError(
                f"{origin}: variable {variable!r} is not a field of request {request.full_name}"
            )
        if target.is_repeated:
            raise ConfigError(f"{origin}: variable {variable!r} names a repeated field")
        nested = target.message_type
        if position == len(parts) - 1:
            if nested is not None:
                raise ConfigError(
                    f"{origin}: variable {variable!r} names a message field; a path binds scalars"
                )
        elif nested is None:
            raise ConfigError(
                f"{origin}: variable {variable!r}: {target.full_name} is not a message"
            )
        else:
            message = nested


@dataclass(frozen=True)
class _Template:
    regex: str
    shape: str
    variables: tuple[str, ...]
    multi_segment: tuple[bool, ...]


def _parse(path: str, origin: str) -> _Template:
    """The regex, shape and variables of a path template; ConfigError when it is malformed."""

    def fail(reason: str) -> ConfigError:
        return ConfigError(f"{origin}: path template {path!r} {reason}")

    if not path.startswith("/"):
        raise fail("must start with '/'")
    segments_text, verb = _split_verb(path[1:], fail)
    segments = _split_segments(segments_text, fail)
    regex: list[str] = []
    shape: list[str] = []
    variables: list[str] = []
    multi: list[bool] = []
    for position, segment in enumerate(segments):
        last = position == len(segments) - 1
        if segment.startswith("{"):
            name, equals, inner = segment[1:-1].partition("=")
            if not _FIELD_PATH.fullmatch(name):
                raise fail(f"has a bad variable name {name!r}")
            if equals and not inner:
                raise fail(f"has an empty pattern for {name!r}")
            if name in variables:
                raise fail(f"binds {name!r} twice")
            parts = inner.split("/") if inner else ["*"]
            inner_regex, inner_shape = _segments_regex(parts, last, fail)
            regex.append(f"(?P<v{len(variables)}>{inner_regex})")
            shape.append(inner_shape)
            variables.append(name)
            multi.append(len(parts) > 1 or "**" in parts)
        else:
            segment_regex, segment_shape = _segments_regex([segment], last, fail)
            regex.append(segment_regex)
            shape.append(segment_shape)
    suffix = f":{verb}" if verb is not None else ""
    return _Template(
        regex="/" + "/".join(regex) + re.escape(suffix),
        shape="/" + "/".join(shape) + suffix,
        variables=tuple(variables),
        multi_segment=tuple(multi),
    )


def _split_verb(text: str, fail: _Fail) -> tuple[str, str | None]:
    depth = 0
    for index, char in enumerate(text):
        if char == "{":
            depth += 1
            if depth > 1:
                raise fail("nests a variable in a variable")
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise fail("has an unmatched '}'")
        elif char == ":" and depth == 0:
            verb = text[index + 1 :]
            if not _LITERAL.fullmatch(verb):
                raise fail(f"has a bad verb {verb!r}")
            return text[:index], verb
    if depth:
        raise fail("has an unmatched '{'")
    return text, None


def _split_segments(text: str, fail: _Fail) -> list[str]:
    """Top-level segments; a variable with '/' in its pattern stays one segment."""
    segments: list[str] = []
    current = ""
    in_variable = False
    for char in text:
        if char == "/" and not in_variable:
            segments.append(current)
            current = ""
            continue
        if char == "{":
            if current:
                raise fail("has a variable that is not a whole segment")
            in_variable = True
        elif char == "}":
            in_variable = False
        current += char
    segments.append(current)
    for segment in segments:
        if not segment:
            raise fail("has an empty segment")
        if "{" in segment and not segment.endswith("}"):
            raise fail("has a variable that is not a whole segment")
    return segments


def _segments_regex(parts: list[str], last: bool, fail: _Fail) -> tuple[str, str]:
    regex: list[str] = []
    for index, part in enumerate(parts):
        if part == "*":
            regex.append("[^/]+")
        elif part == "**":
            # "**" matches the rest of the path; anywhere else it would make matching ambiguous.
            if not (last and index == len(parts) - 1):
                raise fail("uses '**' before its last segment")
            regex.append(".*")
        elif _LITERAL.fullmatch(part):
            regex.append(re.escape(part))
        else:
            raise fail(f"has a bad segment {part!r}")
    return "/".join(regex), "/".join(parts)


def _decode_multi(raw: str) -> str:
    parts = _ENCODED_SLASH.split(raw)
    return "".join(part if index % 2 else unquote(part) for index, part in enumerate(parts))
