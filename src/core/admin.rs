//! The console's operator operations on this node (issue 21): ListPrincipals (the identity
//! directory's users and roles, for the create-key wizard's pickers) and GetHealth (the HSM,
//! the audit trail, the request rate of the last minutes); SearchAuditTrail and
//! VerifyAuditTrail read this node's trail in [`super::audit_trail`]. Each is authorized on
//! `*` by its `p11kms:` action, so identity policies decide, and each is audited by the gate
//! like every request.
//!
//! Layering: the engine knows neither the metrics registry nor the audit writer. The server
//! wires an [`AdminWiring`] once: where this node's audit trail lives (directory, node id,
//! the checkpoint key's public half) and a [`NodeProbe`], a trait object answering the two
//! live figures the engine cannot see (whether the trail is writable; the requests counted
//! where every door counts them). So core keeps the authorization and the answer's shape, as
//! for every other operation, the doors only translate, and core imports no metrics crate.
//!
//! Paging markers of these operations are sealed with a per-process HMAC key ([`Markers`]):
//! a marker this engine did not issue for the same operation is a ValidationException, so a
//! caller cannot steer the reads with a forged position.

use std::path::PathBuf;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;

use super::authz::AuthzRequest;
use super::operation::{request_parameters, Page, ResponseElements};
use super::{Kms, KmsError};
use crate::identity::Caller;
use crate::wire_enum::wire_enum;

/// The width of one point of GetHealth's request series, seconds.
pub const REQUEST_INTERVAL_SECS: i64 = 10;
/// How many points GetHealth's request series has (15 minutes of 10 s).
pub const REQUEST_POINTS: usize = 90;

/// The requests of one interval, as GetHealth reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RequestPoint {
    /// The interval's start, Unix seconds.
    pub time_s: i64,
    /// Requests served (every door, every outcome).
    pub requests: u64,
    /// Of those, the ones answered with an error.
    pub errors: u64,
    /// The mean latency inside the daemon, milliseconds (0 when idle).
    pub latency_mean_ms: f64,
    /// The highest latency inside the daemon, milliseconds (0 when idle).
    pub latency_max_ms: f64,
}

/// What the engine asks of the daemon around it for GetHealth: implemented by the server
/// over the audit writer and the metrics' request ring.
pub trait NodeProbe: Send + Sync {
    /// Whether the audit trail can be written now.
    fn audit_writable(&self) -> bool;
    /// The last [`REQUEST_POINTS`] intervals ending with the one holding `now_ms`, oldest
    /// first, zeros where idle.
    fn request_points(&self, now_ms: i64) -> Vec<RequestPoint>;
}

/// Where this node's audit trail is and how to read its live figures: wired once by the
/// server ([`Kms::set_admin_wiring`]).
pub struct AdminWiring {
    /// The directory of the segment files.
    pub audit_dir: PathBuf,
    /// This node's id (`None`: a single node).
    pub node: Option<String>,
    /// The audit checkpoint key's public half (DER SubjectPublicKeyInfo).
    pub audit_public_key: Vec<u8>,
    /// The live figures.
    pub probe: Arc<dyn NodeProbe>,
}

impl std::fmt::Debug for AdminWiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminWiring")
            .field("audit_dir", &self.audit_dir)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Kms {
    /// Wires the admin operations' view of this node (once; later calls are ignored).
    pub fn set_admin_wiring(&self, wiring: AdminWiring) {
        let _ = self.admin.set(wiring);
    }

    /// The wiring, or the answer of a daemon that has none (an engine without a server).
    pub(crate) fn admin_wiring(&self) -> Result<&AdminWiring, KmsError> {
        self.admin.get().ok_or_else(|| {
            KmsError::UnsupportedOperation("This engine runs without a daemon around it.".into())
        })
    }
}

/// Seals and opens the paging markers of the admin operations with a key of this process.
pub struct Markers(hmac::Key);

impl std::fmt::Debug for Markers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Markers(..)")
    }
}

impl Default for Markers {
    fn default() -> Markers {
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let seed = zeroize::Zeroizing::new([*a.as_bytes(), *b.as_bytes()].concat());
        Markers(hmac::Key::new(hmac::HMAC_SHA256, &seed))
    }
}

impl Markers {
    /// A marker for `position` in the results of `operation`.
    pub fn seal(&self, operation: &str, position: &str) -> String {
        let payload = format!("{operation}\n{position}");
        let tag = hmac::sign(&self.0, payload.as_bytes());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload.as_bytes()),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// The position of a marker this process sealed for `operation`; anything else is a
    /// ValidationException.
    pub fn open(&self, operation: &str, marker: &str) -> Result<String, KmsError> {
        let refused = || {
            KmsError::validation(
                "marker",
                &format!("Member must be a NextMarker that {operation} returned"),
            )
        };
        let (payload, tag) = marker.split_once('.').ok_or_else(refused)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| refused())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| refused())?;
        hmac::verify(&self.0, &payload, &tag).map_err(|_| refused())?;
        let payload = String::from_utf8(payload).map_err(|_| refused())?;
        let (op, position) = payload.split_once('\n').ok_or_else(refused)?;
        if op != operation {
            return Err(refused());
        }
        Ok(position.to_string())
    }

    /// A page's size (`1..=max`, `default` when absent) and the position it starts after.
    pub fn start(
        &self,
        operation: &str,
        page: &Page,
        max: i32,
        default: usize,
    ) -> Result<(usize, Option<String>), KmsError> {
        let limit = super::validate::limit_in(page.limit, max, default)?;
        let after = match page.marker.as_deref() {
            None => None,
            Some(m) => Some(self.open(operation, m)?),
        };
        Ok((limit, after))
    }
}

wire_enum!(
    /// What a directory principal is, for the pickers.
    DirectoryPrincipalType {
        /// An IAM user.
        User,
        /// An IAM role.
        Role,
    }
);

/// ListPrincipals input: one page of the directory.
#[derive(Debug, Clone, Default)]
pub struct ListPrincipalsRequest {
    /// `Limit` (1-1000, default 100) and `Marker`.
    pub page: Page,
}

request_parameters!(ListPrincipalsRequest { page });

/// One user or role of the identity directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryPrincipal {
    /// The user or role ARN.
    pub arn: String,
    /// User or role.
    pub principal_type: DirectoryPrincipalType,
    /// The UserName or RoleName.
    pub name: String,
}

/// ListPrincipals output: sorted by ARN.
#[derive(Debug, Clone, Default)]
pub struct ListPrincipalsResponse {
    /// This page.
    pub principals: Vec<DirectoryPrincipal>,
    /// Where the next page starts, when there is one.
    pub next_marker: Option<String>,
}

impl ResponseElements for ListPrincipalsResponse {}

/// The operation name ListPrincipals seals its markers for.
const LIST_PRINCIPALS: &str = "ListPrincipals";

impl Kms {
    /// The identity directory's users and roles, sorted by ARN, one page at a time. Needs
    /// `p11kms:ListPrincipals`.
    pub async fn list_principals(
        &self,
        caller: &Caller,
        req: ListPrincipalsRequest,
    ) -> Result<ListPrincipalsResponse, KmsError> {
        let (limit, after) = self.markers.start(LIST_PRINCIPALS, &req.page, 1000, 100)?;
        self.authorize(caller, AuthzRequest::new("p11kms:ListPrincipals", "*"))?;
        let directory = self.directory.current();
        let all = directory.users_and_roles().map(|e| DirectoryPrincipal {
            arn: e.arn.clone(),
            principal_type: match e.kind {
                crate::identity::directory::EntryKind::Role => DirectoryPrincipalType::Role,
                _ => DirectoryPrincipalType::User,
            },
            name: e.name.clone(),
        });
        let (principals, last) = page_of(all, after.as_deref(), limit);
        Ok(ListPrincipalsResponse {
            principals,
            next_marker: last.map(|arn| self.markers.seal(LIST_PRINCIPALS, &arn)),
        })
    }
}

/// One page, sorted by ARN, of the principals after `after`, and the ARN the next page
/// starts after when there is one.
fn page_of(
    all: impl Iterator<Item = DirectoryPrincipal>,
    after: Option<&str>,
    limit: usize,
) -> (Vec<DirectoryPrincipal>, Option<String>) {
    let mut sorted: Vec<DirectoryPrincipal> = all.collect();
    sorted.sort_by(|a, b| a.arn.cmp(&b.arn));
    let items = sorted.into_iter().map(|p| (p.arn.clone(), p));
    super::validate::page_after(items, after, limit)
}

/// GetHealth input: nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct GetHealthRequest;

request_parameters!(GetHealthRequest {});

/// One part's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentHealth {
    /// Whether it works.
    pub healthy: bool,
    /// A sentence for the operator (no secret: an HSM error names its function and code).
    pub detail: String,
}

/// GetHealth output.
#[derive(Debug, Clone)]
pub struct GetHealthResponse {
    /// The default key store's HSM token.
    pub hsm: ComponentHealth,
    /// The audit trail's writer.
    pub audit: ComponentHealth,
    /// The width of each point, seconds ([`REQUEST_INTERVAL_SECS`]).
    pub interval_seconds: i64,
    /// The last 15 minutes of requests, oldest first.
    pub points: Vec<RequestPoint>,
}

impl ResponseElements for GetHealthResponse {}

impl Kms {
    /// The HSM's and the audit trail's health and the request series of the last minutes.
    /// Needs `p11kms:GetHealth`. Custom key stores' connection states are
    /// DescribeCustomKeyStores' answer, not this one's.
    pub async fn get_health(
        &self,
        caller: &Caller,
        _req: GetHealthRequest,
    ) -> Result<GetHealthResponse, KmsError> {
        self.authorize(caller, AuthzRequest::new("p11kms:GetHealth", "*"))?;
        let wiring = self.admin_wiring()?;
        let hsm = match self.hsm.ping().await {
            Ok(()) => ComponentHealth {
                healthy: true,
                detail: format!("token {} answers", self.hsm.token_label()),
            },
            Err(e) => ComponentHealth {
                healthy: false,
                detail: format!("token {} does not answer: {e}", self.hsm.token_label()),
            },
        };
        let audit = if wiring.probe.audit_writable() {
            ComponentHealth {
                healthy: true,
                detail: "the audit trail is writable".into(),
            }
        } else {
            ComponentHealth {
                healthy: false,
                detail: "the audit trail cannot be written: requests fail closed".into(),
            }
        };
        Ok(GetHealthResponse {
            hsm,
            audit,
            interval_seconds: REQUEST_INTERVAL_SECS,
            points: wiring.probe.request_points(self.now_ms()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validation(r: Result<impl std::fmt::Debug, KmsError>) -> String {
        match r {
            Err(KmsError::Validation(m)) => m,
            other => panic!("not a ValidationException: {other:?}"),
        }
    }

    #[test]
    fn markers_open_only_what_they_sealed() {
        let m = Markers::default();
        let sealed = m.seal("ListPrincipals", "arn:aws:iam::1:user/a");
        assert_eq!(
            m.open("ListPrincipals", &sealed).unwrap(),
            "arn:aws:iam::1:user/a"
        );
        // Another operation's marker, another process's, an edited one, garbage.
        assert!(validation(m.open("SearchAuditTrail", &sealed)).contains("'marker'"));
        let other = Markers::default().seal("ListPrincipals", "arn:aws:iam::1:user/a");
        validation(m.open("ListPrincipals", &other));
        let (payload, tag) = sealed.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(b"ListPrincipals\narn:aws:iam::1:user/z");
        validation(m.open("ListPrincipals", &format!("{forged}.{tag}")));
        validation(m.open("ListPrincipals", payload));
        validation(m.open("ListPrincipals", "not a marker"));
        validation(m.open("ListPrincipals", ""));
    }

    /// Pages of two walk the principals in ARN order, each once, whatever the directory's
    /// order.
    #[test]
    fn principals_page_in_arn_order() {
        let p = |arn: &str| DirectoryPrincipal {
            arn: arn.into(),
            principal_type: DirectoryPrincipalType::User,
            name: arn.into(),
        };
        let all = ["d", "a", "c", "e", "b"].map(p);
        let mut after = None;
        let mut seen = Vec::new();
        loop {
            let (page, last) = page_of(all.iter().cloned(), after.as_deref(), 2);
            assert!(page.len() <= 2);
            seen.extend(page.into_iter().map(|p| p.arn));
            match last {
                Some(l) => after = Some(l),
                None => break,
            }
        }
        assert_eq!(seen, ["a", "b", "c", "d", "e"]);
        let (page, last) = page_of(all.iter().cloned(), None, 5);
        assert_eq!((page.len(), last), (5, None));
        let (page, last) = page_of(all.iter().cloned(), Some("e"), 5);
        assert_eq!((page.len(), last), (0, None));
    }

    #[test]
    fn page_limits_are_checked() {
        let m = Markers::default();
        let page = |limit, marker: Option<&str>| Page {
            limit,
            marker: marker.map(str::to_string),
        };
        assert_eq!(
            m.start("X", &page(None, None), 500, 50).unwrap(),
            (50, None)
        );
        assert_eq!(
            m.start("X", &page(Some(500), None), 500, 50).unwrap().0,
            500
        );
        for bad in [0, -1, 501, 100_000] {
            let msg = validation(m.start("X", &page(Some(bad), None), 500, 50));
            assert!(msg.contains("'limit'"), "{msg}");
        }
        let sealed = m.seal("X", "p");
        assert_eq!(
            m.start("X", &page(Some(1), Some(&sealed)), 500, 50)
                .unwrap(),
            (1, Some("p".into()))
        );
        validation(m.start("Y", &page(Some(1), Some(&sealed)), 500, 50));
    }
}
