"""Plans and how many mailboxes each lets a user link."""

from collections.abc import Mapping
from dataclasses import dataclass

MAX_MAILBOXES_PER_USER = 15
DEFAULT_PLANS: Mapping[str, int] = {"free": 1, "basic": 3, "professional": 5, "organization": 15}
DEFAULT_PLAN = "basic"


@dataclass(frozen=True)
class PlanTable:
    """The configured plans and the plan of users who were never assigned one."""

    limits: Mapping[str, int]
    default_plan: str

    def plan_or_default(self, plan: str | None) -> str:
        """Returns the user's plan, falling back to the default for unknown or missing plans."""
        if plan is not None and plan in self.limits:
            return plan
        return self.default_plan

    def limit_for(self, plan: str | None) -> int:
        """Returns how many mailboxes a user on this plan may link."""
        return self.limits[self.plan_or_default(plan)]
