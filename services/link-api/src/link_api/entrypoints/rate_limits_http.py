"""The HTTP face of link-api's rate limits: a request over one is answered 429 with
Retry-After, naming the field that is over and when to try again."""

from fastapi import status

from link_api.domain.link_request import LinkRequest
from link_api.link_budgets import LinkBudgets, OverLimit, admit_link_request
from mailbox_link_shared.api_errors import ApiErrorCode
from mailbox_link_shared.http import ApiError
from mailbox_link_shared.rate_limits import retry_after_seconds, wait_text


async def admit_or_429(request: LinkRequest, typed: bool, budgets: LinkBudgets | None) -> None:
    """Admits the request, or raises the 429 (nothing is stored or emitted for it)."""
    if budgets is None:
        return
    try:
        await admit_link_request(request, typed, budgets)
    except OverLimit as over:
        raise ApiError(
            status.HTTP_429_TOO_MANY_REQUESTS,
            ApiErrorCode.TOO_MANY_REQUESTS,
            over.message,
            [(over.field, wait_text(over.retry_at, over.now))],
            headers={"Retry-After": str(retry_after_seconds(over.retry_at, over.now))},
        ) from None
