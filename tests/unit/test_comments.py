"""gateway.contracts.comments: proto comments by full name, from a descriptor set."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.contracts.comments import Comments
from gateway.contracts.files import CONTRACT_FILES
from gateway.errors import ConfigError
from tests.unit.protos import compile_proto

SAMPLE = """\
syntax = "proto3";

package sample.v1;

// Detached: separated from the message by a blank line, so nobody's comment.

// An outer message.
//
//   An indented line stays indented.
message Outer {
  // Nested, one level.
  message Middle {
    // Nested, two levels.
    message Inner {
      // A field of the innermost message.
      string deep = 1;
    }
    // Middle's field.
    Inner inner = 1;
  }

  /* A block comment
   * over two lines. */
  string first = 1; // A trailing comment, which is not a leading one.

  // Pick one.
  oneof choice {
    // The first choice.
    string left = 2;
    // The second choice.
    string right = 3;
  }

  string uncommented = 4;

  // A nested enum.
  enum Mood {
    // Nothing said.
    MOOD_UNSPECIFIED = 0;
    // In a good mood.
    MOOD_HAPPY = 1;
  }
}

// A top-level enum.
enum Level {
  // The default.
  LEVEL_UNSPECIFIED = 0;
}

// The service.
service SampleService {
  // Does the thing.
  //   Second line, indented.
  rpc Do(Outer) returns (Outer);
}
"""


@pytest.fixture(scope="module")
def contracts() -> Comments:
    return Comments.load()


@pytest.fixture
def sample(tmp_path: Path) -> Comments:
    _, descriptor_set = compile_proto(tmp_path, SAMPLE)
    return Comments(descriptor_set.file)


def test_field_comment_is_the_proto_text(contracts: Comments) -> None:
    """A field's comment is its proto text without the comment markers, lines kept."""
    assert contracts.of("images.v1.GeneratePayload.model") == (
        "The model to run, as the image service names it,\n"
        'e.g. "openrouter::google/gemini-3.1-flash-image-preview".'
    )
    assert contracts.of("images.v1.GeneratePayload.image_name") == (
        'The name the image is stored under, e.g. "warrior".'
    )


def test_method_service_and_message_comments_are_the_proto_text(contracts: Comments) -> None:
    """Methods, services and messages are found by full name, with their proto comment."""
    assert contracts.of("images.v1.ImagesService.Generate") == (
        "Generates an image from a text prompt."
    )
    assert contracts.of("taskgateway.v1.TaskGatewayService.Publish") == (
        "Publishes one task and answers with its task key once RabbitMQ has\n"
        "confirmed the message. For a task type with a typed payload the payload is\n"
        "checked against that type, so this path and the typed RPC publish\n"
        "identical messages."
    )
    assert contracts.of("images.v1.ImagesService") == (
        "Image tasks, consumed from images.queue by the image-generation service."
    )
    assert contracts.of("images.v1.GeneratePayload") == "The parameters of an images.generate task."


def test_every_contract_element_has_a_comment(contracts: Comments) -> None:
    """Every service, method, message and field of the contracts is commented, as the design
    asks, and each comment is found under the element's full name."""
    missing = []
    for file in CONTRACT_FILES:
        for service in file.services_by_name.values():
            names = [service.full_name, *(method.full_name for method in service.methods)]
            missing += [name for name in names if not contracts.of(name)]
        for message in file.message_types_by_name.values():
            names = [message.full_name, *(field.full_name for field in message.fields)]
            missing += [name for name in names if not contracts.of(name)]

    assert missing == []


def test_unknown_or_uncommented_element_has_an_empty_comment(
    contracts: Comments, sample: Comments
) -> None:
    """An element without a comment, or no element at all, gives ""."""
    assert contracts.of("images.v1.NoSuchMessage") == ""
    assert sample.of("sample.v1.Outer.uncommented") == ""


def test_nested_elements_are_named_by_their_full_name(sample: Comments) -> None:
    """Nested messages, their fields, oneofs, nested and top-level enums and their values are
    each found under their full name."""
    assert sample.of("sample.v1.Outer.Middle") == "Nested, one level."
    assert sample.of("sample.v1.Outer.Middle.inner") == "Middle's field."
    assert sample.of("sample.v1.Outer.Middle.Inner") == "Nested, two levels."
    assert sample.of("sample.v1.Outer.Middle.Inner.deep") == "A field of the innermost message."
    assert sample.of("sample.v1.Outer.choice") == "Pick one."
    assert sample.of("sample.v1.Outer.left") == "The first choice."
    assert sample.of("sample.v1.Outer.right") == "The second choice."
    assert sample.of("sample.v1.Outer.Mood") == "A nested enum."
    assert sample.of("sample.v1.Outer.Mood.MOOD_HAPPY") == "In a good mood."
    assert sample.of("sample.v1.Level") == "A top-level enum."
    assert sample.of("sample.v1.Level.LEVEL_UNSPECIFIED") == "The default."
    assert sample.of("sample.v1.SampleService") == "The service."


def test_comments_are_dedented_and_stripped(sample: Comments) -> None:
    """Comments lose the common indentation and trailing blanks but keep relative indentation
    and blank lines; block comments lose their stars; detached and trailing comments are
    ignored."""
    assert sample.of("sample.v1.Outer") == (
        "An outer message.\n\n  An indented line stays indented."
    )
    assert sample.of("sample.v1.SampleService.Do") == "Does the thing.\n  Second line, indented."
    assert sample.of("sample.v1.Outer.first") == "A block comment\nover two lines."


def test_missing_descriptor_set_stops_start_up(tmp_path: Path) -> None:
    """A missing descriptor set is a ConfigError naming the file and `make generate`."""
    path = tmp_path / "contracts.binpb"

    with pytest.raises(ConfigError) as raised:
        Comments.load(path)

    assert str(path) in str(raised.value)
    assert "make generate" in str(raised.value)


def test_corrupt_descriptor_set_stops_start_up(tmp_path: Path) -> None:
    """Bytes that are not a FileDescriptorSet are a ConfigError naming the file."""
    path = tmp_path / "contracts.binpb"
    path.write_bytes(b"\xff\xff\xff")

    with pytest.raises(ConfigError) as raised:
        Comments.load(path)

    assert str(path) in str(raised.value)
