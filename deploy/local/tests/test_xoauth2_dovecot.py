"""The OAuth Dovecot: XOAUTH2 logins over IMAPS and submissions, with tokens checked at the
stack's introspection endpoint, as the OAuth broker's mailbox check will use them."""

from __future__ import annotations

import asyncio
import base64
import secrets
import ssl

import aiosmtplib

from localinfra import LocalStack


def _xoauth2(user: str, token: str) -> str:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


async def _imap_xoauth2(stack: LocalStack, user: str, token: str) -> str:
    """Returns the tagged answer to AUTHENTICATE XOAUTH2 ("OK ..." or "NO ...")."""
    e = stack.endpoints
    context = ssl.create_default_context(cafile=e.ca_file)
    reader, writer = await asyncio.open_connection(
        e.mail_host, e.oauth_imaps_port, ssl=context, server_hostname=e.tls_hostname
    )
    try:
        await reader.readline()  # greeting
        writer.write(f"a1 AUTHENTICATE XOAUTH2 {_xoauth2(user, token)}\r\n".encode())
        while True:
            line = (await asyncio.wait_for(reader.readline(), 10)).decode()
            if line.startswith("+"):
                writer.write(b"\r\n")  # answer the error challenge to get the tagged NO
            elif line.startswith("a1 "):
                return line[3:].strip()
    finally:
        writer.close()


def _smtp(stack: LocalStack) -> aiosmtplib.SMTP:
    e = stack.endpoints
    return aiosmtplib.SMTP(
        hostname=e.tls_hostname,  # "localhost", the name in the certificate
        port=e.oauth_submissions_port,
        use_tls=True,
        tls_context=ssl.create_default_context(cafile=e.ca_file),
        timeout=10,
    )


async def test_imap_accepts_a_granted_token_and_refuses_others(local_stack: LocalStack) -> None:
    user, token = f"oauth-{secrets.token_hex(4)}@example.org", secrets.token_urlsafe(24)
    local_stack.grant_oauth_token(token, user)
    assert (await _imap_xoauth2(local_stack, user, token)).startswith("OK")
    assert (await _imap_xoauth2(local_stack, user, "not-a-token")).startswith("NO")
    local_stack.revoke_oauth_token(token)
    assert (await _imap_xoauth2(local_stack, user, token)).startswith("NO")


async def test_submission_accepts_a_granted_token(local_stack: LocalStack) -> None:
    user, token = f"oauth-{secrets.token_hex(4)}@example.org", secrets.token_urlsafe(24)
    local_stack.grant_oauth_token(token, user)
    smtp = _smtp(local_stack)
    await smtp.connect()
    try:
        response = await smtp.auth_xoauth2(user, token)
        assert response.code == 235
    finally:
        await smtp.quit()


async def test_passwords_do_not_work_on_the_oauth_server(local_stack: LocalStack) -> None:
    user, password = f"pw-{secrets.token_hex(4)}@example.org", secrets.token_urlsafe(16)
    local_stack.add_mail_user(user, password)
    smtp = _smtp(local_stack)
    await smtp.connect()
    try:
        await smtp.ehlo()
        assert sorted(smtp.server_auth_methods) == ["oauthbearer", "xoauth2"]
    finally:
        await smtp.quit()
