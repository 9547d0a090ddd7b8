//! The XKS door's operation table: each route's last path segment, the engine operation it
//! runs ([`crate::core::operation::XKS_OPERATIONS`]), how its body is read and how its
//! answer is written ([`super::wire`]). Nothing here decides anything: the engine does.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use super::wire::{self, XksError};
use crate::core::operation::Operation as CoreOperation;
use crate::core::xks::{
    XksDecryptRequest, XksEncryptRequest, XksHealthRequest, XksKeyMetadataRequest,
};
use crate::core::{Kms, KmsError};
use crate::identity::Caller;

/// An engine call ready to run, answering the response body.
pub type Call = Pin<Box<dyn Future<Output = Result<Value, KmsError>> + Send>>;

/// A request read from its body: what the trail records of it, and its engine call.
pub struct Prepared {
    /// The request parameters (never plaintext, ciphertext or AAD).
    pub params: Value,
    pub call: Call,
}

/// Reads a body (for the key the path names, if any) into an engine call.
type Prepare = fn(Arc<Kms>, Caller, Option<&str>, &[u8]) -> Result<Prepared, XksError>;

/// One route of the XKS API.
pub struct Operation {
    /// The engine operation's name (audit `eventName`, metrics label).
    pub name: &'static str,
    /// The last path segment: `health`, or `metadata`/`encrypt`/`decrypt` after
    /// `keys/{externalKeyId}/`.
    pub segment: &'static str,
    /// Whether the route names a key (`keys/{externalKeyId}/...`).
    pub keyed: bool,
    pub prepare: Prepare,
}

/// The four routes.
pub const OPERATIONS: &[Operation] = &[
    Operation {
        name: XksHealthRequest::NAME,
        segment: "health",
        keyed: false,
        prepare: |kms, caller, _, body| {
            let req = wire::health_request(body)?;
            Ok(prepared(kms, caller, req, wire::health_body))
        },
    },
    Operation {
        name: XksKeyMetadataRequest::NAME,
        segment: "metadata",
        keyed: true,
        prepare: |kms, caller, key, body| {
            let req = wire::metadata_request(key.unwrap_or_default(), body)?;
            Ok(prepared(kms, caller, req, wire::metadata_body))
        },
    },
    Operation {
        name: XksEncryptRequest::NAME,
        segment: "encrypt",
        keyed: true,
        prepare: |kms, caller, key, body| {
            let req = wire::encrypt_request(key.unwrap_or_default(), body)?;
            Ok(prepared(kms, caller, req, wire::encrypt_body))
        },
    },
    Operation {
        name: XksDecryptRequest::NAME,
        segment: "decrypt",
        keyed: true,
        prepare: |kms, caller, key, body| {
            let req = wire::decrypt_request(key.unwrap_or_default(), body)?;
            Ok(prepared(kms, caller, req, wire::decrypt_body))
        },
    },
];

/// The route of a path's tail after `{prefix}/kms/xks/v1/`, with the key it names.
pub fn operation(tail: &str) -> Option<(&'static Operation, Option<&str>)> {
    if let Some(op) = OPERATIONS.iter().find(|o| !o.keyed && o.segment == tail) {
        return Some((op, None));
    }
    let (key, segment) = tail.strip_prefix("keys/")?.split_once('/')?;
    let op = OPERATIONS
        .iter()
        .find(|o| o.keyed && o.segment == segment)?;
    is_external_key_id(key).then_some((op, Some(key)))
}

/// 1-128 characters of `[A-Za-z0-9._-]` (the specification's external key id).
pub fn is_external_key_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// An engine request as a ready call, its answer rendered by `render`.
fn prepared<R: CoreOperation>(
    kms: Arc<Kms>,
    caller: Caller,
    req: R,
    render: fn(R::Response) -> Value,
) -> Prepared {
    Prepared {
        params: req.request_parameters(),
        call: Box::pin(async move { req.run(kms, caller).await.map(render) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every XKS engine operation has its route here, and every route is one of them.
    #[test]
    fn the_table_covers_the_xks_operations() {
        let here: Vec<&str> = OPERATIONS.iter().map(|o| o.name).collect();
        let mut core = crate::core::operation::XKS_OPERATIONS.to_vec();
        let mut sorted = here.clone();
        core.sort_unstable();
        sorted.sort_unstable();
        assert_eq!(sorted, core);
    }

    #[test]
    fn paths_name_routes_and_keys() {
        fn name(t: &str) -> Option<(&'static str, Option<&str>)> {
            operation(t).map(|(o, k)| (o.name, k))
        }
        assert_eq!(name("health"), Some(("GetHealthStatus", None)));
        assert_eq!(
            name("keys/k-1.a_b/encrypt"),
            Some(("Encrypt", Some("k-1.a_b")))
        );
        assert_eq!(name("keys/k/metadata"), Some(("GetKeyMetadata", Some("k"))));
        assert_eq!(name("keys/k/decrypt"), Some(("Decrypt", Some("k"))));
        let long = format!("keys/{}/encrypt", "a".repeat(129));
        for bad in [
            "",
            "keys/k",
            "keys//encrypt",
            "keys/k/sign",
            "keys/a%2Fb/encrypt",
            "keys/k/encrypt/x",
            "health/x",
            "keys/k/health",
            long.as_str(),
        ] {
            assert_eq!(name(bad), None, "{bad}");
        }
    }
}
