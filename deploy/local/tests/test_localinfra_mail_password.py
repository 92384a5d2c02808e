"""Changing a Dovecot user's password on the running stack (as the user would at their
provider): the old password is refused at once over IMAP and submission, the new one works,
and the mail stays."""

from __future__ import annotations

import imaplib
import secrets
import smtplib
import ssl

import pytest

from localinfra import LocalStack


def _imap_login(stack: LocalStack, user: str, password: str) -> None:
    e = stack.endpoints
    tls = ssl.create_default_context(cafile=e.ca_file)
    with imaplib.IMAP4_SSL(e.mail_host, e.imaps_port, ssl_context=tls, timeout=10) as imap:
        imap.login(user, password)


def _smtp_login(stack: LocalStack, user: str, password: str) -> None:
    e = stack.endpoints
    tls = ssl.create_default_context(cafile=e.ca_file)
    with smtplib.SMTP_SSL(e.mail_host, e.submissions_port, context=tls, timeout=10) as smtp:
        smtp.login(user, password)


def test_a_changed_password_refuses_the_old_one_and_takes_the_new(local_stack: LocalStack) -> None:
    user = f"repass-{secrets.token_hex(4)}@example.org"
    old, new = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    local_stack.add_mail_user(user, old)
    _imap_login(local_stack, user, old)
    _smtp_login(local_stack, user, old)

    local_stack.set_mail_password(user, new)

    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        _imap_login(local_stack, user, old)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        _smtp_login(local_stack, user, old)
    _imap_login(local_stack, user, new)
    _smtp_login(local_stack, user, new)


def test_changing_the_password_of_an_unknown_user_is_refused(local_stack: LocalStack) -> None:
    with pytest.raises(KeyError):
        local_stack.set_mail_password(f"nobody-{secrets.token_hex(4)}@example.org", "pw")
