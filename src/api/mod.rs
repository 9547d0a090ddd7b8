//! The doors onto the engine. A door only translates: wire types to core types and back, and
//! `KmsError` to the wire's error shape, in one place per door. It holds no business logic.
//!
//! The XKS door ([`xks`]) serves AWS KMS's external key store proxy API. The AWS door also
//! serves the operator console's static files ([`console`]): a browser client of that door,
//! which signs its own requests.
//!
//! The HTTP-based doors run on one listener ([`http`]): each implements [`http::HttpDoor`]
//! and is listed once in [`HTTP_DOORS`]; [`crate::server`] starts the ones the config
//! enables. The gRPC door ([`grpc`]) is served by tonic, on the same connection limits
//! ([`listener`]) and the same shutdown signal.

pub mod aws_json;
pub mod console;
pub mod gate;
pub mod grpc;
pub mod http;
pub mod listener;
pub mod xks;

/// The door registry: every HTTP door the daemon can serve, one line per door.
pub const HTTP_DOORS: &[http::HttpDoorEntry] = &[
    http::HttpDoorEntry::of::<aws_json::AwsJsonDoor>(),
    http::HttpDoorEntry::of::<xks::XksDoor>(),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_lists_each_http_door_once() {
        let names: Vec<&str> = HTTP_DOORS.iter().map(|d| d.name).collect();
        assert!(names.contains(&aws_json::DOOR), "{names:?}");
        assert!(names.contains(&xks::DOOR), "{names:?}");
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert!(!names.contains(&grpc::DOOR), "the gRPC door is tonic's");
    }
}
