"""private_key_jwt client authentication (RFC 7523 §2.2, RFC 7521 §4.2) with assertions made by
PyJWT (EdDSA) and joserfc (ES256) from keys generated with `cryptography`."""

import hashlib
import hmac
import json
import time

import jwt as pyjwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey
from jwcrypto import jwk as jwc_jwk

from conftest import AGENT, AGENT_SPIFFE, ASSERTION_TYPE, RESOURCE, b64url, new_jti

ED_CLIENT = "interop-ed25519"
EC_CLIENT = "interop-p256"
EC_KID = "p256-interop-1"
ASSERTION_TYP = "client-authentication+jwt"


def ed25519_public_jwk(private: Ed25519PrivateKey) -> dict:
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}


def p256_public_jwk(private: ec.EllipticCurvePrivateKey) -> dict:
    numbers = private.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }


class Keys:
    def __init__(self, ed: Ed25519PrivateKey, ec_key: ec.EllipticCurvePrivateKey):
        self.ed = ed
        self.ec = ec_key
        self.ed_jwk = ed25519_public_jwk(ed)
        self.ec_jwk = {**p256_public_jwk(ec_key), "kid": EC_KID, "alg": "ES256", "use": "sig"}
        # The Ed25519 JWK is registered without a kid, so Mandate names it by its thumbprint.
        self.ed_kid = jwc_jwk.JWK(**self.ed_jwk).thumbprint()


@pytest.fixture(scope="module")
def keys(mandate, registry, tmp_path_factory) -> Keys:
    k = Keys(Ed25519PrivateKey.generate(), ec.generate_private_key(ec.SECP256R1()))
    d = tmp_path_factory.mktemp("jwks")
    (d / "ed.json").write_text(json.dumps({"keys": [k.ed_jwk]}))
    (d / "ec.json").write_text(json.dumps({"keys": [k.ec_jwk]}))
    ed = mandate.create_client(AGENT, "--auth", "private_key_jwt", "--jwks", str(d / "ed.json"), "--id", ED_CLIENT)
    ec_made = mandate.create_client(AGENT, "--auth", "private_key_jwt", "--jwks", str(d / "ec.json"), "--id", EC_CLIENT)
    assert ed["client_id"] == ED_CLIENT and ed["client_secret"] is None
    assert ec_made["client_id"] == EC_CLIENT and ec_made["client_secret"] is None
    assert ed["token_endpoint_auth_method"] == "private_key_jwt"
    return k


def claims_for(client_id: str, aud: str, **overrides) -> dict:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": aud, "iat": now, "exp": now + 120, "jti": new_jti()}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def ed_assertion(keys: Keys, aud: str, *, kid: str | None = "thumbprint", signer=None, **overrides) -> str:
    headers = {"typ": ASSERTION_TYP}
    if kid == "thumbprint":
        headers["kid"] = keys.ed_kid
    elif kid is not None:
        headers["kid"] = kid
    return pyjwt.encode(claims_for(ED_CLIENT, aud, **overrides), signer or keys.ed, algorithm="EdDSA", headers=headers)


def ec_assertion(keys: Keys, aud: str, **overrides) -> str:
    private_jwk = ECKey.import_key(keys.ec.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    header = {"alg": "ES256", "kid": EC_KID, "typ": ASSERTION_TYP}
    return jose_jwt.encode(header, claims_for(EC_CLIENT, aud, **overrides), private_jwk, algorithms=["ES256"])


def post_assertion(mandate, assertion: str, client_id: str | None = None, **extra):
    data = {"client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}
    if client_id is not None:
        data["client_id"] = client_id
    data.update(extra)
    return mandate.token_request(data)


def assert_invalid_client(resp):
    assert resp.status_code == 401, (resp.status_code, resp.text)
    body = resp.json()
    assert body["error"] == "invalid_client", body
    assert "access_token" not in body
    assert resp.headers["cache-control"] == "no-store"


def assert_token_for(resp, client_id: str):
    assert resp.status_code == 200, resp.text
    claims = pyjwt.decode(resp.json()["access_token"], options={"verify_signature": False})
    assert claims["client_id"] == client_id
    assert claims["sub"] == AGENT_SPIFFE
    assert claims["aud"] == RESOURCE


# ---- accepted ------------------------------------------------------------------------------


def test_pyjwt_eddsa_assertion_gets_a_token(mandate, keys):
    assertion = ed_assertion(keys, mandate.base_url)
    assert pyjwt.get_unverified_header(assertion) == {"alg": "EdDSA", "typ": ASSERTION_TYP, "kid": keys.ed_kid}
    assert_token_for(post_assertion(mandate, assertion, client_id=ED_CLIENT), ED_CLIENT)


def test_eddsa_assertion_without_kid_or_client_id(mandate, keys):
    # RFC 7521 §4.2: client_id is optional with an assertion; the only Ed25519 key is used.
    assert_token_for(post_assertion(mandate, ed_assertion(keys, mandate.base_url, kid=None)), ED_CLIENT)


def test_assertion_audience_may_be_the_token_endpoint(mandate, keys):
    assertion = ed_assertion(keys, mandate.token_endpoint)
    assert_token_for(post_assertion(mandate, assertion, client_id=ED_CLIENT), ED_CLIENT)


def test_assertion_audience_may_be_an_array_naming_the_issuer(mandate, keys):
    assertion = ed_assertion(keys, [mandate.base_url, "https://someone-else.example"])
    assert_token_for(post_assertion(mandate, assertion), ED_CLIENT)


def test_plain_jwt_typ_is_accepted(mandate, keys):
    now = int(time.time())
    claims = {"iss": ED_CLIENT, "sub": ED_CLIENT, "aud": mandate.base_url, "exp": now + 60, "jti": new_jti()}
    assertion = pyjwt.encode(claims, keys.ed, algorithm="EdDSA")  # PyJWT's default typ "JWT"
    assert pyjwt.get_unverified_header(assertion)["typ"] == "JWT"
    assert_token_for(post_assertion(mandate, assertion), ED_CLIENT)


def test_joserfc_es256_assertion_gets_a_token(mandate, keys):
    assertion = ec_assertion(keys, mandate.base_url)
    assert pyjwt.get_unverified_header(assertion)["alg"] == "ES256"
    assert_token_for(post_assertion(mandate, assertion, client_id=EC_CLIENT), EC_CLIENT)


def test_assertion_authenticates_introspection(mandate, keys, basic_token):
    resp = requests.post(
        mandate.url("/oauth2/introspect"),
        data={
            "token": basic_token,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": ed_assertion(keys, mandate.url("/oauth2/introspect")),
        },
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    # Authenticated, but the token belongs to another client: RFC 7662 §2.2 allows only "active".
    assert resp.json() == {"active": False}


# ---- refused -------------------------------------------------------------------------------


def test_replayed_assertion_is_refused(mandate, keys):
    assertion = ed_assertion(keys, mandate.base_url)
    assert_token_for(post_assertion(mandate, assertion), ED_CLIENT)
    assert_invalid_client(post_assertion(mandate, assertion))
    assert_invalid_client(post_assertion(mandate, assertion, client_id=ED_CLIENT))


def test_concurrent_replay_yields_exactly_one_token(mandate, keys):
    """The same assertion sent eight times at once: the jti is consumed atomically."""
    from concurrent.futures import ThreadPoolExecutor

    assertion = ed_assertion(keys, mandate.base_url)
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda _: post_assertion(mandate, assertion), range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [401] * 7, [r.text for r in responses]
    for r in responses:
        if r.status_code == 401:
            assert r.json()["error"] == "invalid_client"


def test_replayed_es256_assertion_is_refused(mandate, keys):
    assertion = ec_assertion(keys, mandate.base_url)
    assert_token_for(post_assertion(mandate, assertion), EC_CLIENT)
    assert_invalid_client(post_assertion(mandate, assertion))


def test_replay_across_endpoints_is_refused(mandate, keys, basic_token):
    """An assertion burnt at the token endpoint cannot be reused at introspection."""
    assertion = ed_assertion(keys, mandate.base_url)
    assert_token_for(post_assertion(mandate, assertion), ED_CLIENT)
    resp = requests.post(
        mandate.url("/oauth2/introspect"),
        data={"token": basic_token, "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion},
        timeout=10,
    )
    assert_invalid_client(resp)


@pytest.mark.parametrize(
    "failing_request, error",
    [
        ({"resource": "https://unregistered.example.test"}, "invalid_target"),
        ({"scope": "write"}, "invalid_scope"),
        ({"grant_type": "password"}, "unsupported_grant_type"),
    ],
    ids=["invalid_target", "invalid_scope", "unsupported_grant_type"],
)
def test_assertion_is_single_use_even_when_the_grant_fails(mandate, keys, failing_request, error):
    """The assertion authenticated the client once (the server got past client authentication
    to a grant error), so its jti is used: presenting it again must be invalid_client, not a
    fresh token (RFC 7523 §3 item 7; Mandate documents assertions as single use)."""
    assertion = ed_assertion(keys, mandate.base_url)
    first = post_assertion(mandate, assertion, **failing_request)
    assert first.status_code == 400 and first.json()["error"] == error, first.text
    assert_invalid_client(post_assertion(mandate, assertion))


def test_assertion_is_single_use_even_when_introspection_request_fails(mandate, keys):
    assertion = ed_assertion(keys, mandate.url("/oauth2/introspect"))
    data = {"client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}
    mandate.secrets_seen.append(assertion)
    first = requests.post(mandate.url("/oauth2/introspect"), data=data, timeout=10)  # no `token`
    assert first.status_code == 400 and first.json()["error"] == "invalid_request", first.text
    again = requests.post(mandate.url("/oauth2/introspect"), data={**data, "token": "x.y.z"}, timeout=10)
    assert_invalid_client(again)


def test_used_assertion_does_not_reach_grant_checks(mandate, keys):
    """A replayed assertion must be refused as invalid_client before the request itself is
    evaluated; otherwise whoever holds a used assertion learns which resources are registered
    and which scopes the agent has (400 invalid_target / invalid_scope instead of 401)."""
    assertion = ed_assertion(keys, mandate.base_url)
    assert_token_for(post_assertion(mandate, assertion), ED_CLIENT)
    assert_invalid_client(post_assertion(mandate, assertion, resource="https://unregistered.example.test"))
    assert_invalid_client(post_assertion(mandate, assertion, scope="write"))


@pytest.mark.parametrize(
    "aud",
    [
        "https://evil.example.test",
        "https://evil.example.test/oauth2/token",
        "{issuer}/",  # trailing slash: not the issuer identifier (exact string match)
        "{issuer}/oauth2/token/",
        "http://localhost:{port}",  # the same server under another name
    ],
)
def test_wrong_audience_is_refused(mandate, keys, aud):
    port = mandate.base_url.rsplit(":", 1)[1]
    aud = aud.format(issuer=mandate.base_url, port=port)
    assert_invalid_client(post_assertion(mandate, ed_assertion(keys, aud)))


def test_missing_audience_is_refused(mandate, keys):
    assert_invalid_client(post_assertion(mandate, ed_assertion(keys, None)))


def test_expired_assertion_is_refused(mandate, keys):
    now = int(time.time())
    # Well past any clock-skew leeway.
    expired = ed_assertion(keys, mandate.base_url, iat=now - 900, exp=now - 600)
    assert_invalid_client(post_assertion(mandate, expired))
    expired_ec = ec_assertion(keys, mandate.base_url, iat=now - 900, exp=now - 600)
    assert_invalid_client(post_assertion(mandate, expired_ec))


def test_missing_exp_is_refused(mandate, keys):
    assert_invalid_client(post_assertion(mandate, ed_assertion(keys, mandate.base_url, exp=None)))


def test_missing_jti_is_refused(mandate, keys):
    assert_invalid_client(post_assertion(mandate, ed_assertion(keys, mandate.base_url, jti=None)))


def test_overlong_lifetime_is_refused(mandate, keys):
    now = int(time.time())
    assert_invalid_client(post_assertion(mandate, ed_assertion(keys, mandate.base_url, exp=now + 3600)))


def test_assertion_from_the_future_is_refused(mandate, keys):
    now = int(time.time())
    future = ed_assertion(keys, mandate.base_url, iat=now + 3600, nbf=now + 3600, exp=now + 3700)
    assert_invalid_client(post_assertion(mandate, future))


def test_issuer_must_equal_subject(mandate, keys):
    assert_invalid_client(post_assertion(mandate, ed_assertion(keys, mandate.base_url, iss=EC_CLIENT)))
    assert_invalid_client(post_assertion(mandate, ed_assertion(keys, mandate.base_url, iss="someone")))


def test_client_id_parameter_must_match_subject(mandate, keys):
    resp = post_assertion(mandate, ed_assertion(keys, mandate.base_url), client_id=EC_CLIENT)
    assert_invalid_client(resp)


def test_unregistered_key_is_refused(mandate, keys):
    stranger = Ed25519PrivateKey.generate()
    stranger_kid = jwc_jwk.JWK(**ed25519_public_jwk(stranger)).thumbprint()
    for kid in (None, keys.ed_kid, stranger_kid):
        assert_invalid_client(post_assertion(mandate, ed_assertion(keys, mandate.base_url, kid=kid, signer=stranger)))
    stranger_ec = ec.generate_private_key(ec.SECP256R1())
    forged = pyjwt.encode(
        claims_for(EC_CLIENT, mandate.base_url), stranger_ec, algorithm="ES256", headers={"kid": EC_KID}
    )
    assert_invalid_client(post_assertion(mandate, forged))


def test_another_clients_key_is_refused(mandate, keys):
    """The P-256 client's genuine key may not sign for the Ed25519 client."""
    forged = pyjwt.encode(
        claims_for(ED_CLIENT, mandate.base_url), keys.ec, algorithm="ES256", headers={"kid": EC_KID}
    )
    assert_invalid_client(post_assertion(mandate, forged))


def _hs256(header: dict, claims: dict, secret: bytes) -> str:
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + b64url(mac)


def _public_key_secrets(public_key, jwk: dict) -> list[bytes]:
    """Every byte string a confused verifier might use as the HMAC key."""
    return [
        public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        json.dumps(jwk).encode(),
        json.dumps(jwk, sort_keys=True, separators=(",", ":")).encode(),
        jwk["x"].encode(),
    ]


def test_hs256_with_public_key_as_secret_is_refused(mandate, keys):
    ed_pub = keys.ed.public_key()
    secrets = _public_key_secrets(ed_pub, keys.ed_jwk)
    secrets.append(ed_pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    for secret in secrets:
        for kid in (keys.ed_kid, None):
            header = {"alg": "HS256", "typ": ASSERTION_TYP}
            if kid:
                header["kid"] = kid
            forged = _hs256(header, claims_for(ED_CLIENT, mandate.base_url), secret)
            assert_invalid_client(post_assertion(mandate, forged))
    ec_pub = keys.ec.public_key()
    for secret in _public_key_secrets(ec_pub, keys.ec_jwk):
        header = {"alg": "HS256", "typ": ASSERTION_TYP, "kid": EC_KID}
        forged = _hs256(header, claims_for(EC_CLIENT, mandate.base_url), secret)
        assert_invalid_client(post_assertion(mandate, forged))


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(mandate, keys, alg):
    for client_id, kid in ((ED_CLIENT, keys.ed_kid), (EC_CLIENT, EC_KID)):
        header = b64url(json.dumps({"alg": alg, "typ": ASSERTION_TYP, "kid": kid}).encode())
        body = b64url(json.dumps(claims_for(client_id, mandate.base_url)).encode())
        assert_invalid_client(post_assertion(mandate, f"{header}.{body}."))
    # PyJWT's own unsigned encoding too.
    unsigned = pyjwt.encode(claims_for(ED_CLIENT, mandate.base_url), None, algorithm="none")
    assert_invalid_client(post_assertion(mandate, unsigned))


def test_truncated_signature_is_refused(mandate, keys):
    head, body, sig = ed_assertion(keys, mandate.base_url).split(".")
    assert_invalid_client(post_assertion(mandate, f"{head}.{body}.{sig[:-4]}"))
    assert_invalid_client(post_assertion(mandate, f"{head}.{body}."))


def test_header_alg_must_match_the_key(mandate, keys):
    """An Ed25519 signature presented as ES256 (and vice versa) must not verify."""
    claims = claims_for(ED_CLIENT, mandate.base_url)
    good = pyjwt.encode(claims, keys.ed, algorithm="EdDSA", headers={"kid": keys.ed_kid})
    _, body, sig = good.split(".")
    header = b64url(json.dumps({"alg": "ES256", "kid": keys.ed_kid, "typ": ASSERTION_TYP}).encode())
    assert_invalid_client(post_assertion(mandate, f"{header}.{body}.{sig}"))


def test_wrong_assertion_type_is_refused(mandate, keys):
    resp = mandate.token_request(
        {
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
            "client_assertion": ed_assertion(keys, mandate.base_url),
        }
    )
    assert resp.status_code in (400, 401), resp.text
    assert resp.json()["error"] in ("invalid_request", "invalid_client")


def test_private_key_jwt_client_has_no_secret_path(mandate, keys):
    """A private_key_jwt client cannot fall back to secret authentication."""
    resp = mandate.token_request({}, auth=(ED_CLIENT, ""))
    assert_invalid_client(resp)
    resp = mandate.token_request({"client_id": ED_CLIENT, "client_secret": "guess"})
    assert_invalid_client(resp)

