"""The broker's internal token route (docs/adr/0023): the registry, with its own key (scope
`token_issue`), asks for a linked OAuth mailbox's access token; the answer is sealed with the
shared keys, bound to the address, so it crosses the network encrypted whatever the transport."""

import math
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from mailbox_link_shared.api_errors import ApiErrorCode
from mailbox_link_shared.http import PATH_ID_PATTERN, ApiError, ScopeGuard, StrictJsonRoute
from oauth_broker.ports import BrokerDeps
from oauth_broker.token_issue import NotIssued, TokenNotIssued, issue_access_token

# Tokens live an hour at the big providers; a margin close to that would refresh every time.
MAX_MIN_VALID_SECONDS = 3300
DEFAULT_MIN_VALID_SECONDS = 300
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class AccessTokenIn(BaseModel):
    """How long the token must still be valid when it is handed out."""

    model_config = ConfigDict(extra="forbid")

    min_valid_seconds: StrictInt = Field(
        default=DEFAULT_MIN_VALID_SECONDS, ge=0, le=MAX_MIN_VALID_SECONDS
    )


def build_token_router(deps: BrokerDeps, issuer: ScopeGuard) -> APIRouter:
    """Returns the internal token route; `issuer` admits only a key granted `token_issue`."""
    router = APIRouter(prefix="/v1/internal", route_class=StrictJsonRoute)

    @router.post("/grants/{link_id}/access-token", dependencies=[Depends(issuer)])
    async def issue_token(
        link_id: Annotated[str, Path(pattern=PATH_ID_PATTERN)],
        body: Annotated[AccessTokenIn | None, Body()] = None,
    ) -> JSONResponse:
        """Hands out the access token of the mailbox linked under this link id, valid for at
        least min_valid_seconds (refreshed first otherwise), sealed to its address."""
        asked = body or AccessTokenIn()
        try:
            issued = await issue_access_token(
                link_id, timedelta(seconds=asked.min_valid_seconds), deps
            )
        except TokenNotIssued as refused:
            raise _refusal(refused) from None
        answer = {
            "access_token": issued.access_token.model_dump(),
            "address": issued.address,
            "expires_at": issued.expires_at.isoformat(),
            "sasl_mechanism": issued.sasl_mechanism.value.upper(),
            "refreshed": issued.refreshed,
        }
        return JSONResponse(answer, headers=NO_STORE)

    return router


def _refusal(refused: TokenNotIssued) -> ApiError:
    if refused.reason is NotIssued.NO_GRANT:
        return ApiError(
            status.HTTP_404_NOT_FOUND,
            ApiErrorCode.MAILBOX_NOT_FOUND,
            "No OAuth grant is kept for this link.",
            [("link_id", "name the link an OAuth mailbox is linked under")],
            headers=NO_STORE,
        )
    if refused.reason is NotIssued.RECONNECT_REQUIRED:
        return ApiError(
            status.HTTP_409_CONFLICT,
            ApiErrorCode.RECONNECT_REQUIRED,
            "The provider no longer accepts this mailbox's authorization.",
            [("link_id", "its owner must reconnect the mailbox (sign in again)")],
            headers=NO_STORE,
        )
    wait = refused.retry_after or timedelta(seconds=1)
    return ApiError(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        ApiErrorCode.TEMPORARILY_UNAVAILABLE,
        "The provider could not renew the token just now; retry shortly.",
        headers={**NO_STORE, "Retry-After": str(max(1, math.ceil(wait.total_seconds())))},
    )
