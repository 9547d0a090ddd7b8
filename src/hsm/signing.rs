//! The audit signing key: an HSM-resident ECDSA P-256 key pair that signs the audit trail's
//! checkpoints (`crate::audit`).
//!
//! - **One key pair per label.** [`Hsm::ensure_audit_key`] finds the token key pair with
//!   `CKA_LABEL` = `CKA_ID` = the label ([`AUDIT_KEY_LABEL`] by default), or creates it
//!   (`CKM_EC_KEY_PAIR_GEN` on prime256v1). The private key is a token object, private,
//!   sensitive, never extractable, and may only sign (`CKA_ALLOWED_MECHANISMS` = `CKM_ECDSA`).
//!   The public key is exported as a DER `SubjectPublicKeyInfo`.
//! - **Signing.** [`Hsm::sign_ecdsa_p256`] runs `CKM_ECDSA` over a 32-byte SHA-256 digest on a
//!   worker and converts the raw `r || s` answer to the DER `ECDSA-Sig-Value` that X.509 tools
//!   and `ring`'s `ECDSA_P256_SHA256_ASN1` verify.
//! - **Reconciliation.** The label starts with [`AUDIT_KEY_LABEL_PREFIX`]; the store/token
//!   reconciler skips such objects (they belong to no CMK).
//!
//! The private key handle is cached in the [`super::Hsm`]'s handle cache under a synthetic
//! [`ObjectId`] that can never equal a CMK's (its "UUID" bytes are not a version-4 UUID).

use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use sha2::{Digest, Sha256};

use super::call::Call;
use super::error::{is_handle_invalid, HsmError, HsmErrorKind};
use super::objects::ObjectId;
use super::pool::{Lane, LockClass, Retry, WorkerCtx};
use super::template::{Template, Usage};
use super::{Hsm, KeyAttributes};

/// The label (and `CKA_ID`) of the audit signing key p11kms uses.
pub const AUDIT_KEY_LABEL: &str = "p11kms/audit/v1";

/// Every audit signing key's label starts with this; reconciliation skips such objects.
pub const AUDIT_KEY_LABEL_PREFIX: &str = "p11kms/audit/";

/// DER prefix of a P-256 `SubjectPublicKeyInfo`: SEQUENCE { SEQUENCE { id-ecPublicKey,
/// prime256v1 }, BIT STRING (0 unused bits) }, followed by the 65-byte uncompressed point.
pub const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Length of an uncompressed P-256 point (`0x04 || X || Y`).
const P256_POINT_LEN: usize = 65;

/// The audit key as exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditKeyInfo {
    /// The label (and `CKA_ID`) of the key pair on the token.
    pub label: String,
    /// DER `SubjectPublicKeyInfo` of the public key (id-ecPublicKey, prime256v1).
    pub public_key_spki_der: Vec<u8>,
    /// Whether this call generated the key pair (first start).
    pub created: bool,
}

/// The DER `SubjectPublicKeyInfo` of an uncompressed P-256 point.
pub fn p256_spki_from_point(point: &[u8]) -> Option<Vec<u8>> {
    if point.len() != P256_POINT_LEN || point[0] != 0x04 {
        return None;
    }
    let mut der = P256_SPKI_PREFIX.to_vec();
    der.extend_from_slice(point);
    Some(der)
}

/// The uncompressed point inside a P-256 `SubjectPublicKeyInfo` (the inverse of
/// [`p256_spki_from_point`]); `None` for anything else.
pub fn p256_point_from_spki(spki: &[u8]) -> Option<&[u8]> {
    let point = spki.strip_prefix(P256_SPKI_PREFIX)?;
    (point.len() == P256_POINT_LEN && point[0] == 0x04).then_some(point)
}

/// `CKA_EC_POINT` is a DER OCTET STRING wrapping the point (PKCS#11 2.40); some modules
/// answer the bare point. Accept both.
fn point_from_ec_point_attr(v: &[u8]) -> Option<&[u8]> {
    match v {
        [0x04, 0x41, rest @ ..] if rest.len() == P256_POINT_LEN => Some(rest),
        [0x04, ..] if v.len() == P256_POINT_LEN => Some(v),
        _ => None,
    }
}

/// Convert a raw `r || s` ECDSA signature (PKCS#11 `CKM_ECDSA` output) to DER
/// `SEQUENCE { INTEGER r, INTEGER s }`. `None` if `raw` is not two equal non-empty halves.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) || raw.len() > 132 {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let int = |x: &[u8]| -> Vec<u8> {
        let start = x
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(x.len().saturating_sub(1));
        let x = &x[start..];
        let mut out = vec![0x02];
        let pad = x.first().is_some_and(|b| b & 0x80 != 0);
        out.push((x.len() + usize::from(pad)) as u8);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(x);
        out
    };
    let (r, s) = (int(r), int(s));
    let body_len = r.len() + s.len();
    let mut out = vec![0x30];
    if body_len >= 0x80 {
        out.push(0x81);
    }
    out.push(body_len as u8);
    out.extend_from_slice(&r);
    out.extend_from_slice(&s);
    Some(out)
}

/// The handle-cache key of the audit private key with `label`. Byte 6 (the UUID version
/// nibble of a CMK's id) is 0, so it never equals a CMK's [`ObjectId`].
fn cache_id(label: &str) -> ObjectId {
    let d = Sha256::digest(format!("p11kms-audit-key-handle:{label}").as_bytes());
    let mut b = [0u8; 20];
    b.copy_from_slice(&d[..20]);
    b[6] = 0;
    ObjectId(b)
}

fn check_label(label: &str, token: &str) -> Result<(), HsmError> {
    if !label.starts_with(AUDIT_KEY_LABEL_PREFIX) || label.len() > 64 {
        return Err(HsmError::new(
            HsmErrorKind::Config,
            "ensure_audit_key",
            token,
            format!(
                "an audit key label must start with {AUDIT_KEY_LABEL_PREFIX} (at most 64 bytes)"
            ),
        ));
    }
    Ok(())
}

/// The audit public key: a P-256 token object that may only verify.
pub(crate) fn public_template(label: &str) -> Vec<Attribute> {
    Template::public(KeyType::EC)
        .token(true)
        .private_object(false)
        .allow(Usage::Verify)
        .token_default(&[Usage::VerifyRecover])
        .with(Attribute::EcParams(
            super::asym::Curve::P256.oid_der().to_vec(),
        ))
        .id(label.as_bytes())
        .label(label)
        .build()
}

/// The audit private key: a guarded P-256 token object that may only sign with ECDSA.
pub(crate) fn private_template(label: &str) -> Vec<Attribute> {
    Template::private(KeyType::EC)
        .token(true)
        .guarded()
        .allow(Usage::Sign)
        .token_default(&[Usage::SignRecover])
        .mechanisms(vec![MechanismType::ECDSA])
        .id(label.as_bytes())
        .label(label)
        .build()
}

/// Find the objects of class `class` with `CKA_ID` = `label`.
fn find_class(
    ctx: &mut WorkerCtx,
    class: ObjectClass,
    label: &str,
) -> Result<Vec<ObjectHandle>, HsmError> {
    let search = [
        Attribute::Class(class),
        Attribute::KeyType(KeyType::EC),
        Attribute::Id(label.as_bytes().to_vec()),
    ];
    ctx.call(Call::FindObjects, |s| s.find_objects(&search))
}

fn one(
    ctx: &WorkerCtx,
    found: Vec<ObjectHandle>,
    what: &str,
) -> Result<Option<ObjectHandle>, HsmError> {
    super::ops::at_most_one(ctx, &found, |n| {
        format!("{n} audit {what} objects share one label")
    })
}

/// Read `CKA_EC_POINT` of `public` and build the SPKI.
fn export_spki(ctx: &mut WorkerCtx, public: ObjectHandle) -> Result<Vec<u8>, HsmError> {
    let spki = |a| match a {
        Attribute::EcPoint(v) => point_from_ec_point_attr(&v).and_then(p256_spki_from_point),
        _ => None,
    };
    let missing = "the audit public key is not an uncompressed P-256 point";
    super::ops::read_attribute(ctx, public, AttributeType::EcPoint, spki, missing)
}

/// Serialises find-or-create of the audit key within the process: several daemons (or `Hsm`
/// instances) starting at once on one token must not each create a pair. Across processes,
/// start one node first on a new token (docs/audit.md).
static ENSURE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Find or create the audit key pair `label`; cache the private key's handle.
fn ensure(ctx: &mut WorkerCtx, label: &str) -> Result<AuditKeyInfo, HsmError> {
    let _serialised = ENSURE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let private = find_class(ctx, ObjectClass::PRIVATE_KEY, label)?;
    let private = one(ctx, private, "private key")?;
    let public = find_class(ctx, ObjectClass::PUBLIC_KEY, label)?;
    let public = one(ctx, public, "public key")?;
    let (private, public, created) = match (private, public) {
        (Some(private), Some(public)) => (private, public, false),
        (None, None) => {
            let (public_t, private_t) = (public_template(label), private_template(label));
            let (public, private) = ctx.call(Call::GenerateKeyPair, |s| {
                s.generate_key_pair(&Mechanism::EccKeyPairGen, &public_t, &private_t)
            })?;
            tracing::info!(token = %ctx.token(), label, "audit signing key pair generated");
            (private, public, true)
        }
        (private, _) => {
            return Err(HsmError::new(
                HsmErrorKind::Other,
                "C_FindObjects",
                ctx.token(),
                format!(
                "the audit key pair {label} is incomplete on the token (the {} key is missing); \
                     refusing to replace it automatically",
                if private.is_some() {
                    "public"
                } else {
                    "private"
                }
            ),
            ))
        }
    };
    let spki = export_spki(ctx, public)?;
    ctx.shared.handles.insert(cache_id(label), private);
    Ok(AuditKeyInfo {
        label: label.to_owned(),
        public_key_spki_der: spki,
        created,
    })
}

/// The private key's handle: cached, else found (not created).
fn private_handle(ctx: &mut WorkerCtx, label: &str) -> Result<(ObjectHandle, bool), HsmError> {
    if let Some(h) = ctx.shared.handles.get(&cache_id(label)) {
        return Ok((h, true));
    }
    let found = find_class(ctx, ObjectClass::PRIVATE_KEY, label)?;
    match one(ctx, found, "private key")? {
        Some(h) => {
            ctx.shared.handles.insert(cache_id(label), h);
            Ok((h, false))
        }
        None => Err(HsmError::not_found(
            ctx.token(),
            format!("no audit signing key {label} on the token"),
        )),
    }
}

fn sign(ctx: &mut WorkerCtx, label: &str, digest: &[u8; 32]) -> Result<Vec<u8>, HsmError> {
    let attempt = |ctx: &mut WorkerCtx, h: ObjectHandle| {
        ctx.call_raw(Call::Sign, |s| s.sign(&Mechanism::Ecdsa, h, digest))
    };
    let (h, cached) = private_handle(ctx, label)?;
    let raw = match attempt(ctx, h) {
        Ok(raw) => raw,
        Err(e) if cached && is_handle_invalid(&e) => {
            ctx.shared.handles.evict(&cache_id(label));
            let (h, _) = private_handle(ctx, label)?;
            attempt(ctx, h).map_err(|e| ctx.fail(Call::Sign, &e))?
        }
        Err(e) => return Err(ctx.fail(Call::Sign, &e)),
    };
    ecdsa_raw_to_der(&raw).ok_or_else(|| {
        HsmError::new(
            HsmErrorKind::Other,
            "C_Sign",
            ctx.token(),
            format!("unexpected CKM_ECDSA signature length {}", raw.len()),
        )
    })
}

fn attributes(ctx: &mut WorkerCtx, label: &str) -> Result<KeyAttributes, HsmError> {
    let (h, _) = private_handle(ctx, label)?;
    let attrs = super::ops::custody_attributes(ctx, h)?;
    Ok(super::ops::key_attributes_from(attrs))
}

impl Hsm {
    /// Find the audit signing key pair `label` (a label starting with
    /// [`AUDIT_KEY_LABEL_PREFIX`]; p11kms uses [`AUDIT_KEY_LABEL`]), or create it on first
    /// start, and export its public key. A half-present pair is an error, never replaced.
    pub async fn ensure_audit_key(&self, label: &str) -> Result<AuditKeyInfo, HsmError> {
        check_label(label, self.token_label())?;
        let label = label.to_owned();
        self.submit(LockClass::Exclusive, "ensure_audit_key", move |ctx| {
            ensure(ctx, &label)
        })
        .await
    }

    /// ECDSA P-256 signature (DER `ECDSA-Sig-Value`) by the audit key `label` over `digest`,
    /// a SHA-256 digest of the signed message (`CKM_ECDSA`). Verifiable as
    /// ECDSA-P256-SHA256 over the message.
    pub async fn sign_ecdsa_p256(
        &self,
        label: &str,
        digest: [u8; 32],
    ) -> Result<Vec<u8>, HsmError> {
        check_label(label, self.token_label())?;
        let label = label.to_owned();
        // Ahead of the queue: the audit writer waits for this signature with a whole batch
        // of answers behind it.
        self.enqueue(
            LockClass::Shared,
            "sign_ecdsa_p256",
            Retry::OnLostSession,
            Lane::First,
            move |ctx| sign(ctx, &label, &digest),
        )
        .await
    }

    /// The custody attributes of the audit private key `label`, read from the device.
    pub async fn audit_key_attributes(&self, label: &str) -> Result<KeyAttributes, HsmError> {
        check_label(label, self.token_label())?;
        let label = label.to_owned();
        self.submit(LockClass::Shared, "audit_key_attributes", move |ctx| {
            attributes(ctx, &label)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hsm::tests::test_config;

    #[test]
    fn raw_to_der_minimal_integers() {
        // High bit set -> a leading zero; leading zeros stripped.
        let mut raw = vec![0x80; 32];
        raw.extend(std::iter::repeat_n(0, 31));
        raw.push(0x05);
        let der = ecdsa_raw_to_der(&raw).unwrap();
        assert_eq!(&der[..4], &[0x30, 2 + 33 + 3, 0x02, 33]);
        assert_eq!(der[4], 0);
        assert_eq!(&der[der.len() - 3..], &[0x02, 1, 5]);
        assert!(ecdsa_raw_to_der(&[]).is_none());
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_none());
    }

    #[test]
    fn spki_round_trip() {
        let mut point = vec![0x04];
        point.extend([7u8; 64]);
        let spki = p256_spki_from_point(&point).unwrap();
        assert_eq!(spki.len(), 91);
        assert_eq!(p256_point_from_spki(&spki), Some(point.as_slice()));
        assert!(p256_spki_from_point(&point[1..]).is_none());
        let mut wrapped = vec![0x04, 0x41];
        wrapped.extend(&point);
        assert_eq!(point_from_ec_point_attr(&wrapped), Some(point.as_slice()));
        assert_eq!(point_from_ec_point_attr(&point), Some(point.as_slice()));
    }

    #[test]
    fn cache_id_is_never_a_v4_uuid() {
        let id = cache_id(AUDIT_KEY_LABEL);
        assert_eq!(id.0[6] >> 4, 0);
    }

    #[tokio::test]
    async fn audit_key_created_once_custody_and_signature_verifies() {
        let hsm = Hsm::open(&test_config()).expect("open Hsm");
        // A label of its own so the test is independent of other users of the shared token.
        let label = format!(
            "{AUDIT_KEY_LABEL_PREFIX}test-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let first = hsm.ensure_audit_key(&label).await.unwrap();
        assert!(first.created);
        assert_eq!(first.public_key_spki_der.len(), 91);
        let second = hsm.ensure_audit_key(&label).await.unwrap();
        assert!(!second.created, "the key is reused");
        assert_eq!(first.public_key_spki_der, second.public_key_spki_der);

        // A fresh Hsm (empty handle cache) finds the same key.
        let other = Hsm::open(&test_config()).expect("open Hsm");
        let third = other.ensure_audit_key(&label).await.unwrap();
        assert!(!third.created);
        assert_eq!(third.public_key_spki_der, first.public_key_spki_der);

        let a = hsm.audit_key_attributes(&label).await.unwrap();
        assert!(a.token && a.private);
        assert!(a.sensitive && a.always_sensitive);
        assert!(!a.extractable && a.never_extractable);
        assert!(a.sign);
        assert!(!a.decrypt && !a.unwrap && !a.derive);
        assert_eq!(a.allowed_mechanisms, vec!["ECDSA".to_string()]);

        // The listing shows both halves under the reconciler-skipped prefix.
        let objects = hsm.list_objects().await.unwrap();
        let ours: Vec<_> = objects.iter().filter(|o| o.label == label).collect();
        assert_eq!(ours.len(), 2);
        assert!(ours.iter().any(|o| o.class == "PRIVATE_KEY"));
        assert!(ours.iter().any(|o| o.class == "PUBLIC_KEY"));

        let message = b"checkpoint body bytes";
        let digest: [u8; 32] = Sha256::digest(message).into();
        let point = p256_point_from_spki(&first.public_key_spki_der).unwrap();
        let key = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            point,
        );
        for h in [&hsm, &other] {
            let sig = h.sign_ecdsa_p256(&label, digest).await.unwrap();
            key.verify(message, &sig)
                .expect("signature verifies with ring");
            assert!(key.verify(b"another message", &sig).is_err());
        }

        // Labels outside the prefix are refused; unknown keys are not created by signing.
        let e = hsm.ensure_audit_key("p11kms/other").await.unwrap_err();
        assert_eq!(e.kind, HsmErrorKind::Config);
        let e = hsm
            .sign_ecdsa_p256(&format!("{label}-absent"), digest)
            .await
            .unwrap_err();
        assert_eq!(e.kind, HsmErrorKind::ObjectNotFound, "{e}");
        drop(other);
    }
}
