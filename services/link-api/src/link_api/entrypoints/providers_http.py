"""HTTP routes for the provider picker and for detection: `GET /v1/providers[/detect]`."""

from typing import Annotated, Any

from fastapi import APIRouter, Query

from link_api import handlers
from link_api.adapters.detector import Detector
from link_api.domain.providers import PROVIDERS, Detection, MailSettings, ProviderInfo
from mailbox_link_shared.addresses import InvalidAddress, normalize_address
from mailbox_link_shared.api_errors import ApiErrorCode
from mailbox_link_shared.http import ApiError

REASONS = {
    "no_mail_server": "This domain has no mail server (no MX record): check the address.",
    "lookup_failed": "We could not look up this domain just now: choose your provider below.",
}


def build_providers_router(detector: Detector) -> APIRouter:
    """Returns the provider routes."""
    router = APIRouter(prefix="/v1/providers")

    @router.get("")
    async def list_providers() -> dict[str, Any]:
        """Lists the providers a picker offers, with how to link each and where to get help."""
        return {"providers": [_provider_body(info) for info in PROVIDERS.values()]}

    @router.get("/detect")
    async def detect_provider(
        email: Annotated[str, Query(max_length=320, description="The address to link.")],
    ) -> dict[str, Any]:
        """Tells who hosts an address, how sure we are and why, and the servers if known."""
        try:
            address = normalize_address(email)
        except InvalidAddress as exc:
            raise ApiError(
                422,
                ApiErrorCode.INVALID_REQUEST,
                "The address is not valid.",
                [("email", str(exc))],
            ) from None
        return _detection_body(address, await handlers.detect_provider(address, detector))

    return router


def _provider_body(info: ProviderInfo) -> dict[str, Any]:
    return {
        "provider": info.provider.value,
        "name": info.name,
        "auth_methods": [m.value for m in info.auth_methods],
        "settings": _settings_body(info.settings, None),
        "help": info.help,
        "app_password_url": info.app_password_url,
    }


def _detection_body(address: str, detection: Detection) -> dict[str, Any]:
    return {
        "email": address,
        "domain": detection.domain,
        "provider": detection.provider.value,
        "provider_name": detection.provider_name,
        "auth_method": detection.auth_methods[0].value if detection.auth_methods else None,
        "auth_methods": [m.value for m in detection.auth_methods],
        "confidence": detection.confidence,
        "evidence": [{"rule": e.rule, "detail": e.detail} for e in detection.evidence],
        "settings": _settings_body(detection.settings, address),
        "reason": detection.reason,
        "message": REASONS.get(detection.reason or ""),
        "alternatives": [
            {"provider": p.value, "name": PROVIDERS[p].name}
            for p in detection.alternatives
            if p in PROVIDERS
        ],
    }


def _settings_body(settings: MailSettings | None, address: str | None) -> dict[str, Any] | None:
    if settings is None:
        return None
    return {
        kind: {
            "host": server.host,
            "port": server.port,
            "security": server.security.value,
            "username": server.username_for(address) if address else server.username,
        }
        for kind, server in (("imap", settings.imap), ("smtp", settings.smtp))
    }
