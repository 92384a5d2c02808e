"""HTTP routes of link-api: parse, call a handler, answer."""

import re
from collections.abc import Awaitable
from dataclasses import replace
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Path, Request, Response, status
from fastapi.responses import JSONResponse

from link_api import handlers
from link_api.adapters.registry_client import Registry, RegistryUnavailable, Unlink
from link_api.domain.link_request import CannotLink, LinkRequest
from link_api.domain.oidc import OidcCatalogue
from link_api.domain.providers import AuthMethod, Provider
from link_api.entrypoints.rate_limits_http import admit_or_429
from link_api.entrypoints.schemas import LinkRequestIn, link_body
from link_api.handlers import IdempotencyKeyReused, LinkApiDeps
from link_api.link_budgets import LinkBudgets
from link_api.ports import DetectsProviders
from mailbox_link_contract.events import MailboxOwner
from mailbox_link_shared.api_errors import ApiErrorCode
from mailbox_link_shared.http import (
    PATH_ID_PATTERN,
    ApiError,
    StrictJsonRoute,
    address_or_mailbox_id,
)
from mailbox_link_shared.network_policy import (
    MAIL_PORTS,
    PortRanges,
    describe_ports,
    is_port_allowed,
)

_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")

AccountId = Annotated[str, Path(pattern=PATH_ID_PATTERN, description="The product's account id.")]
UserId = Annotated[str, Path(pattern=PATH_ID_PATTERN, description="The product's user id.")]
Mailbox = Annotated[
    str,
    Path(
        description="The mailbox's address, percent-encoded (/ % ? # as %2F %25 %3F %23), "
        "or its mailbox_id.",
        examples=["alice@example.org"],
    ),
]
T = TypeVar("T")
USER_PATH = "/v1/accounts/{account_id}/users/{user_id}"


def build_router(
    deps: LinkApiDeps,
    registry: Registry,
    detector: DetectsProviders,
    allowed_ports: PortRanges = MAIL_PORTS,
    budgets: LinkBudgets | None = None,
    oidc: OidcCatalogue | None = None,
) -> APIRouter:
    """Returns the routes, bound to the handlers' dependencies (and the rate limits, if any);
    typed servers must use one of `allowed_ports` (the verifier's MBL_VERIFIER_ALLOWED_PORTS);
    `oidc` has the deployment's OpenID Connect providers."""
    catalogue = oidc or OidcCatalogue.empty()
    router = APIRouter(prefix=USER_PATH, route_class=StrictJsonRoute)

    @router.post("/links", status_code=status.HTTP_202_ACCEPTED)
    async def request_link(
        account_id: AccountId,
        user_id: UserId,
        body: LinkRequestIn,
        request: Request,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        """Starts linking a mailbox; answers at once with where to watch its status."""
        _check_idempotency_key(idempotency_key)
        owner = MailboxOwner(account_id=account_id, user_id=user_id)
        link_request = await _link_request(body, owner, detector, allowed_ports, catalogue)
        # Kafka known away: refused before anything is stored or counted (docs/adr/0022).
        if not await deps.events_ready():
            raise _events_unavailable()
        # Before anything is stored or emitted: a refused request leaves only its budget slot.
        await admit_or_429(link_request, body.imap is not None, budgets)
        try:
            result = await handlers.request_link(link_request, idempotency_key, deps)
        except TimeoutError:
            # Only a retry carrying on an earlier request publishes outside the stored-then-
            # relayed path; that request is decided `publish`, so the relay sends it.
            raise _events_unavailable() from None
        except IdempotencyKeyReused:
            raise ApiError(
                status.HTTP_409_CONFLICT,
                ApiErrorCode.IDEMPOTENCY_KEY_REUSED,
                "This Idempotency-Key was used for a different request.",
                [("Idempotency-Key", "use a new key for a new request")],
            ) from None
        url = _status_url(request, owner, result.link.link_id)
        headers = {"Location": url, "Idempotent-Replayed": str(not result.created).lower()}
        return JSONResponse(link_body(result.link, url), status.HTTP_202_ACCEPTED, headers)

    @router.get("/links/{link_id}")
    async def get_link(
        account_id: AccountId, user_id: UserId, link_id: str, request: Request
    ) -> dict[str, Any]:
        """Shows where a link stands: pending, reserved, authorization_required (with the
        sign-in URL), verified, linked, or failed and why."""
        owner = MailboxOwner(account_id=account_id, user_id=user_id)
        link = await handlers.get_link(owner, link_id, deps)
        if link is None:
            raise ApiError(
                status.HTTP_404_NOT_FOUND,
                ApiErrorCode.LINK_NOT_FOUND,
                "This user has no link with that id.",
                [("link_id", "use the link_id returned when the link was requested")],
            )
        return link_body(link, _status_url(request, owner, link_id))

    @router.get("/mailboxes")
    async def list_mailboxes(account_id: AccountId, user_id: UserId) -> dict[str, Any]:
        """Lists the mailboxes this user has linked."""
        owner = MailboxOwner(account_id=account_id, user_id=user_id)
        return {"mailboxes": await _ask_registry(registry.list_mailboxes(owner))}

    # {mailbox:path}: an address may have "/" in its local part, which arrives decoded.
    @router.delete("/mailboxes/{mailbox:path}", status_code=status.HTTP_204_NO_CONTENT)
    async def unlink_mailbox(account_id: AccountId, user_id: UserId, mailbox: Mailbox) -> Response:
        """Unlinks one of this user's mailboxes, named by its address or its mailbox_id;
        another account may then link it."""
        owner = MailboxOwner(account_id=account_id, user_id=user_id)
        address, mailbox_id = address_or_mailbox_id(mailbox)
        unlinked = await _ask_registry(registry.unlink_mailbox(owner, address or mailbox))
        if unlinked is Unlink.NOT_FOUND:
            raise ApiError(
                status.HTTP_404_NOT_FOUND,
                ApiErrorCode.MAILBOX_NOT_FOUND,
                "This user has no linked mailbox with that "
                + ("address." if mailbox_id is None else "mailbox_id."),
                [("mailbox", "use an email or a mailbox_id from GET .../mailboxes")],
            )
        if unlinked is Unlink.IN_PROGRESS:
            raise ApiError(
                status.HTTP_409_CONFLICT,
                ApiErrorCode.LINK_IN_PROGRESS,
                "This mailbox is being linked right now.",
                [("mailbox", "wait until its link request ends (see its status), then retry")],
            )
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return router


async def _ask_registry(call: Awaitable[T]) -> T:
    try:
        return await call
    except RegistryUnavailable:
        raise ApiError(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            ApiErrorCode.REGISTRY_UNAVAILABLE,
            "The mailbox registry is not answering; try again shortly.",
            headers={"Retry-After": "2"},
        ) from None


def _events_unavailable() -> ApiError:
    return ApiError(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        ApiErrorCode.TEMPORARILY_UNAVAILABLE,
        "Link requests cannot be sent on right now; nothing was stored: try again shortly.",
        headers={"Retry-After": "5"},
    )


def _check_idempotency_key(key: str | None) -> None:
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(
            status.HTTP_400_BAD_REQUEST,
            ApiErrorCode.INVALID_REQUEST,
            "The Idempotency-Key header is invalid.",
            [("Idempotency-Key", "use 1 to 255 visible ASCII characters, e.g. a UUID")],
        )


def _status_url(request: Request, owner: MailboxOwner, link_id: str) -> str:
    path = f"/v1/accounts/{owner.account_id}/users/{owner.user_id}/links/{link_id}"
    return str(request.base_url).rstrip("/") + path


async def _link_request(
    body: LinkRequestIn,
    owner: MailboxOwner,
    detector: DetectsProviders,
    ports: PortRanges,
    oidc: OidcCatalogue,
) -> LinkRequest:
    """Typed servers, unless the address's known provider hosts it elsewhere; otherwise the
    configured OpenID Connect provider's (named, or serving the address's domain), the
    provider's or the detected ones, with the password or the provider's sign-in. Each with
    the authority that makes its servers speak for the address."""
    try:
        if body.imap is not None or body.smtp is not None:
            if body.provider is Provider.OIDC or body.oidc_provider is not None:
                raise CannotLink(
                    ApiErrorCode.INVALID_REQUEST,
                    "An OpenID Connect provider's mailboxes link to its own servers.",
                    "imap", "omit imap and smtp, or omit provider and oidc_provider",
                )  # fmt: skip
            _check_typed_servers(body, ports)
            typed = body.to_domain(owner)
            authority = await handlers.typed_servers_authority(typed, detector)
            return replace(typed, authority=authority, reconnect=body.reconnect)
        has_password = body.password is not None
        chosen = oidc.choose(body.email, body.provider, body.oidc_provider, body.auth, has_password)
        if chosen is not None:
            return body.with_plan(owner, chosen.plan())
        plan = await handlers.plan_link(
            body.email, body.provider, body.auth, has_password, detector
        )
    except CannotLink as exc:
        raise ApiError(422, exc.code, exc.message, [(exc.field, exc.fix)]) from None
    return replace(body.with_plan(owner, plan), reconnect=body.reconnect)


def _check_typed_servers(body: LinkRequestIn, ports: PortRanges) -> None:
    if body.imap is None or body.smtp is None:
        missing = "imap" if body.imap is None else "smtp"
        raise ApiError(
            422, ApiErrorCode.INVALID_REQUEST, "Give both IMAP and SMTP settings, or neither.",
            [(missing, "add it, or leave both out to have them found")],
        )  # fmt: skip
    if body.auth is AuthMethod.OAUTH:
        raise ApiError(
            422, ApiErrorCode.INVALID_REQUEST, "Typed IMAP and SMTP settings link with a password.",
            [("auth", 'omit imap and smtp to sign in at the provider, or set auth to "password"')],
        )  # fmt: skip
    # The verifier would refuse these too, but only after the link was accepted; a port that
    # is not a mail port is refused here, before anything is stored or sent.
    refused = [
        f"{name}.port"
        for name, server in (("imap", body.imap), ("smtp", body.smtp))
        if not is_port_allowed(server.port, ports)
    ]
    if refused:
        fix = f"use your mail server's port; mail checks may use {describe_ports(ports)}"
        raise ApiError(
            422, ApiErrorCode.INVALID_REQUEST, "Mail checks do not connect to this port.",
            [(field, fix) for field in refused],
        )  # fmt: skip
