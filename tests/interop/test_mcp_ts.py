"""The MCP TypeScript SDK (npm `@modelcontextprotocol/sdk`) against Mandate and the guard-protected
example MCP server.  The SDK's `auth()` discovers everything from the MCP server's 401 (RFC 9728 ->
RFC 8414), identifies the client by a Client ID Metadata Document or by dynamic registration (RFC
7591), runs the PKCE code flow (the sign-in and consent pages are driven headlessly), calls tools
over Streamable HTTP with the resulting token, and refreshes it.  `mcp_ts/flow.mjs` does the
protocol work; this file sets up the servers and checks the outcome.

The SDK only accepts `https://` metadata-document URLs, so the document is served over TLS on
loopback with a throwaway CA that Mandate trusts through SSL_CERT_FILE (in insecure-fetch mode,
which allows loopback targets)."""

from __future__ import annotations

import contextlib
import datetime
import http.server
import ipaddress
import json
import ssl
import subprocess
import threading
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import OWNER, Mandate, child_env, free_port, running_mandate, running_mcp_resource

HERE = Path(__file__).resolve().parent
PASSWORD = "correct horse battery staple"
REDIRECT_URI = "http://127.0.0.1:9/callback"
SCOPES = ("notes:read", "notes:write")


def _cert(subject: str, key, issuer_name: x509.Name, issuer_key, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_tls_files(root: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1: (ca.pem, server.pem, server.key)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mandate interop CA")])
    ca = _cert("mandate interop CA", ca_key, ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert("127.0.0.1", server_key, ca_name, ca_key, ca=False)
    paths = root / "ca.pem", root / "server.pem", root / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


@contextlib.contextmanager
def serving_document(root: Path):
    """Serves the client's metadata document over https on loopback; yields (url, hit counter)."""
    _, cert, key = make_tls_files(root)
    port = free_port()
    url = f"https://127.0.0.1:{port}/clients/mcp-ts.json"
    document = json.dumps({
        "client_id": url,
        "client_name": "MCP TypeScript SDK interop",
        "redirect_uris": [REDIRECT_URI],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        "application_type": "native",
    }).encode()
    hits = {"count": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            hits["count"] += 1
            if self.path != "/clients/mcp-ts.json":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "max-age=300")
            self.send_header("Content-Length", str(len(document)))
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield url, hits
    finally:
        httpd.shutdown()
        httpd.server_close()


def set_password(mandate: Mandate, owner: str, password: str) -> None:
    argv = [str(mandate.bin), "--data-dir", str(mandate.data_dir), "owner", "set-password", owner]
    proc = subprocess.run(argv, input=password + "\n", env=child_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def setup(mandate_bin: Path, tmp_path_factory: pytest.TempPathFactory):
    """Its own Mandate (insecure fetch on, trusting the test CA), the MCP server, the document."""
    root = tmp_path_factory.mktemp("mcp-ts")
    ca_path = root / "ca.pem"
    with serving_document(root) as (document_url, hits):
        env = {"MANDATE_ALLOW_INSECURE_FEDERATION": "true", "SSL_CERT_FILE": str(ca_path)}
        with running_mandate(mandate_bin, root, extra_env=env) as mandate:
            mandate.cli("owner", "create", OWNER)
            set_password(mandate, OWNER, PASSWORD)
            with running_mcp_resource(mandate.base_url, root, " ".join(SCOPES)) as resource:
                scope_args = [arg for scope in SCOPES for arg in ("--scope", scope)]
                mandate.cli("resource", "create", resource, *scope_args)
                yield {"mandate": mandate, "resource": resource, "document_url": document_url, "hits": hits}


def run_flow(setup: dict, mode: str) -> dict:
    argv = ["node", str(HERE / "mcp_ts" / "flow.mjs"), setup["resource"], OWNER, PASSWORD, REDIRECT_URI, mode]
    if mode == "cimd":
        argv.append(setup["document_url"])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=child_env())
    assert proc.returncode == 0, f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_common(result: dict, setup: dict) -> None:
    mandate: Mandate = setup["mandate"]
    resource = setup["resource"]
    # Discovery: the 401 pointed at the PRM, which named Mandate.
    assert result["challenge_status"] == 401
    assert result["resource_metadata_url"], result
    assert result["prm_resource"] == resource
    assert result["issuer"].rstrip("/") == mandate.base_url
    # The authorization request the SDK built.
    request = result["authorization_request"]
    assert result["first_auth"] == "REDIRECT"
    assert request["code_challenge_method"] == "S256"
    assert request["resource"] == resource
    assert request["client_id"] == result["client_id"]
    # The scope comes from the 401 challenge (MCP scope selection), here what tools need to run.
    assert result["challenge_scope"] and set(result["challenge_scope"].split()) <= set(SCOPES)
    assert request["scope"] == result["challenge_scope"]
    # RFC 9207: the authorization response named the issuer; state came back.
    assert result["callback_iss"] == mandate.base_url
    assert result["callback_state_matches"] is True
    # Tokens, used with the SDK's MCP client.
    assert result["second_auth"] == "AUTHORIZED"
    assert result["has_refresh_token"] is True
    claims = jwt.decode(result["access_token"], options={"verify_signature": False})
    assert claims["aud"] == resource
    assert claims["sub"] == OWNER
    assert claims["client_id"] == result["client_id"]
    assert "whoami" in result["tools"]
    assert result["whoami"]["sub"] == OWNER
    assert result["whoami"]["client_id"] == result["client_id"]
    assert set(result["whoami"]["scope"].split()) == set(request["scope"].split())
    # The refresh the SDK made: a new access token and a rotated refresh token; the old one is dead.
    assert result["refresh_auth"] == "AUTHORIZED"
    assert result["access_token_changed"] is True
    assert result["refresh_token_rotated"] is True
    assert result["whoami_after_refresh"]["sub"] == OWNER
    assert result["old_refresh_error"] == "invalid_grant", "the rotated-out refresh token was accepted again"
    # Reuse of a rotated-out refresh token revokes the whole family (OAuth 2.1 §4.3.1), so even
    # the access token that just worked at the MCP server is dead now.
    for token in (result["access_token"], result["refreshed_access_token"]):
        assert mandate.introspect(token)["active"] is False


def test_sdk_identifies_itself_with_a_client_id_metadata_document(setup: dict) -> None:
    before = setup["hits"]["count"]
    result = run_flow(setup, "cimd")
    assert result["as_metadata"]["client_id_metadata_document_supported"] is True
    assert result["client_id"] == setup["document_url"], "the SDK used the metadata document URL as client_id"
    check_common(result, setup)
    # Mandate fetched the document (over TLS) and then answered from its cache.
    assert setup["hits"]["count"] - before >= 1
    listed = setup["mandate"].cli_json("client", "list")
    assert all(c["client_id"] != setup["document_url"] for c in listed), "a metadata document client is not stored"


def test_sdk_registers_dynamically_without_a_metadata_document(setup: dict) -> None:
    result = run_flow(setup, "dcr")
    assert result["as_metadata"]["registration_endpoint"] == setup["mandate"].url("/oauth2/register")
    assert result["client_id"].startswith("dyn."), result["client_id"]
    check_common(result, setup)
    listed = setup["mandate"].cli_json("client", "list")
    registered = [c for c in listed if c["client_id"] == result["client_id"]]
    assert registered and registered[0]["auth_method"] == "none"
    assert registered[0]["agent"] is None
