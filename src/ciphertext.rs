//! Ciphertext format v1 for symmetric CMKs, and its AAD.
//!
//! ```text
//! offset  size  field
//! 0       1     format version (0x01)
//! 1       16    key id (UUID bytes)
//! 17      4     key version (u32, big-endian)
//! 21      12    IV (from the HSM's RNG)
//! 33      n     AES-256-GCM ciphertext
//! 33+n    16    GCM tag
//! ```
//!
//! The AAD is `"p11kms/v1" || blob[0..33] || canonical(encryption context)`, where the
//! canonical context is the pairs sorted by key bytes, each key and value written as a
//! big-endian u16 length followed by its bytes. Binding the header means no byte of the blob
//! can change without the tag failing; binding the context means it must be presented again,
//! exactly, to decrypt.

use std::collections::BTreeMap;

/// The format version byte of v1 blobs.
pub const VERSION_V1: u8 = 0x01;
/// Bytes before the GCM ciphertext: version, key id, key version, IV.
pub const HEADER_LEN: usize = 33;
/// GCM tag length in bytes.
pub const TAG_LEN: usize = 16;
/// Total overhead of the format over the plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// The AAD domain-separation prefix.
pub const AAD_DOMAIN: &[u8] = b"p11kms/v1";

/// Why a blob could not be parsed. Callers surface every variant as
/// `InvalidCiphertextException` without saying which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CiphertextError {
    /// Shorter than a header, a tag and one byte of ciphertext.
    #[error("ciphertext too short")]
    TooShort,
    /// The version byte is not one this build understands.
    #[error("unknown ciphertext format version")]
    UnknownVersion,
}

/// A parsed v1 blob, borrowing from the caller's bytes.
#[derive(Debug, Clone, Copy)]
pub struct ParsedBlob<'a> {
    /// The 16-byte key id (UUID bytes).
    pub key_id: [u8; 16],
    /// The key version (backing-key version) that sealed the blob.
    pub key_version: u32,
    /// The GCM IV.
    pub iv: [u8; 12],
    /// Bytes 0..33, bound into the AAD.
    pub header: &'a [u8; HEADER_LEN],
    /// GCM ciphertext followed by the tag.
    pub ciphertext_and_tag: &'a [u8],
}

/// Parses a v1 blob. Never panics on any input.
///
/// ```
/// use p11kms::ciphertext::{assemble, header, parse, OVERHEAD};
/// let blob = assemble(&header(&[7; 16], 2, &[1; 12]), &[0u8; 20]);
/// let p = parse(&blob).unwrap();
/// assert_eq!((p.key_id, p.key_version, p.iv), ([7; 16], 2, [1; 12]));
/// assert_eq!(blob.len(), OVERHEAD + 4);
/// // Too short to hold a header, a tag and one byte of ciphertext.
/// assert!(parse(&blob[..OVERHEAD]).is_err());
/// ```
pub fn parse(blob: &[u8]) -> Result<ParsedBlob<'_>, CiphertextError> {
    if blob.len() < OVERHEAD + 1 {
        return Err(CiphertextError::TooShort);
    }
    let (header, rest) = blob.split_at(HEADER_LEN);
    let header: &[u8; HEADER_LEN] = header.try_into().map_err(|_| CiphertextError::TooShort)?;
    if header[0] != VERSION_V1 {
        return Err(CiphertextError::UnknownVersion);
    }
    let mut key_id = [0u8; 16];
    key_id.copy_from_slice(&header[1..17]);
    let mut version = [0u8; 4];
    version.copy_from_slice(&header[17..21]);
    let mut iv = [0u8; 12];
    iv.copy_from_slice(&header[21..33]);
    Ok(ParsedBlob {
        key_id,
        key_version: u32::from_be_bytes(version),
        iv,
        header,
        ciphertext_and_tag: rest,
    })
}

/// Builds the 33-byte header for a key, version and IV.
pub fn header(key_id: &[u8; 16], key_version: u32, iv: &[u8; 12]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = VERSION_V1;
    h[1..17].copy_from_slice(key_id);
    h[17..21].copy_from_slice(&key_version.to_be_bytes());
    h[21..33].copy_from_slice(iv);
    h
}

/// Writes the canonical encoding of an encryption context.
///
/// `BTreeMap<String, _>` iterates in byte order of the keys, which is the canonical order.
/// Lengths are u16: callers cap keys and values well below 64 KiB before they get here, and a
/// longer value is truncated in length only if that cap were bypassed, which
/// [`canonical_context`] refuses by returning `None`.
pub fn canonical_context(ctx: &BTreeMap<String, String>) -> Option<Vec<u8>> {
    let size: usize = ctx.iter().map(|(k, v)| 4 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(size);
    for (k, v) in ctx {
        for part in [k.as_bytes(), v.as_bytes()] {
            let len = u16::try_from(part.len()).ok()?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    Some(out)
}

/// The AAD for a header and an already-canonical context.
pub fn aad(header: &[u8; HEADER_LEN], canonical_ctx: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_DOMAIN.len() + HEADER_LEN + canonical_ctx.len());
    aad.extend_from_slice(AAD_DOMAIN);
    aad.extend_from_slice(header);
    aad.extend_from_slice(canonical_ctx);
    aad
}

/// Joins a header and the GCM output into a blob.
pub fn assemble(header: &[u8; HEADER_LEN], ciphertext_and_tag: &[u8]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(HEADER_LEN + ciphertext_and_tag.len());
    blob.extend_from_slice(header);
    blob.extend_from_slice(ciphertext_and_tag);
    blob
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let h = header(&[7u8; 16], 3, &[9u8; 12]);
        assemble(&h, &[1u8; 21])
    }

    #[test]
    fn round_trip() {
        let blob = sample();
        assert_eq!(blob.len(), OVERHEAD + 5);
        let p = parse(&blob).unwrap();
        assert_eq!(p.key_id, [7u8; 16]);
        assert_eq!(p.key_version, 3);
        assert_eq!(p.iv, [9u8; 12]);
        assert_eq!(p.ciphertext_and_tag, &[1u8; 21][..]);
        assert_eq!(&p.header[..], &blob[..HEADER_LEN]);
    }

    #[test]
    fn short_and_unknown_version_rejected() {
        assert_eq!(parse(&[]).unwrap_err(), CiphertextError::TooShort);
        assert_eq!(
            parse(&[1u8; OVERHEAD]).unwrap_err(),
            CiphertextError::TooShort
        );
        let mut blob = sample();
        blob[0] = 2;
        assert_eq!(parse(&blob).unwrap_err(), CiphertextError::UnknownVersion);
    }

    #[test]
    fn every_header_byte_changes_parse_or_aad() {
        // Each single-byte change either fails to parse or yields a different AAD, so the GCM
        // tag cannot verify. (The end-to-end test proves the tag failure on the device.)
        let blob = sample();
        let base = parse(&blob).unwrap();
        let base_aad = aad(base.header, &[]);
        for i in 0..HEADER_LEN {
            let mut m = blob.clone();
            m[i] ^= 0x01;
            match parse(&m) {
                Err(_) => {}
                Ok(p) => assert_ne!(aad(p.header, &[]), base_aad, "byte {i}"),
            }
        }
    }

    #[test]
    fn context_canonical_order_and_framing() {
        let mut a = BTreeMap::new();
        a.insert("b".to_string(), "2".to_string());
        a.insert("a".to_string(), "1".to_string());
        let c = canonical_context(&a).unwrap();
        assert_eq!(c, b"\x00\x01a\x00\x011\x00\x01b\x00\x012".to_vec());
        // Framing prevents ambiguity between {"ab":""} and {"a":"b"}.
        let mut x = BTreeMap::new();
        x.insert("ab".to_string(), String::new());
        let mut y = BTreeMap::new();
        y.insert("a".to_string(), "b".to_string());
        assert_ne!(canonical_context(&x), canonical_context(&y));
        assert_eq!(
            canonical_context(&BTreeMap::new()).unwrap(),
            Vec::<u8>::new()
        );
        let mut big = BTreeMap::new();
        big.insert("k".to_string(), "v".repeat(70_000));
        assert!(canonical_context(&big).is_none());
    }
}
