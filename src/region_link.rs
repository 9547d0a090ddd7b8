//! The outbound side of multi-Region keys: this Region's calls to its peer Regions'
//! `RegionService` (`[region.peers]`), as the engine's [`RegionLink`].
//!
//! Each call opens a TLS channel to the peer's gRPC door (the peer's CA, and this Region's
//! client certificate or SigV4 access key as the peer knows it), makes one call within
//! `[region] peer_timeout_ms`, and maps the answer: the peer's own refusal keeps its AWS
//! exception ([`PeerError::Refused`]); no answer is [`PeerError::Unreachable`]. Replication
//! is a control-plane step, rare and slow by nature (an RSA unwrap per version on the
//! peer's HSM), so no channel is kept between calls.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::api::grpc::region::{accept_replica_answer, accept_replica_message, update_message};
use crate::api::grpc::status::aws_reason;
use crate::client::ClientConfig;
use crate::config::RegionConfig;
use crate::core::operation::Empty;
use crate::core::regions::{
    AcceptReplicaRequest, AcceptReplicaResponse, PeerError, RegionLink, UpdateMultiRegionKeyRequest,
};
use crate::core::KmsError;
use crate::pb::region_service_client::RegionServiceClient;

/// The gRPC paths SigV4 signs.
const ACCEPT_REPLICA: &str = "/p11kms.v1.RegionService/AcceptReplica";
const UPDATE_MULTI_REGION_KEY: &str = "/p11kms.v1.RegionService/UpdateMultiRegionKey";

/// This Region's peers, from `[region]`.
pub struct GrpcRegionLink {
    peers: BTreeMap<String, ClientConfig>,
    principals: BTreeMap<String, String>,
    timeout: Duration,
}

impl GrpcRegionLink {
    /// The link of `[region]` (`None` when it names no peer).
    pub fn from_config(cfg: &RegionConfig) -> Option<GrpcRegionLink> {
        // SigV4 is scoped to the Region that verifies it: the peer's, unless set.
        let peers = cfg.peers.iter().map(|(name, c)| {
            let mut c = c.clone();
            c.region.get_or_insert_with(|| name.clone());
            (name.clone(), c)
        });
        (!cfg.peers.is_empty()).then(|| GrpcRegionLink {
            peers: peers.collect(),
            principals: cfg.peer_principals.clone(),
            timeout: Duration::from_millis(cfg.peer_timeout_ms),
        })
    }

    /// A connected client of `peer`'s RegionService, and the config to sign with.
    async fn client(
        &self,
        peer: &str,
    ) -> Result<
        (
            RegionServiceClient<tonic::transport::Channel>,
            &ClientConfig,
        ),
        PeerError,
    > {
        let cfg = self
            .peers
            .get(peer)
            .ok_or_else(|| PeerError::UnknownPeer(peer.into()))?;
        let endpoint = cfg.endpoint.clone().unwrap_or_default();
        let unreachable = |detail: String| PeerError::Unreachable {
            region: peer.into(),
            detail,
        };
        let channel = tokio::time::timeout(self.timeout, cfg.channel_to(&endpoint))
            .await
            .map_err(|_| unreachable("timed out connecting".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        Ok((RegionServiceClient::new(channel), cfg))
    }

    /// `msg` as a request for `path`, SigV4-signed when the peer config has an access key.
    /// Only the config's own credentials count: the daemon never signs with the `AWS_*`
    /// variables of its environment (the client's fallback), so a peer without an access key
    /// is reached with its client certificate alone.
    fn request<T: prost::Message>(
        cfg: &ClientConfig,
        endpoint: &str,
        msg: T,
        path: &str,
    ) -> Result<tonic::Request<T>, PeerError> {
        if cfg.access_key_id.is_none() {
            return Ok(tonic::Request::new(msg));
        }
        let signer = cfg.signer_for(endpoint).map_err(|e| {
            PeerError::Refused(KmsError::Internal(format!("peer credentials: {e}")))
        })?;
        Ok(match signer {
            Some(s) => s.sign(msg, path),
            None => tonic::Request::new(msg),
        })
    }

    /// The answer of one call to `peer`, within `[region] peer_timeout_ms`.
    async fn within<T>(
        &self,
        peer: &str,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<tonic::Response<T>, PeerError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| PeerError::Unreachable {
                region: peer.into(),
                detail: "timed out".into(),
            })?
            .map_err(|s| self.failed(peer, s))
    }

    /// The error of a call that ended with `status`.
    fn failed(&self, peer: &str, status: tonic::Status) -> PeerError {
        match aws_reason(&status) {
            Some(name) => PeerError::Refused(KmsError::from_aws_name(
                &name,
                format!("{peer}: {}", status.message()),
            )),
            None => PeerError::Unreachable {
                region: peer.into(),
                detail: format!("{:?}: {}", status.code(), status.message()),
            },
        }
    }
}

#[async_trait::async_trait]
impl RegionLink for GrpcRegionLink {
    fn peers(&self) -> Vec<String> {
        self.peers.keys().cloned().collect()
    }

    fn peer_principal(&self, region: &str) -> Option<String> {
        self.principals.get(region).cloned()
    }

    async fn accept_replica(
        &self,
        peer: &str,
        req: AcceptReplicaRequest,
    ) -> Result<AcceptReplicaResponse, PeerError> {
        let (mut client, cfg) = self.client(peer).await?;
        let endpoint = cfg.endpoint.clone().unwrap_or_default();
        let msg = accept_replica_message(req);
        let request = Self::request(cfg, &endpoint, msg, ACCEPT_REPLICA)?;
        let answer = self.within(peer, client.accept_replica(request)).await?;
        accept_replica_answer(answer.into_inner()).map_err(|e| {
            PeerError::Refused(KmsError::Internal(format!("{peer} answered badly: {e}")))
        })
    }

    async fn update_multi_region_key(
        &self,
        peer: &str,
        req: UpdateMultiRegionKeyRequest,
    ) -> Result<Empty, PeerError> {
        let (mut client, cfg) = self.client(peer).await?;
        let endpoint = cfg.endpoint.clone().unwrap_or_default();
        let request = Self::request(cfg, &endpoint, update_message(req), UPDATE_MULTI_REGION_KEY)?;
        self.within(peer, client.update_multi_region_key(request))
            .await?;
        Ok(Empty)
    }
}
