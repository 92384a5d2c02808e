"""A password link waits for two events, its request and its reservation, in either order; its
one start marker says why it started (verification) or may never start (rejected)."""

from enum import StrEnum


class StartReason(StrEnum):
    """Why a link's start marker was written: it was verified, or it must never be."""

    VERIFY = "verify"
    REJECTED = "rejected"
