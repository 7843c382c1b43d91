"""RFC 9068 JWT access tokens, verified by three independent JOSE libraries against the
published JWK Set, plus tamper detection."""

import hashlib
import json
import time
import warnings

import jwt as pyjwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from jwcrypto import jwk as jwc_jwk
from jwcrypto import jwt as jwc_jwt

from conftest import AGENT_SPIFFE, OWNER, RESOURCE, b64url, b64url_decode

REQUIRED_CLAIMS = ["iss", "sub", "aud", "exp", "iat", "jti", "client_id", "scope"]


@pytest.fixture()
def issued(mandate, registry):
    resp = mandate.token_request(
        {"scope": "read"}, auth=(registry.basic["client_id"], registry.basic["client_secret"])
    )
    assert resp.status_code == 200, resp.text
    return resp


def test_token_response_shape(issued):
    body = issued.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "read"
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    # RFC 6749 §5.1: responses carrying tokens must not be cached.
    assert issued.headers["cache-control"] == "no-store"
    assert issued.headers["pragma"] == "no-cache"


def test_pyjwt_verifies_with_pyjwkclient(mandate, metadata, registry, issued):
    token = issued.json()["access_token"]
    header = pyjwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "EdDSA"

    client = pyjwt.PyJWKClient(metadata["jwks_uri"], cache_keys=False)
    signing_key = client.get_signing_key_from_jwt(token)
    assert signing_key.key_id == header["kid"]
    claims = pyjwt.decode(
        token,
        signing_key.key,
        algorithms=["EdDSA"],
        audience=RESOURCE,
        issuer=metadata["issuer"],
        options={"require": REQUIRED_CLAIMS},
    )
    now = int(time.time())
    assert claims["iss"] == mandate.base_url
    assert claims["sub"] == AGENT_SPIFFE
    assert claims["aud"] == RESOURCE
    assert claims["client_id"] == registry.basic["client_id"]
    assert claims["scope"] == "read"
    assert claims["mandate_owner"] == OWNER
    assert claims["exp"] - claims["iat"] == 300
    assert abs(claims["iat"] - now) <= 5
    assert len(claims["jti"]) >= 16

    # The same key through PyJWKSet built from the fetched document.
    jwk_set = pyjwt.PyJWKSet.from_json(mandate.jwks_text())
    assert pyjwt.decode(token, jwk_set[header["kid"]].key, algorithms=["EdDSA"], audience=RESOURCE) == claims

    # A verifier for a different resource must refuse it (RFC 9068 §4: audience check).
    with pytest.raises(pyjwt.InvalidAudienceError):
        pyjwt.decode(token, signing_key.key, algorithms=["EdDSA"], audience="https://other.example.test")


def test_joserfc_verifies_and_validates_claims(mandate, registry, issued):
    token = issued.json()["access_token"]
    key_set = KeySet.import_key_set(json.loads(mandate.jwks_text()))
    with warnings.catch_warnings():
        # joserfc flags "EdDSA" as superseded by RFC 9864's "Ed25519"; it is still RFC 8037's name.
        warnings.simplefilter("ignore")
        decoded = jose_jwt.decode(token, key_set, algorithms=["EdDSA"])
    assert decoded.header["typ"] == "at+jwt"
    assert decoded.header["alg"] == "EdDSA"
    registry_ = jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": mandate.base_url},
        aud={"essential": True, "value": RESOURCE},
        exp={"essential": True},
        iat={"essential": True},
        sub={"essential": True, "value": AGENT_SPIFFE},
        client_id={"essential": True, "value": registry.basic["client_id"]},
        jti={"essential": True},
        scope={"essential": True, "value": "read"},
        mandate_owner={"essential": True, "value": OWNER},
    )
    registry_.validate(decoded.claims)

    wrong_aud = jose_jwt.JWTClaimsRegistry(aud={"essential": True, "value": "https://other.example.test"})
    with pytest.raises(JoseError):
        wrong_aud.validate(decoded.claims)
    # Validated as if five minutes and a bit later: expired.
    later = jose_jwt.JWTClaimsRegistry(now=decoded.claims["exp"] + 1, exp={"essential": True})
    with pytest.raises(JoseError):
        later.validate(decoded.claims)


def test_jwcrypto_verifies_and_checks_claims(mandate, registry, issued):
    token = issued.json()["access_token"]
    key_set = jwc_jwk.JWKSet.from_json(mandate.jwks_text())
    verified = jwc_jwt.JWT(
        jwt=token,
        key=key_set,
        algs=["EdDSA"],
        check_claims={
            "iss": mandate.base_url,
            "aud": RESOURCE,
            "sub": AGENT_SPIFFE,
            "exp": None,
            "iat": None,
            "jti": None,
            "client_id": registry.basic["client_id"],
        },
    )
    header = json.loads(verified.header)
    assert header["typ"] == "at+jwt"
    claims = json.loads(verified.claims)
    assert claims["mandate_owner"] == OWNER

    with pytest.raises(Exception):
        jwc_jwt.JWT(jwt=token, key=key_set, algs=["EdDSA"], check_claims={"aud": "https://other.example.test"})


def _rfc7638_thumbprint(jwk: dict) -> str:
    required = {"OKP": ("crv", "kty", "x"), "EC": ("crv", "kty", "x", "y")}[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in required}, sort_keys=True, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode()).digest())


def test_kids_are_rfc7638_thumbprints(mandate, issued):
    jwks = json.loads(mandate.jwks_text())
    token_kid = pyjwt.get_unverified_header(issued.json()["access_token"])["kid"]
    kids = [k["kid"] for k in jwks["keys"]]
    assert len(kids) == len(set(kids)), "duplicate kid in the JWK Set"
    assert token_kid in kids
    joserfc_set = KeySet.import_key_set(jwks)
    for k in jwks["keys"]:
        by_jwcrypto = jwc_jwk.JWK(**k).thumbprint()
        by_joserfc = joserfc_set.get_by_kid(k["kid"]).thumbprint()
        assert k["kid"] == by_jwcrypto == by_joserfc == _rfc7638_thumbprint(k)


def _flip_payload_char(token: str) -> str:
    head, payload, sig = token.split(".")
    i = len(payload) // 2  # an interior base64url character: all six bits are significant
    replacement = "A" if payload[i] != "A" else "B"
    return ".".join([head, payload[:i] + replacement + payload[i + 1 :], sig])


def test_tampered_token_is_rejected(mandate, metadata, issued):
    token = issued.json()["access_token"]
    assert mandate.introspect(token)["active"] is True
    key = pyjwt.PyJWKClient(metadata["jwks_uri"]).get_signing_key_from_jwt(token).key

    flipped = _flip_payload_char(token)
    assert flipped != token
    with pytest.raises(pyjwt.InvalidSignatureError):
        pyjwt.decode(flipped, key, algorithms=["EdDSA"], audience=RESOURCE)
    assert mandate.introspect(flipped) == {"active": False}

    # A meaningful edit: widen the scope and keep the original signature.
    head, payload, sig = token.split(".")
    claims = json.loads(b64url_decode(payload))
    claims["scope"] = "read write"
    widened = ".".join([head, b64url(json.dumps(claims).encode()), sig])
    with pytest.raises(pyjwt.InvalidSignatureError):
        pyjwt.decode(widened, key, algorithms=["EdDSA"], audience=RESOURCE)
    assert mandate.introspect(widened) == {"active": False}

    # Re-signed by a stranger under Mandate's kid.
    forged = pyjwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers=pyjwt.get_unverified_header(token))
    assert mandate.introspect(forged) == {"active": False}

    # alg=none with Mandate's claims.
    none_header = b64url(json.dumps({"alg": "none", "typ": "at+jwt"}).encode())
    assert mandate.introspect(f"{none_header}.{payload}.") == {"active": False}

    # The untouched token is still active.
    assert mandate.introspect(token)["active"] is True


def test_introspection_echoes_the_token_claims(mandate, registry, issued):
    token = issued.json()["access_token"]
    claims = pyjwt.decode(token, options={"verify_signature": False})
    answer = mandate.introspect(token)
    assert answer["active"] is True
    assert answer["token_type"] == "Bearer"
    for name in ("iss", "sub", "aud", "client_id", "scope", "exp", "iat", "jti", "mandate_owner"):
        assert answer[name] == claims[name], name


def test_client_introspects_own_token_but_not_anothers(mandate, registry, issued):
    token = issued.json()["access_token"]  # issued to the basic client
    resp = requests.post(
        mandate.url("/oauth2/introspect"),
        data={"token": token},
        auth=(registry.basic["client_id"], registry.basic["client_secret"]),
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["active"] is True
    assert resp.json()["jti"] == pyjwt.decode(token, options={"verify_signature": False})["jti"]

    # A different client (not a resource server) must not learn about it.
    resp = requests.post(
        mandate.url("/oauth2/introspect"),
        data={"token": token, "client_id": registry.post["client_id"], "client_secret": registry.post["client_secret"]},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"active": False}

    # A wrong admin bearer is refused outright.
    resp = requests.post(
        mandate.url("/oauth2/introspect"),
        data={"token": token},
        headers={"Authorization": "Bearer not-the-admin-token"},
        timeout=10,
    )
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"


def test_revoked_token_is_inactive(mandate, registry, basic_token):
    assert mandate.introspect(basic_token)["active"] is True
    resp = requests.post(
        mandate.url("/oauth2/revoke"),
        data={"token": basic_token, "token_type_hint": "access_token"},
        auth=(registry.basic["client_id"], registry.basic["client_secret"]),
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    assert mandate.introspect(basic_token) == {"active": False}
    # RFC 7009 §2.2: revoking an invalid or unknown token is still a 200.
    resp = requests.post(
        mandate.url("/oauth2/revoke"),
        data={"token": "not-a-token"},
        auth=(registry.basic["client_id"], registry.basic["client_secret"]),
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
