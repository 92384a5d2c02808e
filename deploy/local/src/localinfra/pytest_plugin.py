"""Pytest fixture `local_stack`: one real stack per test session, shared by every suite.

Registered by the repository's root conftest.py. Every test that needs the stack, however
indirectly (through `infra`, `mongo_client`, a service fixture...), is marked `connected`
automatically, so `make unit` (`-m "not connected"`) never starts a server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from localinfra.oidc_idp import OidcIdpSetup
from localinfra.stack import LocalStack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks `connected` every test whose fixtures reach the local stack."""
    for item in items:
        if "local_stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.connected)


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


@pytest.fixture(scope="session")
def oidc_idp(local_stack: LocalStack) -> OidcIdpSetup:
    """The independent OpenID provider (panva's oidc-provider) and a Dovecot accepting its
    tokens, started the first time a test asks (the rest of the suite never pays for it)."""
    return local_stack.oidc_idp()


@pytest.fixture
async def mongo_client(local_stack: LocalStack) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    """A client of the stack's MongoDB-protocol server, closed after the test."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        local_stack.endpoints.mongodb_uri, tz_aware=True, maxPoolSize=16
    )
    try:
        yield client
    finally:
        await client.close()
