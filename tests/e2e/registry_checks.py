"""Checks of the registry's guarantees on its own documents (see services/registry/DESIGN.md)."""

from collections import defaultdict
from typing import Any

from mailbox_link_shared.addresses import mailbox_key

HOLDING = ("reserved", "linked", "reconnecting")


def assert_registry_consistent(documents: dict[str, list[dict[str, Any]]]) -> None:
    """Checks guarantees 1 and 2 on the registry's own documents, once no link is reserving.

    One linked link at most holds each mailbox, whatever its spelling, and it holds the latest
    claim on it (a reserved link claims the address only once verified, so need not hold it);
    every link in flight or linked holds the latest claim of its user's own hold on the
    mailbox, one per user and mailbox, and the latest claim on one of its user's slots, a slot
    no other link holds. A reconnect link in flight (docs/adr/0019) holds only the latest claim
    of its mailbox's reconnect hold, one per mailbox.
    """
    links = {d["_id"]: d for d in documents["links"]}
    assert not [i for i, d in links.items() if d["state"] == "reserving"], "links left reserving"
    latest: dict[str, dict[str, Any]] = {}
    for claim in documents["claims"]:
        known = latest.get(claim["resource"])
        if known is None or known["generation"] < claim["generation"]:
            latest[claim["resource"]] = claim
    latest_ids = {f"{c['resource']}#{c['generation']}": c["link_id"] for c in latest.values()}
    holders: dict[str, list[str]] = defaultdict(list)
    slots_taken: dict[str, str] = {}
    for link_id, link in links.items():
        if link["state"] not in HOLDING:
            continue
        key = mailbox_key(link["address"])
        named = {c.rsplit("#", 1)[0]: c for c in link["claims"]}
        if link.get("reconnects"):
            hold = named.get(f"reconnect:{link['reconnects']}")
            assert latest_ids.get(hold or "") == link_id, f"{link_id} lost its reconnect hold"
            holders[f"reconnect:{link['reconnects']}"].append(link_id)
            continue
        user = f"{link['account_id']}\x1f{link['user_id']}"
        own = named.get(f"owner-mailbox:{user}:{key}")
        assert latest_ids.get(own or "") == link_id, f"{link_id} lost its user's hold"
        holders[f"owner-mailbox:{user}:{key}"].append(link_id)
        if link["state"] == "linked":
            holders[key].append(link_id)
            address_claim = named.get(f"mailbox:{key}")
            assert latest_ids.get(address_claim or "") == link_id, f"{link_id} lost its address"
        slot_prefix = f"slot:{link['account_id']}\x1f{link['user_id']}:"
        slots = [c for r, c in named.items() if r.startswith(slot_prefix)]
        assert len(slots) == 1, f"{link_id} holds {len(slots)} slots"
        assert latest_ids.get(slots[0]) == link_id, f"{link_id} lost its slot"
        assert slots_taken.setdefault(slots[0], link_id) == link_id, f"{slots[0]} held twice"
    for key, holding in holders.items():
        assert len(holding) == 1, f"{key} held by {len(holding)} links"
