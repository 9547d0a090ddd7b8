//! Signed checkpoints: the [`CheckpointSigner`] seam, the HSM signer, the framing of a
//! checkpoint's signature, its verification, and the exported public key.
//!
//! A checkpoint record's signed message is its body without `signature` (see
//! [`super::event::Checkpoint`]); the signature is ECDSA P-256 with SHA-256, DER-encoded,
//! base64 in the record. The HSM computes SHA-256 in the daemon and `CKM_ECDSA` on the
//! device; a software signer (tests) uses `ring`'s `ECDSA_P256_SHA256_ASN1_SIGNING`; both
//! verify with `ring`'s `ECDSA_P256_SHA256_ASN1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::event::{key_id_of, record_body, Checkpoint};
use super::AuditError;
use crate::encoding::public_key_pem;
use crate::hsm::signing::{p256_point_from_spki, AuditKeyInfo};
use crate::hsm::{Hsm, HsmError};

/// File name of the exported audit public key in the data directory.
pub const PUBLIC_KEY_FILE: &str = "audit-public-key.pem";

/// Signs checkpoints. The HSM implementation is [`HsmCheckpointSigner`]; tests use a
/// software key.
#[async_trait]
pub trait CheckpointSigner: Send + Sync {
    /// DER SubjectPublicKeyInfo of the P-256 public key.
    fn public_key_spki_der(&self) -> &[u8];

    /// An ECDSA P-256 signature over SHA-256 of `message`, DER-encoded
    /// (`ECDSA-Sig-Value`), as `ring::signature::ECDSA_P256_SHA256_ASN1` verifies it.
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, AuditError>;
}

/// Signs checkpoints with the HSM-resident audit key (`CKM_ECDSA` over SHA-256 of the
/// message).
#[derive(Debug)]
pub struct HsmCheckpointSigner {
    hsm: Arc<Hsm>,
    key: AuditKeyInfo,
}

impl HsmCheckpointSigner {
    /// Find or create the audit key `label` on the token
    /// ([`crate::hsm::signing::AUDIT_KEY_LABEL`] in the daemon) and sign with it.
    pub async fn new(hsm: Arc<Hsm>, label: &str) -> Result<HsmCheckpointSigner, HsmError> {
        let key = hsm.ensure_audit_key(label).await?;
        Ok(HsmCheckpointSigner { hsm, key })
    }

    /// The key as found or created (label, public key, whether it was created now).
    pub fn key(&self) -> &AuditKeyInfo {
        &self.key
    }
}

#[async_trait]
impl CheckpointSigner for HsmCheckpointSigner {
    fn public_key_spki_der(&self) -> &[u8] {
        &self.key.public_key_spki_der
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, AuditError> {
        let digest: [u8; 32] = Sha256::digest(message).into();
        self.hsm
            .sign_ecdsa_p256(&self.key.label, digest)
            .await
            .map_err(|e| AuditError::Signer(e.to_string()))
    }
}

/// Body of a checkpoint record without its signature: the signed message.
pub(crate) fn unsigned_body(
    node: Option<&str>,
    sequence: u64,
    previous_hash: &str,
    cp: &Checkpoint,
) -> Vec<u8> {
    // Serializing a struct of strings and integers cannot fail.
    let fields = serde_json::to_vec(cp).unwrap_or_else(|_| b"{}".to_vec());
    record_body(
        super::event::RECORD_CHECKPOINT,
        node,
        sequence,
        previous_hash,
        &fields,
    )
}

/// Insert `,"signature":"<base64>"` before the final `}` of `unsigned`.
pub(crate) fn attach_signature(unsigned: &[u8], signature_der: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(signature_der);
    let mut body = unsigned[..unsigned.len().saturating_sub(1)].to_vec();
    body.extend_from_slice(b",\"signature\":\"");
    body.extend_from_slice(b64.as_bytes());
    body.extend_from_slice(b"\"}");
    body
}

/// Split a checkpoint body (hash member already removed) into the signed message and the
/// DER signature. `None` if the body does not end with a base64 `signature` member.
pub(crate) fn split_signature(body: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    const MEMBER: &[u8] = b",\"signature\":\"";
    let inner = body.strip_suffix(b"\"}")?;
    let at = inner.windows(MEMBER.len()).rposition(|w| w == MEMBER)?;
    let b64 = &inner[at + MEMBER.len()..];
    let sig = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let mut signed = inner[..at].to_vec();
    signed.push(b'}');
    Some((signed, sig))
}

/// Whether `signature_der` is a valid ECDSA P-256 SHA-256 signature of `message` by the key
/// `spki_der`.
pub fn verify_signature(spki_der: &[u8], message: &[u8], signature_der: &[u8]) -> bool {
    let Some(point) = p256_point_from_spki(spki_der) else {
        return false;
    };
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point)
        .verify(message, signature_der)
        .is_ok()
}

/// A P-256 public key from a PEM (`PUBLIC KEY`) or DER SubjectPublicKeyInfo file's bytes.
pub fn parse_public_key(bytes: &[u8]) -> Result<Vec<u8>, AuditError> {
    let der = if bytes.starts_with(b"-----BEGIN") {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| AuditError::Invalid("the public key PEM is not UTF-8".into()))?;
        let b64: String = text
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN PUBLIC KEY-----"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .map(str::trim)
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| AuditError::Invalid("the public key PEM is not valid base64".into()))?
    } else {
        bytes.to_vec()
    };
    if p256_point_from_spki(&der).is_none() {
        return Err(AuditError::Invalid(
            "not an ECDSA P-256 public key (SubjectPublicKeyInfo, uncompressed point)".into(),
        ));
    }
    Ok(der)
}

/// Write the audit public key to `<data_dir>/audit-public-key.pem` (first start). If the file
/// exists with the same key nothing changes; with a different key (the audit key was
/// replaced on the token) the old file is kept as `audit-public-key.<keyId prefix>.pem`, so
/// older checkpoints stay verifiable, and the new key is written.
pub fn export_public_key(data_dir: &Path, spki_der: &[u8]) -> Result<PathBuf, AuditError> {
    let path = data_dir.join(PUBLIC_KEY_FILE);
    let io = |e: std::io::Error, p: &Path| AuditError::Io(format!("{}: {e}", p.display()));
    match std::fs::read(&path) {
        Ok(existing) => {
            if parse_public_key(&existing).ok().as_deref() == Some(spki_der) {
                return Ok(path);
            }
            let old_id = parse_public_key(&existing)
                .map(|k| key_id_of(&k)[..16].to_owned())
                .unwrap_or_else(|_| "unparsable".into());
            let kept = data_dir.join(format!("audit-public-key.{old_id}.pem"));
            std::fs::rename(&path, &kept).map_err(|e| io(e, &kept))?;
            tracing::warn!(
                kept = %kept.display(),
                "the audit public key changed; the previous key file was kept"
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e, &path)),
    }
    let tmp = data_dir.join(format!("{PUBLIC_KEY_FILE}.tmp"));
    std::fs::write(&tmp, public_key_pem(spki_der)).map_err(|e| io(e, &tmp))?;
    std::fs::rename(&tmp, &path).map_err(|e| io(e, &path))?;
    tracing::info!(path = %path.display(), key_id = %key_id_of(spki_der), "audit public key exported");
    Ok(path)
}

/// A software ECDSA P-256 signer, for tests.
#[cfg(test)]
pub(crate) struct SoftwareSigner {
    key: ring::signature::EcdsaKeyPair,
    spki: Vec<u8>,
    rng: ring::rand::SystemRandom,
}

#[cfg(test)]
impl SoftwareSigner {
    /// A fresh random key.
    pub(crate) fn generate() -> SoftwareSigner {
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let spki = crate::hsm::signing::p256_spki_from_point(key.public_key().as_ref()).unwrap();
        SoftwareSigner { key, spki, rng }
    }
}

#[cfg(test)]
#[async_trait]
impl CheckpointSigner for SoftwareSigner {
    fn public_key_spki_der(&self) -> &[u8] {
        &self.spki
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, AuditError> {
        self.key
            .sign(&self.rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| AuditError::Signer("software signing failed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::GENESIS_HASH;

    #[tokio::test]
    async fn sign_split_verify() {
        let s = SoftwareSigner::generate();
        let cp = Checkpoint {
            time: "t".into(),
            first_sequence: 1,
            head_sequence: 4,
            head_hash: GENESIS_HASH.into(),
            record_count: 4,
            event_count: 3,
            previous_checkpoint_sequence: None,
            algorithm: super::super::event::CHECKPOINT_ALGORITHM.into(),
            key_id: key_id_of(s.public_key_spki_der()),
        };
        let unsigned = unsigned_body(None, 5, GENESIS_HASH, &cp);
        let sig = s.sign(&unsigned).await.unwrap();
        let body = attach_signature(&unsigned, &sig);
        let (signed, sig2) = split_signature(&body).unwrap();
        assert_eq!(signed, unsigned);
        assert_eq!(sig2, sig);
        assert!(verify_signature(s.public_key_spki_der(), &signed, &sig));
        let other = SoftwareSigner::generate();
        assert!(!verify_signature(
            other.public_key_spki_der(),
            &signed,
            &sig
        ));
        assert!(!verify_signature(s.public_key_spki_der(), b"x", &sig));
    }

    #[test]
    fn public_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = SoftwareSigner::generate();
        let path = export_public_key(dir.path(), a.public_key_spki_der()).unwrap();
        let pem = std::fs::read(&path).unwrap();
        assert!(pem.starts_with(b"-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(parse_public_key(&pem).unwrap(), a.public_key_spki_der());
        assert_eq!(parse_public_key(a.public_key_spki_der()).unwrap(), a.spki);
        assert!(parse_public_key(b"garbage").is_err());
        // Same key: unchanged. New key: the old file is kept.
        export_public_key(dir.path(), a.public_key_spki_der()).unwrap();
        let b = SoftwareSigner::generate();
        export_public_key(dir.path(), b.public_key_spki_der()).unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let now = std::fs::read(&path).unwrap();
        assert_eq!(parse_public_key(&now).unwrap(), b.public_key_spki_der());
    }
}
