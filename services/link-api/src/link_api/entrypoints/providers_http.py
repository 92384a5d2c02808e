"""HTTP routes for the provider picker and for detection: `GET /v1/providers[/detect]`."""

from typing import Annotated, Any

from fastapi import APIRouter, Query

from link_api import handlers
from link_api.adapters.detector import Detector
from link_api.domain.oidc import OidcCatalogue, OidcProvider
from link_api.domain.providers import PROVIDERS, AuthMethod, Detection, MailSettings, ProviderInfo
from mailbox_link_shared.addresses import InvalidAddress, normalize_address
from mailbox_link_shared.api_errors import ApiErrorCode
from mailbox_link_shared.http import ApiError

REASONS = {
    "no_mail_server": "This domain has no mail server (no MX record): check the address.",
    "lookup_failed": "We could not look up this domain just now: choose your provider below.",
}


def build_providers_router(detector: Detector, oidc: OidcCatalogue | None = None) -> APIRouter:
    """Returns the provider routes; `oidc` has the deployment's OpenID Connect providers."""
    router = APIRouter(prefix="/v1/providers")
    catalogue = oidc or OidcCatalogue.empty()

    @router.get("")
    async def list_providers() -> dict[str, Any]:
        """Lists the providers a picker offers, with how to link each and where to get help:
        the deployment's OpenID Connect providers (provider "oidc" and its oidc_provider name)
        first, then the built-in ones."""
        configured = [_oidc_body(found) for found in catalogue.providers.values()]
        return {"providers": configured + [_provider_body(info) for info in PROVIDERS.values()]}

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
        configured = catalogue.for_address(address)
        if configured is not None:  # the operator's word beats anything DNS could say
            return _oidc_detection_body(address, configured)
        return _detection_body(address, await handlers.detect_provider(address, detector))

    return router


def _provider_body(info: ProviderInfo) -> dict[str, Any]:
    return {
        "provider": info.provider.value,
        "oidc_provider": None,
        "name": info.name,
        "auth_methods": [m.value for m in info.auth_methods],
        "settings": _settings_body(info.settings, None),
        "help": info.help,
        "app_password_url": info.app_password_url,
    }


def _oidc_body(found: OidcProvider) -> dict[str, Any]:
    return {
        "provider": "oidc",
        "oidc_provider": found.name,
        "name": found.title,
        "auth_methods": [AuthMethod.OAUTH.value],
        "settings": _settings_body(found.settings, None),
        "help": f"Sign in with {found.title}.",
        "app_password_url": None,
    }


def _oidc_detection_body(address: str, found: OidcProvider) -> dict[str, Any]:
    domain = address.rpartition("@")[2]
    return {
        "email": address,
        "domain": domain,
        "provider": "oidc",
        "oidc_provider": found.name,
        "provider_name": found.title,
        "auth_method": AuthMethod.OAUTH.value,
        "auth_methods": [AuthMethod.OAUTH.value],
        "confidence": "high",
        "evidence": [
            {
                "rule": "oidc_domain",
                "detail": f"{domain} signs in with this deployment's provider {found.name}",
            }
        ],
        "settings": _settings_body(found.settings, address),
        "reason": None,
        "message": None,
        "alternatives": [],
    }


def _detection_body(address: str, detection: Detection) -> dict[str, Any]:
    return {
        "email": address,
        "domain": detection.domain,
        "provider": detection.provider.value,
        "oidc_provider": None,
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
