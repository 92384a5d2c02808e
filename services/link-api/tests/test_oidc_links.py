"""Links through a generic OpenID Connect provider the operator configured (MBL_OIDC_PROVIDERS):
named in the request, or found by its domains; listed and detected by /v1/providers; and every
wrong way of naming one refused with the field, leaving nothing behind."""

import json
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from link_api.adapters.detector import Detector
from link_api.config import Settings
from link_api.domain.oidc import OidcCatalogue
from link_api.entrypoints.http import build_router
from link_api.entrypoints.providers_http import build_providers_router
from link_api.handlers import LinkApiDeps
from link_api_fakes import FakeAutoconfig, FakeDns, InMemoryLinkStore
from mailbox_link_contract.events import Authority, LinkRequested, ProviderType
from mailbox_link_shared.crypto import SecretBox, generate_key
from mailbox_link_shared.http import CallerKeys, build_http_app, scoped
from mailbox_link_shared.oidc_providers import OidcProviderPublic
from mailbox_link_shared.publishing import RecordingPublisher
from mailbox_link_shared.scopes import Scope, caller_keys

TOKEN = "caller-token-caller-token-0123"
KEYS = CallerKeys(caller_keys({"caller": SecretStr(TOKEN)}, {}, {}))
LINKS = "/v1/accounts/acme/users/u1/links"
CORP: dict[str, Any] = {
    "display_name": "Corp sign-in",
    "issuer": "https://idp.corp.example",
    "domains": ["corp.example"],
    "imap": {"host": "mail.corp.example", "port": 993, "security": "ssl"},
    "smtp": {"host": "smtp.corp.example", "port": 587, "security": "starttls"},
    "sasl_mechanism": "oauthbearer",
    # The broker's fields: link-api reads past them.
    "client_id": "mailbox-link",
    "prompt": "login",
}
Api = tuple[httpx.AsyncClient, RecordingPublisher]
LAB = {**CORP, "display_name": "", "domains": [], "issuer": "https://lab.example"}


@pytest.fixture
def catalogue() -> OidcCatalogue:
    providers = {
        "corp": OidcProviderPublic.model_validate(CORP),
        "lab": OidcProviderPublic.model_validate(LAB),
    }
    return OidcCatalogue.of(providers)


@pytest.fixture
async def api(catalogue: OidcCatalogue) -> AsyncIterator[Api]:
    publisher = RecordingPublisher()
    box = SecretBox({"k1": SecretStr(generate_key())}, "k1")
    deps = LinkApiDeps(InMemoryLinkStore(), publisher, box, timedelta(minutes=15))
    detector = Detector(FakeDns(), FakeAutoconfig())
    app = build_http_app(
        title="link-api under test",
        router=scoped(
            KEYS.require(Scope.LINKS),
            build_router(deps, None, detector, oidc=catalogue),  # type: ignore[arg-type]
            build_providers_router(detector, catalogue),
        ),
        keys=KEYS,
        on_start=[],
        on_stop=[],
    )
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://link-api.test", headers=headers
    ) as client:
        yield client, publisher


def _requested(publisher: RecordingPublisher) -> list[LinkRequested]:
    return [e for e in publisher.events if isinstance(e, LinkRequested)]


@pytest.mark.parametrize(
    ("body", "name"),
    [
        ({"email": "alice@corp.example"}, "corp"),  # by its domain, as detection would
        ({"email": "alice@corp.example", "provider": "oidc"}, "corp"),
        ({"email": "alice@corp.example", "oidc_provider": "corp", "auth": "oauth"}, "corp"),
        # Any address may be named with a provider: the sign-in proves the mailbox.
        ({"email": "bob@elsewhere.example", "provider": "oidc", "oidc_provider": "lab"}, "lab"),
    ],
)
async def test_an_oidc_link_signs_in_at_the_configured_provider(
    api: Api, body: dict[str, Any], name: str
) -> None:
    client, publisher = api

    answer = await client.post(LINKS, json={**body, "terms_accepted": True})

    assert answer.status_code == 202, answer.text
    assert answer.json()["provider"] == "oidc"
    assert answer.json()["auth"] == "oauth"
    [event] = _requested(publisher)
    data = event.data
    assert (data.provider, data.oidc_provider) == (ProviderType.OIDC, name)
    assert data.authority is Authority.PROVIDER
    assert data.credentials is None
    assert (data.imap.host, data.imap.port, data.imap.username) == (
        "mail.corp.example", 993, body["email"],
    )  # fmt: skip
    assert (data.smtp.host, data.smtp.security.value) == ("smtp.corp.example", "starttls")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "a@corp.example", "provider": "oidc", "oidc_provider": "nope"}, "oidc_provider"),
        ({"email": "a@elsewhere.example", "provider": "oidc"}, "oidc_provider"),
        ({"email": "a@gmail.com", "provider": "google", "oidc_provider": "lab"}, "oidc_provider"),
        ({"email": "a@corp.example", "oidc_provider": "Corp IdP"}, "oidc_provider"),
        ({"email": "a@corp.example", "password": "secret-pw"}, "password"),
        ({"email": "a@corp.example", "provider": "oidc", "auth": "password"}, "auth"),
        (
            {
                "email": "a@corp.example", "provider": "oidc",
                "imap": {"host": "x.example", "port": 993, "security": "ssl", "password": "p"},
                "smtp": {"host": "x.example", "port": 465, "security": "ssl"},
            },
            "imap",
        ),
    ],
)  # fmt: skip
async def test_a_wrongly_named_oidc_provider_is_a_422_naming_the_field(
    api: Api, body: dict[str, Any], field: str
) -> None:
    client, publisher = api

    answer = await client.post(LINKS, json={**body, "terms_accepted": True})

    assert answer.status_code == 422, answer.text
    fields = [problem["field"] for problem in answer.json()["fields"]]
    assert any(field in name for name in fields), answer.json()
    assert "secret-pw" not in answer.text
    assert _requested(publisher) == []


async def test_the_picker_lists_the_configured_providers(
    api: Api,
) -> None:
    client, _ = api

    listed = (await client.get("/v1/providers")).json()["providers"]

    configured = [p for p in listed if p["provider"] == "oidc"]
    assert [(p["oidc_provider"], p["name"]) for p in configured] == [
        ("corp", "Corp sign-in"), ("lab", "lab"),
    ]  # fmt: skip
    assert configured[0]["auth_methods"] == ["oauth"]
    assert configured[0]["settings"]["imap"]["host"] == "mail.corp.example"
    assert {"google", "microsoft", "imap"} <= {p["provider"] for p in listed}
    assert "client_id" not in json.dumps(listed)


async def test_detection_names_the_provider_of_a_configured_domain(
    api: Api,
) -> None:
    client, _ = api

    found = (await client.get("/v1/providers/detect", params={"email": "Al@Corp.Example"})).json()

    assert (found["provider"], found["oidc_provider"]) == ("oidc", "corp")
    assert found["auth_method"] == "oauth"
    assert found["confidence"] == "high"
    assert found["settings"]["imap"]["username"] == "al@corp.example"
    other = (await client.get("/v1/providers/detect", params={"email": "a@gmail.com"})).json()
    assert (other["provider"], other["oidc_provider"]) == ("google", None)


def test_link_api_reads_mbl_oidc_providers_without_the_broker_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("MBL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MBL_ENCRYPTION_KEYS", json.dumps({"k1": generate_key()}))
    monkeypatch.setenv("MBL_OIDC_PROVIDERS", json.dumps({"corp": CORP}))

    catalogue = OidcCatalogue.of(Settings().oidc_providers)

    corp = catalogue.for_address("someone@corp.example")
    assert corp is not None
    assert (corp.name, corp.title) == ("corp", "Corp sign-in")
    monkeypatch.setenv("MBL_OIDC_PROVIDERS", json.dumps({"corp": CORP, "other": CORP}))
    with pytest.raises(ValueError, match=r"corp\.example"):
        Settings()
