"""Workload identity federation (RFC 7523 §2.1 jwt-bearer grant): Kubernetes- and GitHub-Actions-
shaped JWTs minted by PyJWT and joserfc (RS256 and ES256, keys from `cryptography`), with their
JWKS served by a small Python http.server on loopback, are exchanged at Mandate with `requests`.
The issued access tokens are checked with introspection and verified with PyJWT against
Mandate's published JWKS; every refusal must be 400 `invalid_grant` and audited."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt as pyjwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey, RSAKey

from conftest import CLI_TIMEOUT_S, RESOURCE, Mandate, child_env, running_mandate

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
INSECURE = {"MANDATE_ALLOW_INSECURE_FEDERATION": "true"}
RSA_KID = "k8s-rsa-1"
EC_KID = "gha-p256-1"
K8S_SUB = "system:serviceaccount:prod:billing"
K8S_AUD = "https://mandate.interop.test"
GHA_AUD = "https://github.com/acme"
GHA_SUB = "repo:acme/app:ref:refs/heads/main"
FED_RESOURCE = "https://federated.example.test"


# ---- the external issuer -----------------------------------------------------------------


@dataclass
class Issuer:
    base: str
    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    hits: list[str] = field(default_factory=list)

    @property
    def jwks_url(self) -> str:
        return self.base + "/jwks"

    @property
    def gha_issuer(self) -> str:
        return self.base + "/gha"

    def pem(self, key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def jwks(self) -> dict:
        rsa_jwk = pyjwt.algorithms.RSAAlgorithm.to_jwk(self.rsa_key.public_key(), as_dict=True)
        ec_jwk = pyjwt.algorithms.ECAlgorithm.to_jwk(self.ec_key.public_key(), as_dict=True)
        return {
            "keys": [
                {**rsa_jwk, "kid": RSA_KID, "alg": "RS256", "use": "sig"},
                {**ec_jwk, "kid": EC_KID, "alg": "ES256", "use": "sig"},
            ]
        }

    def k8s_claims(self, **changes) -> dict:
        now = int(time.time())
        claims = {
            "iss": self.base,
            "sub": K8S_SUB,
            "aud": [K8S_AUD],
            "exp": now + 600,
            "iat": now,
            "nbf": now,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": "prod",
                "serviceaccount": {"name": "billing", "uid": str(uuid.uuid4())},
                "pod": {"name": "billing-5d8f7c9b4-q7x2z", "uid": str(uuid.uuid4())},
            },
        }
        claims.update(changes)
        return claims

    def gha_claims(self, **changes) -> dict:
        now = int(time.time())
        claims = {
            "iss": self.gha_issuer,
            "sub": GHA_SUB,
            "aud": GHA_AUD,
            "exp": now + 300,
            "iat": now,
            "nbf": now - 5,
            "jti": str(uuid.uuid4()),
            "repository": "acme/app",
            "repository_owner": "acme",
            "ref": "refs/heads/main",
            "ref_type": "branch",
            "workflow": "deploy",
            "job_workflow_ref": "acme/app/.github/workflows/deploy.yml@refs/heads/main",
            "environment": "production",
            "actor": "octocat",
            "run_id": "987654321",
        }
        claims.update(changes)
        return claims

    # Signing, with two independent libraries.

    def pyjwt_sign(self, claims: dict, alg: str, kid: str | None = None, typ: str | None = "JWT") -> str:
        key = self.rsa_key if alg == "RS256" else self.ec_key
        headers = {"kid": kid or (RSA_KID if alg == "RS256" else EC_KID), "typ": typ}
        return pyjwt.encode(claims, key, algorithm=alg, headers=headers)

    def joserfc_sign(self, claims: dict, alg: str) -> str:
        if alg == "RS256":
            key, kid = RSAKey.import_key(self.pem(self.rsa_key)), RSA_KID
        else:
            key, kid = ECKey.import_key(self.pem(self.ec_key)), EC_KID
        return jose_jwt.encode({"alg": alg, "kid": kid, "typ": "JWT"}, claims, key)


def serve_issuer(issuer: Issuer) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            issuer.hits.append(self.path)
            if self.path != "/jwks":
                self.send_error(404)
                return
            body = json.dumps(issuer.jwks()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "public, max-age=300")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    issuer.base = f"http://127.0.0.1:{server.server_address[1]}"
    return server


@pytest.fixture(scope="module")
def issuer():
    made = Issuer(base="", rsa_key=rsa.generate_private_key(65537, 2048), ec_key=ec.generate_private_key(ec.SECP256R1()))
    server = serve_issuer(made)
    yield made
    server.shutdown()


# ---- a Mandate with insecure federation (loopback issuer) ---------------------------------


def cli_insecure(m: Mandate, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The CLI with the server's own federation setting: conftest's child_env strips every
    MANDATE_* variable, so this one is passed explicitly."""
    argv = [str(m.bin), "--data-dir", str(m.data_dir), *args]
    proc = subprocess.run(argv, env={**child_env(), **INSECURE}, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def fed(mandate_bin: Path, tmp_path_factory: pytest.TempPathFactory, issuer: Issuer):
    root = tmp_path_factory.mktemp("mandate-federation")
    with running_mandate(mandate_bin, root, extra_env=INSECURE) as m:
        cli_insecure(m, "owner", "create", "alice")
        cli_insecure(m, "resource", "create", RESOURCE, "--scope", "read", "--scope", "write")
        cli_insecure(m, "agent", "create", "billing", "--owner", "alice", "--scope", "read")
        cli_insecure(m, "agent", "create", "deployer", "--owner", "alice", "--scope", "read", "--scope", "write")
        cli_insecure(m, "agent", "create", "batch", "--owner", "alice", "--scope", "read")
        common = ["--jwks-url", issuer.jwks_url]
        cli_insecure(
            m, "trust", "add-federation", "k8s", "--issuer", issuer.base, *common, "--audience", K8S_AUD,
            "--subject", K8S_SUB, "--claim", "/kubernetes.io/namespace=prod", "--agent", "billing",
        )  # fmt: skip
        cli_insecure(
            m, "trust", "add-federation", "k8s-batch", "--issuer", issuer.base, *common, "--audience", K8S_AUD,
            "--subject-prefix", "system:serviceaccount:batch:", "--claim", "/kubernetes.io/namespace=batch",
            "--agent", "batch",
        )  # fmt: skip
        cli_insecure(
            m, "trust", "add-federation", "gha", "--issuer", issuer.gha_issuer, *common, "--audience", GHA_AUD,
            "--subject-prefix", "repo:acme/app:", "--claim", "repository=acme/app", "--claim", "ref=refs/heads/main",
            "--claim", "environment=production", "--agent", "deployer", "--max-ttl-secs", "120",
        )  # fmt: skip
        yield m


def exchange(m: Mandate, assertion: str, request_id: str | None = None, **extra) -> requests.Response:
    body = {"grant_type": JWT_BEARER, "assertion": assertion, "resource": RESOURCE, **extra}
    headers = {"x-request-id": request_id} if request_id else {}
    return requests.post(m.token_endpoint, data=body, headers=headers, timeout=10)


def audit_entries(m: Mandate, tmp_path: Path) -> list[dict]:
    out = tmp_path / f"audit-{uuid.uuid4()}.jsonl"
    cli_insecure(m, "audit", "export", "--out", str(out))
    return [json.loads(line)["entry"] for line in out.read_text().splitlines() if "entry" in json.loads(line)]


def verify_with_mandate_jwks(m: Mandate, token: str) -> dict:
    jwks = pyjwt.PyJWKSet.from_json(m.jwks_text())
    kid = pyjwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    return pyjwt.decode(token, key, algorithms=["EdDSA", "ES256"], audience=RESOURCE, issuer=m.base_url)


# ---- accepted exchanges ------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape,alg,library",
    [("k8s", "RS256", "pyjwt"), ("k8s", "ES256", "joserfc"), ("gha", "RS256", "joserfc"), ("gha", "ES256", "pyjwt")],
)
def test_external_tokens_become_agent_tokens(fed, issuer, shape, alg, library):
    claims = issuer.k8s_claims() if shape == "k8s" else issuer.gha_claims()
    if library == "pyjwt":
        # Kubernetes tokens carry no `typ`; GitHub's say JWT.
        assertion = issuer.pyjwt_sign(claims, alg, typ=None if shape == "k8s" else "JWT")
    else:
        assertion = issuer.joserfc_sign(claims, alg)
    resp = exchange(fed, assertion)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Cache-Control"] == "no-store"
    body = resp.json()
    agent, rule, scope, ttl = {
        "k8s": ("billing", "k8s", "read", 300),
        "gha": ("deployer", "gha", "read write", 120),
    }[shape]
    assert body["token_type"] == "Bearer"
    assert body["scope"] == scope
    assert body["expires_in"] == ttl

    seen = fed.introspect(body["access_token"])
    assert seen["active"] is True
    assert seen["sub"] == f"spiffe://mandate.local/agent/{agent}"
    assert seen["aud"] == RESOURCE
    assert seen["scope"] == scope
    assert seen["client_id"] == f"federation:{rule}"
    assert seen["mandate_owner"] == "alice"
    assert seen["mandate_federated"] == {"iss": claims["iss"], "sub": claims["sub"], "rule": rule}

    verified = verify_with_mandate_jwks(fed, body["access_token"])
    assert verified["exp"] - verified["iat"] == ttl
    assert verified["mandate_federated"]["rule"] == rule


def test_the_jwks_is_fetched_once_and_cached(fed, issuer):
    before = len(issuer.hits)
    for _ in range(3):
        assert exchange(fed, issuer.pyjwt_sign(issuer.k8s_claims(), "RS256")).status_code == 200
    assert len(issuer.hits) == before, "served from the cache (max-age=300)"
    assert set(issuer.hits) == {"/jwks"}


def test_metadata_advertises_jwt_bearer(fed):
    doc = requests.get(fed.url("/.well-known/oauth-authorization-server"), timeout=10).json()
    assert JWT_BEARER in doc["grant_types_supported"]


def test_trust_list_shows_the_rules(fed):
    rules = json.loads(cli_insecure(fed, "--json", "trust", "list").stdout)
    assert [r["name"] for r in rules] == ["gha", "k8s", "k8s-batch"]
    k8s = rules[1]
    assert k8s["claims"] == {"/kubernetes.io/namespace": "prod"}
    assert k8s["subject_match"] == "exact" and rules[0]["subject_match"] == "prefix"


# ---- refusals ------------------------------------------------------------------------------


def _alg_mismatch(issuer: Issuer) -> str:
    # Signed by the EC key, but naming the RSA key: the key decides the algorithm.
    return issuer.pyjwt_sign(issuer.k8s_claims(), "ES256", kid=RSA_KID)


NEGATIVE = {
    "wrong-issuer": (lambda i: i.pyjwt_sign(i.k8s_claims(iss=i.base + "/other"), "RS256"), "no federation rule"),
    "wrong-audience": (lambda i: i.pyjwt_sign(i.k8s_claims(aud=["https://elsewhere"]), "RS256"), "audience"),
    "wrong-subject": (
        lambda i: i.joserfc_sign(i.k8s_claims(sub="system:serviceaccount:prod:other"), "RS256"),
        '"sub" does not match',
    ),
    "expired": (
        lambda i: i.pyjwt_sign(
            i.k8s_claims(exp=int(time.time()) - 120, iat=int(time.time()) - 3600, nbf=int(time.time()) - 3600),
            "RS256",
        ),
        "expired",
    ),
    "alg-mismatch": (_alg_mismatch, "algorithm"),
    "unknown-kid": (lambda i: i.pyjwt_sign(i.k8s_claims(), "RS256", kid="not-published"), "unknown"),
    "claim-unmet": (
        lambda i: i.pyjwt_sign(
            i.k8s_claims(**{"kubernetes.io": {"namespace": "dev", "serviceaccount": {"name": "billing"}}}), "RS256"
        ),
        "/kubernetes.io/namespace",
    ),
    "gha-wrong-environment": (lambda i: i.joserfc_sign(i.gha_claims(environment="staging"), "ES256"), "environment"),
    "access-token-typ": (lambda i: i.pyjwt_sign(i.k8s_claims(), "RS256", typ="at+jwt"), "type"),
}


@pytest.mark.parametrize("case", sorted(NEGATIVE))
def test_refusals_are_invalid_grant_and_audited(fed, issuer, tmp_path, case):
    make, expected = NEGATIVE[case]
    request_id = f"fed-{case}-{uuid.uuid4().hex[:8]}"
    resp = exchange(fed, make(issuer), request_id)
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["error"] == "invalid_grant"
    assert expected in body["error_description"], body
    assert resp.headers["Cache-Control"] == "no-store"
    event = next(e for e in audit_entries(fed, tmp_path) if e["correlation_id"] == request_id)
    assert event["action"] == "token.issue"
    assert event["decision"] == "deny"
    assert event["reason"] == "invalid_grant"


def test_a_jti_is_single_use(fed, issuer, tmp_path):
    assertion = issuer.joserfc_sign(issuer.gha_claims(), "RS256")
    assert exchange(fed, assertion).status_code == 200
    request_id = f"fed-replay-{uuid.uuid4().hex[:8]}"
    resp = exchange(fed, assertion, request_id)
    assert resp.status_code == 400
    assert resp.json() == {"error": "invalid_grant", "error_description": "the assertion was already used"}
    entries = audit_entries(fed, tmp_path)
    event = next(e for e in entries if e["correlation_id"] == request_id)
    assert event["decision"] == "deny" and "already used" in event["detail"]
    assert not any(assertion in json.dumps(e) for e in entries), "an assertion reached the audit log"


def test_presented_client_credentials_must_be_valid(fed, issuer):
    made = json.loads(cli_insecure(fed, "--json", "client", "create", "--agent", "billing").stdout)
    data = {"grant_type": JWT_BEARER, "resource": RESOURCE}
    bad = requests.post(
        fed.token_endpoint,
        data={**data, "assertion": issuer.pyjwt_sign(issuer.k8s_claims(), "RS256")},
        auth=(made["client_id"], "wrong"),
        timeout=10,
    )
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    good = requests.post(
        fed.token_endpoint,
        data={**data, "assertion": issuer.pyjwt_sign(issuer.k8s_claims(), "RS256")},
        auth=(made["client_id"], made["client_secret"]),
        timeout=10,
    )
    assert good.status_code == 200, good.text
    missing = requests.post(fed.token_endpoint, data=data, timeout=10)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"


def test_the_kill_switch_ends_federated_tokens(fed, issuer):
    claims = issuer.k8s_claims(sub="system:serviceaccount:batch:nightly")
    claims["kubernetes.io"]["namespace"] = "batch"
    resp = exchange(fed, issuer.pyjwt_sign(claims, "RS256", typ=None))
    assert resp.status_code == 200, resp.text
    token = resp.json()["access_token"]
    assert fed.introspect(token)["client_id"] == "federation:k8s-batch"
    cli_insecure(fed, "revoke", "--agent", "batch")
    assert fed.introspect(token) == {"active": False}


# ---- SSRF: the session server runs without insecure federation ----------------------------


def test_internal_jwks_urls_are_refused_without_insecure_mode(mandate, registry, issuer):
    port = issuer.base.rsplit(":", 1)[1]
    common = ["--audience", K8S_AUD, "--subject", K8S_SUB, "--agent", "bot"]
    literal = mandate.cli(
        "trust", "add-federation", "ssrf-literal", "--issuer", "https://cluster.example",
        "--jwks-url", f"https://127.0.0.1:{port}/jwks", *common, check=False,
    )  # fmt: skip
    assert literal.returncode != 0 and "loopback" in literal.stderr, literal.stderr
    plain = mandate.cli(
        "trust", "add-federation", "ssrf-http", "--issuer", issuer.base, "--jwks-url", issuer.jwks_url, *common,
        check=False,
    )  # fmt: skip
    assert plain.returncode != 0 and "https" in plain.stderr, plain.stderr

    # A host name is judged after resolution, at the exchange; Mandate never connects.
    mandate.cli(
        "trust", "add-federation", "ssrf-name", "--issuer", "https://cluster.example",
        "--jwks-url", f"https://localhost:{port}/jwks", *common,
    )  # fmt: skip
    hits = len(issuer.hits)
    assertion = issuer.pyjwt_sign(issuer.k8s_claims(iss="https://cluster.example"), "RS256")
    mandate.secrets_seen.append(assertion)  # the session's audit test checks it never reaches the log
    resp = exchange(mandate, assertion)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == "invalid_grant"
    assert "loopback" in resp.json()["error_description"]
    assert len(issuer.hits) == hits
