"""gateway.contracts.routing: the route table built from the contracts and the configured routes."""

from __future__ import annotations

import pytest
from taskgateway_api.images.v1 import images_pb2
from taskgateway_api.videos.v1 import videos_pb2

from gateway.config import RouteSettings
from gateway.contracts.files import CONTRACT_FILES
from gateway.contracts.routing import RouteTable, build_route_table
from gateway.errors import Code, ConfigError

TYPED = {
    "images.generate": ("images.tasks", "image-generation", images_pb2.GeneratePayload),
    "images.edit": ("images.tasks", "image-generation", images_pb2.EditPayload),
    "videos.generate": ("videos.tasks", "video-generation", videos_pb2.GeneratePayload),
    "videos.animate": ("videos.tasks", "video-generation", videos_pb2.AnimatePayload),
}


def test_contracts_yield_exactly_the_typed_routes() -> None:
    """The contracts declare exactly the four typed task types with their exchange and service."""
    table = build_route_table(CONTRACT_FILES, [])

    assert set(table) == set(TYPED)
    assert table.task_types == tuple(sorted(TYPED))
    for task_type, (exchange, service_name, payload_type) in TYPED.items():
        route = table[task_type]
        assert route.task_type == task_type
        assert route.exchange == exchange
        assert route.routing_key == task_type
        assert route.service_name == service_name
        assert route.payload_type is payload_type
        assert route.method is not None


def test_configured_routes_are_added_untyped() -> None:
    """A configured route joins the table with no payload type, its routing key the task type."""
    table = build_route_table(
        CONTRACT_FILES,
        [
            RouteSettings("audio.generate", "audio.tasks", "audio-generation"),
            RouteSettings("text.summarize", "text.tasks", "text", routing_key="summaries"),
        ],
    )

    assert len(table) == len(TYPED) + 2
    audio = table["audio.generate"]
    assert audio.exchange == "audio.tasks"
    assert audio.service_name == "audio-generation"
    assert audio.routing_key == "audio.generate"
    assert audio.payload_type is None
    assert audio.method is None
    assert table["text.summarize"].routing_key == "summaries"
    assert "audio.generate" in table.task_types


def test_configured_route_duplicating_a_typed_one_is_refused() -> None:
    """A configured route for a typed task type stops start-up naming both declarations."""
    with pytest.raises(ConfigError) as caught:
        build_route_table(
            CONTRACT_FILES, [RouteSettings("images.generate", "images.tasks", "other")]
        )

    message = str(caught.value)
    assert "routes[0]" in message
    assert "'images.generate'" in message
    assert "rpc images.v1.ImagesService.Generate" in message


def test_two_configured_routes_with_one_task_type_are_refused() -> None:
    """Two configured routes for the same task type stop start-up naming the second entry."""
    with pytest.raises(ConfigError, match=r"routes\[1\].*'audio\.generate'.*routes\[0\]"):
        build_route_table(
            CONTRACT_FILES,
            [
                RouteSettings("audio.generate", "audio.tasks", "audio"),
                RouteSettings("audio.generate", "audio.tasks", "audio"),
            ],
        )


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        (RouteSettings("audio.generate", "", "audio"), "exchange"),
        (RouteSettings("audio.generate", "audio.tasks", ""), "service_name"),
        (RouteSettings("", "audio.tasks", "audio"), "task_type"),
        (RouteSettings("audio.generate", "  ", "audio"), "exchange"),
    ],
)
def test_empty_route_field_is_refused(entry: RouteSettings, field: str) -> None:
    """A configured route with an empty (or blank) field stops start-up naming entry and field."""
    with pytest.raises(ConfigError, match=rf"routes\[1\] of the configuration.*{field} is empty"):
        build_route_table(CONTRACT_FILES, [RouteSettings("ok.task", "ok", "ok"), entry])


def test_colon_in_service_name_is_refused() -> None:
    """A service name containing ':' stops start-up naming the entry and the service name."""
    with pytest.raises(ConfigError, match=r"routes\[0\].*service_name 'audio:gen' contains ':'"):
        build_route_table(
            CONTRACT_FILES, [RouteSettings("audio.generate", "audio.tasks", "audio:gen")]
        )


@pytest.mark.parametrize(
    ("task_type", "description"),
    [("images.upscale", "unknown task type 'images.upscale'"), ("", "must not be empty")],
)
def test_unknown_task_type_lists_known_ones(task_type: str, description: str) -> None:
    """An unknown or empty task type is INVALID_ARGUMENT on field task_type listing known ones."""
    table = build_route_table(CONTRACT_FILES, [])

    error = table.unknown(task_type)

    known = "images.edit, images.generate, videos.animate, videos.generate"
    assert error.code is Code.INVALID_ARGUMENT
    assert description in error.message
    assert f"known task types: {known}" in error.message
    assert [v.field for v in error.violations] == ["task_type"]
    assert known in error.violations[0].description


def test_empty_table_knows_no_task_type() -> None:
    """A table with no routes refuses every task type as INVALID_ARGUMENT."""
    table = RouteTable([])

    assert "images.generate" not in table
    assert table.unknown("images.generate").code is Code.INVALID_ARGUMENT
