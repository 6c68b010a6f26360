"""API keys that a spec names (`endpoint.api_keys`): a keys file or a Kubernetes Secret, read while the service runs.

The source is the truth for its keys, as the store is for keys made with `gpuroam keys add`: a line
removed from the file (or an entry from the Secret) is refused by the gateway within seconds. A file
is read again when its modification time or size changes (one stat per feed poll); a Secret at most
every `secret_ttl_s`. A source that cannot be read keeps the keys last read from it, and a service
whose spec names a source is never open: with nothing read yet it refuses every caller (401).
Keys are hashed as soon as they are read; only the hashes leave this module.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gpuroam.providers.base import Provider, ProviderError, SecretSource
from gpuroam.spec import EndpointSpec

log = logging.getLogger("gpuroam.controller.keys")

MIN_KEY_CHARS = 16  # a key anyone could guess is no key
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_MAKE_ONE = "make one with `openssl rand -base64 32`"


class KeySourceError(ValueError):
    """A keys file or Secret that cannot be read or holds a malformed key: the message says where and what to fix."""


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_keys_file(text: str, origin: str) -> dict[str, str]:
    """NAME -> KEY from a keys file: one `NAME: KEY` per line, or a bare KEY (named `line-N`); blank lines and
    `# comments` are skipped."""
    keys: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, key = line.partition(":")
        name, key = (name.strip(), key.strip()) if colon else (f"line-{number}", line)
        where = f"{origin}, line {number}"
        _check(name, key, where)
        if name in keys:
            raise KeySourceError(f"{where}: the name {name!r} is taken by an earlier line; give each key its own name")
        keys[name] = key
    return keys


def check_secret_keys(data: Mapping[str, str], origin: str) -> dict[str, str]:
    """NAME -> KEY from a Secret's entries (entry name: the key's name, value: the key)."""
    for name, key in data.items():
        _check(name, key.strip(), f"{origin}, entry {name!r}")
    return {name: key.strip() for name, key in data.items()}


def _check(name: str, key: str, where: str) -> None:
    if not KEY_NAME.fullmatch(name):
        raise KeySourceError(f"{where}: {name!r} is no key name; use letters, digits, '.', '_' and '-' (at most 63)")
    if len(key) < MIN_KEY_CHARS or any(c.isspace() for c in key):
        # The key itself is never repeated in a message (messages reach logs), nor a "name" that may be one
        # written the wrong way round (KEY: NAME).
        shown = repr(name) if len(name) < MIN_KEY_CHARS else f"{name[:4]!r}..."
        raise KeySourceError(
            f"{where}: the key of {shown} has {len(key)} characters or has spaces; a key needs at least "
            f"{MIN_KEY_CHARS} characters and no spaces ({_MAKE_ONE})"
        )


def read_keys_file(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        raise KeySourceError(f"keys file {path} not found; create it (one 'NAME: KEY' per line)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise KeySourceError(f"cannot read keys file {path} ({error}); make it a readable UTF-8 file") from None
    return parse_keys_file(text, path)


def read_secret_keys(provider: Provider, name: str) -> dict[str, str]:
    if not isinstance(provider, SecretSource):
        raise KeySourceError(
            f"secret:{name}: this provider has no secrets (Kubernetes Secrets need --provider kubernetes or "
            "gke); name a keys file in endpoint.api_keys instead"
        )
    try:
        data = provider.read_secret(name)
    except ProviderError as error:
        raise KeySourceError(f"secret:{name}: {error}") from None
    return check_secret_keys(data, f"secret:{name}")


@dataclass(frozen=True)
class SourcedKeys:
    """What a spec's key source gives the gateway: SHA-256 -> name, and why it could not be read, if it could not."""

    hashes: dict[str, str]
    names: tuple[str, ...]
    error: str | None = None


@dataclass
class _Read:
    version: object  # a file's (mtime, size); a Secret's read time
    keys: SourcedKeys


class KeySources:
    """The keys each spec's source gives, read again when it may have changed; thread-safe (feed requests run
    on a thread pool)."""

    def __init__(self, secret_ttl_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.secret_ttl_s = secret_ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, _Read] = {}  # source -> the last read of it
        self._reading: set[str] = set()  # sources being read now

    def keys(self, endpoint: EndpointSpec, provider: Provider) -> SourcedKeys | None:
        """None when the spec names no source."""
        source = endpoint.api_keys
        if source is None:
            return None
        with self._lock:
            last = self._last.get(source)
            version = self._version(endpoint, last)
            if last is not None and version == last.version:
                return last.keys
            if source in self._reading:  # another request is reading it (a Secret over a slow API): the last keys
                return last.keys if last is not None else SourcedKeys({}, (), "not read yet")
            self._reading.add(source)
        try:  # the read itself outside the lock: a cluster timing out delays no other service's keys
            keys = self._read(endpoint, provider)
            read = SourcedKeys({key_hash(k): n for n, k in keys.items()}, tuple(keys))
        except KeySourceError as error:
            if last is None or last.keys.error != str(error):
                log.warning("cannot read API keys; keeping the last read", extra={"error": str(error)})
            kept = last.keys if last is not None else SourcedKeys({}, ())
            read = SourcedKeys(kept.hashes, kept.names, str(error))
        finally:
            with self._lock:
                self._reading.discard(source)
        if endpoint.key_secret() is not None:
            version = self.clock()  # a Secret's age counts from when its read ended
        with self._lock:
            self._last[source] = _Read(version, read)
        return read

    def check(self, endpoint: EndpointSpec, provider: Provider) -> None:
        """At `up`: a keys file is read now, past any cache (KeySourceError if it cannot be, or holds no key); a
        Secret only needs a provider that has them, since its cluster may not exist yet (the service then
        refuses every caller until the Secret can be read)."""
        secret = endpoint.key_secret()
        if secret is not None:
            if not isinstance(provider, SecretSource):
                read_secret_keys(provider, secret)  # raises, saying to use a file
            return
        if not self._read(endpoint, provider):
            raise KeySourceError(f"{endpoint.api_keys} holds no key; add one ('NAME: KEY' per line, or an entry)")

    def _version(self, endpoint: EndpointSpec, last: _Read | None) -> object:
        path = endpoint.key_file()
        if path is None:  # a Secret: read again once the last read is old enough
            now = self.clock()
            fresh = last is not None and isinstance(last.version, float) and now - last.version < self.secret_ttl_s
            return last.version if fresh and last is not None else now
        try:
            stat = os.stat(path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    @staticmethod
    def _read(endpoint: EndpointSpec, provider: Provider) -> dict[str, str]:
        path, secret = endpoint.key_file(), endpoint.key_secret()
        return read_keys_file(path) if path is not None else read_secret_keys(provider, secret or "")
