"""Fixtures of the deploy suite; the wheels are built as tests/packaging builds them."""

from tests.packaging.test_wheels import wheels  # noqa: F401  (a fixture, reused)
