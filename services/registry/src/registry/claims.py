"""Claims on a resource (a mailbox address, a plan slot) decided by unique inserts alone.

A resource's claims form a chain of generations 0, 1, 2, ..., each stored once under
"<resource>#<generation>". Its holder is the link of the latest generation, for as long as
that link is live and counts the claim. Generation n+1 is added only by someone who found
generation n's link let go; of concurrent claimants exactly one inserts it. Nothing is ever
released by a write: a link lets go of all it claimed by ending (domain/links.py).

The latest generation is read forward from the hint kept on generation 0 (chains.py).
"""

from collections.abc import Awaitable, Callable

from registry.adapters.registry_store import Claim, RegistryStore
from registry.chains import latest_of
from registry.domain.links import LinkRecord

# Returns the live link holding this claim, or None once it has let go (announcing its end).
LiveHolder = Callable[[str, str], Awaitable[LinkRecord | None]]
# Each retry follows a change made by a competing claimant; a handful always suffices.
MAX_ATTEMPTS = 10


def address_resource(mailbox_key: str) -> str:
    return f"mailbox:{mailbox_key}"


def owner_mailbox_resource(account_id: str, user_id: str, mailbox_key: str) -> str:
    """A user's own claim on a mailbox while they link it: two requests of one user for one
    mailbox get one winner, without holding the address against anyone else."""
    return f"owner-mailbox:{account_id}\x1f{user_id}:{mailbox_key}"


def reconnect_resource(mailbox_link_id: str) -> str:
    """The hold a reconnect link takes on the linked mailbox it reconnects (named by the link
    it is linked under): one reconnect of a mailbox at a time."""
    return f"reconnect:{mailbox_link_id}"


def slot_resource(account_id: str, user_id: str, slot: int) -> str:
    return f"slot:{account_id}\x1f{user_id}:{slot}"


async def take(
    resource: str,
    link_id: str,
    store: RegistryStore,
    live_holder: LiveHolder,
    likely_new: bool = False,
) -> str | LinkRecord:
    """Claims the resource for the link: returns the id of the claim it now holds, or the
    live link that holds the resource instead.

    `likely_new` tries generation 0 before reading anything: one round trip for a resource
    never claimed before.
    """
    if likely_new and await store.add_claim(Claim(resource, 0, link_id)):
        return Claim(resource, 0, link_id).claim_id
    latest = await latest_claim(resource, store)
    for _ in range(MAX_ATTEMPTS):
        if latest is not None:
            if latest.link_id == link_id:
                return latest.claim_id
            holder = await live_holder(latest.link_id, latest.claim_id)
            if holder is not None:
                return holder
        claim = Claim(resource, latest.generation + 1 if latest else 0, link_id)
        if await store.add_claim(claim):
            if claim.generation > 0:
                await store.note_latest_claim(resource, claim.generation)
            return claim.claim_id
        latest = await latest_claim(resource, store, from_generation=claim.generation)
    raise RuntimeError(f"{resource} kept changing hands")


async def holder_of(
    resource: str, store: RegistryStore, live_holder: LiveHolder
) -> LinkRecord | None:
    """Returns the live link holding the resource, if any (claiming nothing)."""
    latest = await latest_claim(resource, store)
    if latest is None:
        return None
    return await live_holder(latest.link_id, latest.claim_id)


async def latest_claim(
    resource: str, store: RegistryStore, from_generation: int | None = None
) -> Claim | None:
    """Returns the resource's latest generation, or None if it was never claimed."""
    known: Claim | None = None
    if from_generation is None:
        head = await store.get_claim(resource, 0)
        if head is None:
            return None
        from_generation, known = head.latest, head if head.latest == 0 else None

    async def generation(number: int) -> Claim | None:
        return await store.get_claim(resource, number)

    return await latest_of(generation, from_generation, known, f"the claims on {resource}")
