"""A user's plan, as a chain of versions decided by unique inserts (like claims.py).

Version n+1 is inserted only by whoever read version n and found their change newer, so of two
changes applied at once (two events of one batch, two replicas, an operator and billing) the
older can never land after the newer: it either loses the insert or finds the newer stored.
"""

from datetime import datetime

from mailbox_link_contract.events import MailboxOwner
from registry.adapters.registry_store import RegistryStore, UserPlan
from registry.chains import latest_of

MAX_ATTEMPTS = 10


async def current_plan(owner: MailboxOwner, store: RegistryStore) -> UserPlan:
    """Returns the user's latest plan version (UserPlan() if never assigned one)."""
    head = await store.get_plan_version(owner, 0)
    if head is None:
        return UserPlan()
    return await _latest_from(owner, store, head.latest, head if head.latest == 0 else None)


async def _latest_from(
    owner: MailboxOwner, store: RegistryStore, version: int, known: UserPlan | None
) -> UserPlan:
    async def plan_version(number: int) -> UserPlan | None:
        return await store.get_plan_version(owner, number)

    return await latest_of(plan_version, version, known, f"the plan versions of {owner}")


async def apply_plan(
    owner: MailboxOwner, plan: str, changed_at: datetime, limit: int, store: RegistryStore
) -> bool:
    """Puts the user on the plan unless a change as new or newer is stored; True if applied."""
    current = await current_plan(owner, store)
    for _ in range(MAX_ATTEMPTS):
        if current.changed_at is not None and current.changed_at >= changed_at:
            return False
        version = UserPlan(plan, changed_at, max(limit, current.max_limit), current.version + 1)
        if await store.add_plan_version(owner, version):
            if version.version > 0:
                await store.note_latest_plan(owner, version.version)
            return True
        current = await _latest_from(owner, store, version.version, None)
    raise RuntimeError(f"the plan of {owner} kept changing")
