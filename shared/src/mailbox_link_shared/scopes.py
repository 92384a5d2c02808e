"""What a caller's service key may do: the closed set of scopes, and the keys as configured.

One key per calling service (`MBL_SERVICE_KEYS`), its scopes (`MBL_SERVICE_KEY_SCOPES`) and, for
product callers, the accounts it may act for (`MBL_SERVICE_KEY_ACCOUNTS`). docs/adr/0017.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from pydantic import SecretStr


class Scope(StrEnum):
    """One kind of route a key may call; settings refuse any other name."""

    LINKS = "links"
    REGISTRY = "registry"
    OWNER_LOOKUP = "owner_lookup"
    OPERATOR = "operator"
    SIGN_IN_CONFIRM = "sign_in_confirm"
    MAILBOX_ACCESS = "mailbox_access"
    TOKEN_ISSUE = "token_issue"  # noqa: S105 - a scope's name, not a token


SCOPE_MEANINGS: dict[Scope, str] = {
    Scope.LINKS: "product callers: link requests, their links and their users' mailboxes "
    "(link-api), the provider picker",
    Scope.REGISTRY: "link-api's own key to the registry's user routes (list, unlink, plan)",
    Scope.OWNER_LOOKUP: "the product's sign-in service: which user linked an address (registry)",
    Scope.OPERATOR: "operators: set plans, force-unlink any mailbox, and the user routes "
    "(registry)",
    Scope.SIGN_IN_CONFIRM: "the product's backend: confirm an OAuth sign-in (oauth-broker)",
    Scope.MAILBOX_ACCESS: "internal services that send or read as a linked mailbox: its "
    "settings and password or a fresh OAuth access token, and an on-demand health check "
    "(registry; docs/adr/0023)",
    Scope.TOKEN_ISSUE: "the registry's own key to the broker: a fresh access token of an OAuth "
    "mailbox, sealed (oauth-broker; docs/adr/0023)",
}

# A key not named in MBL_SERVICE_KEY_SCOPES: what every key could call before scopes were
# explicit, less the registry's and the operators' routes, which were the hole (issue 13).
DEFAULT_SCOPES = frozenset({Scope.LINKS})

# Scopes whose every route names the account it acts for, so a key bound to accounts can be
# held to them. Operators and the owner lookup act across accounts by design: a bound key
# granted them would be bound in name only, so settings refuse that.
ACCOUNT_BOUND_SCOPES = frozenset(
    {Scope.LINKS, Scope.REGISTRY, Scope.SIGN_IN_CONFIRM, Scope.MAILBOX_ACCESS}
)


@dataclass(frozen=True)
class CallerKey:
    """One calling service's key and what it may do."""

    name: str
    token: SecretStr
    scopes: frozenset[Scope]
    accounts: frozenset[str] | None = None  # None: any account

    def may_act_for(self, account_id: str) -> bool:
        """True when the key is not bound to accounts or is bound to this one."""
        return self.accounts is None or account_id in self.accounts


def caller_keys(
    service_keys: Mapping[str, SecretStr],
    scopes: Mapping[str, Sequence[Scope]],
    accounts: Mapping[str, Sequence[str]],
) -> tuple[CallerKey, ...]:
    """Returns the configured keys, each with its listed scopes or else DEFAULT_SCOPES."""
    return tuple(
        CallerKey(
            name=name,
            token=token,
            scopes=frozenset(scopes[name]) if name in scopes else DEFAULT_SCOPES,
            accounts=frozenset(accounts[name]) if name in accounts else None,
        )
        for name, token in service_keys.items()
    )


def key_configuration_errors(
    service_keys: Mapping[str, SecretStr],
    scopes: Mapping[str, Sequence[Scope]],
    accounts: Mapping[str, Sequence[str]],
) -> list[str]:
    """Returns what is wrong with the keys' scopes and account bindings (empty: nothing)."""
    errors = []
    for setting, names in (
        ("MBL_SERVICE_KEY_SCOPES", scopes),
        ("MBL_SERVICE_KEY_ACCOUNTS", accounts),
    ):
        unknown = sorted(set(names) - set(service_keys))
        if unknown:
            errors.append(f"{setting} names keys not in MBL_SERVICE_KEYS: {unknown}")
    for name, bound in accounts.items():
        if not bound or not all(bound):
            errors.append(
                f"MBL_SERVICE_KEY_ACCOUNTS[{name!r}] must list at least one non-empty account id "
                "(leave the key out to let it act for any account)"
            )
        granted = set(scopes[name]) if name in scopes else set(DEFAULT_SCOPES)
        unbindable = sorted(granted - ACCOUNT_BOUND_SCOPES)
        if unbindable:
            errors.append(
                f"key {name!r} is bound to accounts but granted {unbindable}, whose routes act "
                "across accounts: give those scopes to a key of its own"
            )
    return errors
