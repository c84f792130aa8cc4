"""Moved to tests.support.gateway_process; kept for the suites that still import it from here."""

from tests.support import ROOT
from tests.support.gateway_process import read_until, start_gateway_process
from tests.support.ports import free_port

__all__ = ["ROOT", "free_port", "read_until", "start_gateway_process"]
