//! The `SpiffeWorkloadAPI` service: each call attests its caller (refusals are audited), then
//! answers from the CA; the streaming calls hand off to [`crate::api::stream`].

use std::sync::Arc;

use mandate_core::Agent;
use tonic::{Request, Response, Status};

use crate::api::claims;
use crate::api::issue;
use crate::api::pb::spiffe_workload_api_server::SpiffeWorkloadApi;
use crate::api::pb::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, WitBundlesRequest, WitBundlesResponse, WitsvidRequest, WitsvidResponse,
    X509BundlesRequest, X509BundlesResponse, X509svidRequest, X509svidResponse,
};
use crate::api::socket::PeerInfo;
use crate::api::state::{Shared, correlation_id};
use crate::api::stream::{self, Changes, Outgoing, X509State};
use crate::attest::Peer;

/// The gRPC metadata every Workload API request must carry (SPIFFE Workload Endpoint §4).
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Refuses requests without `workload.spiffe.io: true` (exactly one value, case-sensitive), as
/// the specification requires: it proves the request was made deliberately by a Workload API
/// client, not forged by a browser or proxy (SSRF) reaching the socket.
pub fn require_security_header(request: Request<()>) -> Result<Request<()>, Status> {
    let mut values = request.metadata().get_all(SECURITY_HEADER).iter();
    match (values.next(), values.next()) {
        (Some(value), None) if value.as_bytes() == b"true" => Ok(request),
        _ => Err(Status::invalid_argument("security header missing from request")),
    }
}

#[derive(Clone)]
pub(crate) struct WorkloadService {
    pub shared: Arc<Shared>,
}

/// The attested caller of a request; every connection has one (see [`crate::api::socket`]).
fn peer_of<T>(request: &Request<T>) -> Result<Arc<Peer>, Status> {
    request
        .extensions()
        .get::<PeerInfo>()
        .map(|info| Arc::clone(&info.0))
        .ok_or_else(|| Status::permission_denied("the caller could not be attested"))
}

impl WorkloadService {
    /// One JWT-SVID per agent, in the agents' order (the first is the default identity).
    async fn jwt_svids(
        &self,
        agents: &[Agent],
        audience: &[String],
        correlation: &str,
    ) -> Result<Vec<Jwtsvid>, Status> {
        let mut svids = Vec::with_capacity(agents.len());
        for agent in agents {
            let token = issue::jwt_svid(&self.shared.ca, agent, audience, correlation).await?;
            svids.push(Jwtsvid { spiffe_id: agent.spiffe_id.to_string(), svid: token, hint: agent.name.to_string() });
        }
        Ok(svids)
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadService {
    type FetchX509SVIDStream = Outgoing<X509svidResponse>;
    type FetchX509BundlesStream = Outgoing<X509BundlesResponse>;
    type FetchJWTBundlesStream = Outgoing<JwtBundlesResponse>;
    type FetchWITSVIDStream = Outgoing<WitsvidResponse>;
    type FetchWITBundlesStream = Outgoing<WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let peer = peer_of(&request)?;
        let correlation = correlation_id();
        let rpc = "FetchX509SVID";
        let changes = Changes::watch(&self.shared);
        let agents = self.shared.attest(&peer, rpc, &correlation).await?;
        self.shared.refresh_bundles().await?;
        let (recorded, first) = tokio::join!(
            self.shared.record_attested(&peer, &agents, rpc, &correlation),
            X509State::issue(&self.shared, agents.clone(), &correlation),
        );
        recorded?;
        Ok(Response::new(stream::x509_svids(Arc::clone(&self.shared), peer, changes, first?, correlation)))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let peer = peer_of(&request)?;
        let rpc = "FetchX509Bundles";
        let changes = Changes::watch(&self.shared);
        self.shared.attest(&peer, rpc, &correlation_id()).await?;
        self.shared.refresh_bundles().await?;
        let render = stream::x509_bundles_response;
        Ok(Response::new(stream::bundles(Arc::clone(&self.shared), peer, changes, rpc, render)))
    }

    async fn fetch_jwtsvid(&self, request: Request<JwtsvidRequest>) -> Result<Response<JwtsvidResponse>, Status> {
        let peer = peer_of(&request)?;
        let request = request.into_inner();
        let audience: Vec<String> = request.audience.into_iter().filter(|a| !a.is_empty()).collect();
        let correlation = correlation_id();
        if audience.is_empty() {
            let why = "audience must be specified";
            return Err(self.shared.invalid(&peer, "svid.jwt.issue", "FetchJWTSVID", &correlation, why).await);
        }
        let mut agents = self.shared.attest(&peer, "FetchJWTSVID", &correlation).await?;
        if !request.spiffe_id.is_empty() {
            agents.retain(|a| a.spiffe_id.as_str() == request.spiffe_id);
            if agents.is_empty() {
                let why = format!("the caller is not entitled to {}", request.spiffe_id);
                return Err(self.shared.refuse(&peer, "FetchJWTSVID", &correlation, &why).await);
            }
        }
        let (recorded, svids) = tokio::join!(
            self.shared.record_attested(&peer, &agents, "FetchJWTSVID", &correlation),
            self.jwt_svids(&agents, &audience, &correlation),
        );
        recorded?;
        Ok(Response::new(JwtsvidResponse { svids: svids? }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let peer = peer_of(&request)?;
        let rpc = "FetchJWTBundles";
        let changes = Changes::watch(&self.shared);
        self.shared.attest(&peer, rpc, &correlation_id()).await?;
        self.shared.refresh_bundles().await?;
        let render = stream::jwt_bundles_response;
        Ok(Response::new(stream::bundles(Arc::clone(&self.shared), peer, changes, rpc, render)))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        let peer = peer_of(&request)?;
        let request = request.into_inner();
        let correlation = correlation_id();
        let missing = match (request.audience.is_empty(), request.svid.is_empty()) {
            (true, _) => Some("audience must be specified"),
            (false, true) => Some("svid must be specified"),
            (false, false) => None,
        };
        if let Some(why) = missing {
            return Err(self.shared.invalid(&peer, "svid.jwt.validate", "ValidateJWTSVID", &correlation, why).await);
        }
        self.shared.attest(&peer, "ValidateJWTSVID", &correlation).await?;
        let (spiffe_id, claims) =
            issue::validate_jwt(&self.shared.ca, &request.svid, &request.audience, &correlation).await?;
        Ok(Response::new(ValidateJwtsvidResponse { spiffe_id, claims: Some(claims::to_struct(&claims)) }))
    }

    async fn fetch_witsvid(
        &self,
        _request: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        Err(Status::unimplemented("the WIT-SVID profile is not supported"))
    }

    async fn fetch_wit_bundles(
        &self,
        _request: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        Err(Status::unimplemented("the WIT-SVID profile is not supported"))
    }
}
