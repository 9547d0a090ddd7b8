//! Key ids, both shapes, and their 16 bytes.
//!
//! A single-Region key's id is a lowercase hyphenated UUID v4 (`1234abcd-12ab-44cd-...`). A
//! multi-Region key's id is `mrk-` followed by 32 lowercase hex digits, the same in every
//! Region. Both are 16 bytes wherever the id is binary: the HSM objects' `CKA_ID`, the
//! ciphertext header, the engine's cache. The bytes of a multi-Region id are a UUID of
//! version 8 (RFC 9562's custom version), which no v4 id ever has, so the bytes alone say
//! which shape to write: [`render`] is the one way back from bytes to text.

use uuid::Uuid;

/// The prefix of a multi-Region key id.
pub const MRK_PREFIX: &str = "mrk-";

/// A key id that is not in either canonical shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a key id")]
pub struct BadKeyId;

/// Parses a key id in its canonical shape: a lowercase hyphenated UUID v4, or `mrk-` and the
/// 32 lowercase hex digits of a version-8 UUID. Anything else (other UUID spellings
/// included) is [`BadKeyId`], so one key has exactly one id.
pub fn parse(id: &str) -> Result<Uuid, BadKeyId> {
    let uuid = match id.strip_prefix(MRK_PREFIX) {
        Some(hex) if hex.len() == 32 => Uuid::try_parse(hex).map_err(|_| BadKeyId)?,
        Some(_) => return Err(BadKeyId),
        None if id.len() == 36 => Uuid::try_parse(id).map_err(|_| BadKeyId)?,
        None => return Err(BadKeyId),
    };
    if render(&uuid) == id {
        Ok(uuid)
    } else {
        Err(BadKeyId)
    }
}

/// The key id of 16 key-id bytes: `mrk-...` for a multi-Region key, else the hyphenated UUID.
pub fn render(uuid: &Uuid) -> String {
    crate::encoding::key_id_text(*uuid.as_bytes())
}

/// [`render`] of raw bytes (a ciphertext header's or an HSM object's key id).
pub fn render_bytes(bytes: [u8; 16]) -> String {
    render(&Uuid::from_bytes(bytes))
}

/// Whether the bytes are a multi-Region key's (a version-8 UUID).
pub fn is_multi_region(uuid: &Uuid) -> bool {
    uuid.get_version_num() == 8
}

/// A fresh single-Region key id (random UUID v4).
pub fn new_single_region() -> Uuid {
    Uuid::new_v4()
}

/// A fresh multi-Region key id: 122 random bits in a version-8 UUID.
pub fn new_multi_region() -> Uuid {
    Uuid::new_v8(*Uuid::new_v4().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_shapes_round_trip() {
        for uuid in [new_single_region(), new_multi_region()] {
            let id = render(&uuid);
            assert_eq!(parse(&id), Ok(uuid), "{id}");
        }
        let mrk = render(&new_multi_region());
        assert!(mrk.starts_with("mrk-") && mrk.len() == 36, "{mrk}");
        assert!(!render(&new_single_region()).starts_with("mrk-"));
    }

    #[test]
    fn only_canonical_spellings_parse() {
        let v4 = new_single_region();
        let mrk = new_multi_region();
        let refused = [
            v4.simple().to_string(),
            v4.hyphenated().to_string().to_uppercase(),
            v4.urn().to_string(),
            format!("mrk-{}", v4.simple()), // a v4 under the mrk prefix
            mrk.hyphenated().to_string(),   // a v8 without the prefix
            format!("mrk-{}", mrk.simple()).to_uppercase(),
            format!("mrk-{}", &mrk.simple().to_string()[..31]),
            "mrk-".into(),
            String::new(),
            "alias/x".into(),
        ];
        for id in refused {
            assert_eq!(parse(&id), Err(BadKeyId), "{id}");
        }
    }
}
