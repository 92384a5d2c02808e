"""The page a browser lands on after the provider's sign-in: GET /v1/oauth/callback."""

import html
from urllib.parse import urlencode

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from oauth_broker import handlers
from oauth_broker.domain.sessions import CallbackRefusal
from oauth_broker.handlers import BrokerDeps, CallbackOutcome, CallbackResult

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
}
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body data-result="{result}" data-code="{code}">
<h1>{title}</h1><p>{message}</p><p>{remediation}</p>
</body></html>
"""


def build_public_router(deps: BrokerDeps, return_url: str | None) -> APIRouter:
    """Returns the browser-facing routes (no service token: the provider redirects here)."""
    router = APIRouter(prefix="/v1/oauth")

    @router.get("/callback", response_class=HTMLResponse)
    async def oauth_callback(
        state: str = Query(default="", max_length=512),
        code: str | None = Query(default=None, max_length=4096),
        error: str | None = Query(default=None, max_length=256),
        error_description: str = Query(default="", max_length=1024),
    ) -> Response:
        outcome = await handlers.complete_sign_in(state, code, error, error_description, deps)
        if return_url and outcome.result is not CallbackResult.REFUSED:
            return RedirectResponse(_return_to(return_url, outcome), status_code=303)
        return _page(outcome)

    return router


def _return_to(return_url: str, outcome: CallbackOutcome) -> str:
    query = {"link_id": outcome.link_id or "", "result": outcome.result.value}
    if outcome.failure is not None:
        query["error"] = outcome.failure.code.value
    separator = "&" if "?" in return_url else "?"
    return f"{return_url}{separator}{urlencode(query)}"


def _page(outcome: CallbackOutcome) -> HTMLResponse:
    if outcome.result is CallbackResult.VERIFIED:
        title, message = "Mailbox connected", f"We can read and send mail as {outcome.address}."
        remediation, code, status = "You can close this window.", "", 200
    elif outcome.failure is not None:
        title, message = "The mailbox was not linked", outcome.failure.message
        remediation, code, status = outcome.failure.remediation, outcome.failure.code.value, 200
    else:
        refusal = outcome.refusal or CallbackRefusal.UNKNOWN_STATE
        title = "This sign-in cannot be used"
        (message, remediation), code, status = REFUSALS[refusal], refusal.value, 400
    page = _PAGE.format(
        title=html.escape(title),
        result=outcome.result.value,
        code=html.escape(code),
        message=html.escape(message),
        remediation=html.escape(remediation),
    )
    return HTMLResponse(page, status_code=status)
