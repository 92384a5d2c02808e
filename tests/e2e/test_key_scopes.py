"""Each caller key does only what its scopes say, on the running services (docs/adr/0017): the
product's key reaches none of the registry's routes, link-api's key only the user routes, the
owner lookup only the sign-in key, a key bound to an account no other account, and /docs and
/openapi.json only a valid key, loading nothing from outside."""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from localinfra.services import RunningServices, start_services
from localinfra.stack import Endpoints

from .conftest import (
    caller,
    imap_body,
    link_and_wait,
    links_path,
    request_link,
    unique_user_id,
    wait_for_outcome,
)
from .probes import dump_databases, read_topics


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _refused_for_scope(answer: httpx.Response, scope: str) -> None:
    assert answer.status_code == 403, answer.text
    body = answer.json()
    assert body["error"] == "forbidden"
    assert body["fields"][0]["field"] == "Authorization"
    assert f"'{scope}'" in body["fields"][0]["message"]


async def _linked_mailbox(
    api: httpx.AsyncClient, infra: Endpoints, new_mail_user: Any
) -> tuple[str, str]:
    user, user_id = new_mail_user("scopes"), unique_user_id()
    link = await link_and_wait(api, "acme", user_id, imap_body(infra, user))
    assert link["status"] == "linked", link
    return user.address, user_id


async def test_the_product_key_cannot_set_plans_or_force_unlink_and_nothing_changes(
    services: RunningServices,
    api: httpx.AsyncClient,
    registry_api: httpx.AsyncClient,
    infra: Endpoints,
    new_mail_user: Any,
) -> None:
    address, user_id = await _linked_mailbox(api, infra, new_mail_user)
    plan_path = f"/v1/accounts/acme/users/{user_id}/plan"
    before = (await registry_api.get(plan_path)).json()
    async with caller(services.registry_url, services) as product_on_registry:
        promoted = await product_on_registry.put(plan_path, json={"plan": "organization"})
        force_unlinked = await product_on_registry.delete(f"/v1/mailboxes/{address}")
    _refused_for_scope(promoted, "operator")
    _refused_for_scope(force_unlinked, "operator")
    assert (await registry_api.get(plan_path)).json() == before
    assert before["plan"] != "organization"
    listed = await api.get(f"/v1/accounts/acme/users/{user_id}/mailboxes")
    assert [m["email"] for m in listed.json()["mailboxes"]] == [address]


async def test_the_registry_answers_the_product_key_on_no_route_and_link_apis_on_user_routes(
    services: RunningServices,
    api: httpx.AsyncClient,
    infra: Endpoints,
    new_mail_user: Any,
) -> None:
    address, user_id = await _linked_mailbox(api, infra, new_mail_user)
    user = f"/v1/accounts/acme/users/{user_id}"
    async with httpx.AsyncClient(base_url=services.registry_url, timeout=10) as registry:
        for method, path in (
            ("GET", f"{user}/mailboxes"),
            ("GET", f"{user}/plan"),
            ("DELETE", f"{user}/mailboxes/{address}"),
        ):
            answer = await registry.request(method, path, headers=_as(services.caller_token))
            assert answer.status_code == 403, (method, path, answer.text)
            assert "'registry'" in answer.json()["fields"][0]["message"]
        as_link_api = _as(services.registry_token)
        listed = await registry.get(f"{user}/mailboxes", headers=as_link_api)
        assert [m["email"] for m in listed.json()["mailboxes"]] == [address]
        assert (await registry.get(f"{user}/plan", headers=as_link_api)).status_code == 200
        # link-api's key is no operator's either.
        promoted = await registry.put(
            f"{user}/plan", json={"plan": "organization"}, headers=as_link_api
        )
        _refused_for_scope(promoted, "operator")
    # The product unlinks through link-api, which calls the registry with its own key.
    assert (await api.delete(f"/v1/accounts/acme/users/{user_id}/mailboxes/{address}")).is_success
    assert (await api.get(f"/v1/accounts/acme/users/{user_id}/mailboxes")).json() == {
        "mailboxes": []
    }


async def test_only_the_sign_in_key_may_look_up_an_owner(
    services: RunningServices,
    api: httpx.AsyncClient,
    infra: Endpoints,
    new_mail_user: Any,
) -> None:
    address, user_id = await _linked_mailbox(api, infra, new_mail_user)
    path = f"/v1/mailboxes/{address}/owner"
    async with httpx.AsyncClient(base_url=services.registry_url, timeout=10) as registry:
        for token in (
            services.caller_token,
            services.registry_token,
            services.operator_token,
            services.bound_caller_token,
        ):
            _refused_for_scope(await registry.get(path, headers=_as(token)), "owner_lookup")
        owner = await registry.get(path, headers=_as(services.sign_in_token))
    assert owner.json()["user_id"] == user_id


async def test_a_key_bound_to_one_account_gets_404_for_another_and_learns_nothing(
    services: RunningServices,
    api: httpx.AsyncClient,
    infra: Endpoints,
    new_mail_user: Any,
) -> None:
    # The stack's bound key acts for "acme" only (ServiceConfig.bound_caller_accounts).
    other_user = unique_user_id()
    other = await request_link(api, "globex", other_user, imap_body(infra, new_mail_user("bnd")))
    await wait_for_outcome(api, other["status_url"])
    refused_user = new_mail_user("bnd")
    bound = httpx.AsyncClient(
        base_url=services.api_url, headers=_as(services.bound_caller_token), timeout=10
    )
    async with bound:
        posted = await bound.post(
            links_path("globex", other_user), json=imap_body(infra, refused_user)
        )
        existing = await bound.get(f"{links_path('globex', other_user)}/{other['link_id']}")
        made_up = await bound.get(f"{links_path('nobody-at-all', 'u-x')}/{other['link_id']}")
        listed = await bound.get(f"/v1/accounts/globex/users/{other_user}/mailboxes")
        own = await bound.get(f"/v1/accounts/acme/users/{unique_user_id()}/mailboxes")
    for answer in (posted, existing, made_up, listed):
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"] == "account_not_found"
        assert answer.json()["fields"][0]["field"] == "account_id"
    # An account with a link and one that never existed look the same.
    assert existing.json() == made_up.json() == listed.json()
    assert own.json() == {"mailboxes": []}
    # Nothing of the refused request was published or stored.
    address = refused_user.address.encode()
    records = await read_topics(infra.kafka_bootstrap, "e2e")
    assert not [r for r in records if address in r[1] or address in r[2]]
    assert not [d for d in await dump_databases(infra.mongodb_uri, "e2e") if address in d]


# --- /docs and /openapi.json -------------------------------------------------------------------

SERVICES = ("api_url", "registry_url", "broker_url")
# A reference that would make a browser load something from a host: src=, href=, url(, @import.
_EXTERNAL = re.compile(r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//|url\(|@import""", re.I)


@pytest.mark.parametrize("service", SERVICES)
def test_docs_and_schema_need_a_key_and_the_page_loads_nothing_from_outside(
    services: RunningServices, service: str
) -> None:
    base = getattr(services, service)
    for path in ("/docs", "/openapi.json"):
        anonymous = httpx.get(f"{base}{path}", timeout=10)
        assert anonymous.status_code == 401, (path, anonymous.text)
        assert anonymous.json()["fields"][0]["field"] == "Authorization"
        wrong = httpx.get(f"{base}{path}", headers=_as("w" * 40), timeout=10)
        assert wrong.status_code == 401
    schema = httpx.get(f"{base}/openapi.json", headers=_as(services.caller_token), timeout=10)
    assert schema.json()["paths"]
    page = httpx.get(f"{base}/docs", headers=_as(services.operator_token), timeout=10)
    assert page.status_code == 200
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none';")
    assert "<script" not in page.text.lower()
    assert not _EXTERNAL.search(page.text), _EXTERNAL.search(page.text)
    # FastAPI's own pages are gone.
    assert httpx.get(f"{base}/redoc", headers=_as(services.caller_token)).status_code == 404


@pytest.fixture(scope="module")
def without_docs(infra: Endpoints, workdir: Path) -> Iterator[RunningServices]:
    from .conftest import service_config

    config = service_config(infra, namespace="e2e-nodocs", extra_env={"MBL_API_DOCS": "false"})
    running = start_services(config, workdir / "services-nodocs", modules=("registry", "link_api"))
    try:
        yield running
    finally:
        running.stop()


def test_docs_switched_off_answer_404_with_or_without_a_key(
    without_docs: RunningServices,
) -> None:
    for base in (without_docs.api_url, without_docs.registry_url):
        for path in ("/docs", "/openapi.json"):
            for headers in ({}, _as(without_docs.caller_token), _as(without_docs.operator_token)):
                answer = httpx.get(f"{base}{path}", headers=headers, timeout=10)
                assert answer.status_code == 404, (base, path, answer.text)
