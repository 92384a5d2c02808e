"""The broker's HTTP side (ADR 0014): the start URL a browser opens (GET /v1/oauth/start/..),
the page it lands on after the provider's sign-in (GET /v1/oauth/callback), and the product's
confirmation of a verified sign-in (POST .../sign-ins/confirm, with a service key)."""

import html
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from mailbox_link_contract.events import MailboxOwner
from mailbox_link_shared.api_errors import ApiErrorCode
from mailbox_link_shared.http import PATH_ID_PATTERN, ApiError, ScopeGuard, StrictJsonRoute
from oauth_broker import handlers
from oauth_broker.domain.sessions import CallbackRefusal, binding_cookie_name
from oauth_broker.handlers import BrokerDeps, CallbackOutcome, CallbackResult, ConfirmRefusal

# What a refused callback tells the person, and what to do.
REFUSALS = {
    CallbackRefusal.UNKNOWN_STATE: (
        "This sign-in link is not one we issued.",
        "Start linking the mailbox again from the app.",
    ),
    CallbackRefusal.STATE_USED: (
        "This sign-in was already completed.",
        "See the mailbox's status in the app; start again only if it failed.",
    ),
    CallbackRefusal.LINK_ENDED: (
        "This link request has already ended, so the sign-in cannot complete it.",
        "See why in the app, then start linking the mailbox again if you still want to.",
    ),
    CallbackRefusal.NOT_RESERVED: (
        "This link request is not ready for a sign-in.",
        "Start linking the mailbox again from the app.",
    ),
    CallbackRefusal.SESSION_EXPIRED: (
        "This sign-in link has expired.",
        "Start linking the mailbox again and finish the sign-in within 10 minutes.",
    ),
    CallbackRefusal.START_USED: (
        "This sign-in link was already opened, and works only once.",
        "If you did not open it, someone else may have: start linking again from the app.",
    ),
    CallbackRefusal.NOT_BOUND: (
        "This sign-in was not started in this browser.",
        "Open the sign-in link from the app in this browser; never use a link someone sent you.",
    ),
    CallbackRefusal.MALFORMED: (
        "This sign-in link is not one we issued: a part of it is longer than any we use.",
        "Open the sign-in link from the app unchanged, or start linking the mailbox again.",
    ),
    CallbackRefusal.ISSUER_MISMATCH: (
        "This answer did not come from the provider you were signing in with.",
        "Close this page and open the sign-in link from the app again; if this keeps "
        "happening, tell the product's support.",
    ),
}
# A refused confirmation: status, code, message, and the field with its fix. Nothing changes.
CONFIRM_REFUSALS: dict[ConfirmRefusal, tuple[int, ApiErrorCode, str, tuple[str, str]]] = {
    ConfirmRefusal.UNKNOWN_CODE: (
        404, ApiErrorCode.NOT_FOUND, "No verified sign-in has this code.",
        ("code", "send the code from the return URL's query unchanged; if the link ended, "
         "start linking again"),
    ),
    ConfirmRefusal.CODE_EXPIRED: (
        400, ApiErrorCode.BAD_REQUEST, "This sign-in was not confirmed in time.",
        ("code", "confirm within MBL_OAUTH_CONFIRM_TTL_SECONDS of the callback; start "
         "linking again"),
    ),
    ConfirmRefusal.CODE_USED: (
        400, ApiErrorCode.BAD_REQUEST, "This code was already confirmed.",
        ("code", "a code confirms once; read the link's status instead"),
    ),
    ConfirmRefusal.OTHER_USER: (
        403, ApiErrorCode.FORBIDDEN, "This sign-in was asked for by another user.",
        ("account_id/user_id", "confirm only for the user signed in to the product in the "
         "browser that brought the code; never for another user"),
    ),
}  # fmt: skip
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body data-result="{result}" data-code="{code}" data-confirmation="{confirmation}">
<h1>{title}</h1><p>{message}</p>{account}<p>{remediation}</p>
</body></html>
"""
_CALLBACK_PATH = "/v1/oauth/callback"


class ConfirmBody(BaseModel):
    """The one-time code the browser brought back to the product."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=256)


class PageRoute(APIRoute):
    """A browser-facing route: a parameter that fails its checks (too long, say) gets the 400
    refusal page a person can read, not the JSON 422 API callers get; nothing changes."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError:
                refused = CallbackOutcome(CallbackResult.REFUSED, refusal=CallbackRefusal.MALFORMED)
                return _no_store(_page(refused))

        return page_handler


def build_public_router(
    deps: BrokerDeps, return_url: str | None, secure_cookie: bool = True
) -> APIRouter:
    """Returns the browser-facing routes (no service token: browsers and the provider come here)."""
    router = APIRouter(prefix="/v1/oauth", route_class=PageRoute)

    @router.get("/start/{token}", response_class=HTMLResponse)
    async def oauth_start(token: str = Path(max_length=128)) -> Response:
        started = await handlers.start_sign_in(token, deps)
        if started.redirect_url is None or started.link_id is None or started.binding is None:
            refusal = started.refusal or CallbackRefusal.UNKNOWN_STATE
            return _page(CallbackOutcome(CallbackResult.REFUSED, refusal=refusal))
        answer = RedirectResponse(started.redirect_url, status_code=303)
        answer.set_cookie(
            binding_cookie_name(started.link_id),
            started.binding,
            max_age=_seconds_until(started.usable_until, deps.clock()),
            path=_CALLBACK_PATH,
            secure=secure_cookie,
            httponly=True,
            samesite="lax",
        )  # host-only: no domain
        answer.headers["Cache-Control"] = "no-store"
        answer.headers["Referrer-Policy"] = "no-referrer"
        return answer

    @router.get("/callback", response_class=HTMLResponse)
    async def oauth_callback(
        request: Request,
        state: str = Query(default="", max_length=512),
        code: str | None = Query(default=None, max_length=4096),
        error: str | None = Query(default=None, max_length=256),
        error_description: str = Query(default="", max_length=1024),
        # RFC 9207: the issuer that sent this answer; checked against the link's provider.
        iss: str | None = Query(default=None, max_length=2048),
    ) -> Response:
        outcome = await handlers.complete_sign_in(
            state, code, error, error_description, deps, request.cookies, iss=iss
        )
        if return_url and outcome.result is not CallbackResult.REFUSED:
            answer: Response = RedirectResponse(_return_to(return_url, outcome), status_code=303)
        else:
            answer = _page(outcome)
        return _no_store(answer)

    return router


def _no_store(answer: Response) -> Response:
    answer.headers["Cache-Control"] = "no-store"
    answer.headers["Referrer-Policy"] = "no-referrer"
    return answer


def build_service_router(deps: BrokerDeps, confirmer: ScopeGuard) -> APIRouter:
    """Returns the routes the product's backend calls with its service key; `confirmer`
    admits only a key granted the confirm scope."""
    router = APIRouter(prefix="/v1", route_class=StrictJsonRoute)
    guards = [Depends(confirmer)]

    @router.post(
        "/accounts/{account_id}/users/{user_id}/sign-ins/confirm",
        status_code=200,
        dependencies=guards,
    )
    async def confirm_sign_in(
        body: ConfirmBody,
        account_id: str = Path(pattern=PATH_ID_PATTERN),
        user_id: str = Path(pattern=PATH_ID_PATTERN),
    ) -> dict[str, str]:
        owner = MailboxOwner(account_id=account_id, user_id=user_id)
        refusal = await handlers.confirm_sign_in(owner, body.code, deps)
        if refusal is not None:
            status, code, message, fix = CONFIRM_REFUSALS[refusal]
            raise ApiError(status, code, message, [fix])
        return {"status": "confirmed"}

    return router


def _seconds_until(until: datetime | None, now: datetime) -> int:
    if until is None:
        return 600
    return max(1, int((until - now).total_seconds()))


def _return_to(return_url: str, outcome: CallbackOutcome) -> str:
    query = {"link_id": outcome.link_id or "", "result": outcome.result.value}
    if outcome.confirmation_code is not None:
        query["code"] = outcome.confirmation_code
    if outcome.failure is not None:
        query["error"] = outcome.failure.code.value
    separator = "&" if "?" in return_url else "?"
    return f"{return_url}{separator}{urlencode(query)}"


def _page(outcome: CallbackOutcome) -> HTMLResponse:
    if outcome.result is CallbackResult.VERIFIED:
        title = "Confirm the mailbox in the app"
        message = f"We can read and send mail as {outcome.address}."
        remediation = (
            "The mailbox is linked once the app confirms it with this one-time code: "
            f"{outcome.confirmation_code}"
        )
        code, status = "", 200
    elif outcome.failure is not None:
        title, message = "The mailbox was not linked", outcome.failure.message
        remediation, code, status = outcome.failure.remediation, outcome.failure.code.value, 200
    else:
        refusal = outcome.refusal or CallbackRefusal.UNKNOWN_STATE
        title = "This sign-in cannot be used"
        (message, remediation), code, status = REFUSALS[refusal], refusal.value, 400
    account = ""
    if outcome.owner is not None:
        account = (
            f"<p>This links the mailbox to account {html.escape(outcome.owner.account_id)}, "
            f"user {html.escape(outcome.owner.user_id)}. If that is not you, close this "
            "window and do not confirm.</p>"
        )
    page = _PAGE.format(
        title=html.escape(title),
        result=outcome.result.value,
        code=html.escape(code),
        confirmation=html.escape(outcome.confirmation_code or ""),
        account=account,
        message=html.escape(message),
        remediation=html.escape(remediation),
    )
    return HTMLResponse(page, status_code=status)
