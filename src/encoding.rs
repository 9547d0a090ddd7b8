//! Small encodings shared across layers, written once: the hex SHA-256 digest (SigV4 payload
//! hashes, audit record hashes, key material ids, import tokens), the PEM form of a public
//! key (the audit key file, `get-public-key` output) and URL percent-decoding (SigV4's
//! canonical query, URL-encoded IAM policy documents) and the wire spelling of field names
//! (PascalCase AWS members, camelCase audit parameters). Pure functions.

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// PEM (`PUBLIC KEY`, 64-character lines) of a DER SubjectPublicKeyInfo.
pub fn public_key_pem(spki_der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(spki_der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

/// `%XX`-decodes `s` (`+` stays literal); an invalid escape is kept as text.
pub fn percent_decode(s: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(s).collect()
}

/// `%XX`-decodes `s` into UTF-8 text, refusing (with a reason) an invalid escape or bytes
/// that are not UTF-8.
pub fn percent_decode_strict(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let is_hex = |i: usize| b.get(i).is_some_and(u8::is_ascii_hexdigit);
    if let Some(i) = (0..b.len()).find(|&i| b[i] == b'%' && !(is_hex(i + 1) && is_hex(i + 2))) {
        return Err(format!("invalid percent-escape at offset {i}"));
    }
    String::from_utf8(percent_decode(s)).map_err(|_| "URL-decoded document is not UTF-8".into())
}

/// The wire spelling of a Rust field name: `key_id` is `KeyId` (AWS JSON members) with
/// `capital_first`, `keyId` (CloudTrail parameters, gRPC JSON names) without.
pub fn wire_case(snake: &str, capital_first: bool) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = capital_first;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `wire` is the PascalCase spelling of the field name `snake` (`KeyId` of `key_id`),
/// without allocating: a door's member lookup on every request.
pub fn is_pascal_of(wire: &str, snake: &str) -> bool {
    let mut w = wire.bytes();
    let mut upper = true;
    for c in snake.bytes() {
        if c == b'_' {
            upper = true;
            continue;
        }
        let want = if upper { c.to_ascii_uppercase() } else { c };
        upper = false;
        if w.next() != Some(want) {
            return false;
        }
    }
    w.next().is_none()
}

/// A key id's text from its 16 bytes: `mrk-` and 32 hex digits for a multi-Region key (the
/// bytes of a version-8 UUID), else the hyphenated UUID. Every layer writes key ids through
/// it (`core::key_id` parses them back; the HSM layer names objects with it).
pub fn key_id_text(bytes: [u8; 16]) -> String {
    let uuid = uuid::Uuid::from_bytes(bytes);
    if uuid.get_version_num() == 8 {
        format!("mrk-{}", uuid.simple())
    } else {
        uuid.hyphenated().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_case_spellings() {
        assert_eq!(wire_case("key_id", true), "KeyId");
        assert_eq!(wire_case("key_id", false), "keyId");
        assert_eq!(wire_case("ciphertext_blob", true), "CiphertextBlob");
        assert_eq!(wire_case("dry_run", false), "dryRun");
        assert!(is_pascal_of("KeyId", "key_id"));
        assert!(is_pascal_of("GrantTokens", "grant_tokens"));
        assert!(!is_pascal_of("keyId", "key_id"));
        assert!(!is_pascal_of("KeyIdX", "key_id"));
        assert!(!is_pascal_of("Key", "key_id"));
        assert!(!is_pascal_of("Key_Id", "key_id"));
    }

    #[test]
    fn sha256_hex_of_known_inputs() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn pem_wraps_at_64_columns() {
        let pem = public_key_pem(&[0u8; 60]);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines.first(), Some(&"-----BEGIN PUBLIC KEY-----"));
        assert_eq!(lines.last(), Some(&"-----END PUBLIC KEY-----"));
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines[2], "AAAAAAAAAAAAAAAA");
        assert!(pem.ends_with("-----END PUBLIC KEY-----\n"));
    }

    #[test]
    fn percent_decoding_lenient_and_strict() {
        assert_eq!(percent_decode("a%20b+c%2Fd"), b"a b+c/d");
        assert_eq!(percent_decode("%7"), b"%7");
        assert_eq!(percent_decode("%zz%41"), b"%zzA");
        assert_eq!(
            percent_decode_strict("%7B%22a%22%3A1%7D").unwrap(),
            r#"{"a":1}"#
        );
        assert_eq!(
            percent_decode_strict("ab%7").unwrap_err(),
            "invalid percent-escape at offset 2"
        );
        assert!(percent_decode_strict("%G0").is_err());
        assert!(percent_decode_strict("%FF").is_err());
    }
}
