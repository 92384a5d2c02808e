"""What a failed check tells the user: every failure known by the deadline, the primary one
first, and a hint when a refused login was not the full address. Plain rules, no network."""

from collections.abc import Sequence

from mailbox_link_contract.events import Failure, ServerSettings
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.mail_probes import ProbeFailed


class ChecksFailed(ProbeFailed):
    """The IMAP and SMTP checks' failures known by the deadline, the primary one first (IMAP's
    before SMTP's); code and detail are the primary one's, so it reads as that failure."""

    def __init__(self, failures: Sequence[ProbeFailed]) -> None:
        if not failures:
            raise ValueError("ChecksFailed needs at least one failure")
        primary = failures[0]
        super().__init__(primary.code, primary.detail, login_refused=primary.login_refused)
        self.failures = tuple(failures)


def all_failures(failure: ProbeFailed) -> tuple[ProbeFailed, ...]:
    """The failure's parts: each check's failure if it stands for several, else itself."""
    return failure.failures if isinstance(failure, ChecksFailed) else (failure,)


def with_login_hint(failure: ProbeFailed, server: ServerSettings, address: str) -> ProbeFailed:
    """Adds to a refused login whose username is not an address (no `@`) the suggestion to
    log in with the full address: many servers answer a bare name with a plain refusal."""
    if not failure.login_refused or "@" in server.username or "@" not in address:
        return failure
    detail = f"{failure.detail}; this server may want the full address as login: {address}"
    return ProbeFailed(failure.code, detail, login_refused=True)


def report(failure: ProbeFailed) -> Failure:
    """The Failure to publish: the primary code and detail, the others in other_failures.
    Failures with the same code share one entry (other_failures names each code once), their
    distinct details joined: STARTTLS chosen for both IMAP and SMTP on TLS ports names both."""
    details: dict[FailureCode, list[str]] = {}
    for each in all_failures(failure):
        details.setdefault(each.code, []).append(each.detail)
    primary, *others = [
        Failure.of(code, "; ".join(dict.fromkeys(texts))) for code, texts in details.items()
    ]
    return primary.with_others(others)
