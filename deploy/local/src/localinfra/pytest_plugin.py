"""Pytest fixture `local_stack`: one real stack per test session, shared by every suite.

Registered by the repository's root conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localinfra.stack import LocalStack


@pytest.fixture(scope="session")
def local_stack() -> Iterator[LocalStack]:
    """Kafka, a MongoDB-protocol server and Dovecot, started once for the whole session."""
    stack = LocalStack()
    # The stack picks its own directory under /tmp: Dovecot's unprivileged helpers must be able
    # to traverse every parent, which pytest's 0700 temp root does not allow.
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
