//! Shared Signals: stream management over HTTP, CAEP `session-revoked` SETs for the kill
//! switch and RFC 7009 revocation, RFC 8936 polling with acknowledgements, RFC 8935 push, and
//! the proof that a guard subscribed by SSF refuses a revoked agent's live token within a second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mandate_core::{ScopeSet, SystemClock};
use mandate_guard::{Guard, GuardConfig, Presented, RemoteKeys, SignalRevocations, receive_push};
use serde_json::{Value, json};

use crate::harness::{RESOURCE, Server, claims, header};

const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
const CREDENTIAL_CHANGE: &str = "https://schemas.openid.net/secevent/caep/event-type/credential-change";
const POLL: &str = "urn:ietf:rfc:8936";
const RS_AUD: &str = "https://rs.example.test";
const INSECURE: (&str, &str) = ("MANDATE_ALLOW_INSECURE_FEDERATION", "true");

enum Auth<'a> {
    Admin,
    Client(&'a str, &'a str),
    None,
}

async fn call(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    auth: Auth<'_>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = server.http.request(method, server.url(path));
    request = match auth {
        Auth::Admin => request.bearer_auth(&server.admin),
        Auth::Client(id, secret) => request.basic_auth(id, Some(secret)),
        Auth::None => request,
    };
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn poll(server: &Server, stream: &Value, ack: &[&str]) -> Value {
    // Not the stream's endpoint_url: a restarted server may listen elsewhere.
    let path = format!("/ssf/poll/{}", stream["stream_id"].as_str().unwrap());
    let body = json!({"ack": ack, "returnImmediately": true});
    let (status, answer) = call(server, reqwest::Method::POST, &path, Auth::Admin, Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

fn admin_stream(aud: &str) -> Value {
    json!({"events_requested": [SESSION_REVOKED, "urn:example:unsupported"], "aud": aud})
}

/// A guard in this process that trusts the server's keys and takes revocations from `receiver`.
fn guard(server: &Server, receiver: Arc<SignalRevocations>, keys: Arc<RemoteKeys>) -> Guard {
    let config = GuardConfig::new(RESOURCE, vec![server.base.clone()]).unwrap();
    Guard::new(config, keys, Arc::new(SystemClock)).with_revocation(receiver)
}

/// Polls the guard until it refuses `token`; fails once `within` has passed.
async fn refused_within(guard: &Guard, token: &str, within: Duration) -> String {
    let authorization = format!("Bearer {token}");
    let deadline = Instant::now() + within;
    loop {
        let presented = Presented::bearer(Some(&authorization), "GET", "/");
        match guard.check(&presented, &ScopeSet::default()).await {
            Err(rejection) => return rejection.description,
            Ok(_) => assert!(Instant::now() < deadline, "the token was still accepted after {within:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_guard_polling_ssf_refuses_a_revoked_agents_token_within_one_second() {
    let server = Server::start();
    let (id, secret) = server.agent_with_client("signals-bot", "client_secret_basic");
    let (status, stream) =
        call(&server, reqwest::Method::POST, "/ssf/streams", Auth::Admin, Some(admin_stream(RS_AUD))).await;
    assert_eq!(status, 201, "{stream}");
    let clock = Arc::new(SystemClock);
    let keys = Arc::new(RemoteKeys::new(clock.clone()).unwrap());
    let receiver = Arc::new(SignalRevocations::new(&server.base, RS_AUD, keys.clone(), clock));
    let url = stream["delivery"]["endpoint_url"].as_str().unwrap();
    let poller = receiver.spawn_poller(url, &format!("Bearer {}", server.admin)).unwrap();
    let guard = guard(&server, receiver, keys);

    let token = server.token(&id, &secret).await;
    let authorization = format!("Bearer {token}");
    let presented = Presented::bearer(Some(&authorization), "GET", "/");
    guard.check(&presented, &ScopeSet::default()).await.expect("a live token is accepted");

    server.cli(&["revoke", "--agent", "signals-bot"]);
    let why = refused_within(&guard, &token, Duration::from_secs(1)).await;
    assert!(why.contains("shared signal"), "{why}");
    poller.abort();
}

#[tokio::test]
async fn revocations_queue_verifiable_sets_until_acknowledged() {
    let server = Server::start();
    let (id, secret) = server.agent_with_client("set-bot", "client_secret_basic");
    let (_, stream) =
        call(&server, reqwest::Method::POST, "/ssf/streams", Auth::Admin, Some(admin_stream(RS_AUD))).await;
    assert_eq!(stream["events_delivered"], json!([SESSION_REVOKED]));
    assert_eq!(stream["delivery"]["method"], POLL);
    assert_eq!(stream["aud"], RS_AUD);

    // RFC 7009 revocation of one access token: a `jwt_id` subject.
    let token = server.token(&id, &secret).await;
    let form = [("token", token.as_str())];
    let revoked = server.http.post(server.url("/oauth2/revoke")).basic_auth(&id, Some(&secret)).form(&form);
    assert_eq!(revoked.send().await.unwrap().status(), 200);
    server.cli(&["revoke", "--agent", "set-bot"]);

    let answer = poll(&server, &stream, &[]).await;
    let sets = answer["sets"].as_object().unwrap();
    assert_eq!(sets.len(), 2, "{answer}");
    let mut subjects = Vec::new();
    for (jti, set) in sets {
        let set = set.as_str().unwrap();
        assert_eq!(header(set)["typ"], "secevent+jwt");
        let c = claims(set);
        assert_eq!(c["jti"], *jti);
        assert_eq!((c["iss"].as_str(), c["aud"].as_str()), (Some(server.base.as_str()), Some(RS_AUD)));
        assert!(c.get("sub").is_none() && c.get("exp").is_none(), "{c}");
        assert!(c["events"][SESSION_REVOKED]["event_timestamp"].is_i64(), "{c}");
        subjects.push(c["sub_id"].clone());
    }
    let jti = claims(&token)["jti"].clone();
    assert!(subjects.contains(&json!({"format": "jwt_id", "iss": server.base, "jti": jti})), "{subjects:?}");
    let agent = claims(&token)["sub"].clone();
    assert!(subjects.contains(&json!({"format": "uri", "uri": agent})), "{subjects:?}");

    // Unacknowledged events come again; acknowledged ones are gone.
    let again = poll(&server, &stream, &[]).await;
    assert_eq!(again["sets"].as_object().unwrap().len(), 2);
    let jtis: Vec<&str> = sets.keys().map(String::as_str).collect();
    poll(&server, &stream, &jtis).await;
    let after = poll(&server, &stream, &[]).await;
    assert_eq!(after["sets"], json!({}), "{after}");
    assert_eq!(after["moreAvailable"], false);

    // Deleting the client revokes its tokens and its credential.
    let path = format!("/admin/api/v1/clients/{id}");
    assert_eq!(call(&server, reqwest::Method::DELETE, &path, Auth::Admin, None).await.0, 204);
    let (status, stream) = call(
        &server,
        reqwest::Method::PATCH,
        "/ssf/streams",
        Auth::Admin,
        Some(json!({"stream_id": stream["stream_id"], "events_requested": [SESSION_REVOKED, CREDENTIAL_CHANGE]})),
    )
    .await;
    assert_eq!(status, 200, "{stream}");
    let path = format!("/admin/api/v1/clients/{}", server.agent_with_client("set-bot-2", "client_secret_basic").0);
    assert_eq!(call(&server, reqwest::Method::DELETE, &path, Auth::Admin, None).await.0, 204);
    let answer = poll(&server, &stream, &[]).await;
    let kinds: Vec<Value> = answer["sets"]
        .as_object()
        .unwrap()
        .values()
        .map(|s| {
            let c = claims(s.as_str().unwrap());
            json!([c["sub_id"]["application"]["format"], c["events"].as_object().unwrap().keys().next().unwrap()])
        })
        .collect();
    // The first deletion came before credential-change was requested: only its session event.
    assert_eq!(kinds.len(), 3, "{answer}");
    assert_eq!(kinds.iter().filter(|k| k[1] == CREDENTIAL_CHANGE).count(), 1, "{kinds:?}");
    assert!(kinds.iter().all(|k| k[0] == "opaque"), "{kinds:?}");
}

#[tokio::test]
async fn the_outbox_survives_a_restart() {
    let server = Server::start();
    server.agent_with_client("durable-bot", "client_secret_basic");
    let (_, stream) =
        call(&server, reqwest::Method::POST, "/ssf/streams", Auth::Admin, Some(admin_stream(RS_AUD))).await;
    server.cli(&["revoke", "--agent", "durable-bot"]);
    let server = Server::start_in(server.stop(), &[]);
    let answer = poll(&server, &stream, &[]).await;
    assert_eq!(answer["sets"].as_object().unwrap().len(), 1, "{answer}");
    let set = answer["sets"].as_object().unwrap().values().next().unwrap().as_str().unwrap();
    assert_eq!(claims(set)["iss"], server.base, "signed by the server delivering it");
}

#[tokio::test]
async fn stream_management_checks_callers_and_configurations() {
    let server = Server::start();
    let (id, secret) = server.agent_with_client("receiver-bot", "client_secret_basic");
    let (other_id, other_secret) = server.agent_with_client("other-bot", "client_secret_basic");
    let post = reqwest::Method::POST;
    let discovery: Value =
        server.http.get(server.url("/.well-known/ssf-configuration")).send().await.unwrap().json().await.unwrap();
    assert_eq!(discovery["issuer"], server.base);
    assert_eq!(discovery["configuration_endpoint"], server.url("/ssf/streams"));
    assert_eq!(discovery["delivery_methods_supported"], json!(["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"]));

    // Authentication: none, a wrong secret, a non-admin bearer.
    let (status, _) = call(&server, post.clone(), "/ssf/streams", Auth::None, Some(json!({}))).await;
    assert_eq!(status, 401);
    let (status, _) = call(&server, post.clone(), "/ssf/streams", Auth::Client(&id, "wrong"), Some(json!({}))).await;
    assert_eq!(status, 401);
    let bearer = server.http.post(server.url("/ssf/streams")).bearer_auth("not-the-admin").json(&json!({}));
    assert_eq!(bearer.send().await.unwrap().status(), 401);

    // Bad configurations.
    let client = Auth::Client(&id, &secret);
    let bad = [
        json!({"delivery": {"method": "urn:example:carrier-pigeon"}}),
        json!({"delivery": {"method": "urn:ietf:rfc:8935"}}),
        json!({"delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": "http://receiver.example/events"}}),
        json!({"delivery": {"method": "urn:ietf:rfc:8936", "endpoint_url": "https://receiver.example/poll"}}),
        json!({"aud": "https://chosen-by-client.example"}),
        json!({"description": ""}),
    ];
    for body in bad {
        let (status, answer) =
            call(&server, post.clone(), "/ssf/streams", Auth::Client(&id, &secret), Some(body.clone())).await;
        assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_request")), "{body}: {answer}");
    }
    let raw = server.http.post(server.url("/ssf/streams")).basic_auth(&id, Some(&secret)).body("{}");
    assert_eq!(raw.send().await.unwrap().status(), 400, "a body that is not declared JSON");

    // A client's stream: addressed to it, one per client, invisible to other clients.
    let (status, mine) =
        call(&server, post.clone(), "/ssf/streams", client, Some(json!({"events_requested": [SESSION_REVOKED]}))).await;
    assert_eq!(status, 201, "{mine}");
    assert_eq!(mine["aud"], id.as_str());
    let (status, _) = call(&server, post.clone(), "/ssf/streams", Auth::Client(&id, &secret), Some(json!({}))).await;
    assert_eq!(status, 409);
    let stream_id = mine["stream_id"].as_str().unwrap();
    let query = format!("/ssf/streams?stream_id={stream_id}");
    let (status, _) = call(&server, reqwest::Method::GET, &query, Auth::Client(&other_id, &other_secret), None).await;
    assert_eq!(status, 404);
    let (status, listed) =
        call(&server, reqwest::Method::GET, "/ssf/streams", Auth::Client(&other_id, &other_secret), None).await;
    assert_eq!((status, listed), (200, json!([])));
    let (status, read) = call(&server, reqwest::Method::GET, &query, Auth::Client(&id, &secret), None).await;
    assert_eq!((status, &read["stream_id"]), (200, &mine["stream_id"]));

    // Update, status, verification, delete.
    let patch = json!({"stream_id": stream_id, "description": "resource server A"});
    let (status, updated) =
        call(&server, reqwest::Method::PATCH, "/ssf/streams", Auth::Client(&id, &secret), Some(patch)).await;
    assert_eq!((status, &updated["description"]), (200, &json!("resource server A")));
    let paused = json!({"stream_id": stream_id, "status": "paused"});
    let (status, answer) = call(&server, post.clone(), "/ssf/status", Auth::Client(&id, &secret), Some(paused)).await;
    assert_eq!((status, &answer["status"]), (200, &json!("paused")));
    let wrong = json!({"stream_id": stream_id, "status": "sleeping"});
    let (status, _) = call(&server, post.clone(), "/ssf/status", Auth::Client(&id, &secret), Some(wrong)).await;
    assert_eq!(status, 400);
    let enabled = json!({"stream_id": stream_id, "status": "enabled"});
    call(&server, post.clone(), "/ssf/status", Auth::Client(&id, &secret), Some(enabled)).await;
    let verify = json!({"stream_id": stream_id, "state": "s-42"});
    let (status, _) = call(&server, post.clone(), "/ssf/verify", Auth::Client(&id, &secret), Some(verify)).await;
    assert_eq!(status, 204);
    let poll_path = format!("/ssf/poll/{stream_id}");
    let (status, polled) =
        call(&server, post.clone(), &poll_path, Auth::Client(&id, &secret), Some(json!({"returnImmediately": true})))
            .await;
    assert_eq!(status, 200);
    let set = polled["sets"].as_object().unwrap().values().next().unwrap().as_str().unwrap().to_owned();
    let verification = "https://schemas.openid.net/secevent/ssf/event-type/verification";
    assert_eq!(claims(&set)["events"][verification]["state"], "s-42");
    assert_eq!(claims(&set)["aud"], id.as_str());
    let (status, _) =
        call(&server, post.clone(), &poll_path, Auth::Client(&other_id, &other_secret), Some(json!({}))).await;
    assert_eq!(status, 404, "another client cannot poll this stream");
    let (status, _) =
        call(&server, reqwest::Method::DELETE, &query, Auth::Client(&other_id, &other_secret), None).await;
    assert_eq!(status, 404);
    let (status, _) = call(&server, reqwest::Method::DELETE, &query, Auth::Client(&id, &secret), None).await;
    assert_eq!(status, 204);
    let (status, _) = call(&server, reqwest::Method::GET, &query, Auth::Client(&id, &secret), None).await;
    assert_eq!(status, 404);

    // Back-channel logout: advertised, and a registered logout URI must be https (or loopback).
    let oidc: Value =
        server.http.get(server.url("/.well-known/openid-configuration")).send().await.unwrap().json().await.unwrap();
    assert_eq!(oidc["backchannel_logout_supported"], true);
    let bad = json!({"agent": "receiver-bot", "backchannel_logout_uri": "http://app.example/logout"});
    let (status, answer) = call(&server, post.clone(), "/admin/api/v1/clients", Auth::Admin, Some(bad)).await;
    assert_eq!(status, 400, "{answer}");

    let events = server.audit_events();
    let refused = |action: &str| events.iter().filter(|e| e["action"] == action && e["decision"] == "deny").count();
    assert!(refused("ssf.stream.create") >= 10, "every refusal is audited");
    assert_eq!(refused("ssf.stream.delete"), 1);
}

#[tokio::test]
async fn push_delivers_to_a_receiver_and_retries_a_dead_one() {
    let server = Server::start_in(tempfile::tempdir().unwrap(), &[INSECURE]);
    let (id, secret) = server.agent_with_client("push-bot", "client_secret_basic");
    let clock = Arc::new(SystemClock);
    let keys = Arc::new(RemoteKeys::new(clock.clone()).unwrap());
    let receiver =
        SignalRevocations::new(&server.base, RS_AUD, keys.clone(), clock).with_push_authorization("Bearer push-secret");
    let receiver = Arc::new(receiver);
    let app = axum::Router::new().route("/events", axum::routing::post(receive_push)).with_state(Arc::clone(&receiver));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/events", listener.local_addr().unwrap());
    let served = tokio::spawn(async move { axum::serve(listener, app).await });

    let delivery =
        json!({"method": "urn:ietf:rfc:8935", "endpoint_url": endpoint, "authorization_header": "Bearer push-secret"});
    let body = json!({"events_requested": [SESSION_REVOKED], "aud": RS_AUD, "delivery": delivery});
    let (status, stream) = call(&server, reqwest::Method::POST, "/ssf/streams", Auth::Admin, Some(body)).await;
    assert_eq!(status, 201, "{stream}");
    assert!(stream["delivery"].get("authorization_header").is_none(), "the push credential is never shown");
    let poll_path = format!("/ssf/poll/{}", stream["stream_id"].as_str().unwrap());
    let (status, _) = call(&server, reqwest::Method::POST, &poll_path, Auth::Admin, Some(json!({}))).await;
    assert_eq!(status, 400, "a push stream is not polled");
    // A second stream pushes to a port nobody listens on.
    let dead = format!("http://{}/events", crate::harness::free_address());
    let dead = json!({"events_requested": [SESSION_REVOKED], "aud": "https://dead.example",
        "delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": dead}});
    assert_eq!(call(&server, reqwest::Method::POST, "/ssf/streams", Auth::Admin, Some(dead)).await.0, 201);

    let guard = guard(&server, receiver, keys);
    let token = server.token(&id, &secret).await;
    server.cli(&["revoke", "--agent", "push-bot"]);
    // Bounded by the push interval and a delivery; the one-second proof is the poll test's.
    let why = refused_within(&guard, &token, Duration::from_secs(5)).await;
    assert!(why.contains("shared signal"), "{why}");

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = server.audit_events();
        let pushes: Vec<&Value> = events.iter().filter(|e| e["action"] == "ssf.push").collect();
        let delivered = pushes.iter().any(|e| e["decision"] == "allow");
        let retried = pushes.iter().any(|e| e["reason"] == "retry");
        if delivered && retried {
            break;
        }
        assert!(Instant::now() < deadline, "push outcomes not audited: {pushes:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    served.abort();
}
