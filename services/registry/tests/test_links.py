"""The rules that decide whether a link may take an address, and when a link must let go."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from mailbox_link_contract.events import MailboxOwner, ProviderType, ServerSettings
from mailbox_link_contract.failures import FailureCode
from registry.domain.links import (
    Decision,
    HolderVerdict,
    LinkRecord,
    LinkState,
    MailboxDetails,
    Progress,
    counts_claim,
    is_stale,
    judge_address_holder,
    may_reconnect,
)
from registry.domain.plans import DEFAULT_PLANS, PlanTable

ALICE = MailboxOwner(account_id="acme", user_id="alice")
BOB = MailboxOwner(account_id="globex", user_id="bob")
NOW = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)
LATER = NOW + timedelta(minutes=15)
EARLIER = NOW - timedelta(seconds=1)


def _holder(
    state: LinkState, owner: MailboxOwner = ALICE, expires_at: datetime = LATER
) -> LinkRecord:
    return LinkRecord(
        link_id="l1",
        owner=owner,
        address="a@example.org",
        provider=ProviderType.IMAP,
        expires_at=expires_at,
        latest=None if state is LinkState.RESERVING else Decision(1, state, NOW),
    )


def test_a_free_address_may_be_taken() -> None:
    assert judge_address_holder(ALICE, None, NOW) is HolderVerdict.STALE


@pytest.mark.parametrize("state", [LinkState.REJECTED, LinkState.UNLINKED])
def test_an_ended_holder_is_stale_for_anyone(state: LinkState) -> None:
    assert judge_address_holder(ALICE, _holder(state, ALICE), NOW) is HolderVerdict.STALE
    assert judge_address_holder(BOB, _holder(state, ALICE), NOW) is HolderVerdict.STALE


@pytest.mark.parametrize("state", [LinkState.RESERVING, LinkState.RESERVED])
@pytest.mark.parametrize("expires_at", [EARLIER, NOW], ids=["past", "exactly-now"])
def test_a_reservation_past_its_expiry_is_stale(state: LinkState, expires_at: datetime) -> None:
    holder = _holder(state, BOB, expires_at)
    assert judge_address_holder(ALICE, holder, NOW) is HolderVerdict.STALE
    assert judge_address_holder(BOB, holder, NOW) is HolderVerdict.STALE


@pytest.mark.parametrize("state", [LinkState.RESERVING, LinkState.RESERVED, LinkState.LINKED])
def test_another_account_is_refused_whatever_the_holder_is_doing(state: LinkState) -> None:
    holder = _holder(state, ALICE)
    assert judge_address_holder(BOB, holder, NOW) is HolderVerdict.ALREADY_LINKED_ELSEWHERE


def test_another_user_of_the_same_account_is_also_elsewhere() -> None:
    colleague = MailboxOwner(account_id="acme", user_id="carol")
    holder = _holder(LinkState.LINKED, ALICE)
    assert judge_address_holder(colleague, holder, NOW) is HolderVerdict.ALREADY_LINKED_ELSEWHERE


def test_the_same_user_is_told_their_mailbox_is_already_linked() -> None:
    holder = _holder(LinkState.LINKED, ALICE)
    assert judge_address_holder(ALICE, holder, NOW) is HolderVerdict.ALREADY_LINKED


@pytest.mark.parametrize("state", [LinkState.RESERVING, LinkState.RESERVED])
def test_the_same_user_with_a_link_in_flight_is_told_to_wait(state: LinkState) -> None:
    holder = _holder(state, ALICE)
    assert judge_address_holder(ALICE, holder, NOW) is HolderVerdict.LINK_IN_PROGRESS


def test_a_linked_mailbox_never_expires() -> None:
    holder = _holder(LinkState.LINKED, ALICE, expires_at=EARLIER)
    assert not holder.has_expired(NOW)
    assert not is_stale(holder, NOW)
    assert judge_address_holder(ALICE, holder, NOW) is HolderVerdict.ALREADY_LINKED
    assert judge_address_holder(BOB, holder, NOW) is HolderVerdict.ALREADY_LINKED_ELSEWHERE


@pytest.mark.parametrize("state", [LinkState.RESERVING, LinkState.RESERVED])
def test_an_in_flight_link_expires_at_its_expiry_not_before(state: LinkState) -> None:
    holder = _holder(state, expires_at=NOW)
    assert not holder.has_expired(NOW - timedelta(milliseconds=1))
    assert holder.has_expired(NOW)
    assert holder.has_expired(NOW + timedelta(days=1))


@pytest.mark.parametrize("state", [LinkState.LINKED, LinkState.REJECTED, LinkState.UNLINKED])
def test_only_in_flight_links_expire(state: LinkState) -> None:
    assert not _holder(state, expires_at=EARLIER).has_expired(NOW)


@pytest.mark.parametrize(
    ("state", "stale"),
    [
        (LinkState.RESERVING, False),
        (LinkState.RESERVED, False),
        (LinkState.LINKED, False),
        (LinkState.REJECTED, True),
        (LinkState.UNLINKED, True),
    ],
)
def test_only_ended_or_expired_links_must_let_go(state: LinkState, stale: bool) -> None:
    assert is_stale(_holder(state), NOW) is stale
    expired = _holder(state, expires_at=EARLIER)
    assert is_stale(expired, NOW) is (stale or state in (LinkState.RESERVING, LinkState.RESERVED))


def test_unknown_plans_fall_back_to_the_default_and_the_top_plan_allows_15() -> None:
    table = PlanTable(DEFAULT_PLANS, "basic")
    assert table.limit_for(None) == table.limit_for("gold") == 3
    assert table.plan_or_default("gold") == "basic"
    assert table.limit_for("free") == 1
    assert table.limit_for("organization") == 15


def test_a_link_holds_every_claim_until_its_first_decision_then_only_those_it_names() -> None:
    reserving = _holder(LinkState.RESERVING)
    assert counts_claim(reserving, "slot:x:0#0")
    assert counts_claim(reserving, "slot:x:1#0")
    reserved = replace(
        reserving, latest=Decision(1, LinkState.RESERVED, NOW, claims=("slot:x:1#0",))
    )
    assert not counts_claim(reserved, "slot:x:0#0")  # a duplicate claim from a redelivery
    assert counts_claim(reserved, "slot:x:1#0")


def test_progress_is_at_rest_only_once_an_end_is_announced() -> None:
    assert not Progress(2, LinkState.REJECTED, announced=1).at_rest_ended
    assert Progress(2, LinkState.REJECTED, announced=2).at_rest_ended
    assert not Progress(2, LinkState.LINKED, announced=2).at_rest_ended


def test_only_a_request_through_the_same_openid_provider_reconnects_its_mailbox() -> None:
    server = ServerSettings(host="mail.corp.test", port=993, security="ssl", username="a@corp.test")
    flagged = MailboxDetails(
        "m1", server, server, NOW, reconnect_required=FailureCode.RECONNECT_REQUIRED
    )
    holder = replace(
        _holder(LinkState.LINKED),
        provider=ProviderType.OIDC,
        oidc_provider="corp",
        latest=Decision(2, LinkState.LINKED, NOW, mailbox=flagged),
    )
    same = replace(holder, link_id="l2", latest=None)
    assert may_reconnect(same, holder, asked=False, now=NOW)
    other = replace(same, oidc_provider="partner")
    assert not may_reconnect(other, holder, asked=True, now=NOW)
