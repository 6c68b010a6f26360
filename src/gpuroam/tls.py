"""HTTPS for an endpoint: a server TLS context from a certificate and key in PEM files.

One place for the gateway (which serves with it) and the control plane (which checks the files when a
spec names them, so a bad file is a 422 at `up`, not a port that never opens). TLS 1.2 and newer only.
"""

from __future__ import annotations

import logging
import os
import ssl

log = logging.getLogger("gpuroam.tls")


class TlsError(ValueError):
    """The certificate or key cannot be used; the message says which file and what to fix."""


def server_context(certificate: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])  # the gateway speaks HTTP/1.1
    for path in (certificate, key):
        if not os.path.isfile(path):
            raise TlsError(f"TLS file {path} not found; give the PEM certificate and key files")
    try:
        context.load_cert_chain(certificate, key)
    except ssl.SSLError as error:
        raise TlsError(
            f"cannot use certificate {certificate} with key {key} ({error.reason or error}): both must be PEM, "
            "the key unencrypted, and the key must be the certificate's"
        ) from None
    except OSError as error:
        raise TlsError(f"cannot read TLS file {error.filename or certificate} ({error.strerror})") from None
    return context


class ServerTls:
    """A listener's TLS that follows its files: a certificate renewed in place (same paths, e.g. by certbot)
    serves new connections once `refresh` sees the files change; open connections go on with the old one.
    The listener keeps one context; each handshake is handed the newest (the SNI callback swaps it), so a
    pair that does not load (half written) is never half used."""

    def __init__(self, certificate: str, key: str) -> None:
        self.files = (certificate, key)
        self.context = server_context(certificate, key)
        self.context.sni_callback = self._newest
        self._current = self.context
        self._version = self._stat()
        self._failed: tuple[tuple[int, int], ...] = ()  # the files' version that last failed to load (said once)

    def _newest(self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        connection.context = self._current

    def _stat(self) -> tuple[tuple[int, int], ...]:
        try:
            return tuple((s.st_mtime_ns, s.st_size) for s in map(os.stat, self.files))
        except OSError:
            return ()

    def refresh(self) -> None:
        """Load the files again if they changed; a pair that does not load yet is tried on the next call."""
        version = self._stat()
        if not version or version == self._version:
            return
        try:
            self._current = server_context(*self.files)
        except TlsError as error:
            if version != self._failed:
                log.warning("renewed certificate does not load; serving the previous one", extra={"error": str(error)})
                self._failed = version
            return
        self._version = version
