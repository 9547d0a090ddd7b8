//! The gRPC health service (`grpc.health.v1.Health`) with this node's identity: the standard
//! answer carries only a status, so the node id (`[node] id`) travels in the response
//! metadata `p11kms-node`, on `Check` and on `Watch`. A load balancer's or operator's probe
//! thus tells which node of a cluster answered.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService, WatchStream};

/// The response metadata key holding the node id.
pub const NODE_METADATA: &str = "p11kms-node";

/// tonic's health service, answering with the node id when one is configured.
pub struct NodeHealth {
    inner: HealthService,
    node: Option<MetadataValue<Ascii>>,
}

/// The reporter the health task drives and the service to serve, tagged with `node` (a valid
/// node id, `crate::audit::valid_node_id`, is always a valid metadata value).
pub fn node_health_reporter(node: Option<&str>) -> (HealthReporter, HealthServer<NodeHealth>) {
    let reporter = HealthReporter::new();
    let service = NodeHealth {
        inner: HealthService::from_health_reporter(reporter.clone()),
        node: node.and_then(|n| MetadataValue::try_from(n).ok()),
    };
    (reporter, HealthServer::new(service))
}

impl NodeHealth {
    /// Adds the node id to a successful answer.
    fn tag<T>(&self, answer: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
        answer.map(|mut r| {
            if let Some(node) = &self.node {
                r.metadata_mut().insert(NODE_METADATA, node.clone());
            }
            r
        })
    }
}

#[tonic::async_trait]
impl Health for NodeHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let answer = self.inner.check(request).await;
        self.tag(answer)
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let answer = self.inner.watch(request).await;
        self.tag(answer)
    }
}
