from mailbox_link_shared.events import MailboxOwner
from registry.domain.linking import LinkDecision, decide_link
from registry.domain.plans import DEFAULT_PLANS, PlanTable

ALICE = MailboxOwner(account_id="acme", user_id="alice")
BOB = MailboxOwner(account_id="globex", user_id="bob")


def test_free_mailbox_under_the_limit_is_linked() -> None:
    assert decide_link(ALICE, None, linked_count=0, limit=1) is LinkDecision.LINK


def test_mailbox_of_another_account_is_refused_before_the_limit_is_looked_at() -> None:
    assert (
        decide_link(ALICE, BOB, linked_count=99, limit=1) is LinkDecision.ALREADY_LINKED_ELSEWHERE
    )


def test_relinking_your_own_mailbox_refreshes_it_even_at_the_limit() -> None:
    assert decide_link(ALICE, ALICE, linked_count=1, limit=1) is LinkDecision.REFRESH


def test_user_at_the_limit_is_refused() -> None:
    assert decide_link(ALICE, None, linked_count=3, limit=3) is LinkDecision.PLAN_LIMIT_REACHED


def test_unknown_plans_fall_back_to_the_default_and_the_top_plan_allows_15() -> None:
    table = PlanTable(DEFAULT_PLANS, "basic")
    assert table.limit_for(None) == table.limit_for("gold") == 3
    assert table.limit_for("organization") == 15
