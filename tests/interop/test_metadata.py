"""RFC 8414 authorization server metadata (and the OpenID discovery variant)."""

from urllib.parse import urlsplit

import pytest
import requests

ENDPOINTS = ("token_endpoint", "jwks_uri", "introspection_endpoint", "revocation_endpoint")


def test_banner_names_the_listen_address_and_issuer(mandate):
    assert mandate.banner["first"].startswith("Mandate ")
    assert mandate.banner["first"].endswith(f"listening on {mandate.base_url.removeprefix('http://')}")
    assert mandate.banner["issuer"] == mandate.base_url


@pytest.mark.parametrize("path", ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"])
def test_issuer_is_the_url_the_metadata_came_from(mandate, path):
    resp = requests.get(mandate.url(path), timeout=10)
    assert resp.status_code == 200
    assert resp.headers["content-type"].split(";")[0] == "application/json"
    doc = resp.json()
    # RFC 8414 §3.3: the issuer in the document must be identical to the issuer the metadata
    # URL was built from (the well-known suffix removed).
    fetched_from = resp.url.removesuffix(path)
    assert doc["issuer"] == fetched_from == mandate.base_url
    issuer = urlsplit(doc["issuer"])
    assert issuer.query == "" and issuer.fragment == ""

    for name in ENDPOINTS:
        url = doc[name]
        parts = urlsplit(url)
        assert parts.scheme == "http" and parts.netloc == issuer.netloc, (name, url)
        assert url.startswith(doc["issuer"] + "/"), (name, url)
    assert doc["token_endpoint"] == mandate.base_url + "/oauth2/token"
    assert doc["introspection_endpoint"] == mandate.base_url + "/oauth2/introspect"
    assert doc["revocation_endpoint"] == mandate.base_url + "/oauth2/revoke"
    assert doc["jwks_uri"] == mandate.base_url + "/.well-known/jwks.json"

    assert set(doc["grant_types_supported"]) == {
        "authorization_code",
        "refresh_token",
        "client_credentials",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "urn:ietf:params:oauth:grant-type:token-exchange",
        "urn:openid:params:grant-type:ciba",
    }
    assert doc["backchannel_authentication_endpoint"] == mandate.base_url + "/oauth2/bc-authorize"
    assert set(doc["token_endpoint_auth_methods_supported"]) == {
        "none",
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    }
    # OAuth 2.1 / MCP: PKCE S256 only, RFC 9207 iss, code flow only.
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert doc["response_types_supported"] == ["code"]
    assert doc["authorization_endpoint"] == mandate.base_url + "/oauth2/authorize"
    # Client identification: CIMD and RFC 7591 registration.
    assert doc["client_id_metadata_document_supported"] is True
    assert doc["registration_endpoint"] == mandate.base_url + "/oauth2/register"
    # ID-JAG: both roles (resource AS profile, IdP token type), and DPoP.
    assert doc["authorization_grant_profiles_supported"] == ["urn:ietf:params:oauth:grant-profile:id-jag"]
    assert doc["identity_chaining_requested_token_types_supported"] == ["urn:ietf:params:oauth:token-type:id-jag"]
    assert set(doc["dpop_signing_alg_values_supported"]) == {"EdDSA", "ES256"}
    # RFC 8414 §2: "none" MUST NOT be used in *_signing_alg_values_supported.
    assert "none" not in doc["token_endpoint_auth_signing_alg_values_supported"]
    assert set(doc["token_endpoint_auth_signing_alg_values_supported"]) == {"EdDSA", "ES256"}


def test_every_advertised_endpoint_exists(mandate, metadata):
    assert requests.get(metadata["jwks_uri"], timeout=10).status_code == 200
    for name in ("token_endpoint", "introspection_endpoint", "revocation_endpoint"):
        # An empty form post must be refused as an OAuth error, not as 404/405.
        resp = requests.post(metadata[name], data={}, timeout=10)
        assert resp.status_code in (400, 401), (name, resp.status_code, resp.text)
        assert "error" in resp.json(), (name, resp.text)


def test_jwks_is_served_as_a_jwk_set(mandate):
    resp = requests.get(mandate.url("/.well-known/jwks.json"), timeout=10)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/jwk-set+json"
    keys = resp.json()["keys"]
    assert {(k["kty"], k.get("crv"), k["alg"]) for k in keys} >= {("OKP", "Ed25519", "EdDSA"), ("EC", "P-256", "ES256")}
    for k in keys:
        assert "d" not in k, "private key material published"
        assert k["use"] == "sig"
