//! The Workload API in-process, driven by the `spiffe` crate's client (written by others) and,
//! where that client cannot misbehave on purpose, by raw gRPC calls.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mandate_audit::CheckpointPolicy;
use mandate_authz::registry::{self, NewAgent, RecordKind};
use mandate_authz::{Authz, AuthzConfig};
use mandate_core::{Clock, SystemClock, TrustDomain};
use mandate_crypto::{Alg, Kek};
use mandate_store::{SqliteStore, Store};
use serde_json::Value;
use spiffe::{JwtSvid, SpiffeId, WorkloadApiClient, WorkloadApiError};
use tokio_stream::StreamExt;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use super::pb::{JwtsvidRequest, JwtsvidResponse, WitsvidRequest, WitsvidResponse, X509svidRequest, X509svidResponse};
use super::{SECURITY_HEADER, WorkloadApiConfig, WorkloadApiServer};
use crate::ca::{SpiffeCa, SpiffeConfig};

const TD: &str = "mandate.local";
const WAIT: Duration = Duration::from_secs(20);

struct Fixture {
    dir: tempfile::TempDir,
    authz: Authz,
    server: Option<WorkloadApiServer>,
    socket: PathBuf,
}

impl Fixture {
    async fn start(x509_svid_ttl_secs: i64) -> Self {
        mandate_crypto::init().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("mandate.db")).unwrap());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let config = AuthzConfig {
            leeway_secs: 5,
            key_publish_lead_secs: 0,
            ..AuthzConfig::new("http://127.0.0.1:9", TrustDomain::parse(TD).unwrap())
        };
        let kek = Kek::generate().unwrap().0;
        let authz = Authz::start(store, kek, clock, config, CheckpointPolicy::default(), "test/audit").await.unwrap();
        let spiffe = SpiffeConfig { x509_svid_ttl_secs, ..SpiffeConfig::default() };
        let ca = Arc::new(SpiffeCa::new(authz.clone(), spiffe, None));
        let socket = dir.path().join("run/api.sock");
        let config = WorkloadApiConfig { socket_path: socket.clone(), refresh: Duration::from_millis(200) };
        let server = WorkloadApiServer::start(ca, config).await.unwrap();
        registry::create_owner(&authz, "alice", None, "test").await.unwrap();
        Self { dir, authz, server: Some(server), socket }
    }

    /// This test process's uid, read from a file it just created.
    fn uid(&self) -> u32 {
        let probe = self.dir.path().join("uid-probe");
        std::fs::write(&probe, b"").unwrap();
        std::fs::metadata(&probe).unwrap().uid()
    }

    async fn agent(&self, name: &str, selectors: &[String]) {
        let new = NewAgent {
            name: name.into(),
            owner: "alice".into(),
            scopes: vec![],
            selectors: selectors.to_vec(),
            ..Default::default()
        };
        registry::create_agent(&self.authz, new, "test").await.unwrap();
    }

    /// An agent this process is: its uid and the real path of its executable.
    async fn agent_for_this_process(&self, name: &str) -> String {
        let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
        self.agent(name, &[format!("unix:uid:{}", self.uid()), format!("unix:path:{}", exe.display())]).await;
        format!("spiffe://{TD}/agent/{name}")
    }

    async fn client(&self) -> WorkloadApiClient {
        WorkloadApiClient::connect_to(format!("unix:{}", self.socket.display())).await.unwrap()
    }

    async fn events(&self) -> Vec<Value> {
        let len = self.authz.store.audit_len().await.unwrap();
        let entries = self.authz.store.audit_entries(0, len).await.unwrap();
        entries.iter().map(|e| serde_json::from_str(&e.canonical).unwrap()).collect()
    }
}

/// A gRPC call made by hand, so the security header can be left out or mangled.
async fn raw_unary<Req, Resp>(
    socket: &Path,
    method: &'static str,
    message: Req,
    header: Option<&str>,
) -> Result<Resp, Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = raw_channel(socket).await;
    let request = raw_request(message, header);
    grpc.unary(request, PathAndQuery::from_static(method), ProstCodec::<Req, Resp>::default())
        .await
        .map(|r| r.into_inner())
}

async fn raw_first_message<Req, Resp>(
    socket: &Path,
    method: &'static str,
    message: Req,
    header: Option<&str>,
) -> Result<Resp, Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = raw_channel(socket).await;
    let request = raw_request(message, header);
    let response =
        grpc.server_streaming(request, PathAndQuery::from_static(method), ProstCodec::<Req, Resp>::default()).await?;
    Ok(response.into_inner().message().await?.unwrap())
}

async fn raw_channel(socket: &Path) -> tonic::client::Grpc<tonic::transport::Channel> {
    let endpoint = spiffe::transport::Endpoint::parse(&format!("unix:{}", socket.display())).unwrap();
    let mut grpc = tonic::client::Grpc::new(spiffe::transport::connect(&endpoint).await.unwrap());
    grpc.ready().await.unwrap();
    grpc
}

fn raw_request<T>(message: T, header: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = header {
        request.metadata_mut().insert(SECURITY_HEADER, value.parse().unwrap());
    }
    request
}

fn leaf_serial(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.raw_serial_as_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attested_workload_gets_svids_that_validate_against_the_bundles() {
    let fx = Fixture::start(3600).await;
    let id = fx.agent_for_this_process("bot").await;
    let client = fx.client().await;

    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), id);
    assert_eq!(svid.hint(), Some("bot"));
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new(TD).unwrap();
    let roots = bundles.get(&td).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(svid.leaf().as_bytes()).unwrap();
    let signed_by_a_root = roots.authorities().iter().any(|root| {
        let (_, root) = x509_parser::parse_x509_certificate(root.as_bytes()).unwrap();
        leaf.verify_signature(Some(root.public_key())).is_ok()
    });
    assert!(signed_by_a_root, "the leaf is signed by a CA of the fetched bundle");
    let left = leaf.validity().not_after.timestamp() - fx.authz.clock.now_secs();
    assert!((3500..=3600).contains(&left), "TTL respected: {left}s left");

    let jwt = client.fetch_jwt_svid(["https://api.example.test"], None).await.unwrap();
    assert_eq!(jwt.spiffe_id().to_string(), id);
    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    let checked = JwtSvid::parse_and_validate(jwt.token(), &jwt_bundles, &["https://api.example.test"]).unwrap();
    assert_eq!(checked.spiffe_id().to_string(), id);
    let validated = client.validate_jwt_token("https://api.example.test", jwt.token()).await.unwrap();
    assert_eq!(validated.spiffe_id().to_string(), id);
    let wrong_audience = client.validate_jwt_token("https://other.example.test", jwt.token()).await.unwrap_err();
    assert!(wrong_audience.is_invalid_argument(), "{wrong_audience:?}");

    let events = fx.events().await;
    let attested: Vec<&Value> =
        events.iter().filter(|e| e["action"] == "workload.attest" && e["decision"] == "allow").collect();
    assert_eq!(attested.len(), 2, "one per issuing call (X.509 stream, JWT fetch)");
    assert!(attested[0]["detail"].as_str().unwrap().contains(&format!("pid={}", std::process::id())));
    for action in ["svid.x509.issue", "svid.jwt.issue"] {
        let issued = events.iter().find(|e| e["action"] == action && e["decision"] == "allow").unwrap();
        assert!(
            attested.iter().any(|a| a["correlation_id"] == issued["correlation_id"]),
            "{action} shares its correlation id with the attestation"
        );
    }
    let refused = events.iter().find(|e| e["action"] == "svid.jwt.validate").unwrap();
    assert_eq!(refused["decision"], "deny");
    assert!(!refused.to_string().contains(jwt.token()), "tokens never reach the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_renews_at_half_life_and_follows_registration_changes() {
    let fx = Fixture::start(2).await;
    let id = fx.agent_for_this_process("bot").await;
    let client = fx.client().await;
    let mut stream = client.stream_x509_contexts().await.unwrap();

    let first = stream.next().await.unwrap().unwrap();
    let first_serial = leaf_serial(first.default_svid().unwrap().leaf().as_bytes());
    let renewed = tokio::time::timeout(WAIT, stream.next()).await.unwrap().unwrap().unwrap();
    let renewed_svid = renewed.default_svid().unwrap();
    assert_eq!(renewed_svid.spiffe_id().to_string(), id);
    assert_ne!(leaf_serial(renewed_svid.leaf().as_bytes()), first_serial, "a fresh certificate");

    // A second registration the caller matches (more specific: three selectors) is pushed at
    // once, ahead of the renewal, and becomes the default identity.
    let uid = fx.uid();
    let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
    let gid = std::fs::metadata(fx.dir.path().join("uid-probe")).unwrap().gid();
    let selectors = [format!("unix:uid:{uid}"), format!("unix:gid:{gid}"), format!("unix:path:{}", exe.display())];
    fx.agent("bot-specific", &selectors).await;
    let both = loop {
        let next = tokio::time::timeout(WAIT, stream.next()).await.unwrap().unwrap().unwrap();
        if next.svids().len() == 2 {
            break next;
        }
    };
    let ids: Vec<String> = both.svids().iter().map(|s| s.spiffe_id().to_string()).collect();
    assert_eq!(ids, [format!("spiffe://{TD}/agent/bot-specific"), id]);

    // Once no registration matches, the stream ends with PermissionDenied.
    registry::delete(&fx.authz, RecordKind::Agent, "bot", "test").await.unwrap();
    registry::delete(&fx.authz, RecordKind::Agent, "bot-specific", "test").await.unwrap();
    let ended = loop {
        match tokio::time::timeout(WAIT, stream.next()).await.unwrap().unwrap() {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(matches!(ended, WorkloadApiError::NoIdentityIssued), "{ended:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_matching_no_agent_are_refused_and_the_refusal_is_audited() {
    let fx = Fixture::start(3600).await;
    fx.agent("someone-else", &[format!("unix:uid:{}", fx.uid() + 1)]).await;
    fx.agent("no-selectors", &[]).await;
    let client = fx.client().await;

    let x509 = client.fetch_x509_svid().await.unwrap_err();
    assert!(matches!(x509, WorkloadApiError::NoIdentityIssued), "{x509:?}");
    let jwt = client.fetch_jwt_svid(["aud"], None).await.unwrap_err();
    assert!(matches!(jwt, WorkloadApiError::NoIdentityIssued), "{jwt:?}");
    let bundles = client.fetch_jwt_bundles().await.unwrap_err();
    assert!(matches!(bundles, WorkloadApiError::NoIdentityIssued), "{bundles:?}");

    let events = fx.events().await;
    let denials: Vec<&Value> = events.iter().filter(|e| e["action"] == "workload.attest").collect();
    assert_eq!(denials.len(), 3);
    for denial in denials {
        assert_eq!(denial["decision"], "deny");
        assert_eq!(denial["reason"], "permission_denied");
        let detail = denial["detail"].as_str().unwrap();
        assert!(detail.contains(&format!("unix:uid:{}", fx.uid())), "selectors in the detail: {detail}");
    }
    assert!(!events.iter().any(|e| e["action"].as_str().unwrap().starts_with("svid.")), "nothing issued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_streaming_calls_require_the_security_header() {
    let fx = Fixture::start(3600).await;
    fx.agent_for_this_process("bot").await;
    let jwt_request = || JwtsvidRequest { audience: vec!["aud".into()], spiffe_id: String::new() };
    let fetch_jwt = "/SpiffeWorkloadAPI/FetchJWTSVID";
    let fetch_x509 = "/SpiffeWorkloadAPI/FetchX509SVID";

    for header in [None, Some("TRUE"), Some("false"), Some("")] {
        let unary = raw_unary::<_, JwtsvidResponse>(&fx.socket, fetch_jwt, jwt_request(), header).await.unwrap_err();
        assert_eq!(unary.code(), Code::InvalidArgument, "{header:?}: {unary:?}");
        let streaming = raw_first_message::<_, X509svidResponse>(&fx.socket, fetch_x509, X509svidRequest {}, header)
            .await
            .unwrap_err();
        assert_eq!(streaming.code(), Code::InvalidArgument, "{header:?}: {streaming:?}");
    }
    let ok = raw_unary::<_, JwtsvidResponse>(&fx.socket, fetch_jwt, jwt_request(), Some("true")).await.unwrap();
    assert_eq!(ok.svids.len(), 1);
    let x509 = raw_first_message::<_, X509svidResponse>(&fx.socket, fetch_x509, X509svidRequest {}, Some("true"))
        .await
        .unwrap();
    assert_eq!(x509.svids.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_requests_need_an_audience_and_an_entitled_spiffe_id() {
    let fx = Fixture::start(3600).await;
    fx.agent_for_this_process("bot").await;
    fx.agent("other", &[format!("unix:uid:{}", fx.uid() + 1)]).await;
    let client = fx.client().await;

    let no_audience = client.fetch_jwt_svid(Vec::<String>::new(), None).await.unwrap_err();
    assert!(no_audience.is_invalid_argument(), "{no_audience:?}");
    let other = SpiffeId::new(format!("spiffe://{TD}/agent/other")).unwrap();
    let not_ours = client.fetch_jwt_svid(["aud"], Some(&other)).await.unwrap_err();
    assert!(matches!(not_ours, WorkloadApiError::PermissionDenied(_) | WorkloadApiError::NoIdentityIssued));
    let ours = SpiffeId::new(format!("spiffe://{TD}/agent/bot")).unwrap();
    assert_eq!(client.fetch_jwt_svid(["aud"], Some(&ours)).await.unwrap().spiffe_id(), &ours);
    let garbage = client.validate_jwt_token("aud", "not.a.jwt").await.unwrap_err();
    assert!(garbage.is_invalid_argument(), "{garbage:?}");
    let events = fx.events().await;
    let no_audience = events.iter().find(|e| e["action"] == "svid.jwt.issue" && e["decision"] == "deny").unwrap();
    assert_eq!(no_audience["reason"], "invalid_request");
    let not_entitled = events.iter().find(|e| e["action"] == "workload.attest" && e["decision"] == "deny").unwrap();
    assert!(not_entitled["detail"].as_str().unwrap().contains("agent/other"));
    let invalid = events.iter().find(|e| e["action"] == "svid.jwt.validate").unwrap();
    assert_eq!((invalid["decision"].as_str(), invalid["reason"].as_str()), (Some("deny"), Some("invalid_token")));

    let wit = raw_first_message::<_, WitsvidResponse>(
        &fx.socket,
        "/SpiffeWorkloadAPI/FetchWITSVID",
        WitsvidRequest { spiffe_id: String::new() },
        Some("true"),
    )
    .await
    .unwrap_err();
    assert_eq!(wit.code(), Code::Unimplemented);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_and_removes_the_socket() {
    let mut fx = Fixture::start(3600).await;
    fx.agent_for_this_process("bot").await;
    let client = fx.client().await;
    let mut stream = client.stream_x509_contexts().await.unwrap();
    stream.next().await.unwrap().unwrap();

    let started = std::time::Instant::now();
    fx.server.take().unwrap().shutdown().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(4), "streams end promptly, no grace timeout");
    assert!(!fx.socket.exists());
    let after = tokio::time::timeout(WAIT, stream.next()).await.unwrap();
    assert!(!matches!(after, Some(Ok(_))), "no further SVIDs: {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_streams_follow_key_rotation() {
    use mandate_authz::keyring::{PURPOSE_JWT_SVID, PURPOSE_X509_CA};

    let fx = Fixture::start(3600).await;
    fx.agent_for_this_process("bot").await;
    let client = fx.client().await;
    let td = spiffe::TrustDomain::new(TD).unwrap();
    let mut jwt_bundles = client.stream_jwt_bundles().await.unwrap();
    let mut x509 = client.stream_x509_contexts().await.unwrap();
    let first = jwt_bundles.next().await.unwrap().unwrap();
    assert_eq!(first.get(&td).unwrap().jwt_authorities().count(), 1);
    let first_x509 = x509.next().await.unwrap().unwrap();
    assert_eq!(first_x509.bundle_set().get(&td).unwrap().authorities().len(), 1);

    let now = fx.authz.clock.now_ms();
    for purpose in [PURPOSE_JWT_SVID, PURPOSE_X509_CA] {
        fx.authz.keys.rotate(&fx.authz.log, purpose, Alg::ES256, 0, now, "test").await.unwrap();
    }
    // Both keys are published now; streams carry the new state without being asked.
    let rotated = loop {
        let next = tokio::time::timeout(WAIT, jwt_bundles.next()).await.unwrap().unwrap().unwrap();
        if next.get(&td).unwrap().jwt_authorities().count() == 2 {
            break next;
        }
    };
    assert_eq!(rotated.len(), 1, "only our trust domain");
    let with_new_ca = loop {
        let next = tokio::time::timeout(WAIT, x509.next()).await.unwrap().unwrap().unwrap();
        if next.bundle_set().get(&td).unwrap().authorities().len() == 2 {
            break next;
        }
    };
    // The SVID sent with the new bundle still chains to one of its CAs.
    let svid = with_new_ca.default_svid().unwrap();
    let roots = with_new_ca.bundle_set().get(&td).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(svid.leaf().as_bytes()).unwrap();
    assert!(roots.authorities().iter().any(|root| {
        let (_, root) = x509_parser::parse_x509_certificate(root.as_bytes()).unwrap();
        leaf.verify_signature(Some(root.public_key())).is_ok()
    }));
}
