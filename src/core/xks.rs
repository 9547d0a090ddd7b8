//! The engine side of the XKS door (AWS KMS's external key store proxy API, `docs/xks.md`):
//! GetKeyMetadata, Encrypt, Decrypt and GetHealthStatus as engine operations (their family in
//! [`super::operation`]'s table, [`super::operation::XKS_OPERATIONS`]).
//!
//! - An external key id names a p11kms SYMMETRIC_DEFAULT key on the default token or in an
//!   AWS_CLOUDHSM store (not in an external store: that would be one layer): its key id, or
//!   an alias written path-safe as `alias.<name>` with every `/` of the name as `.`
//!   ([`key_ref`]).
//! - Secondary authorization is the ordinary evaluator: the key store's principal (the
//!   caller) doing `kms:DescribeKey`, `kms:Encrypt` or `kms:Decrypt` on the key, with the
//!   condition keys of [`CONDITION_KEYS`] filled from the request's `requestMetadata`. Health
//!   is never authorized; it is a deep, cached check of every backing HSM
//!   ([`super::xks_health`]).
//! - Encrypt and Decrypt run AES-256-GCM on the key's HSM with a 12-byte IV from the HSM and
//!   a 16-byte tag. The AAD the HSM sees is the specification's, never a hash:
//!   `u16be(len(aad)) || aad || u8(len(metadata)) || metadata` ([`hsm_aad`]), so another
//!   conforming proxy with the same key material can open the ciphertext.
//!   `ciphertextMetadata` carries the key version ([`version_metadata`]).
//! - The audit trail records the external key id and `requestMetadata`, never plaintext,
//!   ciphertext or AAD.

use serde_json::Value;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::authz::{AuthzRequest, CtxValue};
use super::crypto::check_symmetric_usage;
use super::operation::{redacted_debug, request_parameters, Recorded, ResponseElements};
use super::{check_state, Kms, KmsError, Resolved, StateClass};
use crate::hsm::{ObjectId, GCM_IV_LEN, GCM_TAG_LEN};
use crate::identity::Caller;

/// Largest plaintext Encrypt takes (the specification asks for at least 4,300 bytes).
pub const MAX_PLAINTEXT: usize = 8192;
/// Largest `additionalAuthenticatedData` (the specification asks for at least 8,192 bytes).
pub const MAX_AAD: usize = 16384;
/// Largest ciphertext Decrypt takes.
pub const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT;
/// Largest `ciphertextMetadata` (the specification's limit).
pub const MAX_METADATA: usize = 20;
/// The first byte of the `ciphertextMetadata` p11kms writes: format 1, a key version.
pub const METADATA_FORMAT: u8 = 1;

/// The condition keys the XKS door fills from `requestMetadata`, each with its member.
pub const CONDITION_KEYS: &[(&str, &str)] = &[
    ("xks:AwsPrincipalArn", "awsPrincipalArn"),
    ("xks:KmsKeyArn", "kmsKeyArn"),
    ("xks:KmsOperation", "kmsOperation"),
    ("xks:KmsViaService", "kmsViaService"),
    ("xks:AwsSourceVpc", "awsSourceVpc"),
    ("xks:AwsSourceVpce", "awsSourceVpce"),
];

/// The actions XKS requests are authorized as (GetKeyMetadata, Encrypt, Decrypt).
pub const XKS_ACTIONS: &[&str] = &["kms:DescribeKey", "kms:Encrypt", "kms:Decrypt"];

/// `requestMetadata`: who AWS KMS says is asking, for what. `kmsRequestId` is recorded,
/// never validated; an unknown `kmsOperation` is accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMetadata {
    pub kms_request_id: String,
    pub kms_operation: String,
    pub aws_principal_arn: Option<String>,
    pub kms_key_arn: Option<String>,
    pub kms_via_service: Option<String>,
    pub aws_source_vpc: Option<String>,
    pub aws_source_vpce: Option<String>,
}

impl RequestMetadata {
    /// The members in [`CONDITION_KEYS`] order.
    fn members(&self) -> [Option<&str>; 6] {
        [
            self.aws_principal_arn.as_deref(),
            self.kms_key_arn.as_deref(),
            Some(self.kms_operation.as_str()),
            self.kms_via_service.as_deref(),
            self.aws_source_vpc.as_deref(),
            self.aws_source_vpce.as_deref(),
        ]
    }

    /// The condition keys of the members present.
    pub(super) fn conditions(&self) -> impl Iterator<Item = (&'static str, CtxValue)> + '_ {
        CONDITION_KEYS
            .iter()
            .zip(self.members())
            .filter_map(|((key, _), v)| v.map(|v| (*key, CtxValue::one(v))))
    }
}

impl RequestMetadata {
    /// `requestMetadata` from its members by their XKS names (`awsPrincipalArn`, ...), as an
    /// operator copies them from an audit event to ask why a request was decided so
    /// (ExplainAccess). An unknown member is a ValidationException.
    pub fn from_members(
        members: &std::collections::BTreeMap<String, String>,
    ) -> Result<RequestMetadata, KmsError> {
        let mut m = RequestMetadata::default();
        for (name, value) in members {
            let slot = match name.as_str() {
                "kmsRequestId" => {
                    m.kms_request_id = value.clone();
                    continue;
                }
                "kmsOperation" => {
                    m.kms_operation = value.clone();
                    continue;
                }
                "awsPrincipalArn" => &mut m.aws_principal_arn,
                "kmsKeyArn" => &mut m.kms_key_arn,
                "kmsViaService" => &mut m.kms_via_service,
                "awsSourceVpc" => &mut m.aws_source_vpc,
                "awsSourceVpce" => &mut m.aws_source_vpce,
                other => {
                    return Err(KmsError::Validation(format!(
                        "xksRequestMetadata has no member {:?}; it takes kmsRequestId, \
                         kmsOperation, awsPrincipalArn, kmsKeyArn, kmsViaService, awsSourceVpc \
                         and awsSourceVpce.",
                        other.chars().take(64).collect::<String>()
                    )))
                }
            };
            *slot = Some(value.clone());
        }
        Ok(m)
    }
}

/// The trail records `requestMetadata` as given (no secret in it).
impl Recorded for RequestMetadata {
    fn recorded(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("kmsRequestId".into(), self.kms_request_id.as_str().into());
        for ((_, member), v) in CONDITION_KEYS.iter().zip(self.members()) {
            if let Some(v) = v {
                m.insert((*member).into(), v.into());
            }
        }
        Value::Object(m)
    }
}

/// GetKeyMetadata input.
#[derive(Debug, Clone, Default)]
pub struct XksKeyMetadataRequest {
    pub external_key_id: String,
    pub request_metadata: RequestMetadata,
}

/// The status GetKeyMetadata reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XksKeyStatus {
    Enabled,
    Disabled,
}

impl XksKeyStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            XksKeyStatus::Enabled => "ENABLED",
            XksKeyStatus::Disabled => "DISABLED",
        }
    }
}

/// GetKeyMetadata output: always an AES-256 key for encryption and decryption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XksKeyMetadataResponse {
    pub key_status: XksKeyStatus,
}

impl XksKeyMetadataResponse {
    /// `keySpec`.
    pub const KEY_SPEC: &'static str = "AES_256";
    /// `keyUsage`.
    pub const KEY_USAGE: [&'static str; 2] = ["ENCRYPT", "DECRYPT"];
}

/// Encrypt input. `Debug` never prints the plaintext or the AAD.
#[derive(Default)]
pub struct XksEncryptRequest {
    pub external_key_id: String,
    pub request_metadata: RequestMetadata,
    pub plaintext: Zeroizing<Vec<u8>>,
    pub additional_authenticated_data: Option<Vec<u8>>,
    /// `ciphertextDataIntegrityValueAlgorithm` was `SHA_256`.
    pub integrity_value: bool,
}

/// Encrypt output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XksEncryptResponse {
    pub ciphertext: Vec<u8>,
    pub initialization_vector: [u8; GCM_IV_LEN],
    pub authentication_tag: [u8; GCM_TAG_LEN],
    pub ciphertext_metadata: Vec<u8>,
    /// SHA-256 over AAD, metadata, IV, ciphertext and tag, when asked.
    pub ciphertext_data_integrity_value: Option<[u8; 32]>,
}

/// Decrypt input. `Debug` never prints the AAD.
#[derive(Default)]
pub struct XksDecryptRequest {
    pub external_key_id: String,
    pub request_metadata: RequestMetadata,
    pub ciphertext: Vec<u8>,
    pub initialization_vector: Vec<u8>,
    pub authentication_tag: Vec<u8>,
    pub ciphertext_metadata: Option<Vec<u8>>,
    pub additional_authenticated_data: Option<Vec<u8>>,
}

/// Decrypt output. `Debug` never prints the plaintext.
pub struct XksDecryptResponse {
    pub plaintext: Zeroizing<Vec<u8>>,
}

/// GetHealthStatus input.
#[derive(Debug, Clone, Default)]
pub struct XksHealthRequest {
    pub request_metadata: RequestMetadata,
}

/// The health of one backing HSM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EkmHealth {
    Active,
    Degraded,
    Unavailable,
}

impl EkmHealth {
    /// Every status, in the specification's order.
    pub const ALL: [EkmHealth; 3] = [
        EkmHealth::Active,
        EkmHealth::Degraded,
        EkmHealth::Unavailable,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EkmHealth::Active => "ACTIVE",
            EkmHealth::Degraded => "DEGRADED",
            EkmHealth::Unavailable => "UNAVAILABLE",
        }
    }
}

/// One `ekmFleetDetails` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EkmDetail {
    pub id: String,
    pub model: String,
    pub health: EkmHealth,
}

/// GetHealthStatus output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XksHealthResponse {
    pub ekm_fleet_details: Vec<EkmDetail>,
}

redacted_debug! {
    XksEncryptRequest { external_key_id, request_metadata, plaintext: redacted, additional_authenticated_data: redacted, integrity_value };
    XksDecryptRequest { external_key_id, request_metadata, ciphertext: redacted, additional_authenticated_data: redacted, .. };
    XksDecryptResponse { plaintext: redacted };
}

request_parameters! {
    XksKeyMetadataRequest { external_key_id, request_metadata };
    XksEncryptRequest { external_key_id, request_metadata };
    XksDecryptRequest { external_key_id, request_metadata };
    XksHealthRequest { request_metadata };
}

impl ResponseElements for XksKeyMetadataResponse {}
impl ResponseElements for XksEncryptResponse {}
impl ResponseElements for XksDecryptResponse {}
impl ResponseElements for XksHealthResponse {}

/// The `KeyId` an external key id names: a key id as is, `alias.<name>` as `alias/<name>`
/// with each `.` as `/` (alias names have no `.`, so the form is unambiguous).
pub fn key_ref(external_key_id: &str) -> String {
    match external_key_id.strip_prefix("alias.") {
        Some(name) => format!("alias/{}", name.replace('.', "/")),
        None => external_key_id.to_string(),
    }
}

/// The AAD the HSM sees (the specification's formula): the AAD's length (2 bytes, big
/// endian), the AAD, the metadata's length (1 byte), the metadata. Absent is empty.
pub fn hsm_aad(aad: &[u8], metadata: &[u8]) -> Result<Vec<u8>, KmsError> {
    let aad_len = u16::try_from(aad.len())
        .map_err(|_| KmsError::validation("additionalAuthenticatedData", "is too long"))?;
    let md_len = u8::try_from(metadata.len())
        .map_err(|_| KmsError::validation("ciphertextMetadata", "is too long"))?;
    let mut out = Vec::with_capacity(3 + aad.len() + metadata.len());
    out.extend_from_slice(&aad_len.to_be_bytes());
    out.extend_from_slice(aad);
    out.push(md_len);
    out.extend_from_slice(metadata);
    Ok(out)
}

/// The `ciphertextMetadata` of a ciphertext under key version `version`.
pub fn version_metadata(version: u32) -> Vec<u8> {
    let mut m = vec![METADATA_FORMAT];
    m.extend_from_slice(&version.to_be_bytes());
    m
}

/// The key version a `ciphertextMetadata` names; `None` when it is not p11kms's format.
pub fn metadata_version(metadata: &[u8]) -> Option<u32> {
    match metadata {
        [METADATA_FORMAT, v @ ..] => Some(u32::from_be_bytes(v.try_into().ok()?)),
        _ => None,
    }
}

/// The `ciphertextDataIntegrityValue`: SHA-256 over AAD, metadata, IV, ciphertext and tag.
pub fn integrity_value(aad: &[u8], metadata: &[u8], iv: &[u8], ct: &[u8], tag: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [aad, metadata, iv, ct, tag] {
        h.update(part);
    }
    h.finalize().into()
}

fn invalid_ciphertext() -> KmsError {
    KmsError::InvalidCiphertext("The ciphertext is invalid.".into())
}

impl Kms {
    /// The key an XKS request names, authorized for `action` as the key store's principal
    /// with the `requestMetadata` condition keys, and checked to be a symmetric key.
    fn xks_key(
        &self,
        caller: &Caller,
        external_key_id: &str,
        action: &'static str,
        metadata: &RequestMetadata,
    ) -> Result<Resolved, KmsError> {
        let resolved = self.resolve(caller, &key_ref(external_key_id), true)?;
        let authz = metadata
            .conditions()
            .fold(AuthzRequest::on_key(action, &resolved), |a, (k, v)| {
                a.with(k, v)
            });
        self.authorize(caller, authz)?;
        check_symmetric_usage(&resolved)?;
        if resolved.key.store.as_ref().is_some_and(|s| s.is_external()) {
            // Its material is partly behind another proxy: served here it would be one layer.
            return Err(KmsError::InvalidKeyUsage(format!(
                "{} is in an external key store; an external key id names a key whose \
                 material p11kms holds.",
                resolved.key.arn
            )));
        }
        Ok(resolved)
    }

    /// GetKeyMetadata: an AES-256 ENCRYPT/DECRYPT key, ENABLED or DISABLED (any state but
    /// Enabled reads DISABLED).
    pub async fn xks_get_key_metadata(
        &self,
        caller: &Caller,
        req: XksKeyMetadataRequest,
    ) -> Result<XksKeyMetadataResponse, KmsError> {
        let r = self.xks_key(
            caller,
            &req.external_key_id,
            "kms:DescribeKey",
            &req.request_metadata,
        )?;
        let key_status = match check_state(&r.key, StateClass::Use) {
            Ok(()) => XksKeyStatus::Enabled,
            Err(_) => XksKeyStatus::Disabled,
        };
        Ok(XksKeyMetadataResponse { key_status })
    }

    /// Encrypt under the key's current version, on its HSM, with the specification's AAD;
    /// with `integrity_value`, the ciphertext is decrypted once more before its CDIV is
    /// computed.
    pub async fn xks_encrypt(
        &self,
        caller: &Caller,
        req: XksEncryptRequest,
    ) -> Result<XksEncryptResponse, KmsError> {
        super::validate::blob_len("plaintext", req.plaintext.len(), 1, MAX_PLAINTEXT)?;
        let aad = req.additional_authenticated_data.unwrap_or_default();
        super::validate::blob_len("additionalAuthenticatedData", aad.len(), 0, MAX_AAD)?;
        let r = self.xks_key(
            caller,
            &req.external_key_id,
            "kms:Encrypt",
            &req.request_metadata,
        )?;
        check_state(&r.key, StateClass::Use)?;
        let object = super::object_in_use(&r.key, false)?;
        let metadata = version_metadata(object.version());
        let full_aad = hsm_aad(&aad, &metadata)?;
        let device = self.device_of(&r.key)?;
        let builder_aad = move |_: &[u8; GCM_IV_LEN]| full_aad.clone();
        let sealed = if req.integrity_value {
            device
                .encrypt_gcm_checked(object, req.plaintext, Box::new(builder_aad))
                .await?
        } else {
            device
                .encrypt_gcm(object, req.plaintext, Box::new(builder_aad))
                .await?
        };
        let split = sealed
            .ciphertext_and_tag
            .len()
            .checked_sub(GCM_TAG_LEN)
            .ok_or_else(|| KmsError::Internal("The HSM returned no tag.".into()))?;
        let (ct, tag) = sealed.ciphertext_and_tag.split_at(split);
        let cdiv = req
            .integrity_value
            .then(|| integrity_value(&aad, &metadata, &sealed.iv, ct, tag));
        Ok(XksEncryptResponse {
            ciphertext: ct.to_vec(),
            initialization_vector: sealed.iv,
            authentication_tag: tag.try_into().map_err(|_| invalid_ciphertext())?,
            ciphertext_metadata: metadata,
            ciphertext_data_integrity_value: cdiv,
        })
    }

    /// Decrypt: the key version from `ciphertextMetadata` (the current one when absent, for
    /// ciphertexts of other proxies), the specification's AAD, on the key's HSM.
    pub async fn xks_decrypt(
        &self,
        caller: &Caller,
        req: XksDecryptRequest,
    ) -> Result<XksDecryptResponse, KmsError> {
        super::validate::blob_len("ciphertext", req.ciphertext.len(), 1, MAX_CIPHERTEXT)?;
        let aad = req.additional_authenticated_data.unwrap_or_default();
        super::validate::blob_len("additionalAuthenticatedData", aad.len(), 0, MAX_AAD)?;
        let metadata = req.ciphertext_metadata.unwrap_or_default();
        super::validate::blob_len("ciphertextMetadata", metadata.len(), 0, MAX_METADATA)?;
        let r = self.xks_key(
            caller,
            &req.external_key_id,
            "kms:Decrypt",
            &req.request_metadata,
        )?;
        check_state(&r.key, StateClass::Use)?;
        let iv: [u8; GCM_IV_LEN] = req
            .initialization_vector
            .as_slice()
            .try_into()
            .map_err(|_| invalid_ciphertext())?;
        if req.authentication_tag.len() != GCM_TAG_LEN {
            return Err(invalid_ciphertext());
        }
        let version = match metadata.as_slice() {
            [] => r.key.current_object().version(),
            m => metadata_version(m).ok_or_else(invalid_ciphertext)?,
        };
        if !r.key.versions.contains(&version) {
            return Err(invalid_ciphertext());
        }
        super::record::key_version(version);
        let mut ct_and_tag = req.ciphertext;
        ct_and_tag.extend_from_slice(&req.authentication_tag);
        let plaintext = self
            .device_of(&r.key)?
            .decrypt_gcm(
                ObjectId::new(r.key.uuid, version),
                iv,
                ct_and_tag,
                hsm_aad(&aad, &metadata)?,
            )
            .await?;
        Ok(XksDecryptResponse { plaintext })
    }

    /// GetHealthStatus: a deep check of every backing HSM, reused while fresh
    /// ([`super::xks_health`]); never authorized.
    pub async fn xks_get_health_status(
        &self,
        _caller: &Caller,
        _req: XksHealthRequest,
    ) -> Result<XksHealthResponse, KmsError> {
        Ok(XksHealthResponse {
            ekm_fleet_details: self.xks_fleet().await,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::operation::RequestParameters as _;

    #[test]
    fn the_aad_is_the_specifications_formula() {
        assert_eq!(hsm_aad(b"", b"").unwrap(), vec![0, 0, 0]);
        assert_eq!(
            hsm_aad(b"ab", &[1, 0, 0, 0, 7]).unwrap(),
            vec![0, 2, b'a', b'b', 5, 1, 0, 0, 0, 7]
        );
        let long = vec![9u8; 300];
        let got = hsm_aad(&long, b"").unwrap();
        assert_eq!(&got[..2], &[1, 44]);
        assert_eq!(got.len(), 2 + 300 + 1);
        assert!(hsm_aad(&vec![0; 70_000], b"").is_err());
        assert!(hsm_aad(b"", &[0; 256]).is_err());
    }

    #[test]
    fn metadata_carries_the_key_version() {
        for v in [1, 2, 0xdead_beef] {
            assert_eq!(metadata_version(&version_metadata(v)), Some(v));
        }
        assert!(version_metadata(3).len() <= MAX_METADATA);
        for bad in [
            &[][..],
            &[1, 0, 0, 1],
            &[2, 0, 0, 0, 1],
            &[1, 0, 0, 0, 1, 0],
        ] {
            assert_eq!(metadata_version(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn external_key_ids_name_keys_and_aliases() {
        assert_eq!(
            key_ref("1234abcd-12ab-34cd-56ef-1234567890ab"),
            "1234abcd-12ab-34cd-56ef-1234567890ab"
        );
        assert_eq!(key_ref("alias.app.prod"), "alias/app/prod");
        assert_eq!(key_ref("alias.x"), "alias/x");
    }

    #[test]
    fn the_trail_never_records_data() {
        let md = RequestMetadata {
            kms_request_id: "r-1".into(),
            kms_operation: "Encrypt".into(),
            aws_principal_arn: Some("arn:aws:iam::123456789012:role/R".into()),
            ..Default::default()
        };
        let req = XksEncryptRequest {
            external_key_id: "k".into(),
            request_metadata: md,
            plaintext: Zeroizing::new(b"SECRET-PT".to_vec()),
            additional_authenticated_data: Some(b"SECRET-AAD".to_vec()),
            integrity_value: true,
        };
        let params = req.request_parameters().to_string();
        assert_eq!(
            params,
            r#"{"externalKeyId":"k","requestMetadata":{"awsPrincipalArn":"arn:aws:iam::123456789012:role/R","kmsOperation":"Encrypt","kmsRequestId":"r-1"}}"#
        );
        assert!(!format!("{req:?}").contains("SECRET"));
    }
}
