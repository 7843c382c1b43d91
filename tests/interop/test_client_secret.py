"""client_secret_basic and client_secret_post (RFC 6749 §2.3.1), driven by `requests`."""

import jwt as pyjwt
import requests
from requests.auth import HTTPBasicAuth

from conftest import AGENT_SPIFFE, OTHER_RESOURCE, RESOURCE


def _claims(resp):
    assert resp.status_code == 200, resp.text
    return pyjwt.decode(resp.json()["access_token"], options={"verify_signature": False})


def test_client_secret_basic(mandate, registry):
    c = registry.basic
    # Client ids are [a-z0-9._-] and secrets base64url, so RFC 6749 §2.3.1's form-encoding
    # before base64 is the identity here; requests' HTTPBasicAuth is a faithful client.
    assert all(ch.isalnum() or ch in "._-" for ch in c["client_id"])
    claims = _claims(mandate.token_request({}, auth=HTTPBasicAuth(c["client_id"], c["client_secret"])))
    assert claims["client_id"] == c["client_id"]
    assert claims["sub"] == AGENT_SPIFFE
    assert claims["aud"] == RESOURCE
    # No scope requested: the agent's ceiling at this resource.
    assert claims["scope"] == "read"


def test_client_secret_post(mandate, registry):
    c = registry.post
    claims = _claims(mandate.token_request({"client_id": c["client_id"], "client_secret": c["client_secret"]}))
    assert claims["client_id"] == c["client_id"]
    assert claims["sub"] == AGENT_SPIFFE


def test_resource_selects_the_audience(mandate, registry):
    c = registry.post
    resp = mandate.token_request(
        {"client_id": c["client_id"], "client_secret": c["client_secret"], "resource": OTHER_RESOURCE}
    )
    assert _claims(resp)["aud"] == OTHER_RESOURCE


def test_wrong_secret_basic_gets_401_with_challenge(mandate, registry):
    c = registry.basic
    resp = mandate.token_request({}, auth=(c["client_id"], c["client_secret"] + "x"))
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"
    # RFC 6749 §5.2: a client that used the Authorization header gets a matching challenge.
    assert resp.headers["www-authenticate"].lower().startswith("basic")
    assert c["client_secret"] not in resp.text


def test_wrong_secret_post_gets_401(mandate, registry):
    c = registry.post
    resp = mandate.token_request({"client_id": c["client_id"], "client_secret": "mcs_wrong"})
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"


def test_unknown_client_gets_401(mandate, registry):
    resp = mandate.token_request({}, auth=("nobody.000000000000", registry.basic["client_secret"]))
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"


def test_registered_method_is_enforced(mandate, registry):
    """Each client authenticates only the way it was registered."""
    b, p = registry.basic, registry.post
    resp = mandate.token_request({"client_id": b["client_id"], "client_secret": b["client_secret"]})
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client", resp.text
    resp = mandate.token_request({}, auth=(p["client_id"], p["client_secret"]))
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client", resp.text


def test_two_auth_methods_at_once_are_refused(mandate, registry):
    b = registry.basic
    resp = mandate.token_request(
        {"client_id": b["client_id"], "client_secret": b["client_secret"]}, auth=(b["client_id"], b["client_secret"])
    )
    assert resp.status_code in (400, 401), resp.text
    assert resp.json()["error"] in ("invalid_request", "invalid_client")


def test_no_client_authentication_is_refused(mandate, registry):
    resp = mandate.token_request({"client_id": registry.basic["client_id"]})
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"


def test_scope_beyond_the_agent_is_refused(mandate, registry):
    c = registry.post
    resp = mandate.token_request({"client_id": c["client_id"], "client_secret": c["client_secret"], "scope": "write"})
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_scope"
    # "read write" narrows to what the agent may have.
    resp = mandate.token_request(
        {"client_id": c["client_id"], "client_secret": c["client_secret"], "scope": "read write"}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["scope"] == "read"


def test_resource_is_required_and_must_be_registered(mandate, registry):
    c = registry.post
    creds = {"client_id": c["client_id"], "client_secret": c["client_secret"]}
    resp = requests.post(
        mandate.token_endpoint, data={"grant_type": "client_credentials", **creds}, timeout=10
    )
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_request", resp.text
    resp = mandate.token_request({**creds, "resource": "https://unregistered.example.test"})
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_target", resp.text
    resp = requests.post(
        mandate.token_endpoint,
        data=[("grant_type", "client_credentials"), ("resource", RESOURCE), ("resource", OTHER_RESOURCE)]
        + list(creds.items()),
        timeout=10,
    )
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_target", resp.text


def test_unsupported_grant_type(mandate, registry):
    c = registry.post
    resp = mandate.token_request(
        {"client_id": c["client_id"], "client_secret": c["client_secret"], "grant_type": "password"}
    )
    assert resp.status_code == 400
    assert resp.json()["error"] == "unsupported_grant_type"
