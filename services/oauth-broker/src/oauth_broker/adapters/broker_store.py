"""MongoDB storage of the broker: authorization sessions and the grants of linked mailboxes.

Every write is a single-document insert or conditional update. Secrets are sealed, the state
is stored only hashed, and nested values are kept as JSON text (FerretDB updates documents
with nested fields several times slower; see docs/adr/0005).
"""

import contextlib
from datetime import datetime
from typing import Any, Protocol

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.errors import DuplicateKeyError

from mailbox_link_contract.events import MailboxOwner, ProviderType, ServerSettings
from mailbox_link_contract.values import EncryptedSecret
from mailbox_link_shared.tracing import TRACE_HEADERS
from oauth_broker.domain.grants import GrantStatus, StoredGrant
from oauth_broker.domain.sessions import (
    AuthorizationSession,
    LinkToAuthorize,
    PendingConfirmation,
    SessionStatus,
    SignInStart,
)


class BrokerStore(Protocol):
    """What the handlers need from storage."""

    async def save_request(
        self, session: AuthorizationSession, sealed: EncryptedSecret
    ) -> None: ...
    async def mark_reserved(self, link_id: str, until: datetime, now: datetime) -> None: ...
    async def get_session(
        self, link_id: str
    ) -> tuple[AuthorizationSession, EncryptedSecret] | None: ...
    async def session_by_start(
        self, digest: str
    ) -> tuple[AuthorizationSession, EncryptedSecret] | None: ...
    async def start_sign_in(self, start: SignInStart) -> bool: ...
    async def start_by_state(self, digest: str) -> SignInStart | None: ...
    async def save_confirmation(self, pending: PendingConfirmation) -> None: ...
    async def confirmation_by_code(self, digest: str) -> PendingConfirmation | None: ...
    async def mark_confirmed(self, link_id: str, now: datetime) -> bool: ...
    async def unmark_confirmed(self, link_id: str) -> None: ...
    async def claim_session(self, link_id: str, now: datetime) -> bool: ...
    async def end_session(self, link_id: str) -> bool: ...
    async def expired_sessions(self, now: datetime) -> list[str]: ...
    async def delete_stray_markers(self, before: datetime) -> int: ...
    async def save_grant(self, grant: StoredGrant) -> None: ...
    async def get_grant(self, link_id: str) -> StoredGrant | None: ...
    async def activate_grant(self, link_id: str, mailbox_id: str) -> bool: ...
    async def holds_grant_for(self, provider: ProviderType, addresses: tuple[str, ...]) -> bool: ...
    async def grants_due(self, before: datetime, now: datetime) -> list[StoredGrant]: ...
    async def lease_refresh(self, link_id: str, now: datetime, until: datetime) -> bool: ...
    async def renew_grant(
        self,
        link_id: str,
        sealed: EncryptedSecret,
        expires_at: datetime,
        replacing: EncryptedSecret,
    ) -> bool: ...
    async def postpone_refresh(
        self, link_id: str, failures: int, retry_at: datetime, error: str
    ) -> bool: ...
    async def mark_reconnect_required(self, link_id: str) -> bool: ...
    async def delete_grant(self, link_id: str) -> bool: ...
    async def delete_unanswered_grants(self, verified_before: datetime) -> int: ...
    # Reconnects (reconnects.py).
    async def note_reconnect(self, link_id: str, mailbox_id: str, now: datetime) -> None: ...
    async def reconnect_of(self, link_id: str) -> str | None: ...
    async def forget_reconnect(self, link_id: str) -> None: ...
    async def grant_of_mailbox(self, mailbox_id: str) -> StoredGrant | None: ...
    async def adopt_grant(self, link_id: str, grant: StoredGrant) -> bool: ...


class MongoBrokerStore:
    """The broker's collections: `sessions`, `reservations` and `grants`, keyed by link id.

    A session and its link's reservation are written by two different events, which may be
    handled at the same moment on two connections: they are two documents, each inserted
    once, because the store does not isolate two writes of one document (docs/adr/0013).
    """

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], database: str) -> None:
        db = client[database]
        self._sessions = db["sessions"]
        self._reservations = db["reservations"]
        self._grants = db["grants"]
        # Each inserted once per link (ADR 0014): the opened start URL, the verified sign-in
        # waiting for the product's confirmation, and that confirmation.
        self._starts = db["starts"]
        self._confirmations = db["confirmations"]
        self._confirmed = db["confirmed"]
        # Links the registry reserved to reconnect a linked mailbox: link id -> its mailbox_id.
        self._reconnects = db["reconnects"]

    async def create_indexes(self) -> None:
        """Creates the lookup indexes (idempotent)."""
        await self._sessions.create_index([("state_digest", ASCENDING)])
        await self._sessions.create_index([("status", ASCENDING), ("expires_at", ASCENDING)])
        await self._grants.create_index([("status", ASCENDING), ("expires_at", ASCENDING)])
        await self._grants.create_index([("mailbox_id", ASCENDING)], sparse=True)
        await self._starts.create_index([("state_digest", ASCENDING)])
        await self._confirmations.create_index([("code_digest", ASCENDING)])

    # --- sessions ---------------------------------------------------------------------------

    async def save_request(self, session: AuthorizationSession, sealed: EncryptedSecret) -> None:
        """Stores a link request's session once; a redelivered request keeps the first one."""
        link = session.link
        document = {
            "_id": link.link_id,
            "requested": True,
            "account_id": link.owner.account_id,
            "user_id": link.owner.user_id,
            "address": link.address,
            "provider": link.provider.value,
            "oidc_provider": link.oidc_provider,
            "imap": link.imap.model_dump_json(),
            "smtp": link.smtp.model_dump_json(),
            "secrets": sealed.model_dump_json(),
            "state_digest": session.state_digest,
            "created_at": session.created_at,
            "expires_at": session.expires_at,
            "status": session.status.value,
            "trace": dict(session.trace_context),
        }
        with contextlib.suppress(DuplicateKeyError):  # redelivered: the first session stands
            await self._sessions.insert_one(document)

    async def mark_reserved(self, link_id: str, until: datetime, now: datetime) -> None:
        """Records until when the registry reserved the link, even before its request came."""
        with contextlib.suppress(DuplicateKeyError):  # the registry reserves a link once
            await self._reservations.insert_one(
                {"_id": link_id, "reserved_until": until, "marked_at": now}
            )

    async def get_session(
        self, link_id: str
    ) -> tuple[AuthorizationSession, EncryptedSecret] | None:
        """Returns a requested session (with its reservation, if any) and its sealed secrets."""
        document = await self._sessions.find_one({"_id": link_id})
        if document is None or not document.get("requested"):
            return None
        return await self._with_reservation(document)

    async def _with_reservation(
        self, document: dict[str, Any]
    ) -> tuple[AuthorizationSession, EncryptedSecret]:
        reservation = await self._reservations.find_one({"_id": document["_id"]})
        if reservation is not None:
            document = {**document, "reserved_until": reservation["reserved_until"]}
        return _session(document)

    async def session_by_start(
        self, digest: str
    ) -> tuple[AuthorizationSession, EncryptedSecret] | None:
        """Returns the session whose start token has this digest, and its sealed secrets."""
        document = await self._sessions.find_one({"state_digest": digest, "requested": True})
        return await self._with_reservation(document) if document else None

    async def start_sign_in(self, start: SignInStart) -> bool:
        """Records that a browser opened the link's start URL; False if one already did."""
        try:
            await self._starts.insert_one(
                {
                    "_id": start.link_id,
                    "state_digest": start.state_digest,
                    "binding_digest": start.binding_digest,
                    "started_at": start.started_at,
                }
            )
        except DuplicateKeyError:
            return False
        return True

    async def start_by_state(self, digest: str) -> SignInStart | None:
        """Returns the started sign-in whose state has this digest."""
        document = await self._starts.find_one({"state_digest": digest})
        if document is None:
            return None
        return SignInStart(
            str(document["_id"]),
            document["state_digest"],
            document["binding_digest"],
            document["started_at"],
        )

    async def save_confirmation(self, pending: PendingConfirmation) -> None:
        """Stores a verified sign-in's one-time code (digest) once."""
        with contextlib.suppress(DuplicateKeyError):
            await self._confirmations.insert_one(
                {
                    "_id": pending.link_id,
                    "code_digest": pending.code_digest,
                    "expires_at": pending.expires_at,
                    "imap": pending.imap.model_dump_json(),
                    "smtp": pending.smtp.model_dump_json(),
                }
            )

    async def confirmation_by_code(self, digest: str) -> PendingConfirmation | None:
        """Returns the verified sign-in whose one-time code has this digest."""
        document = await self._confirmations.find_one({"code_digest": digest})
        if document is None:
            return None
        return PendingConfirmation(
            link_id=str(document["_id"]),
            code_digest=document["code_digest"],
            expires_at=document["expires_at"],
            imap=ServerSettings.model_validate_json(document["imap"]),
            smtp=ServerSettings.model_validate_json(document["smtp"]),
        )

    async def mark_confirmed(self, link_id: str, now: datetime) -> bool:
        """Uses up a link's confirmation; False if it was already used."""
        try:
            await self._confirmed.insert_one({"_id": link_id, "confirmed_at": now})
        except DuplicateKeyError:
            return False
        return True

    async def unmark_confirmed(self, link_id: str) -> None:
        """Gives a confirmation back when its event could not be published (a retry may use it)."""
        await self._confirmed.delete_one({"_id": link_id})

    async def claim_session(self, link_id: str, now: datetime) -> bool:
        """Uses up an open, unexpired session; False if another callback got there first."""
        result = await self._sessions.update_one(
            {"_id": link_id, "status": SessionStatus.OPEN.value, "expires_at": {"$gt": now}},
            {"$set": {"status": SessionStatus.USED.value}},
        )
        return result.modified_count == 1

    async def end_session(self, link_id: str) -> bool:
        """Ends an open session (the link ended, or it expired); False if it was not open."""
        result = await self._sessions.update_one(
            {"_id": link_id, "status": SessionStatus.OPEN.value},
            {"$set": {"status": SessionStatus.ENDED.value}},
        )
        return result.modified_count == 1

    async def expired_sessions(self, now: datetime) -> list[str]:
        """Returns the link ids of open sessions past their expiry."""
        cursor = self._sessions.find(
            {"status": SessionStatus.OPEN.value, "requested": True, "expires_at": {"$lte": now}},
            {"_id": 1},
        )
        return [str(document["_id"]) async for document in cursor]

    async def delete_stray_markers(self, before: datetime) -> int:
        """Deletes reservations older than any session they could belong to (a session lives no
        longer than its reservation), and the markers older versions kept in `sessions`."""
        result = await self._reservations.delete_many({"marked_at": {"$lt": before}})
        older = await self._sessions.delete_many(
            {"requested": {"$ne": True}, "marked_at": {"$lt": before}}
        )
        return result.deleted_count + older.deleted_count

    # --- grants -----------------------------------------------------------------------------

    async def save_grant(self, grant: StoredGrant) -> None:
        """Stores (or replaces) the grant of a verified link."""
        await self._grants.replace_one({"_id": grant.link_id}, _grant_document(grant), upsert=True)

    async def get_grant(self, link_id: str) -> StoredGrant | None:
        """Returns the link's grant, or None."""
        document = await self._grants.find_one({"_id": link_id})
        return _grant(document) if document else None

    async def activate_grant(self, link_id: str, mailbox_id: str) -> bool:
        """Starts keeping a verified grant fresh, now that its mailbox is linked."""
        result = await self._grants.update_one(
            {"_id": link_id, "status": GrantStatus.VERIFIED.value},
            {"$set": {"status": GrantStatus.ACTIVE.value, "mailbox_id": mailbox_id}},
        )
        return result.modified_count == 1

    async def holds_grant_for(self, provider: ProviderType, addresses: tuple[str, ...]) -> bool:
        """True if any grant at the provider belongs to one of the addresses (as requested, or
        in lower case)."""
        spellings = sorted({*addresses, *(address.lower() for address in addresses)})
        found = await self._grants.find_one(
            {"provider": provider.value, "address": {"$in": spellings}}, {"_id": 1}
        )
        return found is not None

    async def grants_due(self, before: datetime, now: datetime) -> list[StoredGrant]:
        """Returns active grants whose access token expires before `before`, but not those
        whose failed refresh may be tried again only later than `now`."""
        cursor = self._grants.find(
            {
                "status": GrantStatus.ACTIVE.value,
                "expires_at": {"$lt": before},
                "$or": [{"retry_at": None}, {"retry_at": {"$lte": now}}],
            }
        )
        return [_grant(document) async for document in cursor]

    async def lease_refresh(self, link_id: str, now: datetime, until: datetime) -> bool:
        """Takes the right to refresh an active grant until `until`; False if another broker
        holds it. Two refreshes at once would, with rotating refresh tokens, revoke each other."""
        result = await self._grants.update_one(
            {
                "_id": link_id,
                "status": GrantStatus.ACTIVE.value,
                "$or": [{"refresh_lease": None}, {"refresh_lease": {"$lte": now}}],
            },
            {"$set": {"refresh_lease": until}},
        )
        return result.modified_count == 1

    async def renew_grant(
        self,
        link_id: str,
        sealed: EncryptedSecret,
        expires_at: datetime,
        replacing: EncryptedSecret,
    ) -> bool:
        """Stores refreshed tokens and frees the lease, unless the grant ended meanwhile or
        its tokens are no longer `replacing` (a reconnect handed it new ones: those win)."""
        result = await self._grants.update_one(
            {
                "_id": link_id,
                "status": GrantStatus.ACTIVE.value,
                "sealed": replacing.model_dump_json(),
            },
            {
                "$set": {
                    "sealed": sealed.model_dump_json(),
                    "expires_at": expires_at,
                    "refresh_lease": None,
                    "refresh_failures": 0,
                    "retry_at": None,
                    "last_refresh_error": None,
                }
            },
        )
        return result.modified_count == 1

    async def postpone_refresh(
        self, link_id: str, failures: int, retry_at: datetime, error: str
    ) -> bool:
        """Records a refresh that failed by no fault of the user, and when to try again; frees
        the lease. False if the grant ended meanwhile."""
        result = await self._grants.update_one(
            {"_id": link_id, "status": GrantStatus.ACTIVE.value},
            {
                "$set": {
                    "refresh_failures": failures,
                    "retry_at": retry_at,
                    "last_refresh_error": error,
                    "refresh_lease": None,
                }
            },
        )
        return result.modified_count == 1

    async def mark_reconnect_required(self, link_id: str) -> bool:
        """Stops refreshing a grant the provider refused for good; True the first time."""
        result = await self._grants.update_one(
            {"_id": link_id, "status": GrantStatus.ACTIVE.value},
            {"$set": {"status": GrantStatus.RECONNECT_REQUIRED.value}},
        )
        return result.modified_count == 1

    async def delete_grant(self, link_id: str) -> bool:
        """Deletes the grant's tokens; False if there were none."""
        result = await self._grants.delete_one({"_id": link_id})
        return result.deleted_count == 1

    async def delete_unanswered_grants(self, verified_before: datetime) -> int:
        """Deletes verified grants the registry never linked nor rejected in time."""
        result = await self._grants.delete_many(
            {"status": GrantStatus.VERIFIED.value, "verified_at": {"$lt": verified_before}}
        )
        return result.deleted_count

    # --- reconnects ---------------------------------------------------------------------------

    async def note_reconnect(self, link_id: str, mailbox_id: str, now: datetime) -> None:
        """Records that the registry reserved this link to reconnect the mailbox `mailbox_id`."""
        with contextlib.suppress(DuplicateKeyError):  # the registry reserves a link once
            await self._reconnects.insert_one(
                {"_id": link_id, "mailbox_id": mailbox_id, "noted_at": now}
            )

    async def reconnect_of(self, link_id: str) -> str | None:
        """The mailbox_id this link reconnects, or None for a link of a new mailbox."""
        document = await self._reconnects.find_one({"_id": link_id})
        return str(document["mailbox_id"]) if document else None

    async def forget_reconnect(self, link_id: str) -> None:
        await self._reconnects.delete_one({"_id": link_id})

    async def grant_of_mailbox(self, mailbox_id: str) -> StoredGrant | None:
        """The grant a linked mailbox uses (there is one per mailbox_id), or None."""
        document = await self._grants.find_one({"mailbox_id": mailbox_id})
        return _grant(document) if document else None

    async def adopt_grant(self, link_id: str, grant: StoredGrant) -> bool:
        """Gives the link's grant the tokens of `grant` (a reconnect's) and keeps them fresh
        again; one document written whole, so a reader sees the old tokens or the new."""
        result = await self._grants.update_one(
            {"_id": link_id},
            {
                "$set": {
                    "sealed": grant.sealed.model_dump_json(),
                    "expires_at": grant.expires_at,
                    "verified_at": grant.verified_at,
                    "status": GrantStatus.ACTIVE.value,
                    "refresh_lease": None,
                }
            },
        )
        return result.matched_count == 1


def _session(document: dict[str, Any]) -> tuple[AuthorizationSession, EncryptedSecret]:
    link = LinkToAuthorize(
        link_id=str(document["_id"]),
        owner=MailboxOwner(account_id=document["account_id"], user_id=document["user_id"]),
        address=document["address"],
        provider=ProviderType(document["provider"]),
        imap=ServerSettings.model_validate_json(document["imap"]),
        smtp=ServerSettings.model_validate_json(document["smtp"]),
        oidc_provider=document.get("oidc_provider"),
    )
    session = AuthorizationSession(
        link=link,
        state_digest=document["state_digest"],
        status=SessionStatus(document["status"]),
        created_at=document["created_at"],
        expires_at=document["expires_at"],
        reserved_until=document.get("reserved_until"),
        trace_context=_trace_context(document.get("trace")),
    )
    return session, EncryptedSecret.model_validate_json(document["secrets"])


def _trace_context(stored: object) -> tuple[tuple[str, str], ...]:
    # A session stored before tracing has none: its callback starts a trace of its own.
    if not isinstance(stored, dict):
        return ()
    return tuple((str(k), str(v)) for k, v in stored.items() if k in TRACE_HEADERS)


def _grant_document(grant: StoredGrant) -> dict[str, Any]:
    return {
        "_id": grant.link_id,
        "account_id": grant.owner.account_id,
        "user_id": grant.owner.user_id,
        "address": grant.address,
        "provider": grant.provider.value,
        "status": grant.status.value,
        "expires_at": grant.expires_at,
        "sealed": grant.sealed.model_dump_json(),
        "verified_at": grant.verified_at,
        "mailbox_id": grant.mailbox_id,
        "refresh_failures": grant.refresh_failures,
        "retry_at": grant.retry_at,
        "last_refresh_error": grant.last_refresh_error,
        "oidc_provider": grant.oidc_provider,
        "subject": grant.subject,
    }


def _grant(document: dict[str, Any]) -> StoredGrant:
    return StoredGrant(
        link_id=str(document["_id"]),
        owner=MailboxOwner(account_id=document["account_id"], user_id=document["user_id"]),
        address=document["address"],
        provider=ProviderType(document["provider"]),
        status=GrantStatus(document["status"]),
        expires_at=document["expires_at"],
        sealed=EncryptedSecret.model_validate_json(document["sealed"]),
        verified_at=document["verified_at"],
        mailbox_id=document.get("mailbox_id"),
        refresh_failures=int(document.get("refresh_failures") or 0),
        retry_at=document.get("retry_at"),
        last_refresh_error=document.get("last_refresh_error"),
        oidc_provider=document.get("oidc_provider"),
        subject=document.get("subject"),
    )
