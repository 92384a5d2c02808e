"""An IMAP session on a person's INBOX, for proofs of ownership: the IMAP probe's vetted login
(greeting check, STARTTLS, CAPABILITY, LOGIN or AUTHENTICATE), then SELECT INBOX, and on it
`UID SEARCH` for a header value and the deletion of what was found.

Every command runs under its own deadline and the session's connection is always torn down;
a failure is a ProbeFailed whose detail never carries the password.
"""

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Final

from aioimaplib import SELECTED, AioImapException, Command, quoted

from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.mail_probes.common import (
    _GOODBYE_GRACE,
    _T,
    Endpoint,
    ProbeFailed,
    _Credentials,
    _Mechanism,
)
from mailbox_link_shared.mail_probes.imap import _ImapProbe

__all__ = ["InboxSession", "open_inbox"]

# A search for a one-time token finds one message; more than this means the search is not
# ours to trust (or a hostile server answers with everything), so only this many are kept.
_MAX_FOUND: Final = 20
_UID: Final = re.compile(rb"^[1-9][0-9]{0,9}$")
# A header value we search for must survive IMAP quoting unchanged.
_SEARCHABLE: Final = re.compile(r"^[A-Za-z0-9_.@+=-]{1,200}$")


class _InboxProbe(_ImapProbe):
    """The IMAP probe's login, stopping at a read-write INBOX instead of EXAMINE + LOGOUT."""

    async def run(self) -> None:
        await self._log_in()
        reply = await self._execute(self._command("SELECT", "INBOX"))
        if reply.result != "OK":
            raise ProbeFailed(
                FailureCode.NOT_AN_IMAP_SERVER, f"INBOX could not be opened ({reply.reason})"
            )
        self._proto.state = SELECTED
        self.verified = True

    async def search_header(self, header: str, value: str) -> list[str]:
        # NOOP first: a server may hold back new arrivals until the client asks (RFC 9051 7.4.1).
        await self._execute(self._command("NOOP"))
        command = self._uid_command("SEARCH", "HEADER", header, quoted(value))
        response = await self._guard("UID SEARCH", self._proto.execute(command))
        if str(response.result) != "OK":
            raise ProbeFailed(FailureCode.NOT_AN_IMAP_SERVER, "the INBOX could not be searched")
        uids: list[str] = []
        for line in response.lines:
            if not isinstance(line, bytes | bytearray):
                continue
            # aioimaplib hands an async command's untagged reply over without its name
            # ("* SEARCH 4 7" arrives as "4 7"); accept both forms, and only lines of UIDs.
            words = bytes(line).split()
            if words[:1] and words[0].upper() == b"SEARCH":
                words = words[1:]
            if words and all(_UID.match(word) for word in words):
                uids += [word.decode() for word in words]
        return uids[:_MAX_FOUND]

    async def delete(self, uids: list[str]) -> None:
        if not uids:
            return
        uid_set = ",".join(uids)
        stored = await self._guard(
            "UID STORE",
            self._proto.execute(
                self._uid_command("STORE", uid_set, "+FLAGS.SILENT", r"(\Deleted)", resp="FETCH")
            ),
        )
        if str(stored.result) != "OK":
            raise ProbeFailed(FailureCode.NOT_AN_IMAP_SERVER, "the message could not be deleted")
        # UID EXPUNGE removes only our messages; without UIDPLUS, EXPUNGE also removes any
        # other message the person had marked \Deleted, which their client would do anyway.
        if "UIDPLUS" in self._capabilities():
            expunge = self._uid_command("EXPUNGE", uid_set)
        else:
            expunge = self._command("EXPUNGE")
        await self._guard("EXPUNGE", self._proto.execute(expunge))

    async def logout(self) -> None:
        with contextlib.suppress(ProbeFailed, AioImapException, OSError, TimeoutError):
            async with asyncio.timeout(_GOODBYE_GRACE):
                await self._execute(self._command("LOGOUT"))

    def _uid_command(self, name: str, *args: str, resp: str | None = None) -> Any:
        return Command(
            name, self._proto.new_tag(), *args, prefix="UID", untagged_resp_name=resp,
            loop=self._loop,
        )  # fmt: skip


class InboxSession:
    """A logged-in IMAP session with INBOX selected read-write."""

    def __init__(self, probe: _InboxProbe, credentials: _Credentials, timeout: float) -> None:
        self._probe = probe
        self._credentials = credentials
        self._timeout = timeout

    async def find(self, header: str, value: str) -> list[str]:
        """Returns the UIDs of INBOX messages whose `header` contains `value` (at most 20)."""
        if not _SEARCHABLE.match(value) or not _SEARCHABLE.match(header):
            raise ValueError("only plain tokens can be searched for")
        return await _bounded(
            self._probe, self._credentials, self._timeout, self._probe.search_header(header, value)
        )

    async def delete(self, uids: list[str]) -> None:
        """Deletes these messages for good (\\Deleted, then UID EXPUNGE or EXPUNGE)."""
        await _bounded(self._probe, self._credentials, self._timeout, self._probe.delete(uids))


@contextlib.asynccontextmanager
async def open_inbox(
    endpoint: Endpoint, username: str, password: str, tls: ssl.SSLContext, timeout: float
) -> AsyncIterator[InboxSession]:
    """Logs in with a password and selects INBOX; every later command gets `timeout` too.

    Raises ProbeFailed (as probe_imap does) when the session cannot be opened.
    """
    credentials = _Credentials(_Mechanism.PASSWORD, username, password)
    probe = _InboxProbe(endpoint, credentials, tls)
    try:
        await _bounded(probe, credentials, timeout, probe.run())
        yield InboxSession(probe, credentials, timeout)
        await probe.logout()
    finally:
        probe.close()


async def _bounded(
    probe: _InboxProbe, credentials: _Credentials, seconds: float, step: Awaitable[_T]
) -> _T:
    """Runs one step of the session under a deadline, mapping failures as the probes do."""
    try:
        async with asyncio.timeout(seconds):
            return await step
    except TimeoutError:
        raise ProbeFailed(FailureCode.TIMEOUT, f"no answer within {seconds:g} s") from None
    except ProbeFailed as failure:
        # Server text may echo what we sent: the password never leaves in a detail.
        raise ProbeFailed(failure.code, credentials.redact(failure.detail)) from None
    except (AioImapException, OSError) as exc:
        raise probe.unexpected(exc) from None
