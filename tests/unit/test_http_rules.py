"""gateway.contracts.http_rules: REST routes read from the `google.api.http` annotations."""

from __future__ import annotations

from typing import Any

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, json_format
from google.protobuf.descriptor import FileDescriptor

from gateway.contracts.files import CONTRACT_FILES
from gateway.contracts.http_rules import HttpRule, http_rules
from gateway.errors import ConfigError

_Field = descriptor_pb2.FieldDescriptorProto


def _file(
    methods: dict[str, dict[str, Any] | None], service: str = "TestService"
) -> FileDescriptor:
    """A file of one service whose methods carry the given google.api.http options (JSON form).

    Every method takes test.v1.Request: `name` (string), `inner` (message with a string `id`),
    `tags` (repeated string).
    """
    proto = descriptor_pb2.FileDescriptorProto(
        name="test/v1/test.proto", package="test.v1", syntax="proto3"
    )
    inner = proto.message_type.add(name="Inner")
    inner.field.add(name="id", number=1, type=_Field.TYPE_STRING, label=_Field.LABEL_OPTIONAL)
    request = proto.message_type.add(name="Request")
    request.field.add(name="name", number=1, type=_Field.TYPE_STRING, label=_Field.LABEL_OPTIONAL)
    request.field.add(
        name="inner",
        number=2,
        type=_Field.TYPE_MESSAGE,
        type_name=".test.v1.Inner",
        label=_Field.LABEL_OPTIONAL,
    )
    request.field.add(name="tags", number=3, type=_Field.TYPE_STRING, label=_Field.LABEL_REPEATED)
    proto.message_type.add(name="Response")
    service_proto = proto.service.add(name=service)
    for name, option in methods.items():
        method = service_proto.method.add(
            name=name, input_type=".test.v1.Request", output_type=".test.v1.Response"
        )
        if option is not None:
            json_format.ParseDict(option, method.options.Extensions[annotations_pb2.http])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return pool.FindFileByName(proto.name)


def _rule(path: str, verb: str = "get") -> HttpRule:
    (rule,) = http_rules([_file({"Call": {verb: path}})])
    return rule


def test_contracts_declare_every_rest_route() -> None:
    """The contracts yield exactly the legacy publish route, one POST per typed RPC and the
    catalog routes, each calling its RPC."""
    routes = {
        (rule.verb, rule.path): (rule.method.full_name, rule.body, rule.variables)
        for rule in http_rules(CONTRACT_FILES)
    }

    assert routes == {
        ("POST", "/api/v1/broker/publish"): ("taskgateway.v1.TaskGatewayService.Publish", "*", ()),
        ("POST", "/api/v1/broker/publish-batch"): (
            "taskgateway.v1.TaskGatewayService.PublishBatch",
            "*",
            (),
        ),
        ("GET", "/api/v1/task-types"): ("taskgateway.v1.TaskGatewayService.ListTaskTypes", "", ()),
        ("GET", "/api/v1/task-types/{task_type}/schema"): (
            "taskgateway.v1.TaskGatewayService.GetTaskTypeSchema",
            "",
            ("task_type",),
        ),
        ("POST", "/api/v1/images/generate"): ("images.v1.ImagesService.Generate", "*", ()),
        ("POST", "/api/v1/images/edit"): ("images.v1.ImagesService.Edit", "*", ()),
        ("POST", "/api/v1/videos/generate"): ("videos.v1.VideosService.Generate", "*", ()),
        ("POST", "/api/v1/videos/animate"): ("videos.v1.VideosService.Animate", "*", ()),
    }


def test_schema_route_binds_the_task_type() -> None:
    """The schema route binds a task type with dots and percent-decodes it, and nothing else."""
    (rule,) = [rule for rule in http_rules(CONTRACT_FILES) if rule.variables]

    assert rule.match("/api/v1/task-types/images.generate/schema") == {
        "task_type": "images.generate"
    }
    assert rule.match("/api/v1/task-types/a%20b%2Fc/schema") == {"task_type": "a b/c"}
    assert rule.match("/api/v1/task-types//schema") is None
    assert rule.match("/api/v1/task-types/a/b/schema") is None
    assert rule.match("/api/v1/task-types/images.generate/schema/") is None
    assert rule.match("/api/v1/task-types/images.generate") is None


def test_literal_route_matches_only_itself() -> None:
    """A template without variables matches its exact path, binding nothing."""
    (rule,) = [rule for rule in http_rules(CONTRACT_FILES) if rule.path == "/api/v1/broker/publish"]

    assert rule.match("/api/v1/broker/publish") == {}
    assert rule.match("/api/v1/broker/publish/") is None
    assert rule.match("/api/v1/broker") is None
    assert rule.match("/api/v1/broker/publishx") is None


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("/v1/{name}", "/v1/abc", {"name": "abc"}),
        ("/v1/{name=*}", "/v1/a%3Ab", {"name": "a:b"}),
        ("/v1/{name=*}", "/v1/a/b", None),
        ("/v1/{name=**}", "/v1/a/b/c", {"name": "a/b/c"}),
        ("/v1/{name=**}", "/v1/a%2Fb/c%20d", {"name": "a%2Fb/c d"}),
        ("/v1/{name=shelves/*}", "/v1/shelves/7", {"name": "shelves/7"}),
        ("/v1/{name=shelves/*}", "/v1/books/7", None),
        ("/v1/{inner.id}/items/{name}", "/v1/x/items/y", {"inner.id": "x", "name": "y"}),
        ("/v1/{name}:cancel", "/v1/job-1:cancel", {"name": "job-1"}),
        ("/v1/{name}:cancel", "/v1/job-1", None),
        ("/v1/*/{name}", "/v1/anything/n", {"name": "n"}),
    ],
)
def test_match_binds_variables(template: str, path: str, expected: dict[str, str] | None) -> None:
    """match() supports {field}, {field=*}, {field=**}, patterned and dotted variables and
    custom verbs; only multi-segment values keep %2F encoded."""
    assert _rule(template).match(path) == expected


def test_additional_bindings_become_routes_of_their_own() -> None:
    """Each additional binding is a route of the same RPC, after the primary one."""
    option = {
        "post": "/v1/items",
        "body": "*",
        "additionalBindings": [{"put": "/v1/items/{name}", "body": "inner"}],
    }
    rules = http_rules([_file({"Save": option})])

    assert [(rule.verb, rule.path, rule.body, rule.variables) for rule in rules] == [
        ("POST", "/v1/items", "*", ()),
        ("PUT", "/v1/items/{name}", "inner", ("name",)),
    ]
    assert {rule.method.full_name for rule in rules} == {"test.v1.TestService.Save"}


def test_custom_verb_and_unannotated_methods() -> None:
    """A custom pattern keeps its kind as the verb; a method without the option has no route."""
    rules = http_rules(
        [_file({"Head": {"custom": {"kind": "HEAD", "path": "/v1/items"}}, "Plain": None})]
    )

    assert [(rule.verb, rule.method.name) for rule in rules] == [("HEAD", "Head")]


@pytest.mark.parametrize(
    ("first", "second"),
    [("/v1/items/{name}", "/v1/items/{name}"), ("/v1/items/{name}", "/v1/items/{inner.id}")],
)
def test_two_rpcs_on_one_route_stop_start_up(first: str, second: str) -> None:
    """Two RPCs whose templates match the same requests with one verb are a ConfigError naming
    both RPCs, even when their variables are named differently."""
    with pytest.raises(ConfigError) as raised:
        http_rules([_file({"First": {"get": first}, "Second": {"get": second}})])

    assert "test.v1.TestService.Second" in str(raised.value)
    assert "test.v1.TestService.First" in str(raised.value)


def test_same_path_with_another_verb_is_a_route_of_its_own() -> None:
    """GET and DELETE on one path are two routes, not a duplicate."""
    rules = http_rules(
        [_file({"Get": {"get": "/v1/items/{name}"}, "Delete": {"delete": "/v1/items/{name}"}})]
    )

    assert [rule.verb for rule in rules] == ["GET", "DELETE"]


@pytest.mark.parametrize(
    ("option", "complaint"),
    [
        ({"get": "/v1/{missing}"}, "'missing' is not a field of request test.v1.Request"),
        ({"get": "/v1/{inner.missing}"}, "'inner.missing' is not a field"),
        ({"get": "/v1/{inner}"}, "names a message field"),
        ({"get": "/v1/{tags}"}, "names a repeated field"),
        ({"get": "/v1/{name.id}"}, "is not a message"),
        ({"post": "/v1/items", "body": "missing"}, "body 'missing' is not a field"),
        ({"get": "/v1/items", "body": "*"}, "a GET route cannot carry a body"),
        ({"get": "/v1/items", "responseBody": "name"}, "response_body is not supported"),
        ({"body": "*"}, "has no verb and path"),
        (
            {"get": "/v1/a", "additionalBindings": [{"get": "/v1/b", "additionalBindings": [{}]}]},
            "may not nest",
        ),
        ({"get": "v1/items"}, "must start with '/'"),
        ({"get": "/v1//items"}, "has an empty segment"),
        ({"get": "/v1/{name"}, "unmatched '{'"),
        ({"get": "/v1/x{name}"}, "not a whole segment"),
        ({"get": "/v1/{name}/{name}"}, "binds 'name' twice"),
        ({"get": "/v1/{name=**}/tail"}, "'**' before its last segment"),
        ({"get": "/v1/{name=}"}, "empty pattern"),
        ({"get": "/v1/{9name}"}, "bad variable name"),
    ],
)
def test_bad_annotation_stops_start_up_naming_the_rpc(
    option: dict[str, Any], complaint: str
) -> None:
    """A route the shim could not serve as written is a ConfigError naming the RPC and the cause."""
    with pytest.raises(ConfigError) as raised:
        http_rules([_file({"Broken": option})])

    assert "rpc test.v1.TestService.Broken" in str(raised.value)
    assert complaint in str(raised.value)
