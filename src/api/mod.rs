//! The doors onto the engine. A door only translates: wire types to core types and back, and
//! `KmsError` to the wire's error shape, in one place per door. It holds no business logic.

pub mod aws_json;
pub mod gate;
pub mod grpc;
pub mod listener;
