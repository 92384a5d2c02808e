"""Asks the OAuth broker for a linked OAuth mailbox's access token (docs/adr/0023), with the
registry's own key (scope `token_issue`): the broker keeps the tokens fresh and answers the
access token sealed to the address."""

import json
import logging
from datetime import datetime
from urllib.parse import quote

import httpx

from mailbox_link_contract.values import EncryptedSecret
from registry.mailbox_access import BrokerToken, BrokerUnavailable, GrantNotFound, GrantRefused

logger = logging.getLogger(__name__)
# A token answer is well under 2 KiB: every read from the network is bounded, even our own's.
MAX_ANSWER_BYTES = 64 * 1024


class HttpTokenBroker:
    """The TokenBroker over HTTP."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def access_token(self, link_id: str, min_valid_seconds: int) -> BrokerToken:
        path = f"/v1/internal/grants/{quote(link_id, safe='')}/access-token"
        try:
            response, content = await _bounded_post(
                self._client, path, {"min_valid_seconds": min_valid_seconds}
            )
        except httpx.HTTPError as exc:
            raise BrokerUnavailable(type(exc).__name__) from exc
        if response.status_code == httpx.codes.OK:
            try:
                body = json.loads(content)
                return BrokerToken(
                    access_token=EncryptedSecret.model_validate(body["access_token"]),
                    address=str(body["address"]),
                    expires_at=datetime.fromisoformat(body["expires_at"]),
                    sasl_mechanism=str(body["sasl_mechanism"]),
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise BrokerUnavailable("an answer of another shape") from exc
        if response.status_code == httpx.codes.NOT_FOUND:
            raise GrantNotFound(link_id)
        if response.status_code == httpx.codes.CONFLICT:
            raise GrantRefused(link_id)
        if response.status_code in (401, 403):
            # Configuration, not an outage: the operator must fix the keys (docs/adr/0017).
            logger.error(
                "the broker refused MBL_BROKER_TOKEN (%s): list it in the broker's "
                "MBL_SERVICE_KEYS and grant it the scope 'token_issue' in MBL_SERVICE_KEY_SCOPES",
                response.status_code,
            )
        raise BrokerUnavailable(f"broker answered {response.status_code}", _retry_after(response))


async def _bounded_post(
    client: httpx.AsyncClient, path: str, body: dict[str, int]
) -> tuple[httpx.Response, bytes]:
    """Posts and reads at most MAX_ANSWER_BYTES of the answer (a longer one is no answer)."""
    async with client.stream("POST", path, json=body) as response:
        content = bytearray()
        async for chunk in response.aiter_bytes():
            content += chunk
            if len(content) > MAX_ANSWER_BYTES:
                raise httpx.DecodingError(f"the broker answered more than {MAX_ANSWER_BYTES} B")
        return response, bytes(content)


def _retry_after(response: httpx.Response) -> int | None:
    value = response.headers.get("retry-after", "")
    return int(value) if value.isdigit() else None
