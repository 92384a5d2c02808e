import pytest
from pydantic import SecretStr

from mailbox_link_shared.crypto import SecretBox, SecretCannotBeOpened, generate_key


def _box(active: str = "k1", **keys: str) -> SecretBox:
    return SecretBox({k: SecretStr(v) for k, v in keys.items()}, active)


def test_sealed_secret_opens_with_its_context_only() -> None:
    box = _box(k1=generate_key())
    sealed = box.seal("hunter2-secret", context="alice@example.org")
    assert "hunter2" not in sealed.model_dump_json()
    assert box.open(sealed, "alice@example.org") == "hunter2-secret"
    with pytest.raises(SecretCannotBeOpened):
        box.open(sealed, "mallory@example.org")


def test_rotation_keeps_old_secrets_readable() -> None:
    old, new = generate_key(), generate_key()
    sealed_before = _box(k1=old).seal("s3cret", "a@example.org")
    rotated = _box("k2", k1=old, k2=new)
    sealed_after = rotated.seal("s3cret", "a@example.org")
    assert sealed_after.key_id == "k2"
    assert rotated.open(sealed_before, "a@example.org") == "s3cret"
    with pytest.raises(SecretCannotBeOpened):
        _box(k2=new, active="k2").open(sealed_before, "a@example.org")


def test_tampered_ciphertext_does_not_open() -> None:
    box = _box(k1=generate_key())
    sealed = box.seal("s3cret", "a@example.org")
    flipped = sealed.ciphertext[:-4] + ("AAAA" if sealed.ciphertext[-4:] != "AAAA" else "BBBB")
    with pytest.raises(SecretCannotBeOpened):
        box.open(sealed.model_copy(update={"ciphertext": flipped}), "a@example.org")


def test_keys_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 random bytes"):
        _box(k1="c2hvcnQ=")
