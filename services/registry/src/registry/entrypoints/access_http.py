"""The registry's mailbox access route (docs/adr/0023): POST, scope `mailbox_access`, never
cached (`Cache-Control: no-store` and `Pragma: no-cache` on every answer, errors too)."""

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Request, status
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from mailbox_link_shared.api_errors import ApiErrorCode
from mailbox_link_shared.http import PATH_ID_PATTERN, ApiError, CallerKeys, StrictJsonRoute
from mailbox_link_shared.scopes import CallerKey, Scope
from registry.mailbox_access import AccessDeps, AccessOutcome, AccessRefused, access_mailbox

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# Tokens live an hour at the big providers; a margin close to that would refresh every time.
MAX_MIN_VALID_SECONDS = 3300

AccountId = Annotated[str, Path(pattern=PATH_ID_PATTERN)]
MailboxId = Annotated[str, Path(pattern=PATH_ID_PATTERN)]


class AccessIn(BaseModel):
    """How long an OAuth mailbox's access token must still be valid (default: the setting)."""

    model_config = ConfigDict(extra="forbid")

    min_valid_seconds: StrictInt | None = Field(default=None, ge=0, le=MAX_MIN_VALID_SECONDS)


class NoStoreRoute(StrictJsonRoute):
    """A route whose every answer, an error of its guard or its body's checks included, says
    not to keep it anywhere."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def no_store_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except Exception as exc:
                answer = _app_handler(request, exc)
                if answer is None:
                    raise
                response = await answer(request, exc)
            response.headers.update(NO_STORE)
            return response

        return no_store_handler


def _app_handler(
    request: Request, exc: Exception
) -> Callable[[Request, Exception], Coroutine[Any, Any, Response]] | None:
    # The app's own error answers (the one error shape, shared/http.py), by the exception's
    # class as Starlette picks them.
    registered = request.app.exception_handlers
    for cls in type(exc).__mro__:
        if cls in registered:
            found: Callable[[Request, Exception], Coroutine[Any, Any, Response]] = registered[cls]
            return found
    return None


def build_access_router(access: AccessDeps, keys: CallerKeys) -> APIRouter:
    """Returns the access route, admitting keys granted `mailbox_access` (and, for a key
    bound to accounts, only its accounts: ScopeGuard answers another 404)."""
    router = APIRouter(prefix="/v1", route_class=NoStoreRoute)
    guard = keys.require(Scope.MAILBOX_ACCESS)

    @router.post(
        "/accounts/{account_id}/mailboxes/{mailbox_id}/access", dependencies=[Depends(guard)]
    )
    async def mailbox_access(
        account_id: AccountId,
        mailbox_id: MailboxId,
        # The same guard as the route's (run once per request): who asks, for the audit.
        caller: Annotated[CallerKey, Depends(guard)],
        body: Annotated[AccessIn | None, Body()] = None,
    ) -> JSONResponse:
        """Hands the caller what it needs to send and read as the mailbox: its servers and
        password, or a fresh OAuth access token; recorded for audit."""
        asked = body.min_valid_seconds if body is not None else None
        try:
            granted = await access_mailbox(caller.name, account_id, mailbox_id, asked, access)
        except AccessRefused as refused:
            raise _refusal(refused) from None
        return JSONResponse(granted.body())

    return router


def _refusal(refused: AccessRefused) -> ApiError:
    outcome = refused.outcome
    if outcome is AccessOutcome.NOT_FOUND:
        # The same answer for an id that never existed and another account's mailbox.
        return ApiError(
            status.HTTP_404_NOT_FOUND,
            ApiErrorCode.MAILBOX_NOT_FOUND,
            "No mailbox with this id is linked in this account.",
            [("mailbox_id", "use a mailbox_id from MailboxLinked or GET .../mailboxes")],
        )
    if outcome is AccessOutcome.RECONNECT_REQUIRED:
        return ApiError(
            status.HTTP_409_CONFLICT,
            ApiErrorCode.RECONNECT_REQUIRED,
            "The mailbox no longer accepts its authorization; no credential is handed out.",
            [("mailbox_id", "pause using it and ask its owner to reconnect it")],
        )
    retry = {"Retry-After": str(refused.retry_after or 2)}
    if outcome is AccessOutcome.RATE_LIMITED:
        return ApiError(
            status.HTTP_429_TOO_MANY_REQUESTS,
            ApiErrorCode.TOO_MANY_REQUESTS,
            "This service key has made the mailbox accesses allowed per minute.",
            [("Authorization", "retry after Retry-After seconds (MBL_ACCESS_RATE_PER_MINUTE)")],
            headers=retry,
        )
    return ApiError(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        ApiErrorCode.TEMPORARILY_UNAVAILABLE,
        "The mailbox's credential cannot be had just now; retry shortly.",
        headers=retry,
    )
