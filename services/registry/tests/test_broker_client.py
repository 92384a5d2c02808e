"""The registry's client of the broker's token route reads a bounded answer and maps each
status to what the access endpoint answers (the route itself is proven end to end in
tests/e2e/test_mailbox_access.py)."""

import json

import httpx
import pytest

from registry.adapters.broker_client import MAX_ANSWER_BYTES, HttpTokenBroker
from registry.mailbox_access import BrokerUnavailable, GrantNotFound, GrantRefused

TOKEN = {
    "access_token": {"key_id": "k1", "nonce": "AAAAAAAAAAAAAAAA", "ciphertext": "c2VhbGVk"},
    "address": "box@gmail.com",
    "expires_at": "2026-12-08T03:00:00+00:00",
    "sasl_mechanism": "XOAUTH2",
}


def _broker(status: int, content: bytes, headers: dict[str, str] | None = None) -> HttpTokenBroker:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/internal/grants/l1/access-token"
        assert json.loads(request.content) == {"min_valid_seconds": 300}
        return httpx.Response(status, content=content, headers=headers)

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://broker")
    return HttpTokenBroker(client)


async def test_a_token_answer_is_read() -> None:
    token = await _broker(200, json.dumps(TOKEN).encode()).access_token("l1", 300)
    assert (token.address, token.sasl_mechanism) == ("box@gmail.com", "XOAUTH2")
    assert token.access_token.key_id == "k1"


async def test_an_answer_beyond_the_bound_is_no_answer() -> None:
    padded = json.dumps({**TOKEN, "padding": "x" * MAX_ANSWER_BYTES}).encode()
    with pytest.raises(BrokerUnavailable):
        await _broker(200, padded).access_token("l1", 300)


@pytest.mark.parametrize(
    ("status", "raised"),
    [(404, GrantNotFound), (409, GrantRefused), (503, BrokerUnavailable), (403, BrokerUnavailable)],
)
async def test_each_refusal_maps_to_its_answer(status: int, raised: type[Exception]) -> None:
    with pytest.raises(raised):
        await _broker(status, b'{"error": "x"}', {"retry-after": "2"}).access_token("l1", 300)
