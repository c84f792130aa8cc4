"""Everything derived from the protobuf contracts, and nothing else: pure, no I/O.

Routes, payload field rules, JSON mapping, REST rules, proto comments, JSON Schema and the
OpenAPI document. Imports nothing from `core`, `transport` or `app`.
"""
