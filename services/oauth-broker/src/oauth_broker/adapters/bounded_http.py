"""Reads a provider's HTTP answers within a size bound: discovery documents, JWKS, token and
userinfo answers are a few KiB, and an operator's OpenID provider is one more server we do not
run (every read from the network is bounded)."""

import json
from dataclasses import dataclass
from typing import Any

import httpx2

# Far above any real answer (Google's JWKS is about 2 KiB, a discovery document under 10 KiB);
# counted after content decoding, so a compressed bomb stops here too.
MAX_ANSWER_BYTES = 1 << 20


class AnswerTooLarge(httpx2.HTTPError):
    """The provider answered more than MAX_ANSWER_BYTES: treated as no answer."""

    def __init__(self, url: str) -> None:
        super().__init__(f"{url} answered more than {MAX_ANSWER_BYTES} bytes")


@dataclass(frozen=True)
class Answer:
    """A provider's answer, read whole (within the bound)."""

    status_code: int
    content: bytes

    def json(self) -> Any:
        """The body as JSON; raises ValueError when it is not."""
        return json.loads(self.content)


async def bounded_request(
    client: httpx2.AsyncClient, method: str, url: str, **kwargs: Any
) -> Answer:
    """Sends a request and reads at most MAX_ANSWER_BYTES of its answer; raises
    httpx2.HTTPError (AnswerTooLarge for a longer one) when there is no usable answer."""
    async with client.stream(method, url, **kwargs) as response:
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_ANSWER_BYTES:
                raise AnswerTooLarge(url)
        return Answer(response.status_code, bytes(body))
