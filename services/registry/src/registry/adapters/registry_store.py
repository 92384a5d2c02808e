"""MongoDB storage of the registry: link requests, their decisions, claims, plans, and the
relay's work list.

Only inserts under unique ids decide anything; the other writes are hints (a link's progress,
a resource's latest claim, a user's slots), each one document, that readers never trust beyond
what they can check. So nothing here needs the store to isolate concurrent writes of one
document, which FerretDB does not (DESIGN.md).
"""

import contextlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from mailbox_link_contract.events import (
    AuthMethod,
    Authority,
    CheckReason,
    Failure,
    MailboxOwner,
    ProviderType,
    ServerSettings,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_contract.values import EncryptedSecret
from registry.domain.health import HealthCheck, HealthRecord, check_id
from registry.domain.links import Decision, LinkRecord, LinkState, MailboxDetails, Progress

Document = dict[str, Any]


@dataclass(frozen=True)
class Claim:
    """One generation of the claims on a resource (an address, a plan slot)."""

    resource: str
    generation: int
    link_id: str
    # On generation 0 only: the latest generation its writer knew of (a hint).
    latest: int = 0

    @property
    def claim_id(self) -> str:
        return claim_id(self.resource, self.generation)


def claim_id(resource: str, generation: int) -> str:
    """The unique id of a generation: resources end in a domain or a number, never in '#'."""
    return f"{resource}#{generation}"


@dataclass(frozen=True)
class Verification:
    """What the verifier proved for a link: the servers, and the sealed credentials."""

    imap: ServerSettings
    smtp: ServerSettings
    auth: AuthMethod
    credentials: EncryptedSecret | None
    authority: Authority | None = None


@dataclass(frozen=True)
class UserPlan:
    """One version of a user's plan: the plan, when billing (or an operator) changed it, and
    the highest limit it ever had (slots above the current limit may still be held by links
    kept through a downgrade). Versions form a chain like claims: version n+1 is inserted
    once, by whoever read version n and found the change newer (user_plans.py)."""

    plan: str | None = None
    changed_at: datetime | None = None
    max_limit: int = 0
    version: int = -1  # -1: never assigned a plan
    latest: int = 0  # on version 0 only: the latest version its writer knew of (a hint)


@dataclass(frozen=True)
class PendingEntry:
    """Unfinished business on a link, for housekeeping: a reservation that may expire, or a
    decision made outside any event (an unlink) whose announcement a crash could lose."""

    entry_id: str
    link_id: str
    opened_at: datetime


class RegistryStore(Protocol):
    """What the decision protocol needs from storage: one round trip per method."""

    async def add_link(self, record: LinkRecord) -> LinkRecord | None:
        """Stores a new link request; returns None if stored, else the one already there."""

    async def get_link(self, link_id: str) -> LinkRecord | None: ...
    async def note_progress(self, link_id: str, progress: Progress, at: datetime) -> None: ...
    async def add_decision(self, link_id: str, decision: Decision) -> bool: ...
    async def get_decision(self, link_id: str, step: int) -> Decision | None: ...
    async def add_verification(self, link_id: str, verification: Verification) -> None: ...
    async def get_verification(self, link_id: str) -> Verification | None: ...
    async def drop_verification(self, link_id: str) -> None: ...
    async def add_claim(self, claim: Claim) -> bool: ...
    async def get_claim(self, resource: str, generation: int) -> Claim | None: ...
    async def note_latest_claim(self, resource: str, generation: int) -> None: ...
    async def get_plan_version(self, owner: MailboxOwner, version: int) -> UserPlan | None: ...
    async def add_plan_version(self, owner: MailboxOwner, plan: UserPlan) -> bool: ...
    async def note_latest_plan(self, owner: MailboxOwner, version: int) -> None: ...
    async def get_slot_hints(self, owner: MailboxOwner) -> dict[int, str]: ...
    async def note_slot(self, owner: MailboxOwner, slot: int, link_id: str) -> None: ...
    async def open_pending(self, entry: PendingEntry) -> None: ...
    async def pending(self, limit: int) -> list[PendingEntry]: ...
    async def close_pending(self, entry_id: str) -> None: ...
    async def ended_before(self, cutoff: datetime, limit: int) -> list[LinkRecord]: ...
    async def forget_link(
        self, link_id: str, steps: int, keep_verification: bool = False
    ) -> None: ...
    async def forget_claim(self, resource: str, generation: int) -> None: ...
    async def links_naming_mailbox(self, mailbox_id: str) -> list[str]:
        """Returns the ids of the links with a decision naming this mailbox id (its link, and
        reconnect links that gave it their verification)."""

    # Health (issue 17): a hint per linked mailbox, and a unique insert per check.
    async def add_health(self, health: HealthRecord) -> bool: ...
    async def get_health(self, mailbox_id: str) -> HealthRecord | None: ...
    async def due_health(self, now: datetime, limit: int) -> list[HealthRecord]:
        """Returns the mailboxes whose next check is due, the longest due first."""

    async def note_check_requested(
        self, mailbox_id: str, number: int, next_check_at: datetime
    ) -> None: ...
    async def note_check_result(self, health: HealthRecord) -> None:
        """Writes what applying a result changes: applied, last check, counts, next check."""

    async def forget_health(self, mailbox_id: str) -> None:
        """Deletes the mailbox's health hint and its checks (it is no longer linked)."""

    async def add_check(self, check: HealthCheck) -> bool: ...
    async def get_check(self, mailbox_id: str, number: int) -> HealthCheck | None: ...
    async def forget_check(self, mailbox_id: str, number: int) -> None: ...
    async def forget_checks_before(self, mailbox_id: str, number: int) -> None: ...
    async def linked_without_health(self, limit: int) -> list[str]:
        """Returns ids of links whose progress hint says linked and which have no health
        hint (mailboxes linked before health checks existed)."""


# A mailbox id is named by its link's decisions and those of the reconnects it took: a few.
MAX_LINKS_PER_MAILBOX_ID = 200
# Linked links looked up at once when finding mailboxes linked before health checks existed.
HEALTH_SCAN_BATCH = 500


class MongoRegistryStore:
    """RegistryStore on MongoDB (or a MongoDB-protocol server)."""

    def __init__(self, client: AsyncMongoClient[Document], database: str) -> None:
        db: AsyncDatabase[Document] = client[database]
        self._links = db["links"]
        self._decisions = db["decisions"]
        self._verifications = db["verifications"]
        self._claims = db["claims"]
        self._plans = db["plans"]
        self._slot_hints = db["slot_hints"]
        self._pending = db["pending"]
        self._health = db["mailbox_health"]
        self._checks = db["health_checks"]

    async def create_indexes(self) -> None:
        """The retention sweep's index (idempotent); everything else goes by _id."""
        await self._links.create_index([("ended_at", ASCENDING)], name="ended_at", sparse=True)
        # Internal services name a mailbox by its id (issue 17): found through its decisions.
        await self._decisions.create_index(
            [("mailbox.mailbox_id", ASCENDING)], name="mailbox_id", sparse=True
        )
        # The health scheduler picks due mailboxes; a mailbox's checks go when it ends.
        await self._health.create_index([("next_check_at", ASCENDING)], name="next_check_at")
        await self._health.create_index([("link_id", ASCENDING)], name="link_id")
        await self._checks.create_index([("mailbox_id", ASCENDING)], name="mailbox_id")

    async def add_link(self, record: LinkRecord) -> LinkRecord | None:
        if await _insert(self._links, _link_document(record)):
            return None
        existing = await self.get_link(record.link_id)
        if existing is None:  # pragma: no cover - deleted by retention in between
            raise LookupError(record.link_id)
        return existing

    async def get_link(self, link_id: str) -> LinkRecord | None:
        document = await self._links.find_one({"_id": link_id})
        return _link(document) if document else None

    async def note_progress(self, link_id: str, progress: Progress, at: datetime) -> None:
        changes: Document = {
            "step": progress.step,
            "state": progress.state.value,
            "announced": progress.announced,
            "claims": list(progress.claims),
            "reconnects": progress.reconnects,
        }
        if progress.at_rest_ended:
            changes["ended_at"] = at
        await self._links.update_one({"_id": link_id}, {"$set": changes})

    async def add_decision(self, link_id: str, decision: Decision) -> bool:
        return await _insert(self._decisions, _decision_document(link_id, decision))

    async def get_decision(self, link_id: str, step: int) -> Decision | None:
        document = await self._decisions.find_one({"_id": f"{link_id}/{step}"})
        return _decision(document) if document else None

    async def add_verification(self, link_id: str, verification: Verification) -> None:
        # The same link is verified once; a redelivery brings the same servers and secret.
        await _insert(self._verifications, {"_id": link_id, **_verification_fields(verification)})

    async def get_verification(self, link_id: str) -> Verification | None:
        document = await self._verifications.find_one({"_id": link_id})
        return _verification(document) if document else None

    async def drop_verification(self, link_id: str) -> None:
        await self._verifications.delete_one({"_id": link_id})

    async def add_claim(self, claim: Claim) -> bool:
        return await _insert(
            self._claims,
            {
                "_id": claim.claim_id,
                "resource": claim.resource,
                "generation": claim.generation,
                "link_id": claim.link_id,
                "latest": claim.generation,
            },
        )

    async def get_claim(self, resource: str, generation: int) -> Claim | None:
        document = await self._claims.find_one({"_id": claim_id(resource, generation)})
        if document is None:
            return None
        return Claim(resource, generation, document["link_id"], int(document.get("latest", 0)))

    async def note_latest_claim(self, resource: str, generation: int) -> None:
        await self._claims.update_one(
            {"_id": claim_id(resource, 0)}, {"$set": {"latest": generation}}
        )

    async def get_plan_version(self, owner: MailboxOwner, version: int) -> UserPlan | None:
        document = await self._plans.find_one({"_id": f"{_owner_key(owner)}#{version}"})
        if document is None:
            return None
        return UserPlan(
            plan=document["plan"],
            changed_at=document["plan_changed_at"],
            max_limit=int(document["max_limit"]),
            version=version,
            latest=int(document.get("latest", 0)),
        )

    async def add_plan_version(self, owner: MailboxOwner, plan: UserPlan) -> bool:
        return await _insert(
            self._plans,
            {
                "_id": f"{_owner_key(owner)}#{plan.version}",
                "account_id": owner.account_id,
                "user_id": owner.user_id,
                "plan": plan.plan,
                "plan_changed_at": plan.changed_at,
                "max_limit": plan.max_limit,
                "latest": plan.version,
            },
        )

    async def note_latest_plan(self, owner: MailboxOwner, version: int) -> None:
        await self._plans.update_one(
            {"_id": f"{_owner_key(owner)}#0"}, {"$set": {"latest": version}}
        )

    async def get_slot_hints(self, owner: MailboxOwner) -> dict[int, str]:
        document = await self._slot_hints.find_one({"_id": _owner_key(owner)})
        slots: dict[str, str] = document.get("slots", {}) if document else {}
        return {int(n): link_id for n, link_id in slots.items()}

    async def note_slot(self, owner: MailboxOwner, slot: int, link_id: str) -> None:
        await self._slot_hints.update_one(
            {"_id": _owner_key(owner)}, {"$set": {f"slots.{slot}": link_id}}, upsert=True
        )

    async def open_pending(self, entry: PendingEntry) -> None:
        await _insert(
            self._pending,
            {"_id": entry.entry_id, "link_id": entry.link_id, "opened_at": entry.opened_at},
        )

    async def pending(self, limit: int) -> list[PendingEntry]:
        # A small collection (links in flight, a few unlinks), read whole.
        cursor = self._pending.find({}).limit(limit)
        return [PendingEntry(d["_id"], d["link_id"], d["opened_at"]) async for d in cursor]

    async def close_pending(self, entry_id: str) -> None:
        await self._pending.delete_one({"_id": entry_id})

    async def ended_before(self, cutoff: datetime, limit: int) -> list[LinkRecord]:
        cursor = self._links.find({"ended_at": {"$lt": cutoff}}).limit(limit)
        return [_link(d) async for d in cursor]

    async def forget_link(self, link_id: str, steps: int, keep_verification: bool = False) -> None:
        """Deletes an ended link's documents; each id is never used again, so deleting by id
        cannot hit a newer document. A reconnected link's verification is its mailbox's: kept."""
        for step in range(1, steps + 1):
            await self._decisions.delete_one({"_id": f"{link_id}/{step}"})
        if not keep_verification:
            await self._verifications.delete_one({"_id": link_id})
        for step in range(1, steps + 1):
            await self._pending.delete_one({"_id": f"{link_id}/{step}"})
        await self._links.delete_one({"_id": link_id})

    async def links_naming_mailbox(self, mailbox_id: str) -> list[str]:
        cursor = self._decisions.find(
            {"mailbox.mailbox_id": mailbox_id}, {"link_id": 1}, limit=MAX_LINKS_PER_MAILBOX_ID
        )
        return sorted({str(document["link_id"]) async for document in cursor})

    async def forget_claim(self, resource: str, generation: int) -> None:
        await self._claims.delete_one({"_id": claim_id(resource, generation)})

    # --- health ---------------------------------------------------------------------------

    async def add_health(self, health: HealthRecord) -> bool:
        return await _insert(self._health, _health_document(health))

    async def get_health(self, mailbox_id: str) -> HealthRecord | None:
        document = await self._health.find_one({"_id": mailbox_id})
        return _health(document) if document else None

    async def due_health(self, now: datetime, limit: int) -> list[HealthRecord]:
        cursor = self._health.find({"next_check_at": {"$lte": now}})
        cursor = cursor.sort("next_check_at", ASCENDING).limit(limit)
        return [_health(d) async for d in cursor]

    async def note_check_requested(
        self, mailbox_id: str, number: int, next_check_at: datetime
    ) -> None:
        await self._health.update_one(
            {"_id": mailbox_id},
            {"$set": {"last_check": number, "next_check_at": next_check_at}},
        )

    async def note_check_result(self, health: HealthRecord) -> None:
        document = _health_document(health)
        fields = ("applied", "last_checked_at", "last_failure", "refusals", "back_off")
        changes = {name: document[name] for name in (*fields, "next_check_at")}
        await self._health.update_one({"_id": health.mailbox_id}, {"$set": changes})

    async def forget_health(self, mailbox_id: str) -> None:
        await self._health.delete_one({"_id": mailbox_id})
        await self._checks.delete_many({"mailbox_id": mailbox_id})

    async def add_check(self, check: HealthCheck) -> bool:
        return await _insert(
            self._checks,
            {
                "_id": check.check_id,
                "mailbox_id": check.mailbox_id,
                "number": check.number,
                "reason": check.reason.value,
                "requested_at": check.requested_at,
            },
        )

    async def get_check(self, mailbox_id: str, number: int) -> HealthCheck | None:
        document = await self._checks.find_one({"_id": check_id(mailbox_id, number)})
        if document is None:
            return None
        return HealthCheck(
            mailbox_id, number, CheckReason(document["reason"]), document["requested_at"]
        )

    async def forget_check(self, mailbox_id: str, number: int) -> None:
        await self._checks.delete_one({"_id": check_id(mailbox_id, number)})

    async def forget_checks_before(self, mailbox_id: str, number: int) -> None:
        await self._checks.delete_many({"mailbox_id": mailbox_id, "number": {"$lt": number}})

    async def linked_without_health(self, limit: int) -> list[str]:
        missing: list[str] = []
        cursor = self._links.find({"state": LinkState.LINKED.value}, {"_id": 1})
        batch: list[str] = []
        async for document in cursor:
            batch.append(str(document["_id"]))
            if len(batch) == HEALTH_SCAN_BATCH:
                missing += await self._untracked(batch)
                batch = []
            if len(missing) >= limit:
                break
        if batch and len(missing) < limit:
            missing += await self._untracked(batch)
        return missing[:limit]

    async def _untracked(self, link_ids: list[str]) -> list[str]:
        cursor = self._health.find({"link_id": {"$in": link_ids}}, {"link_id": 1})
        tracked = {str(document["link_id"]) async for document in cursor}
        return [link_id for link_id in link_ids if link_id not in tracked]


async def _insert(collection: AsyncCollection[Document], document: Document) -> bool:
    """Inserts under a unique _id; False if that id is taken (the store decides races)."""
    with contextlib.suppress(DuplicateKeyError):
        await collection.insert_one(document)
        return True
    return False


def _owner_key(owner: MailboxOwner) -> str:
    return f"{owner.account_id}\x1f{owner.user_id}"


def _link_document(record: LinkRecord) -> Document:
    return {
        "_id": record.link_id,
        "account_id": record.owner.account_id,
        "user_id": record.owner.user_id,
        "address": record.address,
        "provider": record.provider.value,
        "oidc_provider": record.oidc_provider,
        "expires_at": record.expires_at,
        "step": record.progress.step,
        "state": record.progress.state.value,
        "announced": record.progress.announced,
        "claims": list(record.progress.claims),
        "reconnects": record.progress.reconnects,
    }


def _link(document: Document) -> LinkRecord:
    return LinkRecord(
        link_id=document["_id"],
        owner=MailboxOwner(account_id=document["account_id"], user_id=document["user_id"]),
        address=document["address"],
        provider=ProviderType(document["provider"]),
        oidc_provider=document.get("oidc_provider"),
        expires_at=document["expires_at"],
        progress=Progress(
            step=int(document.get("step", 0)),
            state=LinkState(document.get("state", LinkState.RESERVING)),
            announced=int(document.get("announced", 0)),
            claims=tuple(document.get("claims", ())),
            reconnects=document.get("reconnects"),
        ),
    )


def _decision_document(link_id: str, decision: Decision) -> Document:
    mailbox = decision.mailbox
    return {
        "_id": f"{link_id}/{decision.step}",
        "link_id": link_id,
        "step": decision.step,
        "state": decision.state.value,
        "decided_at": decision.decided_at,
        # The event as the JSON text that gets published: opaque here.
        "outbox": json.dumps(decision.outbox, sort_keys=True) if decision.outbox else None,
        "mailbox": _mailbox_document(mailbox) if mailbox else None,
        "claims": list(decision.claims),
        "reconnects": decision.reconnects,
    }


def _decision(document: Document) -> Decision:
    mailbox = document.get("mailbox")
    return Decision(
        step=int(document["step"]),
        state=LinkState(document["state"]),
        decided_at=document["decided_at"],
        outbox=json.loads(document["outbox"]) if document.get("outbox") else None,
        mailbox=_mailbox(mailbox) if mailbox else None,
        claims=tuple(document.get("claims", ())),
        reconnects=document.get("reconnects"),
    )


def _mailbox_document(mailbox: MailboxDetails) -> Document:
    return {
        "mailbox_id": mailbox.mailbox_id,
        "imap": mailbox.imap.model_dump(mode="json"),
        "smtp": mailbox.smtp.model_dump(mode="json"),
        "linked_at": mailbox.linked_at,
        "auth": mailbox.auth.value,
        "reconnect_required": mailbox.reconnect_required,
        "authority": mailbox.authority.value if mailbox.authority else None,
        "verified_by": mailbox.verified_by,
        # Since issue 17; absent on older decisions, which read as not degraded.
        "degraded": mailbox.degraded,
    }


def _mailbox(document: Document) -> MailboxDetails:
    code = document.get("reconnect_required")
    return MailboxDetails(
        mailbox_id=document["mailbox_id"],
        imap=ServerSettings.model_validate(document["imap"]),
        smtp=ServerSettings.model_validate(document["smtp"]),
        linked_at=document["linked_at"],
        auth=AuthMethod(document.get("auth", AuthMethod.PASSWORD)),
        reconnect_required=FailureCode(code) if code else None,
        authority=_authority(document),
        verified_by=document.get("verified_by"),
        degraded=FailureCode(degraded) if (degraded := document.get("degraded")) else None,
    )


def _authority(document: Document) -> Authority | None:
    # Absent on records older than contract 1.3.0.
    value = document.get("authority")
    return Authority(value) if value else None


def _verification_fields(verification: Verification) -> Document:
    credentials = verification.credentials
    return {
        "imap": verification.imap.model_dump(mode="json"),
        "smtp": verification.smtp.model_dump(mode="json"),
        "auth": verification.auth.value,
        "credentials": credentials.model_dump() if credentials else None,
        "authority": verification.authority.value if verification.authority else None,
    }


def _verification(document: Document) -> Verification:
    credentials = document.get("credentials")
    return Verification(
        imap=ServerSettings.model_validate(document["imap"]),
        smtp=ServerSettings.model_validate(document["smtp"]),
        auth=AuthMethod(document["auth"]),
        credentials=EncryptedSecret.model_validate(credentials) if credentials else None,
        authority=_authority(document),
    )


def _health_document(health: HealthRecord) -> Document:
    failure = health.last_failure
    return {
        "_id": health.mailbox_id,
        "link_id": health.link_id,
        "next_check_at": health.next_check_at,
        "last_checked_at": health.last_checked_at,
        # The code and the catalogue's words, never the verifier's detail (it may quote a server).
        "last_failure": failure.model_dump(mode="json", include={"code", "message", "remediation"})
        if failure
        else None,
        "refusals": health.refusals,
        "back_off": health.back_off,
        "last_check": health.last_check,
        "applied": health.applied,
    }


def _health(document: Document) -> HealthRecord:
    failure = document.get("last_failure")
    return HealthRecord(
        mailbox_id=document["_id"],
        link_id=document["link_id"],
        next_check_at=document["next_check_at"],
        last_checked_at=document.get("last_checked_at"),
        last_failure=Failure.model_validate(failure) if failure else None,
        refusals=int(document.get("refusals", 0)),
        back_off=int(document.get("back_off", 0)),
        last_check=int(document.get("last_check", 0)),
        applied=int(document.get("applied", 0)),
    )
