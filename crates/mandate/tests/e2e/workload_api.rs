//! The SPIFFE Workload API of `mandate serve --workload-socket`, called by this test process
//! through the `spiffe` crate: attestation by uid and executable path, X.509- and JWT-SVIDs
//! validated against the fetched bundles, rotation on the stream, refusals and their audit
//! events, the security header, and the socket's life cycle.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mandate_workload::api::pb::{JwtsvidRequest, JwtsvidResponse, X509svidRequest, X509svidResponse};
use serde_json::Value;
use spiffe::{JwtSvid, TrustDomain, WorkloadApiClient, WorkloadApiError};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;
use tonic_prost::ProstCodec;

use crate::harness::{Server, serve_command};

const AUDIENCE: &str = "https://api.example.test";
/// Generous bound for events that should arrive within seconds; never a timing assertion.
const WAIT: Duration = Duration::from_secs(30);

fn socket_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("run/workload.sock")
}

/// A server with the Workload API on a socket in its temp dir and 4-second X.509-SVIDs.
fn start() -> (Server, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    let env = [("MANDATE_WORKLOAD_SOCKET", socket.to_str().unwrap()), ("MANDATE_X509_SVID_TTL_SECS", "4")];
    (Server::start_in(dir, &env), socket)
}

/// The uid of this test process (the Workload API caller), from a file it creates.
fn my_uid(dir: &Path) -> u32 {
    let probe = dir.join("uid-probe");
    std::fs::write(&probe, b"").unwrap();
    std::fs::metadata(&probe).unwrap().uid()
}

/// The executable the kernel reports for this process: the test binary, symlinks resolved.
fn my_exe() -> PathBuf {
    std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap()
}

fn register(server: &Server, name: &str, selectors: &[String]) -> String {
    // The first registration creates the owner; later attempts are refused as duplicates.
    let _ = server.cli_raw(&["owner", "create", "alice"]);
    let mut args = vec!["agent", "create", name, "--owner", "alice"];
    for selector in selectors {
        args.extend(["--selector", selector.as_str()]);
    }
    server.cli(&args);
    format!("spiffe://mandate.local/agent/{name}")
}

async fn client(socket: &Path) -> WorkloadApiClient {
    WorkloadApiClient::connect_to(format!("unix://{}", socket.display())).await.unwrap()
}

fn serial(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der).unwrap().1.raw_serial_as_string()
}

fn not_after(der: &[u8]) -> i64 {
    x509_parser::parse_x509_certificate(der).unwrap().1.validity().not_after.timestamp()
}

fn signed_by_one_of(leaf_der: &[u8], roots: &[spiffe::Certificate]) -> bool {
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der).unwrap();
    roots.iter().any(|root| {
        let (_, root) = x509_parser::parse_x509_certificate(root.as_bytes()).unwrap();
        leaf.verify_signature(Some(root.public_key())).is_ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attested_process_fetches_svids_that_validate_and_rotate() {
    let (server, socket) = start();
    let selectors = [format!("unix:uid:{}", my_uid(server.dir.path())), format!("unix:path:{}", my_exe().display())];
    let id = register(&server, "bot", &selectors);
    let client = client(&socket).await;
    let td = TrustDomain::new("mandate.local").unwrap();

    // X.509: the SVID names the agent and chains to a CA of the fetched bundle.
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), id);
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let roots = bundles.get(&td).expect("a bundle for our trust domain");
    assert!(signed_by_one_of(svid.leaf().as_bytes(), roots.authorities()));

    // JWT: validated locally with the fetched JWT bundle, and by the server.
    let jwt = client.fetch_jwt_svid([AUDIENCE], None).await.unwrap();
    assert_eq!(jwt.spiffe_id().to_string(), id);
    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    let local = JwtSvid::parse_and_validate(jwt.token(), &jwt_bundles, &[AUDIENCE]).unwrap();
    assert_eq!(local.spiffe_id().to_string(), id);
    assert_eq!(client.validate_jwt_token(AUDIENCE, jwt.token()).await.unwrap().spiffe_id().to_string(), id);
    let elsewhere = client.validate_jwt_token("https://other.example.test", jwt.token()).await.unwrap_err();
    assert!(elsewhere.is_invalid_argument(), "{elsewhere:?}");

    // The stream sends the current SVID at once and a fresh one before it expires.
    let mut stream = client.stream_x509_contexts().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    let first_leaf = first.default_svid().unwrap().leaf().as_bytes().to_vec();
    let rotated = tokio::time::timeout(WAIT, stream.next()).await.expect("a rotated SVID").unwrap().unwrap();
    let rotated_svid = rotated.default_svid().unwrap();
    assert_eq!(rotated_svid.spiffe_id().to_string(), id);
    let rotated_leaf = rotated_svid.leaf().as_bytes();
    assert_ne!(serial(rotated_leaf), serial(&first_leaf));
    assert!(not_after(rotated_leaf) > not_after(&first_leaf));
    assert!(signed_by_one_of(rotated_leaf, rotated.bundle_set().get(&td).unwrap().authorities()));

    // Every issuance is audited, tied to the attested process by its correlation id.
    let events = server.audit_events();
    let attested: Vec<&Value> =
        events.iter().filter(|e| e["action"] == "workload.attest" && e["decision"] == "allow").collect();
    assert!(attested.iter().all(|e| e["agent"] == id.as_str()));
    let me = format!("pid={}", std::process::id());
    assert!(attested.iter().all(|e| e["detail"].as_str().unwrap().contains(&me)));
    let x509_issued: Vec<&Value> = events.iter().filter(|e| e["action"] == "svid.x509.issue").collect();
    assert!(x509_issued.len() >= 3, "fetch, stream start and at least one rotation");
    for issued in
        x509_issued.iter().chain(events.iter().filter(|e| e["action"] == "svid.jwt.issue").collect::<Vec<_>>().iter())
    {
        assert_eq!(issued["decision"], "allow");
        assert!(attested.iter().any(|a| a["correlation_id"] == issued["correlation_id"]), "{issued}");
    }
    let log = serde_json::to_string(&events).unwrap();
    assert!(!log.contains(jwt.token()), "tokens never reach the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_callers_are_denied_and_audited_and_the_header_is_required() {
    let (server, socket) = start();
    let uid = my_uid(server.dir.path());
    register(&server, "someone-else", &[format!("unix:uid:{}", uid + 1)]);
    register(&server, "other-binary", &[format!("unix:uid:{uid}"), "unix:path:/usr/bin/not-this-test".into()]);
    let client = client(&socket).await;

    let x509 = client.fetch_x509_svid().await.unwrap_err();
    assert!(matches!(x509, WorkloadApiError::NoIdentityIssued), "{x509:?}");
    let jwt = client.fetch_jwt_svid([AUDIENCE], None).await.unwrap_err();
    assert!(matches!(jwt, WorkloadApiError::NoIdentityIssued), "{jwt:?}");
    let events = server.audit_events();
    let denials: Vec<&Value> =
        events.iter().filter(|e| e["action"] == "workload.attest" && e["decision"] == "deny").collect();
    assert_eq!(denials.len(), 2);
    let detail = denials[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("unix:uid:{uid}")) && detail.contains(&format!("unix:path:{}", my_exe().display()))
    );
    assert!(!events.iter().any(|e| e["action"] == "svid.x509.issue" || e["action"] == "svid.jwt.issue"));

    // Without `workload.spiffe.io: true` every call is InvalidArgument, before attestation.
    let endpoint = spiffe::transport::Endpoint::parse(&format!("unix:{}", socket.display())).unwrap();
    let mut grpc = tonic::client::Grpc::new(spiffe::transport::connect(&endpoint).await.unwrap());
    grpc.ready().await.unwrap();
    let request = tonic::Request::new(JwtsvidRequest { audience: vec![AUDIENCE.into()], spiffe_id: String::new() });
    let path = PathAndQuery::from_static("/SpiffeWorkloadAPI/FetchJWTSVID");
    let status = grpc.unary(request, path, ProstCodec::<_, JwtsvidResponse>::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    grpc.ready().await.unwrap();
    let path = PathAndQuery::from_static("/SpiffeWorkloadAPI/FetchX509SVID");
    let request = tonic::Request::new(X509svidRequest {});
    let status = grpc.server_streaming(request, path, ProstCodec::<_, X509svidResponse>::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(server.audit_events().len(), events.len(), "header failures are rejected before anything else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_replaces_a_stale_one_and_is_removed_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(&dir);
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    // A server that died leaves its socket file behind; nobody listens on it any more.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let server = Server::start_in(dir, &[("MANDATE_WORKLOAD_SOCKET", socket.to_str().unwrap())]);
    let mode = std::fs::metadata(&socket).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o666, "attestation, not the file mode, decides what a caller gets");
    register(&server, "bot", &[format!("unix:uid:{}", my_uid(server.dir.path()))]);
    let client = client(&socket).await;
    assert!(client.fetch_x509_svid().await.is_ok());

    // A second server refuses to take over a live socket.
    let other = tempfile::tempdir().unwrap();
    let out = serve_command(other.path(), &[("MANDATE_WORKLOAD_SOCKET", socket.to_str().unwrap())])
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"), "{}", String::from_utf8_lossy(&out.stderr));

    let mut stream = client.stream_x509_contexts().await.unwrap();
    stream.next().await.unwrap().unwrap();
    let _dir = server.stop();
    assert!(!socket.exists(), "the socket file goes away with the server");
    let after = tokio::time::timeout(WAIT, stream.next()).await.expect("the stream ends");
    assert!(!matches!(after, Some(Ok(_))), "{after:?}");
}
