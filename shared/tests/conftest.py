"""The mail probes' tests run against the session's real Dovecot servers (localinfra)."""

import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest

from localinfra.stack import LocalStack


@dataclass(frozen=True)
class ProbeTargets:
    """The Dovecot listeners and one mail user, as the probe tests need them."""

    host: str
    tls_hostname: str
    imaps_port: int
    imap_starttls_port: int
    submission_starttls_port: int
    submissions_port: int
    pop3_port: int
    untrusted_imaps_port: int
    untrusted_submissions_port: int
    closed_port: int
    oauth_imaps_port: int  # the OAuth Dovecot: XOAUTH2/OAUTHBEARER logins only
    oauth_submissions_port: int
    ca_file: Path
    user: str
    password: str


@pytest.fixture(scope="session")
def mail_servers(local_stack: LocalStack) -> ProbeTargets:
    user, password = f"probe-{secrets.token_hex(4)}@example.org", secrets.token_urlsafe(16)
    local_stack.add_mail_user(user, password)
    e = local_stack.endpoints
    return ProbeTargets(
        host=e.mail_host,
        tls_hostname=e.tls_hostname,
        imaps_port=e.imaps_port,
        imap_starttls_port=e.imap_starttls_port,
        submission_starttls_port=e.submission_starttls_port,
        submissions_port=e.submissions_port,
        pop3_port=e.pop3_port,
        untrusted_imaps_port=e.untrusted_imaps_port,
        untrusted_submissions_port=e.untrusted_submissions_port,
        closed_port=e.closed_port,
        oauth_imaps_port=e.oauth_imaps_port,
        oauth_submissions_port=e.oauth_submissions_port,
        ca_file=Path(e.ca_file),
        user=user,
        password=password,
    )
