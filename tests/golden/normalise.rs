//! Normalisation of the golden transcripts: every value that is random or depends on the
//! clock (key ids, grant ids and tokens, request ids, timestamps, ciphertexts, data keys,
//! signatures, public keys, import tokens, session credentials) is replaced by a placeholder
//! numbered in order of first appearance (`<key-1>`, `<blob-3:32 bytes>`), so that the same
//! value appearing twice is still checked. Everything else is kept exactly.

use std::collections::{HashMap, HashSet};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use regex::{Captures, Regex};

const UUID: &str = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";

/// Blob members (base64 in the AWS JSON door, `Vec<u8>` in the gRPC door's messages).
const BLOB_MEMBERS: &[(&str, &str)] = &[
    ("CiphertextBlob", "ciphertext_blob"),
    ("Plaintext", "plaintext"),
    ("Signature", "signature"),
    ("PublicKey", "public_key"),
    ("Mac", "mac"),
    ("PrivateKeyPlaintext", "private_key_plaintext"),
    ("PrivateKeyCiphertextBlob", "private_key_ciphertext_blob"),
    ("SharedSecret", "shared_secret"),
    ("ImportToken", "import_token"),
    ("EncryptedKeyMaterial", "encrypted_key_material"),
];

/// Members whose string value is a secret or a one-off token (JSON, XML and Debug spellings).
const TOKEN_MEMBERS: &[(&str, &str, &str)] = &[
    ("GrantToken", "grant_token", "grant-token"),
    ("SecretAccessKey", "secret_access_key", "secret"),
    ("SessionToken", "session_token", "session-token"),
    ("NextMarker", "next_marker", "marker"),
];

/// The rewriting rules, compiled once.
struct Rules {
    json_blob: Regex,
    debug_blob: Regex,
    debug_time: Regex,
    json_epoch: Regex,
    rfc3339: Regex,
    session_key: Regex,
    tokens: Vec<(Regex, &'static str)>,
    grant_id: Regex,
    key_id: Regex,
    hex64: Regex,
    uuid: Regex,
}

impl Rules {
    fn new() -> Rules {
        let json_names: Vec<&str> = BLOB_MEMBERS.iter().map(|m| m.0).collect();
        let debug_names: Vec<&str> = BLOB_MEMBERS.iter().map(|m| m.1).collect();
        let tokens = TOKEN_MEMBERS
            .iter()
            .map(|(json, debug, cat)| {
                let re = format!(r#"(?:"{json}":"|<{json}>|\b{debug}: ")([^"<]+)"#);
                (Regex::new(&re).unwrap(), *cat)
            })
            .collect();
        Rules {
            json_blob: Regex::new(&format!(
                r#""({})":"([A-Za-z0-9+/=]*)""#,
                json_names.join("|")
            ))
            .unwrap(),
            debug_blob: Regex::new(&format!(
                r"\b({}): \[([0-9, ]*)\]",
                debug_names.join("|")
            ))
            .unwrap(),
            debug_time: Regex::new(r"Timestamp \{ seconds: (-?\d+), nanos: ").unwrap(),
            json_epoch: Regex::new(r#"":(1\d{9})([.,}\]eE])"#).unwrap(),
            rfc3339: Regex::new(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}").unwrap(),
            session_key: Regex::new(r"\bASIA[A-Z0-9]{16}\b").unwrap(),
            tokens,
            grant_id: Regex::new(
                r#"(?:"GrantId":"|\bgrant_id: "|"Statement":"|\bstatement: "|grant )([0-9a-f]{64})\b"#,
            )
            .unwrap(),
            key_id: Regex::new(&format!(
                r#"(?:key/|"KeyId":"|"TargetKeyId":"|\bkey_id: "|\btarget_key_id: ")({UUID})"#
            ))
            .unwrap(),
            hex64: Regex::new(r"\b[0-9a-f]{64}\b").unwrap(),
            uuid: Regex::new(UUID).unwrap(),
        }
    }
}

/// The placeholders of one transcript.
pub struct Normaliser {
    rules: Rules,
    /// A value (tagged with its kind) → its placeholder.
    seen: HashMap<String, String>,
    /// String values with a placeholder, replaced wherever else they appear.
    strings: Vec<(String, String)>,
    counters: HashMap<&'static str, usize>,
    /// Blob contents the script itself sent (kept as they are, also when echoed back).
    literals: HashSet<Vec<u8>>,
}

impl Normaliser {
    pub fn new() -> Normaliser {
        Normaliser {
            rules: Rules::new(),
            seen: HashMap::new(),
            strings: Vec::new(),
            counters: HashMap::new(),
            literals: HashSet::new(),
        }
    }

    fn placeholder(
        &mut self,
        key: String,
        make: impl FnOnce(usize) -> String,
        cat: &'static str,
    ) -> String {
        if let Some(p) = self.seen.get(&key) {
            return p.clone();
        }
        let n = self.counters.entry(cat).or_insert(0);
        *n += 1;
        let p = make(*n);
        self.seen.insert(key, p.clone());
        p
    }

    fn string(&mut self, cat: &'static str, value: &str) -> String {
        let p = self.placeholder(format!("s:{value}"), |n| format!("<{cat}-{n}>"), cat);
        if !self.strings.iter().any(|(v, _)| v == value) {
            self.strings.push((value.to_string(), p.clone()));
        }
        p
    }

    /// A blob's placeholder, or `None` to keep it: a blob the script sent itself (a request's
    /// plaintext, message...) and its echo stay as they are; every other blob is random.
    fn blob(&mut self, bytes: &[u8], request: bool) -> Option<String> {
        let key = format!("b:{}", hex::encode(bytes));
        if !self.seen.contains_key(&key) && (request || self.literals.contains(bytes)) {
            self.literals.insert(bytes.to_vec());
            return None;
        }
        // An ECDSA signature (DER) varies in length; every other blob's length is fixed.
        let ecdsa = bytes.len() > 8
            && bytes[0] == 0x30
            && bytes[1] as usize == bytes.len() - 2
            && bytes[2] == 0x02;
        let len = bytes.len();
        Some(self.placeholder(
            key,
            |n| {
                if ecdsa {
                    format!("<ecdsa-signature-{n}>")
                } else {
                    format!("<blob-{n}:{len} bytes>")
                }
            },
            "blob",
        ))
    }

    /// Declares a blob the script made at random (a wrapped key, ...): requests show it as a
    /// placeholder too.
    pub fn random_blob(&mut self, bytes: &[u8]) {
        self.blob(bytes, false);
    }

    /// Normalises a request summary (`request`) or a response.
    pub fn text(&mut self, s: &str, request: bool) -> String {
        let mut s = s.to_string();
        s = self.blobs(&s, request);
        s = self.times(&s);
        s = self.credentials(&s);
        s = self.ids(&s);
        for (value, p) in &self.strings {
            if s.contains(value.as_str()) {
                s = s.replace(value.as_str(), p);
            }
        }
        s
    }

    fn blobs(&mut self, s: &str, request: bool) -> String {
        let re = self.rules.json_blob.clone();
        let s = replace(&re, s, |c| {
            let Ok(bytes) = B64.decode(&c[2]) else {
                return c[0].to_string();
            };
            match self.blob(&bytes, request) {
                Some(p) => format!("\"{}\":\"{p}\"", &c[1]),
                None => c[0].to_string(),
            }
        });
        let re = self.rules.debug_blob.clone();
        replace(&re, &s, |c| {
            let bytes: Vec<u8> = c[2]
                .split(", ")
                .filter(|t| !t.is_empty())
                .map(|t| t.parse().unwrap())
                .collect();
            match self.blob(&bytes, request) {
                Some(p) => format!("{}: {p}", &c[1]),
                None => c[0].to_string(),
            }
        })
    }

    /// Times: the whole seconds become a placeholder; the fraction, the zone and the shape
    /// stay (the daemon's clock stands still on a fixed millisecond, see `start_daemon`).
    fn times(&mut self, s: &str) -> String {
        let re = self.rules.debug_time.clone();
        let s = replace(&re, s, |c| {
            let p = self.placeholder(format!("t:{}", &c[1]), |n| format!("<secs-{n}>"), "secs");
            format!("Timestamp {{ seconds: {p}, nanos: ")
        });
        let re = self.rules.json_epoch.clone();
        let s = replace(&re, &s, |c| {
            let p = self.placeholder(format!("e:{}", &c[1]), |n| format!("<epoch-{n}>"), "epoch");
            format!("\":{p}{}", &c[2])
        });
        let re = self.rules.rfc3339.clone();
        replace(&re, &s, |c| {
            self.placeholder(format!("r:{}", &c[0]), |n| format!("<date-{n}>"), "date")
        })
    }

    fn credentials(&mut self, s: &str) -> String {
        let re = self.rules.session_key.clone();
        let mut s = replace(&re, s, |c| self.string("session-key", &c[0]));
        for i in 0..self.rules.tokens.len() {
            let (re, cat) = self.rules.tokens[i].clone();
            s = replace(&re, &s, |c| {
                let p = self.string(cat, &c[1]);
                c[0].replace(&c[1], &p)
            });
        }
        s
    }

    fn ids(&mut self, s: &str) -> String {
        let re = self.rules.grant_id.clone();
        let s = replace(&re, s, |c| {
            let p = self.string("grant", &c[1]);
            c[0].replace(&c[1], &p)
        });
        let re = self.rules.key_id.clone();
        let s = replace(&re, &s, |c| {
            let p = self.string("key", &c[1]);
            c[0].replace(&c[1], &p)
        });
        let re = self.rules.hex64.clone();
        let s = replace(&re, &s, |c| self.string("hex", &c[0]));
        let re = self.rules.uuid.clone();
        replace(&re, &s, |c| self.string("id", &c[0]))
    }
}

/// `Regex::replace_all` with a closure that may borrow the normaliser mutably.
fn replace(re: &Regex, s: &str, mut f: impl FnMut(&Captures) -> String) -> String {
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for c in re.captures_iter(s) {
        let m = c.get(0).unwrap();
        out.push_str(&s[last..m.start()]);
        out.push_str(&f(&c));
        last = m.end();
    }
    out.push_str(&s[last..]);
    out
}

#[test]
fn placeholders_are_numbered_by_first_appearance_and_reused() {
    let mut n = Normaliser::new();
    let k1 = "1b4e28ba-2d13-4f2a-9a1b-0c2d3e4f5a6b";
    let k2 = "2b4e28ba-2d13-4f2a-9a1b-0c2d3e4f5a6b";
    let blob = B64.encode([7u8; 32]);
    let lit = B64.encode(b"hello");
    let out = n.text(
        &format!(r#"{{"KeyId":"{k2}","Arn":"arn:aws:kms:us-east-1:1:key/{k1}","CiphertextBlob":"{blob}","CreationDate":1765000000.5,"D":"2026-12-06T01:02:03.5Z"}}"#),
        false,
    );
    assert_eq!(
        out,
        r#"{"KeyId":"<key-1>","Arn":"arn:aws:kms:us-east-1:1:key/<key-2>","CiphertextBlob":"<blob-1:32 bytes>","CreationDate":<epoch-1>.5,"D":"<date-1>.5Z"}"#
    );
    let req = n.text(
        &format!(r#"{{"Plaintext":"{lit}","CiphertextBlob":"{blob}","Id":"{k2}"}}"#),
        true,
    );
    assert_eq!(
        req,
        format!(r#"{{"Plaintext":"{lit}","CiphertextBlob":"<blob-1:32 bytes>","Id":"<key-1>"}}"#)
    );
    let echo = n.text(&format!(r#"{{"Plaintext":"{lit}"}}"#), false);
    assert_eq!(echo, format!(r#"{{"Plaintext":"{lit}"}}"#));
    let debug = n.text("plaintext: [7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7], t: Some(Timestamp { seconds: 5, nanos: 7 })", false);
    assert_eq!(
        debug,
        "plaintext: <blob-1:32 bytes>, t: Some(Timestamp { seconds: <secs-1>, nanos: 7 })"
    );
}
