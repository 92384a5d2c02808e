"""MongoDB storage of link-api's own view: links (each with its LinkRequested outbox), their
recorded steps and send decisions, the unsent list, in-flight claims and idempotency keys.

Written for a store that guarantees only atomic inserts of a unique `_id` and whose writes to
one document are not isolated from each other (FerretDB 1.24 reads, changes and writes back).
Every query names a single `_id` and nothing else, the only filter FerretDB answers from an
index; only the retention sweep scans. Why the view stays right: services/link-api/DESIGN.md.
"""

import json
import logging
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from pymongo import AsyncMongoClient, DeleteOne, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from link_api.config import DEFAULT_IDEMPOTENCY_KEY_RETENTION, DEFAULT_LINK_RETENTION
from link_api.domain.link_status import (
    FINAL_RANK,
    RANK,
    TERMINAL,
    LinkProgress,
    LinkStatus,
    LinkView,
)
from mailbox_link_contract.events import (
    AuthMethod,
    Failure,
    MailboxOwner,
    ProviderType,
    utc_now,
)
from mailbox_link_shared.tracing import TRACE_HEADERS

logger = logging.getLogger(__name__)

DUPLICATE_KEY = 11000
INDEX_OPTIONS_CONFLICT = 85
INDEX_KEY_SPECS_CONFLICT = 86
# What a store without TTL indexes answers: FerretDB 1.24 says NotImplemented (238).
TTL_UNSUPPORTED = frozenset({115, 238})  # CommandNotSupported, NotImplemented
_SLOT = "\x1e"  # between an in-flight key and a claim's generation (in no key's parts)


@dataclass(frozen=True)
class IdempotencyRecord:
    """An Idempotency-Key already used by a caller, and the link it produced."""

    link_id: str
    fingerprint: str


class Send(StrEnum):
    """What becomes of a stored link request; decided once per link, by a unique insert."""

    PUBLISH = "publish"  # its LinkRequested goes out (again, until known sent)
    FAIL = "fail"  # never sent: the link ends failed (request_not_sent)
    DUPLICATE = "duplicate"  # another live link of the same user and mailbox answers it


@dataclass(frozen=True)
class SendDecision:
    """A link request's one send decision; `holder` is the link a duplicate was answered with."""

    send: Send
    holder: str | None = None


@dataclass(frozen=True)
class Unsent:
    """A link whose request may not have gone out yet, listed since `since`."""

    link_id: str
    since: datetime


@dataclass(frozen=True)
class Retention:
    """How long what the store keeps is kept (config.py has the settings)."""

    ended_links: timedelta = DEFAULT_LINK_RETENTION  # after the link ended; its steps alike
    idempotency_keys: timedelta = DEFAULT_IDEMPOTENCY_KEY_RETENTION  # after first use
    batch_size: int = 500  # documents per batch of the sweep


class LinkStore(Protocol):
    """What the handlers need from storage."""

    async def insert_link(
        self, link: LinkView, outbox: str | None = None, trace: Mapping[str, str] | None = None
    ) -> str | None:
        """Lists the link as unsent, then stores it with its LinkRequested (JSON, credentials
        sealed) and the request's trace context (W3C traceparent/tracestate) in one insert; a
        link already stored (a retry carrying it on) is kept. Returns the outbox that stands
        (None once the link ended)."""

    async def delete_link(self, link_id: str) -> None:
        """Deletes a link that was never requested (a duplicate), and its unsent entry."""

    async def get_link(self, link_id: str) -> LinkView | None: ...
    async def get_outbox(self, link_id: str) -> str | None:
        """The link's LinkRequested as stored; None once the link ended (or is unknown)."""

    async def get_outbox_trace(self, link_id: str) -> dict[str, str]:
        """The trace context stored with the link's outbox; empty when none was (a document
        older than tracing, or a request without a trace) or the outbox is gone."""

    async def decide_send(self, link_id: str, decision: SendDecision) -> SendDecision:
        """Records the decision unless one was made; returns the one that stands."""

    async def send_decision(self, link_id: str) -> SendDecision | None: ...
    async def mark_sent(self, link_id: str) -> None:
        """Takes the link off the unsent list (sent, ended, or never stored)."""

    async def unsent(self, listed_before: datetime, limit: int) -> list[Unsent]:
        """Links listed as unsent since before the moment, oldest first."""

    async def count_unsent(self) -> int:
        """How many links are on the unsent list (the outbox backlog metric)."""

    async def advance_link(self, link_id: str, progress: LinkProgress) -> LinkView | None:
        """Records the step; returns the link if it now shows this step, else None (a step
        ranked as high or higher was recorded first, or the link is unknown)."""

    async def claim_in_flight(
        self, key: str, link_id: str, now: datetime, expires_at: datetime
    ) -> str:
        """Returns the link that holds the key: this one if no other live link holds it."""

    async def release_in_flight(self, link_id: str) -> None:
        """Gives up the claim of a link that will get no answer (its request was not sent)."""

    async def find_idempotency_key(self, scope: str) -> IdempotencyRecord | None: ...
    async def remember_idempotency_key(
        self, scope: str, record: IdempotencyRecord
    ) -> IdempotencyRecord: ...


class ExpiresRecords(Protocol):
    """What the retention sweep calls (a store without TTL indexes)."""

    async def delete_expired(self, now: datetime) -> dict[str, int]: ...


@dataclass(frozen=True)
class _Claim:
    """One generation of an in-flight key: who took it and until when (None: unknown)."""

    generation: int
    link_id: str | None
    expires_at: datetime | None


class MongoLinkStore:
    """LinkStore on MongoDB (or FerretDB).

    Collections: `links` (one view document per link, the cache a GET reads, with the link's
    LinkRequested as `outbox` until it ends), `link_steps` (`<link id>/<rank>`, inserted once:
    the record of how far each link got; `<link id>/0` is its send decision), `unsent` (links
    whose request may not have gone out: the relay's list), `in_flight` (per user and mailbox a
    pointer document and one claim document per generation), and `idempotency_keys`.
    """

    def __init__(
        self,
        client: AsyncMongoClient[dict[str, Any]],
        database: str,
        retention: Retention | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        db: AsyncDatabase[dict[str, Any]] = client[database]
        self._db = db
        self._links = db["links"]
        self._steps = db["link_steps"]
        self._in_flight = db["in_flight"]
        self._idempotency = db["idempotency_keys"]
        self._unsent = db["unsent"]
        self._retention = retention or Retention()
        self._clock = clock

    async def create_indexes(self) -> bool:
        """Creates the TTL indexes that expire ended links, steps, old claims and keys.

        Returns False when the store has no TTL indexes (FerretDB): the caller then runs
        `delete_expired` periodically. Safe to call on every start.
        """
        # Claims used to be released by a query on link_id; nothing queries it any more.
        with suppress(OperationFailure):
            await self._in_flight.drop_index("link_id_1")
        ended, keys = self._retention.ended_links, self._retention.idempotency_keys
        ttl = (
            (self._links, "ended_at", ended),
            (self._steps, "at", ended),
            (self._in_flight, "claimed_at", ended),
            (self._idempotency, "created_at", keys),
        )
        for collection, field, after in ttl:
            try:
                await self._ttl_index(collection, field, after)
            except OperationFailure as exc:
                if exc.code not in TTL_UNSUPPORTED:
                    raise
                logger.info("no TTL indexes here (%s); a sweep expires old records", exc.code)
                return False
        return True

    async def _ttl_index(
        self, collection: AsyncCollection[dict[str, Any]], field: str, after: timedelta
    ) -> None:
        name, seconds = f"{field}_ttl", int(after.total_seconds())
        try:
            await collection.create_index(field, name=name, expireAfterSeconds=seconds)
        except OperationFailure as exc:
            if exc.code not in (INDEX_OPTIONS_CONFLICT, INDEX_KEY_SPECS_CONFLICT):
                raise
            # The retention setting changed since the index was made.
            index = {"name": name, "expireAfterSeconds": seconds}
            await self._db.command("collMod", collection.name, index=index)

    # Links -------------------------------------------------------------------------------

    async def insert_link(
        self, link: LinkView, outbox: str | None = None, trace: Mapping[str, str] | None = None
    ) -> str | None:
        # Listed first, so that no stored link is missing from the relay's list; an entry whose
        # link never came is dropped by the relay after the send deadline.
        with suppress(DuplicateKeyError):
            await self._unsent.insert_one({"_id": link.link_id, "since": link.created_at})
        outboxed: dict[str, Any] = {"outbox": outbox} if outbox is not None else {}
        if outbox is not None and trace:
            # Only the W3C fields: the relay continues the request's trace from them.
            outboxed["outbox_trace"] = {k: v for k, v in trace.items() if k in TRACE_HEADERS}
        try:
            await self._links.insert_one({**_to_document(link), **outboxed})
        except DuplicateKeyError:  # a retry with the same key stored it first: its event stands
            return await self.get_outbox(link.link_id)
        return outbox

    async def delete_link(self, link_id: str) -> None:
        # Only for a duplicate, decided so before: nothing else ever writes its document.
        await self._links.delete_one({"_id": link_id})
        await self._unsent.delete_one({"_id": link_id})

    async def get_link(self, link_id: str) -> LinkView | None:
        document = await self._links.find_one({"_id": link_id})
        return _from_document(document) if document else None

    async def get_outbox(self, link_id: str) -> str | None:
        document = await self._links.find_one({"_id": link_id}, {"outbox": 1})
        outbox = document.get("outbox") if document else None
        return str(outbox) if outbox is not None else None

    async def get_outbox_trace(self, link_id: str) -> dict[str, str]:
        document = await self._links.find_one({"_id": link_id}, {"outbox_trace": 1, "outbox": 1})
        if not document or document.get("outbox") is None:
            return {}
        stored = document.get("outbox_trace")
        if not isinstance(stored, dict):
            return {}  # stored before tracing: the relay starts a new trace, as it used to
        return {str(k): str(v) for k, v in stored.items() if k in TRACE_HEADERS}

    # Sending -------------------------------------------------------------------------------

    async def decide_send(self, link_id: str, decision: SendDecision) -> SendDecision:
        document = {
            "_id": step_id(link_id, 0),
            "link_id": link_id,
            "send": decision.send.value,
            "holder": decision.holder,
            "at": self._clock(),
        }
        try:
            await self._steps.insert_one(document)
            return decision
        except DuplicateKeyError:
            decided = await self.send_decision(link_id)
        if decided is None:  # swept: only after the link retention, long after it mattered
            return SendDecision(Send.FAIL)
        return decided

    async def send_decision(self, link_id: str) -> SendDecision | None:
        document = await self._steps.find_one({"_id": step_id(link_id, 0)})
        if document is None or "send" not in document:
            return None
        return SendDecision(Send(document["send"]), document.get("holder"))

    async def mark_sent(self, link_id: str) -> None:
        await self._unsent.delete_one({"_id": link_id})

    async def count_unsent(self) -> int:
        return await self._unsent.count_documents({})

    async def unsent(self, listed_before: datetime, limit: int) -> list[Unsent]:
        # A scan, but of a list that holds only the links of the last few seconds (and those a
        # crash left), not of `links`.
        found = self._unsent.find({"since": {"$lt": listed_before}}, limit=limit)
        entries = [Unsent(str(d["_id"]), _aware(d["since"])) async for d in found]
        return sorted(entries, key=lambda entry: entry.since)

    async def advance_link(self, link_id: str, progress: LinkProgress) -> LinkView | None:
        if progress.rank == 0:
            return None
        step = await self._record_step(link_id, progress)
        if step is None:
            return None
        document = await self._show(link_id, step)
        if document is None or _shown_step(document).event_id != progress.event_id:
            return None
        return _from_document(document)

    async def _record_step(self, link_id: str, progress: LinkProgress) -> str | None:
        """Inserts the step at its rank, then at each rank below down to the first one already
        taken (a ladder, top first, so whatever a rank holds was written by the one who took
        the rank it names). Returns the step to show: this one, or the one recorded at its rank
        by an earlier delivery of the same event; None if another event took the rank."""
        text = encode_step(progress)
        ladder = [
            {"_id": step_id(link_id, rank), "link_id": link_id, "step": text, "at": progress.at}
            for rank in range(progress.rank, 0, -1)
        ]
        try:
            await self._steps.insert_many(ladder, ordered=True)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(error.get("code") != DUPLICATE_KEY for error in errors):
                raise
            if not any(error.get("index") == 0 for error in errors):
                return text  # this rank is ours; a lower one was taken before
            recorded = await self._steps.find_one({"_id": step_id(link_id, progress.rank)})
            recorded_text = recorded.get("step") if recorded else None
            if recorded_text is None or decode_step(recorded_text).event_id != progress.event_id:
                return None  # its writer shows it (or a redelivery of its event will)
            return str(recorded_text)
        return text

    async def _show(self, link_id: str, text: str) -> dict[str, Any] | None:
        """Raises the view to the step (never lowers it), then, because a write of ours may
        have landed over a higher step written meanwhile, looks one rank up and shows what is
        recorded there, until nothing higher is. Returns the view document, None if none."""
        while True:
            step = decode_step(text)
            raised: dict[str, Any] = {"step": text}
            update: dict[str, Any] = {"$max": raised}
            if step.rank == FINAL_RANK:
                raised["ended_at"] = step.at
                # An ended link's request is never sent again: its sealed credentials go. (A
                # write computed before this one may put them back; retention removes them.)
                update["$unset"] = {"outbox": "", "outbox_trace": ""}
            document = await self._links.find_one_and_update(
                {"_id": link_id}, update, return_document=ReturnDocument.AFTER
            )
            if document is None or step.rank == FINAL_RANK:
                return document
            if _shown_step(document).rank > step.rank:
                return document  # a higher step is shown; its writer checks above it
            above = await self._steps.find_one({"_id": step_id(link_id, step.rank + 1)})
            if above is None or "step" not in above:
                return document
            text = str(above["step"])

    # In-flight claims ----------------------------------------------------------------------

    async def claim_in_flight(
        self, key: str, link_id: str, now: datetime, expires_at: datetime
    ) -> str:
        # Generation 0 is the pointer document's insert, so a first request costs one round
        # trip, and a later one reads the pointer in the same one (an existing pointer is left
        # as it is: $setOnInsert changes nothing, so nothing is written back).
        try:
            pointer = await self._in_flight.find_one_and_update(
                {"_id": key},
                {"$setOnInsert": {"latest": encode_claim(0, link_id, expires_at)}},
                upsert=True,
                return_document=ReturnDocument.BEFORE,
            )
        except DuplicateKeyError:  # another request inserted it first
            pointer = await self._in_flight.find_one({"_id": key})
        else:
            if pointer is None:
                return link_id  # inserted: generation 0 is ours
        claim = _claim_of_pointer(pointer) if pointer else _Claim(0, None, None)
        while True:
            if claim.link_id == link_id:
                return link_id
            if claim.link_id is not None and not await self._claim_is_over(claim, now):
                return claim.link_id
            generation = claim.generation + 1
            slot = f"{key}{_SLOT}{generation}"
            try:
                await self._in_flight.insert_one(
                    {"_id": slot, "link_id": link_id, "expires_at": expires_at, "claimed_at": now}
                )
            except DuplicateKeyError:
                taken = await self._in_flight.find_one({"_id": slot})
                claim = (
                    _Claim(generation, str(taken["link_id"]), _aware(taken["expires_at"]))
                    if taken
                    else _Claim(generation, None, None)  # swept: long over
                )
                continue
            # Only a hint for the next claimer, who walks on from it; $max keeps it moving on.
            latest = encode_claim(generation, link_id, expires_at)
            await self._in_flight.update_one({"_id": key}, {"$max": {"latest": latest}})
            return link_id

    async def _claim_is_over(self, claim: _Claim, now: datetime) -> bool:
        """A claim ends when it expires or when its link has ended (a step at the top rank,
        or a release): both are permanent, so an ended claim never comes back to life."""
        if claim.expires_at is None or claim.expires_at <= now or claim.link_id is None:
            return True
        ended = await self._steps.find_one({"_id": step_id(claim.link_id, FINAL_RANK)})
        return ended is not None

    async def release_in_flight(self, link_id: str) -> None:
        # Recorded as the link's end (without a step to show), which ends its claim.
        marker = {
            "_id": step_id(link_id, FINAL_RANK),
            "link_id": link_id,
            "released": True,
            "at": self._clock(),
        }
        with suppress(DuplicateKeyError):
            await self._steps.insert_one(marker)

    # Idempotency keys ----------------------------------------------------------------------

    async def find_idempotency_key(self, scope: str) -> IdempotencyRecord | None:
        document = await self._idempotency.find_one({"_id": scope})
        if document is None or self._key_expired(document):
            return None
        return IdempotencyRecord(link_id=document["link_id"], fingerprint=document["fingerprint"])

    async def remember_idempotency_key(
        self, scope: str, record: IdempotencyRecord
    ) -> IdempotencyRecord:
        document = {
            "_id": scope,
            "link_id": record.link_id,
            "fingerprint": record.fingerprint,
            "created_at": self._clock(),
        }
        try:
            await self._idempotency.insert_one(document)
            return record
        except DuplicateKeyError:
            existing = await self._idempotency.find_one({"_id": scope})
        if existing is not None and not self._key_expired(existing):
            return IdempotencyRecord(existing["link_id"], existing["fingerprint"])
        # Expired (the sweep has not come yet) or swept meanwhile: the key starts anew.
        await self._idempotency.replace_one({"_id": scope}, document, upsert=True)
        return record

    def _key_expired(self, document: dict[str, Any]) -> bool:
        created = document.get("created_at")
        if created is None:
            return False  # stored before keys expired: kept
        return _aware(created) <= self._clock() - self._retention.idempotency_keys

    # Retention -----------------------------------------------------------------------------

    async def delete_expired(self, now: datetime) -> dict[str, int]:
        """Deletes, in batches and by `_id`, ended links and steps past their retention, claims
        as old, and idempotency keys past theirs; returns how many of each went.

        For a store without TTL indexes. Each batch is found by a scan (FerretDB has no other
        index), then deleted one `_id` at a time in one request.
        """
        links_before = now - self._retention.ended_links
        keys_before = now - self._retention.idempotency_keys
        # Links stored before steps existed have no ended_at: their status says it.
        legacy_ended = {
            "step": {"$exists": False},
            "status": {"$in": [status.value for status in TERMINAL]},
            "updated_at": {"$lt": links_before},
        }
        return {
            "links": await self._sweep(
                self._links, {"$or": [{"ended_at": {"$lt": links_before}}, legacy_ended]}
            ),
            "steps": await self._sweep(self._steps, {"at": {"$lt": links_before}}),
            "claims": await self._sweep(self._in_flight, {"claimed_at": {"$lt": links_before}}),
            "idempotency_keys": await self._sweep(
                self._idempotency, {"created_at": {"$lt": keys_before}}
            ),
        }

    async def _sweep(
        self, collection: AsyncCollection[dict[str, Any]], expired: dict[str, Any]
    ) -> int:
        deleted = 0
        while True:
            found = collection.find(expired, {"_id": 1}, limit=self._retention.batch_size)
            ids = [document["_id"] async for document in found]
            if not ids:
                return deleted
            result = await collection.bulk_write(
                [DeleteOne({"_id": _id}) for _id in ids], ordered=False
            )
            deleted += result.deleted_count
            if len(ids) < self._retention.batch_size or result.deleted_count == 0:
                return deleted


def step_id(link_id: str, rank: int) -> str:
    """The `_id` of a link's recorded step at a rank."""
    return f"{link_id}/{rank}"


def encode_step(step: LinkProgress) -> str:
    """A step as one string, "<rank> <JSON>", so that strings compare as their ranks do (one
    digit) and `$max` keeps the higher; JSON text because FerretDB updates a document with a
    nested one about 4x slower (services/registry/DESIGN.md)."""
    body = {
        "status": step.status.value,
        "at": step.at.isoformat(),
        "event_id": step.event_id,
        "failure": step.failure.model_dump(mode="json") if step.failure else None,
        "mailbox_id": step.mailbox_id,
        "already_linked": step.already_linked,
        "reconnected": step.reconnected,
        "authorize_url": step.authorize_url,
        "authorization_expires_at": (
            step.authorization_expires_at.isoformat() if step.authorization_expires_at else None
        ),
    }
    return f"{step.rank} {json.dumps(body, sort_keys=True, separators=(',', ':'))}"


def decode_step(text: str) -> LinkProgress:
    """The step encode_step wrote."""
    _, body = text.split(" ", 1)
    data = json.loads(body)
    failure, expires = data.get("failure"), data.get("authorization_expires_at")
    return LinkProgress(
        LinkStatus(data["status"]),
        datetime.fromisoformat(data["at"]),
        failure=Failure.model_validate(failure) if failure else None,
        mailbox_id=data.get("mailbox_id"),
        already_linked=bool(data.get("already_linked", False)),
        reconnected=bool(data.get("reconnected", False)),
        authorize_url=data.get("authorize_url"),
        authorization_expires_at=datetime.fromisoformat(expires) if expires else None,
        event_id=str(data["event_id"]),
    )


def encode_claim(generation: int, link_id: str, expires_at: datetime) -> str:
    """An in-flight pointer's value; strings compare as their generations do."""
    return f"{generation:012d} {_aware(expires_at).isoformat()} {link_id}"


def _claim_of_pointer(pointer: dict[str, Any]) -> _Claim:
    latest = pointer.get("latest")
    if latest is None:  # a claim stored before generations: it is generation 0
        return _Claim(0, str(pointer["link_id"]), _aware(pointer["expires_at"]))
    generation, expires_at, link_id = str(latest).split(" ", 2)
    return _Claim(int(generation), link_id, datetime.fromisoformat(expires_at))


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _step_of_link(link: LinkView) -> LinkProgress:
    return LinkProgress(
        link.status,
        link.updated_at,
        failure=link.failure,
        mailbox_id=link.mailbox_id,
        already_linked=link.already_linked,
        reconnected=link.reconnected,
        authorize_url=link.authorize_url,
        authorization_expires_at=link.authorization_expires_at,
        event_id="created",
    )


def _legacy_step(document: dict[str, Any]) -> LinkProgress | None:
    """The status of a view written before steps existed (flat fields), if it is one."""
    if "status" not in document:
        return None
    failure = document.get("failure")
    return LinkProgress(
        LinkStatus(document["status"]),
        document["updated_at"],
        failure=Failure.model_validate(failure) if failure else None,
        mailbox_id=document.get("mailbox_id"),
        already_linked=bool(document.get("already_linked", False)),
        authorize_url=document.get("authorize_url"),
        authorization_expires_at=document.get("authorization_expires_at"),
        event_id="legacy",
    )


def _shown_step(document: dict[str, Any]) -> LinkProgress:
    """The step a view document shows: its `step`, or its flat fields if ranked higher."""
    text = document.get("step")
    step = decode_step(str(text)) if text is not None else None
    legacy = _legacy_step(document)
    if step is None or (legacy is not None and RANK[legacy.status] > step.rank):
        if legacy is None:
            raise ValueError(f"link {document['_id']} has no status")
        return legacy
    return step


def _to_document(link: LinkView) -> dict[str, Any]:
    document: dict[str, Any] = {
        "_id": link.link_id,
        "owner": link.owner.model_dump(),
        "address": link.address,
        "provider": link.provider.value,
        "auth": link.auth.value,
        "created_at": link.created_at,
        "step": encode_step(_step_of_link(link)),
    }
    if link.status in TERMINAL:
        document["ended_at"] = link.updated_at
    return document


def _from_document(document: dict[str, Any]) -> LinkView:
    step = _shown_step(document)
    return LinkView(
        link_id=document["_id"],
        owner=MailboxOwner.model_validate(document["owner"]),
        address=document["address"],
        provider=ProviderType(document["provider"]),
        status=step.status,
        created_at=document["created_at"],
        updated_at=step.at,
        failure=step.failure,
        mailbox_id=step.mailbox_id,
        already_linked=step.already_linked,
        reconnected=step.reconnected,
        # Links stored before OAuth existed were all password links.
        auth=AuthMethod(document.get("auth", AuthMethod.PASSWORD)),
        authorize_url=step.authorize_url,
        authorization_expires_at=step.authorization_expires_at,
    )
