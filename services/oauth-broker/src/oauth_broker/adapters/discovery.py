"""Builds each provider's endpoints: the real defaults, its discovery document, then overrides."""

import dataclasses
import ssl
from typing import Any

import httpx2

from oauth_broker.adapters.bounded_http import bounded_request
from oauth_broker.domain.providers import ProviderEndpoints

# Discovery document field -> ProviderEndpoints field.
_DISCOVERED = {
    "authorization_endpoint": "authorize_url",
    "token_endpoint": "token_url",
    "userinfo_endpoint": "userinfo_url",
    "jwks_uri": "jwks_url",
    "issuer": "issuer",
    "revocation_endpoint": "revocation_url",
}
# What a generic OpenID Connect provider's document must name: it has no defaults.
REQUIRED_FOR_OIDC = ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri")
_WELL_KNOWN = "/.well-known/openid-configuration"


class DiscoveryRefused(Exception):
    """A discovery document the broker must not use: the provider is not loaded."""


async def fetch_discovery(url: str, tls: ssl.SSLContext, timeout: float) -> dict[str, Any]:
    """Returns a provider's OpenID Connect discovery document."""
    async with httpx2.AsyncClient(verify=tls, timeout=timeout) as client:
        response = await bounded_request(client, "GET", url)
    if response.status_code >= 400:
        raise DiscoveryRefused(f"{url} answered {response.status_code}")
    document = response.json()
    if not isinstance(document, dict):
        raise ValueError(f"{url} did not answer with a JSON object")
    return document


def expected_issuer(configured: str | None, discovery_url: str) -> str | None:
    """Returns the issuer a discovery document must name: the configured one, else the one its
    URL was built from (OpenID Discovery 4: <issuer>/.well-known/openid-configuration)."""
    if configured is not None:
        return configured
    if discovery_url.endswith(_WELL_KNOWN):
        return discovery_url.removesuffix(_WELL_KNOWN)
    return None


def check_issuer(document: dict[str, Any], expected: str) -> None:
    """Refuses a document whose issuer is not exactly the expected one (OpenID Discovery 4.3,
    RFC 8414 3.3): its endpoints could be anyone's, and its id tokens would not check out."""
    found = document.get("issuer")
    if found != expected:
        raise DiscoveryRefused(
            f"the discovery document names issuer {found!r}, not the configured {expected!r}"
        )


def require_endpoints(document: dict[str, Any], fields: tuple[str, ...]) -> None:
    """Refuses a document that lacks an endpoint the provider cannot do without."""
    missing = [name for name in fields if not document.get(name)]
    if missing:
        raise DiscoveryRefused(f"the discovery document names no {', '.join(missing)}")


def apply_discovery(endpoints: ProviderEndpoints, document: dict[str, Any]) -> ProviderEndpoints:
    """Returns the endpoints with those the discovery document names, the client
    authentication methods it supports, and whether callbacks carry RFC 9207's `iss`.

    The issuer is kept as configured when it is None (Microsoft's common endpoint names a
    tenant template, not an issuer one can compare).
    """
    found: dict[str, Any] = {
        field: str(document[key])
        for key, field in _DISCOVERED.items()
        if document.get(key) and not (field == "issuer" and endpoints.issuer is None)
    }
    methods = document.get("token_endpoint_auth_methods_supported")
    if isinstance(methods, list):
        found["token_auth_methods_supported"] = tuple(str(method) for method in methods)
    found["iss_parameter_supported"] = (
        document.get("authorization_response_iss_parameter_supported") is True
    )
    return dataclasses.replace(endpoints, **found)


def apply_overrides(endpoints: ProviderEndpoints, overrides: dict[str, Any]) -> ProviderEndpoints:
    """Returns the endpoints with the operator's explicit settings applied last."""
    given = {key: value for key, value in overrides.items() if value is not None}
    for many in ("scopes", "mail_scopes"):
        if many in given:
            given[many] = tuple(given[many])
    if "authorize_params" in given:
        given["authorize_params"] = tuple(dict(given["authorize_params"]).items())
    return dataclasses.replace(endpoints, **given)
