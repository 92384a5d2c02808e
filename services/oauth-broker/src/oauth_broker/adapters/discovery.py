"""Builds each provider's endpoints: the real defaults, its discovery document, then overrides."""

import dataclasses
import ssl
from typing import Any

import httpx2

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


async def fetch_discovery(url: str, tls: ssl.SSLContext, timeout: float) -> dict[str, Any]:
    """Returns a provider's OpenID Connect discovery document."""
    async with httpx2.AsyncClient(verify=tls, timeout=timeout) as client:
        response = await client.get(url)
        response.raise_for_status()
    document = response.json()
    if not isinstance(document, dict):
        raise ValueError(f"{url} did not answer with a JSON object")
    return document


def apply_discovery(endpoints: ProviderEndpoints, document: dict[str, Any]) -> ProviderEndpoints:
    """Returns the endpoints with those the discovery document names.

    The issuer is kept as configured when it is None (Microsoft's common endpoint names a
    tenant template, not an issuer one can compare).
    """
    found: dict[str, Any] = {
        field: str(document[key])
        for key, field in _DISCOVERED.items()
        if document.get(key) and not (field == "issuer" and endpoints.issuer is None)
    }
    return dataclasses.replace(endpoints, **found)


def apply_overrides(endpoints: ProviderEndpoints, overrides: dict[str, Any]) -> ProviderEndpoints:
    """Returns the endpoints with the operator's explicit settings applied last."""
    given = {key: value for key, value in overrides.items() if value is not None}
    if "scopes" in given:
        given["scopes"] = tuple(given["scopes"])
    return dataclasses.replace(endpoints, **given)
