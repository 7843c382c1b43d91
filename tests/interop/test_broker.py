"""`mandate broker run` with clients nobody on the project wrote: curl, Python requests and httpx,
configured only through the proxy and CA-bundle settings they already understand, reach a local
TLS upstream (Python http.server + ssl, its own test CA) through the broker. The upstream must
receive the vault's real credential while the client processes only ever held the placeholder.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import AGENT_SPIFFE, OWNER, Mandate, Registry, child_env, free_port

PASSPHRASE = "interop broker passphrase"
REAL_SECRET = "ghp_interop_REAL_secret_7f3a9c"
PLACEHOLDER = "MANDATE_PLACEHOLDER_GITHUB_WORK"


# ---- a test CA and a TLS upstream that records what it received ---------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_upstream_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA and a leaf for localhost / 127.0.0.1: (ca.pem, leaf.pem, leaf.key)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("interop upstream CA"))
        .issuer_name(_name("interop upstream CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem, leaf_pem, leaf_key_pem = directory / "upstream-ca.pem", directory / "leaf.pem", directory / "leaf.key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    leaf_pem.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    leaf_key_pem.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_pem, leaf_pem, leaf_key_pem


class Upstream:
    """HTTPS on 127.0.0.1 (certificate for localhost); keeps each request's Authorization."""

    def __init__(self, leaf: Path, key: Path):
        self.seen: list[str | None] = []
        seen = self.seen

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 (http.server's naming)
                seen.append(self.headers.get("Authorization"))
                body = json.dumps({"path": self.path}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(leaf), str(key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"https://localhost:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---- the broker ------------------------------------------------------------------------------

def broker_env() -> dict[str, str]:
    return {**child_env(), "MANDATE_VAULT_PASSPHRASE": PASSPHRASE}


def broker_cli(mandate: Mandate, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    argv = [str(mandate.bin), "--data-dir", str(mandate.data_dir), "broker", *args]
    proc = subprocess.run(argv, env=broker_env(), input=stdin, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def broker(mandate: Mandate, registry: Registry, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("broker")
    # The session's audit test checks that no secret it knows of ever reaches the log.
    mandate.secrets_seen.append(REAL_SECRET)
    broker_dir = root / "broker"
    upstream_ca, leaf, leaf_key = make_upstream_pki(root)
    upstream = Upstream(leaf, leaf_key)

    ca_bundle = root / "broker-ca.pem"
    broker_cli(mandate, "ca", "--broker-dir", str(broker_dir), "--out", str(ca_bundle))
    broker_cli(mandate, "vault", "init", "--broker-dir", str(broker_dir))
    broker_cli(mandate, "vault", "add", "github:work", "--kind", "api-key", "--broker-dir", str(broker_dir),
               stdin=REAL_SECRET + "\n")
    (broker_dir / "rules.toml").write_text(
        'unmatched = "refuse"\n'
        "[[rule]]\n"
        'host = "localhost"\n'
        'connection = "github:work"\n'
        'deny_methods = ["DELETE"]\n'
    )
    port = free_port()
    log = root / "broker.log"
    argv = [str(mandate.bin), "--data-dir", str(mandate.data_dir), "broker", "run",
            "--listen", f"127.0.0.1:{port}", "--broker-dir", str(broker_dir), "--agent", AGENT_SPIFFE,
            "--upstream-ca", str(upstream_ca), "--no-system-roots"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=broker_env())
    try:
        deadline = time.monotonic() + 20
        while "listening on" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the broker did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield {"proxy": f"http://127.0.0.1:{port}", "ca": ca_bundle, "upstream": upstream, "root": root}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        upstream.close()


def agent_env(broker: dict, **extra: str) -> dict[str, str]:
    """The agent's whole environment: the proxy, the CA bundle, a placeholder — no secret."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HTTPS_PROXY": broker["proxy"],
           "GITHUB_TOKEN": PLACEHOLDER, **extra}
    assert REAL_SECRET not in json.dumps(env)
    return env


# ---- tests -----------------------------------------------------------------------------------

def test_curl_through_the_broker_reaches_the_upstream_with_the_real_credential(broker):
    upstream: Upstream = broker["upstream"]
    before = len(upstream.seen)
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "--proxy", broker["proxy"], "--cacert", str(broker["ca"]),
         "-H", f"Authorization: Bearer {PLACEHOLDER}", "-w", "\n%{http_version}", upstream.url("/user")],
        capture_output=True, text=True, timeout=30, env=agent_env(broker),
    )
    assert out.returncode == 0, out.stderr
    body, version = out.stdout.rsplit("\n", 1)
    assert json.loads(body) == {"path": "/user"}
    # curl offers h2 by ALPN and the broker's interception accepts it.
    assert version == "2"
    assert upstream.seen[before:] == [f"Bearer {REAL_SECRET}"]


def test_curl_with_an_unknown_placeholder_is_refused_and_nothing_reaches_the_upstream(broker):
    upstream: Upstream = broker["upstream"]
    before = len(upstream.seen)
    out = subprocess.run(
        ["curl", "-sS", "--proxy", broker["proxy"], "--cacert", str(broker["ca"]),
         "-H", "Authorization: Bearer MANDATE_PLACEHOLDER_GITHUB_SOMEONE_ELSE",
         "-w", "\n%{http_code}", upstream.url("/user")],
        capture_output=True, text=True, timeout=30, env=agent_env(broker),
    )
    body, status = out.stdout.rsplit("\n", 1)
    assert status == "403"
    assert json.loads(body)["error"] == "unknown_placeholder"
    assert len(upstream.seen) == before


# The agent programs: they read the token from their environment, as real agents do, and print
# what they sent and what they hold, so the parent can check no secret was ever theirs.
REQUESTS_AGENT = """
import json, os, requests
token = os.environ["GITHUB_TOKEN"]
r = requests.get(os.environ["TARGET"], headers={"Authorization": "Bearer " + token}, timeout=20)
print(json.dumps({"status": r.status_code, "body": r.json(), "sent": {k.lower(): v for k, v in r.request.headers.items()},
                  "env": dict(os.environ)}))
"""

HTTPX_AGENT = """
import json, os
try:
    import httpx2 as httpx  # the maintained successor, already installed with the MCP SDK
except ImportError:
    import httpx
token = os.environ["GITHUB_TOKEN"]
r = httpx.get(os.environ["TARGET"], headers={"Authorization": "Bearer " + token}, timeout=20)
print(json.dumps({"status": r.status_code, "body": r.json(), "sent": {k.lower(): v for k, v in r.request.headers.items()},
                  "env": dict(os.environ)}))
"""


@pytest.mark.parametrize(
    "program,ca_variable",
    [(REQUESTS_AGENT, "REQUESTS_CA_BUNDLE"), (HTTPX_AGENT, "SSL_CERT_FILE")],
    ids=["requests", "httpx"],
)
def test_python_clients_with_only_proxy_and_ca_env_get_the_credential_injected(broker, program, ca_variable):
    upstream: Upstream = broker["upstream"]
    before = len(upstream.seen)
    env = agent_env(broker, TARGET=upstream.url("/repos"), **{ca_variable: str(broker["ca"])})
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["status"] == 200 and report["body"] == {"path": "/repos"}
    assert report["sent"]["authorization"] == f"Bearer {PLACEHOLDER}"
    everything_the_agent_had = out.stdout + out.stderr
    assert REAL_SECRET not in everything_the_agent_had
    assert upstream.seen[before:] == [f"Bearer {REAL_SECRET}"]


def test_every_credential_use_is_in_the_audit_log_without_the_secret(mandate: Mandate, broker):
    # Runs after the client tests in file order; at least their injections must be there.
    out = mandate.cli("audit", "query", "--action", "broker.", "--json").stdout
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    injected = [e for e in events if e["action"] == "broker.inject"]
    assert len(injected) >= 3, events
    for event in injected:
        assert event["agent"] == AGENT_SPIFFE
        assert event["owner"] == OWNER
        assert event["detail"].startswith("connection=github:work method=GET path=/")
    assert any(e["action"] == "broker.deny" and e["reason"] == "unknown_placeholder" for e in events)
    assert REAL_SECRET not in out
