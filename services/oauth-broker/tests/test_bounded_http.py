"""Provider answers are read within a bound, counted after decoding (a gzip bomb stops too)."""

import gzip

import httpx2
import pytest

from oauth_broker.adapters.bounded_http import MAX_ANSWER_BYTES, AnswerTooLarge, bounded_request


def _client(body: bytes, headers: dict[str, str] | None = None) -> httpx2.AsyncClient:
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=body, headers=headers or {})

    return httpx2.AsyncClient(transport=httpx2.MockTransport(answer))


async def test_an_answer_within_the_bound_is_read_whole() -> None:
    async with _client(b'{"issuer": "https://idp.test"}') as client:
        answer = await bounded_request(client, "GET", "https://idp.test/x")
    assert (answer.status_code, answer.json()) == (200, {"issuer": "https://idp.test"})


async def test_a_longer_answer_is_no_answer() -> None:
    async with _client(b"x" * (MAX_ANSWER_BYTES + 1)) as client:
        with pytest.raises(AnswerTooLarge):
            await bounded_request(client, "GET", "https://idp.test/x")


async def test_a_small_compressed_answer_that_inflates_past_the_bound_is_no_answer() -> None:
    bomb = gzip.compress(b"\0" * (4 * MAX_ANSWER_BYTES))
    assert len(bomb) < MAX_ANSWER_BYTES // 100
    async with _client(bomb, {"Content-Encoding": "gzip"}) as client:
        with pytest.raises(AnswerTooLarge):
            await bounded_request(client, "GET", "https://idp.test/x")
