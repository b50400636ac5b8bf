"""Hardening tests (issue 7): load, faults, hostile input, security, the analyst sandbox.

A package so that ``tests/`` is on ``sys.path`` and the shared test helpers import."""
