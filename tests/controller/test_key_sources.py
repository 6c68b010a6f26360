"""Keys a spec names: a keys file or a Secret, read again when they change, never turning a keyed endpoint open."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fakes import FakeProvider
from hypothesis import given
from hypothesis import strategies as st

from gpuroam.controller.key_sources import (
    MIN_KEY_CHARS,
    KeySourceError,
    KeySources,
    key_hash,
    parse_keys_file,
)
from gpuroam.providers.base import ProviderError
from gpuroam.spec import EndpointSpec

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef"


class SecretProvider(FakeProvider):
    """A provider whose platform keeps Secrets (as the kubernetes and gke providers do)."""

    def __init__(self, secrets: dict[str, dict[str, str]]) -> None:
        super().__init__({"us-central1": {"nvidia-l4": 1}})
        self.secrets = secrets
        self.reads = 0

    def read_secret(self, name: str) -> dict[str, str]:
        self.reads += 1
        if name not in self.secrets:
            raise ProviderError(f"no Secret {name}")
        return dict(self.secrets[name])


def test_a_keys_file_names_its_keys_skips_comments_and_names_bare_keys_by_line() -> None:
    text = f"# keys of the team\n\nalice: {ALICE}\n  {BOB}  \n"
    assert parse_keys_file(text, "keys.txt") == {"alice": ALICE, "line-4": BOB}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("alice: short-key", "keys.txt, line 1: the key of 'alice' has 9 characters"),
        (f"alice: {ALICE}\nalice: {BOB}", "line 2: the name 'alice' is taken"),
        (f"a b: {ALICE}", "'a b' is no key name"),
        (f"alice: {ALICE[:8]} {ALICE[8:]}", "has spaces"),
    ],
)
def test_a_malformed_keys_file_says_which_line_and_never_echoes_a_key(text: str, says: str) -> None:
    with pytest.raises(KeySourceError) as error:
        parse_keys_file(text, "keys.txt")
    assert says in str(error.value)
    assert "short-key" not in str(error.value) and ALICE[:8] not in str(error.value)


@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True),
        st.text("abcdef0123456789", min_size=MIN_KEY_CHARS, max_size=40),
        max_size=8,
    )
)
def test_every_key_written_to_a_file_is_read_back_under_its_name(keys: dict[str, str]) -> None:
    text = "".join(f"{name}: {key}\n" for name, key in keys.items())
    assert parse_keys_file(text, "f") == keys


def test_a_file_is_read_again_when_it_changes_and_a_removed_line_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(f"alice: {ALICE}\nbob: {BOB}\n")
    sources, endpoint, provider = KeySources(), EndpointSpec(api_keys=str(path)), FakeProvider({})
    first = sources.keys(endpoint, provider)
    assert first is not None and first.hashes == {key_hash(ALICE): "alice", key_hash(BOB): "bob"}
    path.write_text(f"alice: {ALICE}\n")
    os.utime(path, ns=(1, 1))  # a different modification time, whatever the clock's resolution
    after = sources.keys(endpoint, provider)
    assert after is not None and after.hashes == {key_hash(ALICE): "alice"} and after.error is None


def test_an_unreadable_source_keeps_the_last_keys_and_a_never_read_one_lets_nobody_in(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(f"alice: {ALICE}\n")
    sources, provider = KeySources(), FakeProvider({})
    sources.keys(EndpointSpec(api_keys=str(path)), provider)
    path.write_text("alice: oops\n")  # a bad edit must not lock everyone out, nor open the endpoint
    kept = sources.keys(EndpointSpec(api_keys=str(path)), provider)
    assert kept is not None and kept.hashes == {key_hash(ALICE): "alice"}
    assert kept.error is not None and "line 1" in kept.error
    never = sources.keys(EndpointSpec(api_keys=str(tmp_path / "missing.txt")), provider)
    assert never is not None and never.hashes == {} and "not found" in (never.error or "")


def test_a_secret_is_read_through_the_provider_at_most_once_per_ttl() -> None:
    now = [0.0]
    provider = SecretProvider({"sd-keys": {"alice": ALICE}})
    sources = KeySources(secret_ttl_s=5.0, clock=lambda: now[0])
    endpoint = EndpointSpec(api_keys="secret:sd-keys")
    assert endpoint.key_secret() == "sd-keys" and endpoint.key_file() is None
    for _ in range(3):
        found = sources.keys(endpoint, provider)
        assert found is not None and found.hashes == {key_hash(ALICE): "alice"}
    assert provider.reads == 1
    provider.secrets["sd-keys"] = {"bob": BOB}
    now[0] = 6.0
    found = sources.keys(endpoint, provider)
    assert found is not None and found.hashes == {key_hash(BOB): "bob"} and provider.reads == 2


def test_a_secret_on_a_provider_without_secrets_says_to_use_a_file() -> None:
    with pytest.raises(KeySourceError, match="name a keys file"):
        KeySources().check(EndpointSpec(api_keys="secret:sd-keys"), FakeProvider({}))
    KeySources().check(EndpointSpec(api_keys="secret:later"), SecretProvider({}))  # its cluster may not exist yet
    found = KeySources().keys(EndpointSpec(api_keys="secret:later"), SecretProvider({}))
    assert found is not None and found.hashes == {} and "no Secret later" in (found.error or ""), "refuses everyone"


def test_a_key_written_where_its_name_belongs_is_not_repeated_in_the_message() -> None:
    with pytest.raises(KeySourceError) as error:
        parse_keys_file(f"{ALICE}: alice", "keys.txt")
    assert ALICE not in str(error.value) and ALICE[:4] in str(error.value)
