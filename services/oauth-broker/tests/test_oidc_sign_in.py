"""A generic OIDC provider's sign-in through the handlers (hand-written provider fakes), and the
RFC 9700 checks every provider's sign-in gets: RFC 9207's `iss` on the callback, an id token
whenever `openid` was asked, userinfo about the id token's account."""

import dataclasses

import httpx
import pytest
from pydantic import SecretStr

from broker_fakes import (
    ALICE,
    BOX,
    JAR,
    FakeClock,
    FakeMailServers,
    FakeProvider,
    InMemoryBrokerStore,
    fake_deps,
    reserved,
    start_in_browser,
)
from broker_fakes import offer_sign_in as offer_google_sign_in
from mailbox_link_contract.events import (
    AuthMethod,
    AuthorizationRequired,
    LinkRequested,
    LinkRequestedData,
    MailboxVerified,
    ProviderType,
    ServerSettings,
    VerificationFailed,
)
from mailbox_link_contract.failures import FailureCode
from mailbox_link_shared.http import CallerKeys, build_http_app
from mailbox_link_shared.oidc_providers import SaslMechanism
from mailbox_link_shared.publishing import RecordingPublisher
from oauth_broker import handlers
from oauth_broker.adapters.oauth_client import OAuthApp
from oauth_broker.domain.grants import GrantStatus
from oauth_broker.domain.providers import (
    GOOGLE,
    MailboxProfile,
    OfflineAccess,
    ProviderEndpoints,
)
from oauth_broker.domain.sessions import CallbackRefusal, SessionStatus, refuse_issuer
from oauth_broker.entrypoints.http import build_public_router
from oauth_broker.handlers import BrokerDeps, CallbackResult, MailServers

ISSUER = "https://idp.corp.example"
ADDRESS = "alice@corp.example"
CORP = ProviderEndpoints(
    authorize_url=f"{ISSUER}/authorize", token_url=f"{ISSUER}/token",
    userinfo_url=f"{ISSUER}/userinfo", jwks_url=f"{ISSUER}/jwks", issuer=ISSUER,
    revocation_url=None, profile=MailboxProfile.USERINFO, profile_url=None,
    scopes=("openid", "email", "offline_access"), mail_scopes=(),
    offline_access=OfflineAccess.SCOPE, iss_parameter_supported=True, require_id_token=True,
)  # fmt: skip
APP = OAuthApp(ProviderType.OIDC, "mailbox-link", SecretStr("s"), "https://cb.test/", CORP)
CORP_MAIL = MailServers(
    ServerSettings(host="mail.corp.example", port=993, security="ssl", username="-"),
    ServerSettings(host="mail.corp.example", port=465, security="ssl", username="-"),
    SaslMechanism.OAUTHBEARER,
)


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider(APP, signed_in_as=(ADDRESS,))


@pytest.fixture
def mail() -> FakeMailServers:
    return FakeMailServers()


@pytest.fixture
def deps(provider: FakeProvider, mail: FakeMailServers) -> BrokerDeps:
    return fake_deps(
        clients={"oidc:corp": provider},
        check_mailbox=mail,
        mail_servers={"oidc:corp": CORP_MAIL},
        unavailable={"oidc:broken": "the discovery document names issuer 'x'"},
    )


def requested(link_id: str = "l1", name: str = "corp") -> LinkRequested:
    """What link-api sends for a mailbox of the OIDC provider `name`."""
    imap = CORP_MAIL.imap.model_copy(update={"username": ADDRESS})
    smtp = CORP_MAIL.smtp.model_copy(update={"username": ADDRESS})
    data = LinkRequestedData(
        link_id=link_id, owner=ALICE, address=ADDRESS, provider=ProviderType.OIDC,
        oidc_provider=name, auth=AuthMethod.OAUTH, imap=imap, smtp=smtp,
    )  # fmt: skip
    return LinkRequested(correlation_id=link_id, producer="link-api", data=data)


async def offer_sign_in(deps: BrokerDeps, link_id: str = "l1") -> str:
    await handlers.when_link_requested_open_session(requested(link_id), deps)
    await handlers.when_link_reserved_offer_sign_in(reserved(link_id, ProviderType.OIDC), deps)
    offer = _events(deps)[-1]
    assert isinstance(offer, AuthorizationRequired)
    return await start_in_browser(deps, offer)


def _events(deps: BrokerDeps) -> list[object]:
    assert isinstance(deps.publisher, RecordingPublisher)
    return list(deps.publisher.events)


def _failure_code(deps: BrokerDeps) -> tuple[FailureCode, str]:
    failed = _events(deps)[-1]
    assert isinstance(failed, VerificationFailed)
    return failed.data.failure.code, failed.data.failure.detail


# --- a configured provider ---------------------------------------------------------------------


async def test_an_oidc_link_verifies_on_the_configured_servers_with_its_mechanism(
    deps: BrokerDeps, mail: FakeMailServers
) -> None:
    state = await offer_sign_in(deps)
    outcome = await handlers.complete_sign_in(state, "code", None, "", deps, JAR, iss=ISSUER)
    assert outcome.result is CallbackResult.VERIFIED, outcome.failure
    assert outcome.confirmation_code is not None
    assert mail.logins == [("mail.corp.example", ADDRESS, "access-1")]
    assert mail.mechanisms == [SaslMechanism.OAUTHBEARER]
    assert isinstance(deps.store, InMemoryBrokerStore)
    grant = deps.store.grants["l1"]
    assert (grant.oidc_provider, grant.subject, grant.provider_key) == (
        "corp", "subject-1", "oidc:corp",
    )  # fmt: skip
    assert None is await handlers.confirm_sign_in(ALICE, outcome.confirmation_code, deps)
    verified = _events(deps)[-1]
    assert isinstance(verified, MailboxVerified)
    assert (verified.data.provider, verified.data.oidc_provider) == (ProviderType.OIDC, "corp")
    assert verified.data.imap.host == "mail.corp.example"


async def test_an_oidc_provider_that_could_not_be_loaded_fails_its_links_clearly(
    deps: BrokerDeps,
) -> None:
    await handlers.when_link_requested_open_session(requested(name="broken"), deps)
    code, detail = _failure_code(deps)
    assert code is FailureCode.DEPLOYMENT_MISCONFIGURED
    assert "oidc:broken" in detail
    assert "issuer" not in detail  # the reason is the operators', in the broker's log


async def test_an_oidc_provider_the_broker_does_not_know_is_a_deployment_mistake(
    deps: BrokerDeps,
) -> None:
    await handlers.when_link_requested_open_session(requested(name="elsewhere"), deps)
    code, detail = _failure_code(deps)
    assert code is FailureCode.DEPLOYMENT_MISCONFIGURED
    assert "not configured" in detail


# --- RFC 9207: the callback's issuer ------------------------------------------------------------


@pytest.mark.parametrize("iss", ["https://attacker.example", None, f"{ISSUER}/"])
async def test_a_callback_from_another_issuer_changes_nothing(
    deps: BrokerDeps, provider: FakeProvider, iss: str | None
) -> None:
    state = await offer_sign_in(deps)
    offered = len(_events(deps))

    refused = await handlers.complete_sign_in(state, "code", None, "", deps, JAR, iss=iss)

    assert refused.result is CallbackResult.REFUSED
    assert refused.refusal is CallbackRefusal.ISSUER_MISMATCH
    assert len(_events(deps)) == offered  # no failure published, no code exchanged
    assert provider.nonce_seen == []
    assert isinstance(deps.store, InMemoryBrokerStore)
    assert deps.store.sessions["l1"].status is SessionStatus.OPEN  # not used up
    # The provider's own answer still completes the sign-in.
    outcome = await handlers.complete_sign_in(state, "code", None, "", deps, JAR, iss=ISSUER)
    assert outcome.result is CallbackResult.VERIFIED


async def test_an_error_callback_from_another_issuer_is_refused_too(deps: BrokerDeps) -> None:
    state = await offer_sign_in(deps)
    refused = await handlers.complete_sign_in(
        state, None, "access_denied", "", deps, JAR, iss="https://attacker.example"
    )
    assert refused.refusal is CallbackRefusal.ISSUER_MISMATCH
    assert not any(isinstance(e, VerificationFailed) for e in _events(deps))


def test_iss_is_checked_when_advertised_or_present_where_the_issuer_is_known() -> None:
    mismatch = CallbackRefusal.ISSUER_MISMATCH
    assert refuse_issuer(ISSUER, ISSUER, iss_parameter_supported=True) is None
    assert refuse_issuer(None, ISSUER, iss_parameter_supported=True) is mismatch
    # Not advertised: a missing iss is fine, a wrong one is not.
    assert refuse_issuer(None, ISSUER, iss_parameter_supported=False) is None
    assert refuse_issuer("https://evil.example", ISSUER, iss_parameter_supported=False) is mismatch
    # Microsoft's multi-tenant endpoint has no issuer to compare with.
    assert refuse_issuer("https://login.microsoftonline.com/t/v2.0", None, True) is None


async def test_a_wrong_iss_is_a_400_page(deps: BrokerDeps) -> None:
    app = build_http_app(
        title="broker under test", router=None, keys=CallerKeys(()),
        public_router=build_public_router(deps, "https://app.example/return"),
        on_start=[], on_stop=[],
    )  # fmt: skip
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://b.test") as browser:
        state = await offer_sign_in(deps)
        browser.cookies.update(JAR)
        params = {"state": state, "code": "c", "iss": "https://attacker.example"}
        page = await browser.get("/v1/oauth/callback", params=params)
    assert page.status_code == 400
    assert 'data-code="issuer_mismatch"' in page.text
    assert "did not come from the provider" in page.text


# --- the id token and userinfo --------------------------------------------------------------------


async def test_no_id_token_though_openid_was_asked_fails_the_sign_in(
    deps: BrokerDeps, provider: FakeProvider, mail: FakeMailServers
) -> None:
    provider.id_token = False
    state = await offer_sign_in(deps)
    outcome = await handlers.complete_sign_in(state, "code", None, "", deps, JAR, iss=ISSUER)
    assert outcome.result is CallbackResult.FAILED
    code, detail = _failure_code(deps)
    assert code is FailureCode.PROVIDER_ERROR
    assert "no id token" in detail
    assert mail.logins == []


async def test_a_built_in_provider_must_send_its_id_token_too(mail: FakeMailServers) -> None:
    app = dataclasses.replace(APP, provider=ProviderType.GOOGLE, endpoints=GOOGLE)
    google = FakeProvider(app, signed_in_as=("alice@gmail.com",), id_token=False)
    deps = BrokerDeps(
        store=InMemoryBrokerStore(), publisher=RecordingPublisher(), secret_box=BOX,
        clients={ProviderType.GOOGLE: google}, check_mailbox=mail, clock=FakeClock(),
    )  # fmt: skip
    state = await offer_google_sign_in(deps)
    outcome = await handlers.complete_sign_in(state, "code", None, "", deps, JAR)
    assert outcome.result is CallbackResult.FAILED
    assert _failure_code(deps)[0] is FailureCode.PROVIDER_ERROR


@pytest.mark.parametrize("userinfo_subject", ["someone-else", ""])
async def test_userinfo_about_another_account_than_the_id_tokens_is_not_used(
    deps: BrokerDeps, provider: FakeProvider, mail: FakeMailServers, userinfo_subject: str
) -> None:
    provider.userinfo_subject = userinfo_subject  # "": userinfo named no sub at all
    state = await offer_sign_in(deps)
    outcome = await handlers.complete_sign_in(state, "code", None, "", deps, JAR, iss=ISSUER)
    assert outcome.result is CallbackResult.FAILED
    code, detail = _failure_code(deps)
    assert code is FailureCode.PROVIDER_ERROR
    assert "sub" in detail
    assert mail.logins == []
    assert isinstance(deps.store, InMemoryBrokerStore)
    assert "l1" not in deps.store.grants


async def test_the_subject_comes_from_userinfo_where_no_id_token_is_needed(
    mail: FakeMailServers,
) -> None:
    plain = dataclasses.replace(CORP, scopes=("mail",), require_id_token=False)
    provider = FakeProvider(
        dataclasses.replace(APP, endpoints=plain), signed_in_as=(ADDRESS,), id_token=False
    )
    deps = BrokerDeps(
        store=InMemoryBrokerStore(), publisher=RecordingPublisher(), secret_box=BOX,
        clients={"oidc:corp": provider}, check_mailbox=mail, clock=FakeClock(),
    )  # fmt: skip
    state = await offer_sign_in(deps)
    outcome = await handlers.complete_sign_in(state, "code", None, "", deps, JAR, iss=ISSUER)
    assert outcome.result is CallbackResult.VERIFIED
    assert isinstance(deps.store, InMemoryBrokerStore)
    assert deps.store.grants["l1"].subject == "subject-1"
    assert deps.store.grants["l1"].status is GrantStatus.VERIFIED
