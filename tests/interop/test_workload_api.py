"""The SPIFFE Workload API driven by py-spiffe (HewlettPackard/py-spiffe, PyPI `spiffe`).

This module starts its own `mandate serve` with `--workload-socket` and 4-second X.509-SVIDs
(the session server from conftest.py serves no Workload API).  The caller attested on the socket
is this Python process: the agent is registered with its uid and the real path of its
interpreter, exactly what the kernel reports for it.  Certificates and signatures are checked
with `cryptography` and py-spiffe's own JWT validation, never with Mandate code.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from spiffe import JwtSvid, TrustDomain, WorkloadApiClient
from spiffe._proto import workload_pb2, workload_pb2_grpc
from spiffe.workloadapi.errors import FetchJwtSvidError, FetchX509SvidError, ValidateJwtSvidError

from conftest import Mandate, running_mandate

TRUST_DOMAIN = "mandate.local"
AGENT_NAME = "py-workload"
AGENT_ID = f"spiffe://{TRUST_DOMAIN}/agent/{AGENT_NAME}"
AUDIENCE = "https://api.example.test"
X509_TTL_S = 4
# Generous bound for an event due within seconds; the tests assert on content, not timing.
WAIT_S = 30.0


class WorkloadServer:
    def __init__(self, mandate: Mandate, socket_path: Path) -> None:
        self.mandate = mandate
        self.socket_path = socket_path

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket_path}"

    def client(self) -> WorkloadApiClient:
        return WorkloadApiClient(socket_path=self.endpoint, default_timeout=10)

    def audit_events(self) -> list[dict]:
        out = self.mandate.data_dir.parent / f"export-{uuid.uuid4().hex}.jsonl"
        self.mandate.cli("audit", "export", "--out", str(out))
        lines = out.read_text().splitlines()
        return [json.loads(line)["entry"] for line in lines if "entry" in json.loads(line)]


@pytest.fixture(scope="module")
def workload(mandate_bin: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("workload")
    socket_path = root / "run" / "workload.sock"
    env = {"MANDATE_X509_SVID_TTL_SECS": str(X509_TTL_S)}
    with running_mandate(mandate_bin, root, ("--workload-socket", str(socket_path)), env) as mandate:
        assert mandate.banner.get("workload") == f"unix://{socket_path}", mandate.banner
        # The kernel reports the interpreter's real path for this process, and its real uid.
        exe = os.path.realpath(sys.executable)
        assert exe == os.readlink("/proc/self/exe")
        mandate.cli("owner", "create", "alice")
        mandate.cli(
            "agent", "create", AGENT_NAME, "--owner", "alice",
            "--selector", f"unix:uid:{os.getuid()}", "--selector", f"unix:path:{exe}",
        )
        yield WorkloadServer(mandate, socket_path)
    assert not socket_path.exists(), "the server removes its socket on shutdown"


def _serial(cert: x509.Certificate) -> int:
    return cert.serial_number


def test_x509_svid_chains_to_the_fetched_bundle(workload: WorkloadServer) -> None:
    with workload.client() as client:
        svid = client.fetch_x509_svid()
        bundles = client.fetch_x509_bundles()
    assert str(svid.spiffe_id) == AGENT_ID
    bundle = bundles.get_bundle_for_trust_domain(TrustDomain(TRUST_DOMAIN))
    assert bundle is not None and bundle.x509_authorities
    leaf = svid.leaf
    issuers = [ca for ca in bundle.x509_authorities if ca.subject == leaf.issuer]
    assert issuers, "the leaf's issuer is in the bundle"
    issuers[0].public_key()  # a parseable key
    leaf.verify_directly_issued_by(issuers[0])  # raises if the signature does not verify
    # The private key handed out belongs to the certificate.
    assert svid.private_key.public_key().public_numbers() == leaf.public_key().public_numbers()
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime.total_seconds() <= X509_TTL_S + 60, lifetime  # TTL plus a small backdate


def test_jwt_svid_validates_locally_and_on_the_server(workload: WorkloadServer) -> None:
    with workload.client() as client:
        svid = client.fetch_jwt_svid(audience={AUDIENCE})
        assert str(svid.spiffe_id) == AGENT_ID
        assert svid.audience == {AUDIENCE}
        bundle = client.fetch_jwt_bundles().get_bundle_for_trust_domain(TrustDomain(TRUST_DOMAIN))
        assert bundle is not None
        local = JwtSvid.parse_and_validate(svid.token, bundle, {AUDIENCE})
        assert str(local.spiffe_id) == AGENT_ID
        remote = client.validate_jwt_svid(svid.token, AUDIENCE)
        assert str(remote.spiffe_id) == AGENT_ID
        with pytest.raises(ValidateJwtSvidError) as refused:
            client.validate_jwt_svid(svid.token, "https://other.example.test")
        assert refused.value.__cause__.code() == grpc.StatusCode.INVALID_ARGUMENT
    events = workload.audit_events()
    issued = [e for e in events if e["action"] == "svid.jwt.issue" and e["decision"] == "allow"]
    assert issued and issued[-1]["agent"] == AGENT_ID
    assert svid.token not in json.dumps(events), "tokens never reach the audit log"


def test_the_stream_delivers_a_rotated_svid(workload: WorkloadServer) -> None:
    updates: queue.Queue = queue.Queue()
    with workload.client() as client:
        handle = client.stream_x509_contexts(on_success=updates.put, on_error=updates.put)
        try:
            first = updates.get(timeout=WAIT_S)
            assert not isinstance(first, Exception), first
            first_leaf = first.default_svid.leaf
            while True:
                update = updates.get(timeout=WAIT_S)
                assert not isinstance(update, Exception), update
                if _serial(update.default_svid.leaf) != _serial(first_leaf):
                    break
        finally:
            handle.cancel()
    rotated = update.default_svid
    assert str(rotated.spiffe_id) == AGENT_ID
    assert rotated.leaf.not_valid_after_utc > first_leaf.not_valid_after_utc
    bundle = update.x509_bundle_set.get_bundle_for_trust_domain(TrustDomain(TRUST_DOMAIN))
    assert any(ca.subject == rotated.leaf.issuer for ca in bundle.x509_authorities)


def test_requests_without_the_security_header_are_invalid(workload: WorkloadServer) -> None:
    with grpc.insecure_channel(f"unix:{workload.socket_path}") as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        with pytest.raises(grpc.RpcError) as unary:
            stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=[AUDIENCE]), timeout=10)
        assert unary.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as streaming:
            next(iter(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), timeout=10)))
        assert streaming.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # The same call with the header succeeds.
        answer = stub.FetchJWTSVID(
            workload_pb2.JWTSVIDRequest(audience=[AUDIENCE]), metadata=[("workload.spiffe.io", "true")], timeout=10
        )
        assert answer.svids[0].spiffe_id == AGENT_ID


def test_an_unregistered_caller_is_denied_and_audited(workload: WorkloadServer) -> None:
    # Runs last in this module: it removes the registration this process was attested by.
    workload.mandate.cli("agent", "delete", AGENT_NAME)
    with workload.client() as client:
        with pytest.raises(FetchX509SvidError) as x509_denied:
            client.fetch_x509_svid()
        assert x509_denied.value.__cause__.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(FetchJwtSvidError) as jwt_denied:
            client.fetch_jwt_svid(audience={AUDIENCE})
        assert jwt_denied.value.__cause__.code() == grpc.StatusCode.PERMISSION_DENIED
    denials = [e for e in workload.audit_events() if e["action"] == "workload.attest" and e["decision"] == "deny"]
    assert len(denials) >= 2
    assert f"unix:uid:{os.getuid()}" in denials[-1]["detail"]
