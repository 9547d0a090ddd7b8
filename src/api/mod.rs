//! The doors onto the engine. A door only translates: wire types to core types and back, and
//! `KmsError` to the wire's error shape, in one place per door. It holds no business logic.
//!
//! The HTTP-based doors run on one listener ([`http`]): each implements [`http::HttpDoor`]
//! and is listed once in [`HTTP_DOORS`]; [`crate::server`] starts the ones the config
//! enables. The gRPC door ([`grpc`]) is served by tonic, on the same connection limits
//! ([`listener`]) and the same shutdown signal.

pub mod aws_json;
pub mod gate;
pub mod grpc;
pub mod http;
pub mod listener;

/// The door registry: every HTTP door the daemon can serve, one line per door.
pub const HTTP_DOORS: &[http::HttpDoorEntry] =
    &[http::HttpDoorEntry::of::<aws_json::AwsJsonDoor>()];
