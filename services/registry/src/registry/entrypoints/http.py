"""HTTP routes of the registry: a user's mailboxes, unlinking, owner lookup, plans, and
on-demand health checks."""

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Response, status
from pydantic import BaseModel, ConfigDict

from mailbox_link_contract.events import Failure, MailboxHealth, MailboxOwner, UnlinkedBy
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.api_errors import ApiErrorCode
from mailbox_link_shared.http import (
    PATH_ID_PATTERN,
    ApiError,
    CallerKeys,
    StrictJsonRoute,
    address_from_path,
    address_or_mailbox_id,
)
from mailbox_link_shared.rate_limits import TooManyAttempts, retry_after_seconds, wait_text
from mailbox_link_shared.scopes import Scope
from registry import handlers, health
from registry.domain.health import HealthRecord
from registry.domain.links import LinkRecord
from registry.handlers import PlanUsage, RegistryDeps, UnlinkResult

AccountId = Annotated[str, Path(pattern=PATH_ID_PATTERN)]
UserId = Annotated[str, Path(pattern=PATH_ID_PATTERN)]
MailboxId = Annotated[str, Path(pattern=PATH_ID_PATTERN)]


class PlanIn(BaseModel):
    """PUT body: the plan to put a user on."""

    model_config = ConfigDict(extra="forbid")

    plan: str


_ENCODED = "The address, percent-encoded (/ % ? # as %2F %25 %3F %23)."
_NAMED = "The mailbox's address, percent-encoded (/ % ? # as %2F %25 %3F %23), or its mailbox_id."


def build_router(deps: RegistryDeps, keys: CallerKeys) -> APIRouter:
    """Returns the routes, bound to the handlers' dependencies, each admitting its scopes."""
    router = APIRouter(prefix="/v1", route_class=StrictJsonRoute)
    user_path = "/accounts/{account_id}/users/{user_id}"
    # link-api's own key reads and unlinks on a user's behalf; the product's caller key never
    # reaches the registry (docs/adr/0017). Operators may do what link-api does.
    for_user = [Depends(keys.require(Scope.REGISTRY, Scope.OPERATOR))]
    # Plans and force-unlink change what any account holds: operators only.
    for_operators = [Depends(keys.require(Scope.OPERATOR))]
    # Who may ask which user linked an address: the product's sign-in service, not any caller of
    # the product's API (it would tell anyone whose mailbox is linked where).
    for_sign_in = [Depends(keys.require(Scope.OWNER_LOOKUP))]

    @router.get(f"{user_path}/mailboxes", dependencies=for_user)
    async def list_mailboxes(account_id: AccountId, user_id: UserId) -> dict[str, Any]:
        """Lists the mailboxes this user has linked."""
        owner = MailboxOwner(account_id=account_id, user_id=user_id)
        records = await handlers.list_mailboxes(owner, deps)
        healths = await asyncio.gather(*(health.health_of(r, deps) for r in records))
        return {"mailboxes": [_mailbox_body(r, h) for r, h in zip(records, healths, strict=True)]}

    # {...:path} segments: an address may have "/" in its local part, which arrives decoded.
    @router.delete(
        f"{user_path}/mailboxes/{{mailbox:path}}",
        status_code=status.HTTP_204_NO_CONTENT,
        dependencies=for_user,
    )
    async def unlink_mailbox(
        account_id: AccountId, user_id: UserId, mailbox: Annotated[str, Path(description=_NAMED)]
    ) -> Response:
        """Unlinks this user's mailbox, named by its address or its mailbox_id; any account
        may link it afterwards."""
        owner = MailboxOwner(account_id=account_id, user_id=user_id)
        address, mailbox_id = address_or_mailbox_id(mailbox)
        if mailbox_id is not None:
            result = await handlers.unlink_mailbox_by_id(mailbox_id, deps, owner)
        else:
            assert address is not None
            result = await handlers.unlink_mailbox(address, deps, owner, UnlinkedBy.USER)
        return _unlink_answer(result, "This user has no linked mailbox with that name.", "mailbox")

    @router.delete(
        "/mailboxes/{email:path}",
        status_code=status.HTTP_204_NO_CONTENT,
        dependencies=for_operators,
    )
    async def force_unlink_mailbox(email: Annotated[str, Path(description=_ENCODED)]) -> Response:
        """Operators: unlinks the mailbox from whichever user linked it."""
        result = await handlers.unlink_mailbox(
            address_from_path(email), deps, None, UnlinkedBy.ADMIN
        )
        return _unlink_answer(result, "No user has linked this address.")

    @router.get("/mailboxes/{email:path}/owner", dependencies=for_sign_in)
    async def find_owner(email: Annotated[str, Path(description=_ENCODED)]) -> dict[str, str]:
        """Tells which user has linked this address, e.g. to sign them in with it."""
        record = await handlers.find_owner(address_from_path(email), deps)
        if record is None or record.mailbox is None:
            raise ApiError(
                status.HTTP_404_NOT_FOUND,
                ApiErrorCode.MAILBOX_NOT_FOUND,
                "No user has linked this address.",
                [("email", "check the address")],
            )
        return {**record.owner.model_dump(), "mailbox_id": record.mailbox.mailbox_id}

    @router.get(f"{user_path}/plan", dependencies=for_user)
    async def get_plan(account_id: AccountId, user_id: UserId) -> dict[str, Any]:
        """Shows the user's plan, its mailbox limit and how many mailboxes count against it."""
        owner = MailboxOwner(account_id=account_id, user_id=user_id)
        return _plan_body(await handlers.get_plan(owner, deps))

    @router.put(f"{user_path}/plan", dependencies=for_operators)
    async def assign_plan(account_id: AccountId, user_id: UserId, body: PlanIn) -> dict[str, Any]:
        """Puts the user on a plan, which sets how many mailboxes they may link."""
        if body.plan not in deps.plans.limits:
            known = ", ".join(sorted(deps.plans.limits))
            raise ApiError(
                422,
                ApiErrorCode.INVALID_REQUEST,
                "Unknown plan.",
                [("plan", f"use one of {known}")],
            )
        owner = MailboxOwner(account_id=account_id, user_id=user_id)
        return _plan_body(await handlers.assign_plan(owner, body.plan, deps))

    # Health checks (issue 17): internal services that use mailboxes, link-api, operators.
    for_checks = [Depends(keys.require(Scope.MAILBOX_ACCESS, Scope.REGISTRY, Scope.OPERATOR))]

    @router.post(
        "/accounts/{account_id}/mailboxes/{mailbox_id}/checks",
        status_code=status.HTTP_202_ACCEPTED,
        dependencies=for_checks,
    )
    async def check_mailbox(account_id: AccountId, mailbox_id: MailboxId) -> dict[str, Any]:
        """Requests a health check of the mailbox now (one at a time: while one is in flight,
        answers that one). Its result changes the listing's status and, if the health
        changes, is announced as MailboxHealthChanged."""
        record = await handlers.find_mailbox(account_id, mailbox_id, deps)
        if record is None:
            raise ApiError(
                status.HTTP_404_NOT_FOUND,
                ApiErrorCode.MAILBOX_NOT_FOUND,
                "No mailbox with this id is linked in this account.",
                [("mailbox_id", "use a mailbox_id from MailboxLinked or GET .../mailboxes")],
            )
        try:
            asked = await health.check_now(record, deps)
        except TooManyAttempts as over:
            now = deps.clock()
            raise ApiError(
                status.HTTP_429_TOO_MANY_REQUESTS,
                ApiErrorCode.TOO_MANY_REQUESTS,
                "Too many on-demand checks of this mailbox.",
                [("mailbox_id", wait_text(over.retry_at, now))],
                headers={"Retry-After": str(retry_after_seconds(over.retry_at, now))},
            ) from None
        return {
            "check_id": asked.check.check_id,
            "mailbox_id": mailbox_id,
            "reason": asked.check.reason.value,
            "requested_at": asked.check.requested_at.isoformat(),
            # False: a check was already in flight; this is that one.
            "new": asked.new,
        }

    return router


def _unlink_answer(result: UnlinkResult, not_found: str, field: str = "email") -> Response:
    if result is UnlinkResult.NOT_FOUND:
        raise ApiError(
            status.HTTP_404_NOT_FOUND,
            ApiErrorCode.MAILBOX_NOT_FOUND,
            not_found,
            [(field, "use an email or a mailbox_id from GET .../mailboxes")],
        )
    if result is UnlinkResult.IN_PROGRESS:
        raise ApiError(
            status.HTTP_409_CONFLICT,
            ApiErrorCode.LINK_IN_PROGRESS,
            "This mailbox is being linked right now.",
            [(field, "wait until its link request ends (see its status), then try again")],
        )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _plan_body(usage: PlanUsage) -> dict[str, Any]:
    return {"plan": usage.plan, "mailbox_limit": usage.limit, "mailboxes_used": usage.used}


def _mailbox_body(record: LinkRecord, checked: HealthRecord | None = None) -> dict[str, Any]:
    mailbox = record.mailbox
    if mailbox is None:  # pragma: no cover - only linked records are listed
        raise ValueError(record.link_id)
    return {
        "mailbox_id": mailbox.mailbox_id,
        "email": record.address,
        "provider": record.provider.value,
        # Provider oidc: the operator's name of the OpenID provider it links through.
        "oidc_provider": record.oidc_provider,
        "imap": mailbox.imap.model_dump(mode="json"),
        "smtp": mailbox.smtp.model_dump(mode="json"),
        "linked_at": mailbox.linked_at.isoformat(),
        "auth": mailbox.auth.value,
        # Which rule made its servers authoritative for the address (null: linked before it
        # was recorded).
        "authority": mailbox.authority.value if mailbox.authority else None,
        # "reconnect_required": the provider stopped accepting its authorization; ask the user
        # to link it again. The mailbox stays theirs meanwhile. "degraded": its servers could
        # not be reached or failed lately; checks go on, the user need not act.
        "status": mailbox.health.value,
        "last_checked_at": checked.last_checked_at.isoformat()
        if checked and checked.last_checked_at
        else None,
        "status_reason": _status_reason(mailbox.health, mailbox.health_code, checked),
    }


def _status_reason(
    state: MailboxHealth, code: FailureCode | None, checked: HealthRecord | None
) -> dict[str, str] | None:
    """Why the mailbox is not active: the failure's code and the catalogue's words (the latest
    check's, if it failed the same way), never a server's raw reply."""
    if state is MailboxHealth.ACTIVE or code is None:
        return None
    last = checked.last_failure if checked else None
    failure = last if last is not None and last.code == code else Failure.of(code)
    return {
        "code": failure.code.value,
        "message": failure.message,
        "remediation": failure.remediation,
    }
