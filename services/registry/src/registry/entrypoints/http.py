"""HTTP routes of the registry: the mailboxes of a user, unlinking, owner lookup, plans."""

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response, status
from pydantic import BaseModel, ConfigDict

from mailbox_link_shared.events import MailboxOwner
from mailbox_link_shared.http import PATH_ID_PATTERN, ApiError, address_from_path
from registry import handlers
from registry.adapters.mailbox_store import LinkedMailbox
from registry.handlers import RegistryDeps

AccountId = Annotated[str, Path(pattern=PATH_ID_PATTERN)]
UserId = Annotated[str, Path(pattern=PATH_ID_PATTERN)]


class PlanIn(BaseModel):
    """PUT body: the plan to put a user on."""

    model_config = ConfigDict(extra="forbid")

    plan: str


def build_router(deps: RegistryDeps) -> APIRouter:
    """Returns the routes, bound to the handlers' dependencies."""
    router = APIRouter(prefix="/v1")
    user_path = "/accounts/{account_id}/users/{user_id}"

    @router.get(f"{user_path}/mailboxes")
    async def list_mailboxes(account_id: AccountId, user_id: UserId) -> dict[str, Any]:
        """Lists the mailboxes this user has linked."""
        owner = MailboxOwner(account_id=account_id, user_id=user_id)
        mailboxes = await handlers.list_mailboxes(owner, deps)
        return {"mailboxes": [_mailbox_body(m) for m in mailboxes]}

    @router.delete(f"{user_path}/mailboxes/{{email}}", status_code=status.HTTP_204_NO_CONTENT)
    async def unlink_mailbox(account_id: AccountId, user_id: UserId, email: str) -> Response:
        """Unlinks this user's mailbox; any account may link it afterwards."""
        owner = MailboxOwner(account_id=account_id, user_id=user_id)
        if not await handlers.unlink_mailbox(owner, address_from_path(email), deps):
            raise ApiError(
                status.HTTP_404_NOT_FOUND,
                "mailbox_not_found",
                "This user has no linked mailbox with that address.",
                [("email", "use an address from GET .../mailboxes")],
            )
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.get("/mailboxes/{email}/owner")
    async def find_owner(email: str) -> dict[str, str]:
        """Tells which user has linked this address, e.g. to sign them in with it."""
        mailbox = await handlers.find_owner(address_from_path(email), deps)
        if mailbox is None:
            raise ApiError(
                status.HTTP_404_NOT_FOUND,
                "mailbox_not_found",
                "No user has linked this address.",
                [("email", "check the address")],
            )
        return {**mailbox.owner.model_dump(), "mailbox_id": mailbox.mailbox_id}

    @router.put(f"{user_path}/plan")
    async def assign_plan(account_id: AccountId, user_id: UserId, body: PlanIn) -> dict[str, Any]:
        """Puts the user on a plan, which sets how many mailboxes they may link."""
        if body.plan not in deps.plans.limits:
            known = ", ".join(sorted(deps.plans.limits))
            raise ApiError(
                422, "invalid_request", "Unknown plan.", [("plan", f"use one of {known}")]
            )
        owner = MailboxOwner(account_id=account_id, user_id=user_id)
        limit = await handlers.assign_plan(owner, body.plan, deps)
        return {"plan": body.plan, "mailbox_limit": limit}

    return router


def _mailbox_body(mailbox: LinkedMailbox) -> dict[str, Any]:
    return {
        "mailbox_id": mailbox.mailbox_id,
        "email": mailbox.address,
        "provider": mailbox.provider.value,
        "imap": mailbox.imap.model_dump(mode="json"),
        "smtp": mailbox.smtp.model_dump(mode="json"),
        "linked_at": mailbox.linked_at.isoformat(),
    }
