"""The local OpenID provider's pieces that need no server: what is installed, the secrets."""

import json

from localinfra.oidc_idp import IDP_SOURCE, awkward_secret, idp_home


def test_the_cache_is_keyed_by_the_lock_file_that_pins_the_provider() -> None:
    lock = json.loads((IDP_SOURCE / "package-lock.json").read_text())
    wanted = json.loads((IDP_SOURCE / "package.json").read_text())["dependencies"]
    pinned = lock["packages"]["node_modules/oidc-provider"]["version"]
    assert wanted == {"oidc-provider": pinned}  # an exact version, the one locked
    assert idp_home().name.startswith("oidc-provider-")
    assert idp_home() == idp_home()  # same lock, same install


def test_awkward_secrets_need_form_encoding_and_differ() -> None:
    secret = awkward_secret()
    assert all(char in secret for char in "+%:")
    assert "%2B" in secret  # decoded once too often, it would turn into a "+"
    assert awkward_secret() != secret
