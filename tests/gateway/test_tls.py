"""HTTPS at the gateway (endpoint.tls): the service port speaks TLS only, its cookies are Secure, a renewed
certificate is served without a restart, and a keyed service whose keys are all gone refuses everyone."""

from __future__ import annotations

import os
import ssl
import time
from pathlib import Path

import httpx
import pytest
import trustme
from harness import FakeReplica, LoopThread, Running, backend, echo

from gpuroam.gateway import ServiceBackends

TXT2IMG = "/sdapi/v1/txt2img"


def issue(ca: trustme.CA, folder: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 from `ca`, written as the PEM files a spec names."""
    cert = ca.issue_cert("127.0.0.1")
    chain, key = folder / "cert.pem", folder / "key.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    return str(chain), str(key)


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def serve(gw: Running, replica: FakeReplica, tls: tuple[str, str] | None, **service: object) -> None:
    gw.loops.run(gw.gateway.apply([ServiceBackends("svc", gw.port, (backend(replica),), tls=tls, **service)]))  # type: ignore[arg-type]


def test_a_service_with_tls_speaks_https_only_and_its_session_cookie_is_secure(
    loops: LoopThread, start_gateway, tmp_path: Path
) -> None:
    ca = trustme.CA()
    replica = FakeReplica(loops, echo, name="r").start()
    gw: Running = start_gateway()
    serve(gw, replica, issue(ca, tmp_path))
    url = f"https://127.0.0.1:{gw.port}"
    with httpx.Client(verify=trusting(ca)) as client:
        first = client.get(f"{url}/sdapi/v1/progress")
        assert first.status_code == 200 and "Secure" in first.headers["set-cookie"]
        made = client.post(f"{url}{TXT2IMG}", json={"prompt": "x"})
        assert made.status_code == 200 and made.headers["x-gpuroam-replica"] == "r"
        assert made.json()["headers"]["x-forwarded-proto"] == "https"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{gw.port}/sdapi/v1/progress", timeout=5)  # plain HTTP gets no answer
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/sdapi/v1/progress", verify=trusting(trustme.CA()), timeout=5)  # nor a wrong CA


def test_a_certificate_renewed_in_place_serves_new_connections(
    loops: LoopThread, start_gateway, tmp_path: Path
) -> None:
    old, new = trustme.CA(), trustme.CA()
    replica = FakeReplica(loops, echo, name="r").start()
    gw: Running = start_gateway()
    files = issue(old, tmp_path)
    serve(gw, replica, files)
    url = f"https://127.0.0.1:{gw.port}/sdapi/v1/progress"
    assert httpx.get(url, verify=trusting(old)).status_code == 200
    issue(new, tmp_path)  # same paths, as certbot renews
    for path in files:
        os.utime(path, ns=(1, 1))  # changed, whatever the clock's resolution
    deadline = time.monotonic() + 5  # the gateway looks at the files once a second
    while True:
        try:
            assert httpx.get(url, verify=trusting(new)).status_code == 200
            break
        except httpx.ConnectError:
            assert time.monotonic() < deadline, "the renewed certificate was never served"
            time.sleep(0.1)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, verify=trusting(old))


def test_a_keyed_service_whose_keys_are_all_gone_refuses_everyone(loops: LoopThread, start_gateway) -> None:
    replica = FakeReplica(loops, echo, name="r").start()
    gw: Running = start_gateway()
    serve(gw, replica, None, api_keys={}, key_required=True)
    refused = httpx.post(f"{gw.url}{TXT2IMG}", json={}, headers={"Authorization": "Bearer anything-at-all-0123"})
    assert refused.status_code == 401
    serve(gw, replica, None, api_keys={}, key_required=False)
    assert httpx.post(f"{gw.url}{TXT2IMG}", json={}).status_code == 200, "only an owner's choice opens it"
