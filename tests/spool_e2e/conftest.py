"""Fixtures of the spool end-to-end suite: the reliability suite's proxied Tansu and daemon runner."""

from tests.reliability.conftest import kafkad_factory, proxied, ptopic  # noqa: F401 - pytest fixtures
