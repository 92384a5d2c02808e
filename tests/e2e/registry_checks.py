"""Checks of the registry's guarantees on its own documents."""

from collections import defaultdict
from typing import Any

from mailbox_link_shared.addresses import mailbox_key

HOLDING = ("reserving", "reserved", "linked")


def assert_registry_consistent(documents: dict[str, list[dict[str, Any]]]) -> None:
    """Checks guarantees 1 and 2 on the registry's own documents.

    One link at most holds each mailbox, whatever its spelling (and the lock names it); every
    slot a user holds
    belongs to a holding link of theirs, and every holding link holds one slot.
    """
    links = {d["_id"]: d for d in documents["links"]}
    holding_by_address: dict[str, list[str]] = defaultdict(list)
    holding_by_user: dict[tuple[str, str], set[str]] = defaultdict(set)
    for link in links.values():
        if link["state"] in HOLDING:
            holding_by_address[mailbox_key(link["address"])].append(link["_id"])
            holding_by_user[(link["account_id"], link["user_id"])].add(link["_id"])
    for address, holders in holding_by_address.items():
        assert len(holders) == 1, f"{address} held by {len(holders)} links"
    locks = {d["_id"]: d["link_id"] for d in documents["address_locks"]}
    for address, holders in holding_by_address.items():
        assert locks.get(address) == holders[0], f"lock of {address} is not its holder's"
    for user in documents["users"]:
        key = (user["owner"]["account_id"], user["owner"]["user_id"])
        held = set(user.get("held", {}))
        assert user.get("held_count", 0) == len(held), f"{key}: count and slots disagree"
        holding = holding_by_user.pop(key, set())
        states = {i: links[i]["state"] if i in links else None for i in held ^ holding}
        assert held == holding, f"{key}: slots {sorted(held)} are not its links {states}"
    assert not holding_by_user, f"links hold no slot: {sorted(holding_by_user)}"
