//! AWS Signature Version 4 (reference spec, section 2.5): parsing the `Authorization` header,
//! the canonical request, the string to sign, the signing key, and verification.
//!
//! Pure: no I/O, no clock (the caller passes the time). The same functions sign requests in
//! our own gRPC client, so signer and verifier cannot drift apart.
//!
//! The canonical URI is the request path exactly as received (already URI-encoded by the
//! client): `/` on the AWS JSON door, `/p11kms.v1.KeyManagementService/<Op>` on gRPC. Paths are
//! not normalized or re-encoded. Presigned (query-string) authentication is refused.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::encoding::percent_decode;
pub use crate::encoding::sha256_hex;
use crate::redact::redacted_debug;
use crate::time::{digits, DateTime};
pub use crate::time::{format_amz_date, parse_amz_date};

/// The only algorithm accepted.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The credential-scope terminator.
pub const TERMINATOR: &str = "aws4_request";

/// Hex SHA-256 of the empty string (payload hash of a request without a body).
pub const EMPTY_SHA256_HEX: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The longest `Authorization` header examined; anything longer is refused unparsed.
const MAX_AUTHORIZATION_LEN: usize = 8192;

type HmacSha256 = Hmac<Sha256>;

/// Why a SigV4-authenticated request was refused. Variants are named after the AWS error
/// codes; `Display` is the message to return.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    /// No `Authorization` header at all.
    #[error("Missing Authentication Token")]
    MissingAuthenticationToken,
    /// The `Authorization` header (or the date header) is malformed or incomplete.
    #[error("{0}")]
    IncompleteSignature(String),
    /// The signature does not match, or the credential scope is not acceptable.
    #[error("{0}")]
    InvalidSignature(String),
    /// The request time is outside the allowed clock skew.
    #[error("{0}")]
    SignatureExpired(String),
    /// The access key id is not known (or not active).
    #[error("The security token included in the request is invalid.")]
    UnrecognizedClient,
}

impl SigV4Error {
    /// The AWS error code (`__type`) for this error.
    pub fn aws_name(&self) -> &'static str {
        match self {
            SigV4Error::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            SigV4Error::IncompleteSignature(_) => "IncompleteSignatureException",
            SigV4Error::InvalidSignature(_) | SigV4Error::SignatureExpired(_) => {
                "InvalidSignatureException"
            }
            SigV4Error::UnrecognizedClient => "UnrecognizedClientException",
        }
    }

    /// The HTTP status AWS uses for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            SigV4Error::MissingAuthenticationToken => 403,
            _ => 400,
        }
    }
}

/// A request as the verifier (or signer) sees it.
#[derive(Debug, Clone, Copy)]
pub struct SignableRequest<'a> {
    /// HTTP method (`POST`).
    pub method: &'a str,
    /// The path as received, already URI-encoded (`/`, or the gRPC method path).
    pub path: &'a str,
    /// The raw query string without `?` (empty when none).
    pub query: &'a str,
    /// All request headers, name and value as received (names in any case; repeated names
    /// allowed).
    pub headers: &'a [(String, String)],
    /// Lowercase hex SHA-256 of the body.
    pub payload_sha256_hex: &'a str,
}

/// The parsed `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthHeader {
    /// The access key id from `Credential`.
    pub access_key_id: String,
    /// The credential-scope date, `yyyymmdd`.
    pub date: String,
    /// The credential-scope region.
    pub region: String,
    /// The credential-scope service.
    pub service: String,
    /// `SignedHeaders`, lowercased, in the order given.
    pub signed_headers: Vec<String>,
    /// `Signature`, 64 lowercase hex characters.
    pub signature_hex: String,
}

impl AuthHeader {
    /// `<date>/<region>/<service>/aws4_request`.
    pub fn scope(&self) -> String {
        credential_scope(&self.date, &self.region, &self.service)
    }
}

/// A successfully verified request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSigV4 {
    /// The access key id that signed the request.
    pub access_key_id: String,
    /// The request time, `yyyymmddThhmmssZ`.
    pub amz_date: String,
    /// The credential-scope region.
    pub region: String,
}

/// Everything needed to sign a request (used by our own clients).
#[derive(Clone, Copy)]
pub struct SigningParams<'a> {
    /// Access key id.
    pub access_key_id: &'a str,
    /// Secret access key.
    pub secret_access_key: &'a str,
    /// Region of the credential scope.
    pub region: &'a str,
    /// Service of the credential scope (`kms`).
    pub service: &'a str,
    /// Request time, `yyyymmddThhmmssZ` (must equal the request's `X-Amz-Date`).
    pub amz_date: &'a str,
}

redacted_debug!(SigningParams<'_> { access_key_id, secret_access_key: redacted, region, service, amz_date });

fn incomplete(msg: impl Into<String>) -> SigV4Error {
    SigV4Error::IncompleteSignature(msg.into())
}

/// Shortens attacker-supplied text before it is echoed in an error message.
fn echo(s: &str) -> String {
    let mut out: String = s.chars().take(200).filter(|c| !c.is_control()).collect();
    if s.chars().count() > 200 {
        out.push_str("...");
    }
    out
}

/// Parses an `Authorization` header value:
/// `AWS4-HMAC-SHA256 Credential=<AKID>/<yyyymmdd>/<region>/<service>/aws4_request,
/// SignedHeaders=<h1;h2>, Signature=<hex>`.
pub fn parse_authorization(header: &str) -> Result<AuthHeader, SigV4Error> {
    if header.len() > MAX_AUTHORIZATION_LEN {
        return Err(incomplete("Authorization header is too long."));
    }
    let header = header.trim();
    if header.is_empty() {
        return Err(SigV4Error::MissingAuthenticationToken);
    }
    let rest = split_algorithm(header)?;
    let (credential, signed, signature) = parse_parameters(header, rest)?;
    let (akid, date, region, service) = parse_credential(credential)?;
    let signed_headers = parse_signed_headers(signed)?;
    check_signature_syntax(signature)?;
    Ok(AuthHeader {
        access_key_id: akid.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers,
        signature_hex: signature.to_ascii_lowercase(),
    })
}

/// Checks the algorithm word at the start of the header; returns the parameters after it.
fn split_algorithm(header: &str) -> Result<&str, SigV4Error> {
    let (algorithm, rest) = match header.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((a, r)) => (a, r),
        None => (header, ""),
    };
    if algorithm != ALGORITHM {
        return Err(incomplete(format!(
            "Unsupported AWS 'algorithm': '{}'. Only '{ALGORITHM}' is supported.",
            echo(algorithm)
        )));
    }
    Ok(rest)
}

/// Splits the `Name=Value` parameters; returns `(Credential, SignedHeaders, Signature)`,
/// refusing unknown, repeated and missing parameters.
fn parse_parameters<'h>(
    header: &str,
    rest: &'h str,
) -> Result<(&'h str, &'h str, &'h str), SigV4Error> {
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((name, value)) = part.split_once('=') else {
            return Err(incomplete(format!(
                "Authorization header parameter '{}' is not of the form Name=Value. Authorization={}",
                echo(part),
                echo(header)
            )));
        };
        let slot = match name.trim() {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            other => {
                return Err(incomplete(format!(
                    "Unknown Authorization header parameter '{}'. Authorization={}",
                    echo(other),
                    echo(header)
                )))
            }
        };
        if slot.is_some() {
            return Err(incomplete(format!(
                "Authorization header parameter '{}' appears more than once.",
                echo(name.trim())
            )));
        }
        *slot = Some(value.trim());
    }
    let mut missing = String::new();
    for (name, v) in [
        ("Credential", &credential),
        ("Signature", &signature),
        ("SignedHeaders", &signed),
    ] {
        if v.is_none() {
            missing.push_str(&format!(
                "Authorization header requires '{name}' parameter. "
            ));
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(incomplete(format!(
            "{missing}Authorization={}",
            echo(header)
        )));
    };
    Ok((credential, signed, signature))
}

/// Splits and checks `Credential`; returns `(access key id, date, region, service)`.
fn parse_credential(credential: &str) -> Result<(&str, &str, &str, &str), SigV4Error> {
    let cparts: Vec<&str> = credential.split('/').collect();
    let [akid, date, region, service, terminator] = cparts.as_slice() else {
        return Err(incomplete(format!(
            "Credential must have the form <access key id>/<yyyymmdd>/<region>/<service>/{TERMINATOR}, not '{}'.",
            echo(credential)
        )));
    };
    if akid.is_empty() || akid.len() > 128 || !akid.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(incomplete(format!(
            "Credential has an invalid access key id '{}'.",
            echo(akid)
        )));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(incomplete(format!(
            "Credential date must be yyyymmdd, not '{}'.",
            echo(date)
        )));
    }
    if region.is_empty() || service.is_empty() {
        return Err(incomplete(format!(
            "Credential must name a region and a service: '{}'.",
            echo(credential)
        )));
    }
    if *terminator != TERMINATOR {
        return Err(incomplete(format!(
            "Credential should be scoped with a valid terminator: '{TERMINATOR}', not '{}'.",
            echo(terminator)
        )));
    }
    Ok((akid, date, region, service))
}

/// Splits `SignedHeaders` into lowercased header names, refusing invalid ones.
fn parse_signed_headers(signed: &str) -> Result<Vec<String>, SigV4Error> {
    let mut signed_headers = Vec::new();
    for h in signed.split(';') {
        if h.is_empty() || !h.bytes().all(is_token_char) {
            return Err(incomplete(format!(
                "SignedHeaders contains an invalid header name: '{}'.",
                echo(signed)
            )));
        }
        signed_headers.push(h.to_ascii_lowercase());
    }
    Ok(signed_headers)
}

/// `Signature` must be 64 hex characters.
fn check_signature_syntax(signature: &str) -> Result<(), SigV4Error> {
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(incomplete(format!(
            "Signature must be 64 hexadecimal characters, not '{}'.",
            echo(signature)
        )));
    }
    Ok(())
}

/// RFC 7230 token characters (header field names).
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The first value of a header (case-insensitive name), if present.
pub fn header_value<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn header_count(headers: &[(String, String)], name: &str) -> usize {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .count()
}

/// Trims a header value and collapses inner runs of whitespace to one space.
fn push_canonical_value(out: &mut String, value: &str) {
    let mut first = true;
    for word in value.split_ascii_whitespace() {
        if !first {
            out.push(' ');
        }
        out.push_str(word);
        first = false;
    }
}

/// AWS URI encoding: unreserved characters as-is, everything else `%XX` (uppercase).
fn uri_encode(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0x0f) as usize] as char);
        }
    }
}

/// The canonical query string: parameters decoded, re-encoded the AWS way, sorted by name
/// then value, `name=value` joined by `&`.
pub fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let mut ke = String::new();
            uri_encode(&mut ke, &percent_decode(k));
            let mut ve = String::new();
            uri_encode(&mut ve, &percent_decode(v));
            (ke, ve)
        })
        .collect();
    pairs.sort();
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// The signed header names as SigV4 lists them: lower-cased, sorted, each once.
fn signed_header_names(signed_headers: &[String]) -> Vec<String> {
    let mut names: Vec<String> = signed_headers
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The canonical request for the given signed header names (any case, any order; they are
/// lowercased, sorted and de-duplicated). A signed header absent from the request
/// contributes an empty value; [`verify`] refuses such requests before getting here.
/// Repeated headers are joined with `,` in the order received.
pub fn canonical_request(req: &SignableRequest<'_>, signed_headers: &[String]) -> String {
    let names = signed_header_names(signed_headers);

    let mut out = String::with_capacity(256);
    out.push_str(req.method);
    out.push('\n');
    out.push_str(if req.path.is_empty() { "/" } else { req.path });
    out.push('\n');
    out.push_str(&canonical_query(req.query));
    out.push('\n');
    for name in &names {
        out.push_str(name);
        out.push(':');
        let mut first = true;
        for (n, v) in req.headers {
            if n.eq_ignore_ascii_case(name) {
                if !first {
                    out.push(',');
                }
                push_canonical_value(&mut out, v);
                first = false;
            }
        }
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&names.join(";"));
    out.push('\n');
    out.push_str(req.payload_sha256_hex);
    out
}

/// `<yyyymmdd>/<region>/<service>/aws4_request`.
pub fn credential_scope(date: &str, region: &str, service: &str) -> String {
    format!("{date}/{region}/{service}/{TERMINATOR}")
}

/// `AWS4-HMAC-SHA256\n<amz_date>\n<scope>\n<hex(sha256(canonical_request))>`.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; the error branch cannot happen.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0u8; 32],
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The SigV4 signing key: HMAC chain over date, region, service and `aws4_request`.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let mut k_secret = Zeroizing::new(Vec::with_capacity(4 + secret.len()));
    k_secret.extend_from_slice(b"AWS4");
    k_secret.extend_from_slice(secret.as_bytes());
    let k_date = Zeroizing::new(hmac(&k_secret, date.as_bytes()));
    let k_region = Zeroizing::new(hmac(&*k_date, region.as_bytes()));
    let k_service = Zeroizing::new(hmac(&*k_region, service.as_bytes()));
    hmac(&*k_service, TERMINATOR.as_bytes())
}

/// Most signing keys a [`SigningKeyCache`] holds; when full, it starts over (keys are
/// derived per day, so old entries are dead weight by then anyway).
pub const SIGNING_KEY_CACHE_CAPACITY: usize = 4096;

/// Derived SigV4 signing keys, by access key id and credential scope (date, region,
/// service), so that a busy client's requests skip the four-HMAC derivation. Each entry keeps
/// the secret it was derived from (in zeroizing memory, like the key) and is used only when
/// that secret equals the one presented now (compared in constant time): a rotated secret
/// derives a new key. Bounded by [`SIGNING_KEY_CACHE_CAPACITY`].
#[derive(Default)]
pub struct SigningKeyCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, CachedSigningKey>>,
}

impl std::fmt::Debug for SigningKeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyCache").finish_non_exhaustive()
    }
}

/// One cached key and the secret it was derived from.
struct CachedSigningKey {
    secret: Zeroizing<String>,
    key: Zeroizing<[u8; 32]>,
}

impl SigningKeyCache {
    /// An empty cache.
    pub fn new() -> SigningKeyCache {
        SigningKeyCache::default()
    }

    /// The signing key of `auth`'s access key and scope under `secret`: the cached one when
    /// it was derived from this same secret, else a fresh derivation (then cached).
    fn key_for(&self, auth: &AuthHeader, secret: &str) -> Zeroizing<[u8; 32]> {
        // `/` separates the parts unambiguously: access key ids are alphanumeric.
        let id = [
            auth.access_key_id.as_str(),
            &auth.date,
            &auth.region,
            &auth.service,
        ]
        .join("/");
        if let Some(hit) = self.lookup(&id, secret) {
            return hit;
        }
        let key = Zeroizing::new(signing_key(secret, &auth.date, &auth.region, &auth.service));
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= SIGNING_KEY_CACHE_CAPACITY && !entries.contains_key(&id) {
            entries.clear();
        }
        entries.insert(
            id,
            CachedSigningKey {
                secret: Zeroizing::new(secret.to_string()),
                key: key.clone(),
            },
        );
        key
    }

    /// The cached key for `id` if it was derived from `secret` (constant-time comparison).
    fn lookup(&self, id: &str, secret: &str) -> Option<Zeroizing<[u8; 32]>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let hit = entries.get(id)?;
        let same = hit.secret.len() == secret.len()
            && bool::from(hit.secret.as_bytes().ct_eq(secret.as_bytes()));
        same.then(|| hit.key.clone())
    }

    /// How many keys are cached.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no key is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The hex signature of a string to sign, with the key derived from the secret and scope.
pub fn sign(secret: &str, date: &str, region: &str, service: &str, string_to_sign: &str) -> String {
    let key = Zeroizing::new(signing_key(secret, date, region, service));
    hex::encode(hmac(&*key, string_to_sign.as_bytes()))
}

/// Signs a request and returns the `Authorization` header value. The request must already
/// carry every header in `signed_headers` (including `host` and `x-amz-date`).
pub fn authorization_header(
    req: &SignableRequest<'_>,
    signed_headers: &[String],
    params: &SigningParams<'_>,
) -> String {
    let date = params.amz_date.get(..8).unwrap_or(params.amz_date);
    let scope = credential_scope(date, params.region, params.service);
    let creq = canonical_request(req, signed_headers);
    let sts = string_to_sign(params.amz_date, &scope, &creq);
    let signature = sign(
        params.secret_access_key,
        date,
        params.region,
        params.service,
        &sts,
    );
    let names = signed_header_names(signed_headers);
    format!(
        "{ALGORITHM} Credential={}/{scope}, SignedHeaders={}, Signature={signature}",
        params.access_key_id,
        names.join(";")
    )
}

/// Allowed SigV4 clock skew, seconds, on every door (gRPC, AWS JSON, STS): 5 minutes, as AWS
/// KMS allows (`Signature expired: ... (... - 5 min.)` beyond it).
pub const MAX_SKEW_SECS: i64 = 5 * 60;

/// Verifies a SigV4-signed request.
///
/// Checks, in order: an `Authorization` header exists (presigned query auth is refused); it
/// parses; `SignedHeaders` includes `host` and the date header used (`x-amz-date`, or `date`
/// when there is no `X-Amz-Date`); every signed header is present; the credential-scope date
/// equals the request date; the service is `expected_service`; the region is allowed; the
/// request time is within `max_skew_secs` of `now_unix_secs`; the access key is known
/// (`lookup_secret`); the signature matches (constant-time).
pub fn verify(
    req: &SignableRequest<'_>,
    expected_service: &str,
    allowed_regions: &[String],
    now_unix_secs: i64,
    max_skew_secs: i64,
    lookup_secret: impl FnOnce(&str) -> Option<Zeroizing<String>>,
) -> Result<VerifiedSigV4, SigV4Error> {
    let policy = VerifyPolicy {
        expected_service,
        allowed_regions,
        now_unix_secs,
        max_skew_secs,
        keys: None,
    };
    verify_with(req, &policy, lookup_secret)
}

/// What a request is verified against: the scope it must have, the time, and where derived
/// signing keys may be reused from.
#[derive(Debug, Clone, Copy)]
pub struct VerifyPolicy<'a> {
    /// The signing service expected (`kms`, `sts`, `kms-xks-proxy`).
    pub expected_service: &'a str,
    /// The regions a credential scope may name.
    pub allowed_regions: &'a [String],
    /// The verifier's time, Unix seconds.
    pub now_unix_secs: i64,
    /// Allowed clock skew, seconds.
    pub max_skew_secs: i64,
    /// Signing keys derived earlier (none: derive one per request).
    pub keys: Option<&'a SigningKeyCache>,
}

/// [`verify`] under a [`VerifyPolicy`], reusing the signing key from its cache when one is
/// given: the same checks in the same order, the same errors.
pub fn verify_with(
    req: &SignableRequest<'_>,
    policy: &VerifyPolicy<'_>,
    lookup_secret: impl FnOnce(&str) -> Option<Zeroizing<String>>,
) -> Result<VerifiedSigV4, SigV4Error> {
    let auth = parse_authorization(single_authorization(req)?)?;
    verify_checked(req, auth, policy, lookup_secret)
}

/// [`verify_with`] for a caller that has already parsed the request's one `Authorization`
/// header into `auth` (to look its access key up): the header is not parsed again. `auth`
/// must come from `req` itself; the request must still carry exactly one such header.
pub fn verify_parsed(
    req: &SignableRequest<'_>,
    auth: AuthHeader,
    policy: &VerifyPolicy<'_>,
    lookup_secret: impl FnOnce(&str) -> Option<Zeroizing<String>>,
) -> Result<VerifiedSigV4, SigV4Error> {
    single_authorization(req)?;
    verify_checked(req, auth, policy, lookup_secret)
}

/// The checks of [`verify`] after the `Authorization` header was found and parsed.
fn verify_checked(
    req: &SignableRequest<'_>,
    auth: AuthHeader,
    policy: &VerifyPolicy<'_>,
    lookup_secret: impl FnOnce(&str) -> Option<Zeroizing<String>>,
) -> Result<VerifiedSigV4, SigV4Error> {
    let VerifyPolicy {
        expected_service,
        allowed_regions,
        now_unix_secs,
        max_skew_secs,
        keys,
    } = *policy;
    if !auth.signed_headers.iter().any(|h| h == "host") {
        return Err(incomplete(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    let (date_header, amz_date) = request_date(req)?;
    check_signed_headers_present(req, &auth, date_header)?;
    check_scope(&auth, &amz_date, expected_service, allowed_regions)?;
    check_skew(&amz_date, now_unix_secs, max_skew_secs)?;
    let secret = lookup_secret(&auth.access_key_id).ok_or(SigV4Error::UnrecognizedClient)?;
    check_signature(req, &auth, &amz_date, &secret, keys)?;
    Ok(VerifiedSigV4 {
        access_key_id: auth.access_key_id,
        amz_date,
        region: auth.region,
    })
}

/// The one `Authorization` header value (none: missing token, or presigned auth refused).
fn single_authorization<'r>(req: &SignableRequest<'r>) -> Result<&'r str, SigV4Error> {
    let auth_count = header_count(req.headers, "authorization");
    if auth_count == 0 {
        if is_presigned(req.query) {
            return Err(incomplete(
                "Query-string (presigned) authentication is not supported; sign the Authorization header.",
            ));
        }
        return Err(SigV4Error::MissingAuthenticationToken);
    }
    if auth_count > 1 {
        return Err(incomplete("More than one Authorization header."));
    }
    Ok(header_value(req.headers, "authorization").unwrap_or(""))
}

/// The request time: X-Amz-Date, else an HTTP Date header. Returns the name of the header
/// used and the time as `yyyymmddThhmmssZ`.
fn request_date(req: &SignableRequest<'_>) -> Result<(&'static str, String), SigV4Error> {
    match header_count(req.headers, "x-amz-date") {
        0 => match header_value(req.headers, "date") {
            Some(d) => Ok((
                "date",
                http_date_to_amz(d).ok_or_else(|| {
                    incomplete(format!(
                        "Date header must be an HTTP date (IMF-fixdate). Got '{}'.",
                        echo(d)
                    ))
                })?,
            )),
            None => Err(incomplete(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
            )),
        },
        1 => {
            let d = header_value(req.headers, "x-amz-date").unwrap_or("").trim();
            if parse_amz_date(d).is_none() {
                return Err(incomplete(format!(
                    "Date must be in ISO-8601 'basic format'. Got '{}'.",
                    echo(d)
                )));
            }
            Ok(("x-amz-date", d.to_string()))
        }
        _ => Err(incomplete("More than one X-Amz-Date header.")),
    }
}

/// The date header used must be signed, and every signed header must be in the request.
fn check_signed_headers_present(
    req: &SignableRequest<'_>,
    auth: &AuthHeader,
    date_header: &str,
) -> Result<(), SigV4Error> {
    if !auth.signed_headers.iter().any(|h| h == date_header) {
        return Err(incomplete(format!(
            "'{date_header}' must be a 'SignedHeader' in the AWS Authorization."
        )));
    }
    for h in &auth.signed_headers {
        if header_count(req.headers, h) == 0 {
            return Err(incomplete(format!(
                "Header '{}' is listed in SignedHeaders but is not in the request.",
                echo(h)
            )));
        }
    }
    Ok(())
}

/// The credential scope must match the request day, the expected service and an allowed
/// region.
fn check_scope(
    auth: &AuthHeader,
    amz_date: &str,
    expected_service: &str,
    allowed_regions: &[String],
) -> Result<(), SigV4Error> {
    let request_day = amz_date.get(..8).unwrap_or("");
    if auth.date != request_day {
        return Err(SigV4Error::InvalidSignature(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{request_day}', from '{amz_date}'.",
            auth.date
        )));
    }
    if auth.service != expected_service {
        return Err(SigV4Error::InvalidSignature(format!(
            "Credential should be scoped to correct service: '{expected_service}'. "
        )));
    }
    if !allowed_regions.contains(&auth.region) {
        return Err(SigV4Error::InvalidSignature(
            "Credential should be scoped to a valid region. ".into(),
        ));
    }
    Ok(())
}

/// The request time must be within `max_skew_secs` of `now_unix_secs`.
fn check_skew(amz_date: &str, now_unix_secs: i64, max_skew_secs: i64) -> Result<(), SigV4Error> {
    let request_secs = parse_amz_date(amz_date).ok_or_else(|| {
        incomplete(format!(
            "Date must be in ISO-8601 'basic format'. Got '{}'.",
            echo(amz_date)
        ))
    })?;
    let skew = max_skew_secs.max(0);
    if request_secs < now_unix_secs.saturating_sub(skew) {
        return Err(SigV4Error::SignatureExpired(format!(
            "Signature expired: {amz_date} is now earlier than {} ({} - {}.)",
            format_amz_date(now_unix_secs.saturating_sub(skew)),
            format_amz_date(now_unix_secs),
            describe_skew(skew)
        )));
    }
    if request_secs > now_unix_secs.saturating_add(skew) {
        return Err(SigV4Error::SignatureExpired(format!(
            "Signature not yet current: {amz_date} is still later than {} ({} + {}.)",
            format_amz_date(now_unix_secs.saturating_add(skew)),
            format_amz_date(now_unix_secs),
            describe_skew(skew)
        )));
    }
    Ok(())
}

/// Recomputes the signature with the secret and compares it in constant time. The signing
/// key comes from `keys` when it holds one for this credential scope and secret.
fn check_signature(
    req: &SignableRequest<'_>,
    auth: &AuthHeader,
    amz_date: &str,
    secret: &str,
    keys: Option<&SigningKeyCache>,
) -> Result<(), SigV4Error> {
    let scope = auth.scope();
    let creq = canonical_request(req, &auth.signed_headers);
    let sts = string_to_sign(amz_date, &scope, &creq);
    let key = match keys {
        Some(cache) => cache.key_for(auth, secret),
        None => Zeroizing::new(signing_key(secret, &auth.date, &auth.region, &auth.service)),
    };
    let expected = hmac(&*key, sts.as_bytes());
    let provided = hex::decode(&auth.signature_hex).unwrap_or_default();
    if provided.len() != expected.len() || !bool::from(expected.ct_eq(provided.as_slice())) {
        return Err(SigV4Error::InvalidSignature(
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.".into(),
        ));
    }
    Ok(())
}

fn describe_skew(secs: i64) -> String {
    if secs % 60 == 0 {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} sec")
    }
}

fn is_presigned(query: &str) -> bool {
    query.split('&').any(|p| {
        let name = p.split_once('=').map_or(p, |(k, _)| k);
        name.eq_ignore_ascii_case("X-Amz-Algorithm")
            || name.eq_ignore_ascii_case("X-Amz-Signature")
            || name.eq_ignore_ascii_case("X-Amz-Credential")
    })
}

/// Converts an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) to `yyyymmddThhmmssZ`.
fn http_date_to_amz(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split_ascii_whitespace().collect();
    let [_wkday, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let mo = match *month {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    if day.len() != 2 || year.len() != 4 || time.len() != 8 {
        return None;
    }
    let t = time.as_bytes();
    if t.get(2) != Some(&b':') || t.get(5) != Some(&b':') {
        return None;
    }
    let secs = DateTime {
        year: digits(year, 0..4)?,
        month: mo,
        day: digits(day, 0..2)?,
        hour: digits(time, 0..2)?,
        minute: digits(time, 3..5)?,
        second: digits(time, 6..8)?,
    }
    .to_unix()?;
    Some(format_amz_date(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const AMZ_DATE: &str = "20150830T123600Z";
    const NOW: i64 = 1_440_938_160; // 2015-08-30T12:36:00Z
    const SCOPE: &str = "20150830/us-east-1/service/aws4_request";

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn names(s: &str) -> Vec<String> {
        s.split(';').map(str::to_string).collect()
    }

    fn regions() -> Vec<String> {
        vec!["us-east-1".to_string()]
    }

    fn secret_for(id: &str) -> Option<Zeroizing<String>> {
        (id == AKID).then(|| Zeroizing::new(SECRET.to_string()))
    }

    /// One vector of AWS's SigV4 test suite: request, canonical request, hash of the
    /// canonical request (last line of the string to sign), signature.
    struct Vector {
        method: &'static str,
        path: &'static str,
        query: &'static str,
        headers: Vec<(String, String)>,
        body: &'static [u8],
        signed: &'static str,
        creq: &'static str,
        creq_hash: Option<&'static str>,
        signature: &'static str,
    }

    fn check(v: &Vector) {
        let payload = sha256_hex(v.body);
        let req = SignableRequest {
            method: v.method,
            path: v.path,
            query: v.query,
            headers: &v.headers,
            payload_sha256_hex: &payload,
        };
        let creq = canonical_request(&req, &names(v.signed));
        assert_eq!(creq, v.creq);
        let sts = string_to_sign(AMZ_DATE, SCOPE, &creq);
        if let Some(hash) = v.creq_hash {
            assert_eq!(
                sts,
                format!("AWS4-HMAC-SHA256\n{AMZ_DATE}\n{SCOPE}\n{hash}")
            );
        }
        let sig = sign(SECRET, "20150830", "us-east-1", "service", &sts);
        assert_eq!(sig, v.signature);

        // The same request, with its Authorization header, verifies.
        let authz = format!(
            "AWS4-HMAC-SHA256 Credential={AKID}/{SCOPE}, SignedHeaders={}, Signature={}",
            v.signed, v.signature
        );
        let params = SigningParams {
            access_key_id: AKID,
            secret_access_key: SECRET,
            region: "us-east-1",
            service: "service",
            amz_date: AMZ_DATE,
        };
        assert_eq!(authorization_header(&req, &names(v.signed), &params), authz);
        let mut headers = v.headers.clone();
        headers.push(("Authorization".into(), authz));
        let signed_req = SignableRequest {
            headers: &headers,
            ..req
        };
        let ok = verify(&signed_req, "service", &regions(), NOW, 300, secret_for).unwrap();
        assert_eq!(ok.access_key_id, AKID);
        assert_eq!(ok.amz_date, AMZ_DATE);
    }

    #[test]
    fn get_vanilla() {
        check(&Vector {
            method: "GET",
            path: "/",
            query: "",
            headers: h(&[("Host", "example.amazonaws.com"), ("X-Amz-Date", AMZ_DATE)]),
            body: b"",
            signed: "host;x-amz-date",
            creq: "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            creq_hash: Some("bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"),
            signature: "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        });
    }

    #[test]
    fn post_vanilla() {
        check(&Vector {
            method: "POST",
            path: "/",
            query: "",
            headers: h(&[("Host", "example.amazonaws.com"), ("X-Amz-Date", AMZ_DATE)]),
            body: b"",
            signed: "host;x-amz-date",
            creq: "POST\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            creq_hash: None,
            signature: "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        });
    }

    #[test]
    fn get_header_value_trim_collapses_inner_spaces() {
        check(&Vector {
            method: "GET",
            path: "/",
            query: "",
            headers: h(&[
                ("Host", "example.amazonaws.com"),
                ("My-Header1", " value1"),
                ("My-Header2", " \"a   b   c\""),
                ("X-Amz-Date", AMZ_DATE),
            ]),
            body: b"",
            signed: "host;my-header1;my-header2;x-amz-date",
            creq: "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\nmy-header2:\"a b c\"\nx-amz-date:20150830T123600Z\n\nhost;my-header1;my-header2;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            creq_hash: Some("a726db9b0df21c14f559d0a978e563112acb1b9e05476f0a6a1c7d68f28605c7"),
            signature: "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
        });
    }

    #[test]
    fn post_x_www_form_urlencoded() {
        check(&Vector {
            method: "POST",
            path: "/",
            query: "",
            headers: h(&[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Host", "example.amazonaws.com"),
                ("X-Amz-Date", AMZ_DATE),
            ]),
            body: b"Param1=value1",
            signed: "content-type;host;x-amz-date",
            creq: "POST\n/\n\ncontent-type:application/x-www-form-urlencoded\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\n9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
            creq_hash: Some("42a5e5bb34198acb3e84da4f085bb7927f2bc277ca766e6d19c73c2154021281"),
            signature: "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
        });
    }

    #[test]
    fn get_header_key_duplicate_joins_values_in_order() {
        check(&Vector {
            method: "GET",
            path: "/",
            query: "",
            headers: h(&[
                ("Host", "example.amazonaws.com"),
                ("My-Header1", "value2"),
                ("My-Header1", "value2"),
                ("My-Header1", "value1"),
                ("X-Amz-Date", AMZ_DATE),
            ]),
            body: b"",
            signed: "host;my-header1;x-amz-date",
            creq: "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value2,value2,value1\nx-amz-date:20150830T123600Z\n\nhost;my-header1;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            creq_hash: Some("dc7f04a3abfde8d472b0ab1a418b741b7c67174dad1551b4117b15527fbe966c"),
            signature: "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea",
        });
    }

    #[test]
    fn get_vanilla_query_order_key_case_sorts_parameters() {
        check(&Vector {
            method: "GET",
            path: "/",
            query: "Param2=value2&Param1=value1",
            headers: h(&[("Host", "example.amazonaws.com"), ("X-Amz-Date", AMZ_DATE)]),
            body: b"",
            signed: "host;x-amz-date",
            creq: "GET\n/\nParam1=value1&Param2=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            creq_hash: Some("816cd5b414d056048ba4f7c5386d6e0533120fb1fcfa93762cf0fc39e2cf19e0"),
            signature: "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        });
    }

    #[test]
    fn get_utf8_path_is_taken_as_received() {
        check(&Vector {
            method: "GET",
            path: "/%E1%88%B4",
            query: "",
            headers: h(&[("Host", "example.amazonaws.com"), ("X-Amz-Date", AMZ_DATE)]),
            body: b"",
            signed: "host;x-amz-date",
            creq: "GET\n/%E1%88%B4\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            creq_hash: Some("2a0a97d02205e45ce2e994789806b19270cfbbb0921b278ccf58f5249ac42102"),
            signature: "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
        });
    }

    #[test]
    fn canonical_query_encodes_and_sorts() {
        assert_eq!(canonical_query(""), "");
        assert_eq!(canonical_query("b=2&a=1&A=0"), "A=0&a=1&b=2");
        assert_eq!(canonical_query("k"), "k=");
        assert_eq!(canonical_query("a=x y&a=%41"), "a=A&a=x%20y");
        assert_eq!(canonical_query("p=a%2Fb&q=-_.~"), "p=a%2Fb&q=-_.~");
        assert_eq!(canonical_query("bad=%zz"), "bad=%25zz");
    }

    // --- A KMS-shaped request, as botocore sends it, for the negative tests. ---

    const KMS_NOW: i64 = 1_795_430_297; // 2026-11-23T10:38:17Z
    const KMS_DATE: &str = "20261123T103817Z";
    const KMS_BODY: &[u8] = br#"{"KeyId": "alias/app", "Plaintext": "aGVsbG8="}"#;

    fn kms_headers(date: &str, body: &[u8], region: &str, service: &str) -> Vec<(String, String)> {
        let mut headers = h(&[
            ("Host", "kms.local:8443"),
            ("Content-Type", "application/x-amz-json-1.1"),
            ("X-Amz-Target", "TrentService.Encrypt"),
            ("X-Amz-Date", date),
        ]);
        let signed = "content-type;host;x-amz-date;x-amz-target";
        push_auth(&mut headers, body, signed, (region, service, date));
        headers
    }

    /// A `POST /` with `headers` and a body hashing to `payload`.
    fn post<'a>(headers: &'a [(String, String)], payload: &'a str) -> SignableRequest<'a> {
        SignableRequest {
            method: "POST",
            path: "/",
            query: "",
            headers,
            payload_sha256_hex: payload,
        }
    }

    /// Signs a `POST /` of `body` with `headers` over the `signed` ones, as AKID in the
    /// `(region, service, amz_date)` scope, and adds its `Authorization` header.
    fn push_auth(
        headers: &mut Vec<(String, String)>,
        body: &[u8],
        signed: &str,
        (region, service, amz_date): (&str, &str, &str),
    ) {
        let payload = sha256_hex(body);
        let params = SigningParams {
            access_key_id: AKID,
            secret_access_key: SECRET,
            region,
            service,
            amz_date,
        };
        let auth = authorization_header(&post(headers, &payload), &names(signed), &params);
        headers.push(("Authorization".into(), auth));
    }

    fn run(
        headers: &[(String, String)],
        body: &[u8],
        now: i64,
    ) -> Result<VerifiedSigV4, SigV4Error> {
        run_with(headers, body, now, secret_for)
    }

    /// [`run`] with another secret lookup.
    fn run_with(
        headers: &[(String, String)],
        body: &[u8],
        now: i64,
        lookup: impl FnOnce(&str) -> Option<Zeroizing<String>>,
    ) -> Result<VerifiedSigV4, SigV4Error> {
        let payload = sha256_hex(body);
        verify(
            &post(headers, &payload),
            "kms",
            &regions(),
            now,
            MAX_SKEW_SECS,
            lookup,
        )
    }

    fn set_auth(headers: &mut [(String, String)], value: String) {
        for (n, v) in headers.iter_mut() {
            if n == "Authorization" {
                *v = value.clone();
            }
        }
    }

    /// Runs the KMS request with `from` replaced by `to` in its Authorization header.
    fn run_with_auth_changed(from: &str, to: &str) -> Result<VerifiedSigV4, SigV4Error> {
        let mut headers = kms_headers(KMS_DATE, KMS_BODY, "us-east-1", "kms");
        let auth = auth_of(&headers).replace(from, to);
        set_auth(&mut headers, auth);
        run(&headers, KMS_BODY, KMS_NOW)
    }

    fn auth_of(headers: &[(String, String)]) -> String {
        header_value(headers, "authorization").unwrap().to_string()
    }

    #[test]
    fn kms_request_verifies() {
        let headers = kms_headers(KMS_DATE, KMS_BODY, "us-east-1", "kms");
        let ok = run(&headers, KMS_BODY, KMS_NOW).unwrap();
        assert_eq!(ok.access_key_id, AKID);
        assert_eq!(ok.region, "us-east-1");
        assert_eq!(format_amz_date(KMS_NOW), KMS_DATE);
        assert_eq!(parse_amz_date(KMS_DATE), Some(KMS_NOW));
    }

    #[test]
    fn tampered_body_is_invalid_signature() {
        let headers = kms_headers(KMS_DATE, KMS_BODY, "us-east-1", "kms");
        let e = run(&headers, b"{\"KeyId\": \"alias/other\"}", KMS_NOW).unwrap_err();
        assert!(matches!(e, SigV4Error::InvalidSignature(ref m) if m.contains("does not match")));
        assert_eq!(e.aws_name(), "InvalidSignatureException");
    }

    #[test]
    fn tampered_signed_header_is_invalid_signature() {
        let mut headers = kms_headers(KMS_DATE, KMS_BODY, "us-east-1", "kms");
        for (n, v) in headers.iter_mut() {
            if n == "X-Amz-Target" {
                *v = "TrentService.Decrypt".into();
            }
        }
        assert!(matches!(
            run(&headers, KMS_BODY, KMS_NOW),
            Err(SigV4Error::InvalidSignature(_))
        ));
        // Unsigned extra headers do not matter.
        let mut headers = kms_headers(KMS_DATE, KMS_BODY, "us-east-1", "kms");
        headers.push(("User-Agent".into(), "Boto3/1.44.5".into()));
        assert!(run(&headers, KMS_BODY, KMS_NOW).is_ok());
    }

    #[test]
    fn wrong_secret_is_invalid_signature() {
        let headers = kms_headers(KMS_DATE, KMS_BODY, "us-east-1", "kms");
        let e = run_with(&headers, KMS_BODY, KMS_NOW, |_| {
            Some(Zeroizing::new("not-the-secret".to_string()))
        })
        .unwrap_err();
        assert!(matches!(e, SigV4Error::InvalidSignature(_)));
    }

    #[test]
    fn unknown_key_is_unrecognized_client() {
        let headers = kms_headers(KMS_DATE, KMS_BODY, "us-east-1", "kms");
        let e = run_with(&headers, KMS_BODY, KMS_NOW, |_| None).unwrap_err();
        assert_eq!(e, SigV4Error::UnrecognizedClient);
        assert_eq!(e.aws_name(), "UnrecognizedClientException");
    }

    #[test]
    fn clock_skew_both_ways() {
        let headers = kms_headers(KMS_DATE, KMS_BODY, "us-east-1", "kms");
        // Exactly at the edge passes.
        assert!(run(&headers, KMS_BODY, KMS_NOW + 300).is_ok());
        assert!(run(&headers, KMS_BODY, KMS_NOW - 300).is_ok());
        // Request too old.
        let e = run(&headers, KMS_BODY, KMS_NOW + 301).unwrap_err();
        match &e {
            SigV4Error::SignatureExpired(m) => assert_eq!(
                m,
                "Signature expired: 20261123T103817Z is now earlier than 20261123T103818Z (20261123T104318Z - 5 min.)"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(e.aws_name(), "InvalidSignatureException");
        // Request from the future.
        let e = run(&headers, KMS_BODY, KMS_NOW - 301).unwrap_err();
        assert!(
            matches!(e, SigV4Error::SignatureExpired(ref m) if m.starts_with("Signature not yet current: 20261123T103817Z is still later than 20261123T103816Z"))
        );
    }

    #[test]
    fn host_must_be_signed() {
        let e = run_with_auth_changed("content-type;host;x-amz-date", "content-type;x-amz-date")
            .unwrap_err();
        assert!(matches!(e, SigV4Error::IncompleteSignature(ref m) if m.contains("'Host'")));
    }

    #[test]
    fn date_must_be_signed_and_present() {
        assert!(matches!(
            run_with_auth_changed(";x-amz-date;", ";"),
            Err(SigV4Error::IncompleteSignature(ref m)) if m.contains("x-amz-date")
        ));

        let mut headers = kms_headers(KMS_DATE, KMS_BODY, "us-east-1", "kms");
        headers.retain(|(n, _)| n != "X-Amz-Date");
        assert!(matches!(
            run(&headers, KMS_BODY, KMS_NOW),
            Err(SigV4Error::IncompleteSignature(ref m)) if m.contains("'X-Amz-Date' or a 'Date'")
        ));

        let mut headers = kms_headers(KMS_DATE, KMS_BODY, "us-east-1", "kms");
        for (n, v) in headers.iter_mut() {
            if n == "X-Amz-Date" {
                *v = "2026-11-23T10:38:17Z".into();
            }
        }
        assert!(matches!(
            run(&headers, KMS_BODY, KMS_NOW),
            Err(SigV4Error::IncompleteSignature(ref m)) if m.contains("ISO-8601")
        ));
    }

    #[test]
    fn http_date_header_is_accepted_when_signed() {
        let mut headers = h(&[
            ("Host", "kms.local:8443"),
            ("Date", "Mon, 23 Nov 2026 10:38:17 GMT"),
        ]);
        push_auth(
            &mut headers,
            b"{}",
            "date;host",
            ("us-east-1", "kms", KMS_DATE),
        );
        let ok = run(&headers, b"{}", KMS_NOW).unwrap();
        assert_eq!(ok.amz_date, KMS_DATE);
        assert_eq!(
            http_date_to_amz("Mon, 23 Nov 2026 10:38:17 GMT").as_deref(),
            Some(KMS_DATE)
        );
        assert_eq!(http_date_to_amz("Mon, 31 Nov 2026 10:38:17 GMT"), None);
        assert_eq!(http_date_to_amz("garbage"), None);
    }

    #[test]
    fn signed_header_absent_from_request() {
        let mut headers = kms_headers(KMS_DATE, KMS_BODY, "us-east-1", "kms");
        headers.retain(|(n, _)| n != "X-Amz-Target");
        let e = run(&headers, KMS_BODY, KMS_NOW).unwrap_err();
        assert!(matches!(e, SigV4Error::IncompleteSignature(ref m) if m.contains("x-amz-target")));
        assert_eq!(e.aws_name(), "IncompleteSignatureException");
    }

    #[test]
    fn wrong_region_and_service() {
        let headers = kms_headers(KMS_DATE, KMS_BODY, "eu-west-1", "kms");
        assert!(matches!(
            run(&headers, KMS_BODY, KMS_NOW),
            Err(SigV4Error::InvalidSignature(ref m)) if m.contains("valid region")
        ));
        let headers = kms_headers(KMS_DATE, KMS_BODY, "us-east-1", "s3");
        assert!(matches!(
            run(&headers, KMS_BODY, KMS_NOW),
            Err(SigV4Error::InvalidSignature(ref m)) if m.contains("correct service: 'kms'")
        ));
    }

    #[test]
    fn scope_date_must_match_request_date() {
        assert!(matches!(
            run_with_auth_changed("/20261123/", "/20261122/"),
            Err(SigV4Error::InvalidSignature(ref m)) if m.contains("'20261122' != '20261123'")
        ));
    }

    #[test]
    fn missing_and_presigned() {
        let headers = h(&[("Host", "kms.local"), ("X-Amz-Date", KMS_DATE)]);
        assert_eq!(
            run(&headers, b"", KMS_NOW).unwrap_err(),
            SigV4Error::MissingAuthenticationToken
        );
        assert_eq!(SigV4Error::MissingAuthenticationToken.http_status(), 403);
        let payload = sha256_hex(b"");
        let req = SignableRequest {
            method: "GET",
            path: "/",
            query: "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=00",
            headers: &headers,
            payload_sha256_hex: &payload,
        };
        assert!(matches!(
            verify(&req, "kms", &regions(), KMS_NOW, 300, secret_for),
            Err(SigV4Error::IncompleteSignature(ref m)) if m.contains("presigned")
        ));
        let mut two = kms_headers(KMS_DATE, KMS_BODY, "us-east-1", "kms");
        let a = auth_of(&two);
        two.push(("authorization".into(), a));
        assert!(matches!(
            run(&two, KMS_BODY, KMS_NOW),
            Err(SigV4Error::IncompleteSignature(_))
        ));
    }

    #[test]
    fn parse_authorization_accepts_the_usual_forms() {
        let sig = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        for text in [
            format!("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={sig}"),
            format!("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request,SignedHeaders=host;x-amz-date,Signature={sig}"),
            format!("  AWS4-HMAC-SHA256   Signature={sig} , Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request , SignedHeaders=Host;X-Amz-Date "),
        ] {
            let a = parse_authorization(&text).unwrap();
            assert_eq!(a.access_key_id, "AKIDEXAMPLE");
            assert_eq!(a.date, "20150830");
            assert_eq!(a.region, "us-east-1");
            assert_eq!(a.service, "service");
            assert_eq!(a.signed_headers, vec!["host", "x-amz-date"]);
            assert_eq!(a.signature_hex, sig);
            assert_eq!(a.scope(), SCOPE);
        }
    }

    #[test]
    fn parse_authorization_rejects_malformed() {
        let sig = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        let cred = "Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request";
        for (text, needle) in [
            (format!("AWS4-HMAC-SHA1 {cred}, SignedHeaders=host, Signature={sig}"), "algorithm"),
            (format!("AWS4-HMAC-SHA256 {cred}, Signature={sig}"), "'SignedHeaders'"),
            (format!("AWS4-HMAC-SHA256 SignedHeaders=host, Signature={sig}"), "'Credential'"),
            (format!("AWS4-HMAC-SHA256 {cred}, SignedHeaders=host"), "'Signature'"),
            (format!("AWS4-HMAC-SHA256 {cred}, {cred}, SignedHeaders=host, Signature={sig}"), "more than once"),
            (format!("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws5_request, SignedHeaders=host, Signature={sig}"), "terminator"),
            (format!("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/2015-08-30/us-east-1/service/aws4_request, SignedHeaders=host, Signature={sig}"), "yyyymmdd"),
            (format!("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/aws4_request, SignedHeaders=host, Signature={sig}"), "form"),
            (format!("AWS4-HMAC-SHA256 {cred}, SignedHeaders=host;;x, Signature={sig}"), "header name"),
            (format!("AWS4-HMAC-SHA256 {cred}, SignedHeaders=host, Signature=zz"), "64 hexadecimal"),
            (format!("AWS4-HMAC-SHA256 {cred}, SignedHeaders=host, Signature={sig}, Foo=bar"), "Unknown"),
            (format!("AWS4-HMAC-SHA256 {cred} SignedHeaders=host Signature={sig}"), "'SignedHeaders'"),
        ] {
            let e = parse_authorization(&text).unwrap_err();
            assert!(e.to_string().contains(needle), "{text}: {e}");
            assert_eq!(e.aws_name(), "IncompleteSignatureException", "{text}");
        }
        assert_eq!(
            parse_authorization("   ").unwrap_err(),
            SigV4Error::MissingAuthenticationToken
        );
        assert!(parse_authorization(&"A".repeat(10_000)).is_err());
    }

    #[test]
    fn truncated_and_mangled_headers_never_panic() {
        let headers = kms_headers(KMS_DATE, KMS_BODY, "us-east-1", "kms");
        let full = auth_of(&headers);
        let chars: Vec<char> = full.chars().collect();
        for cut in 0..chars.len() {
            let prefix: String = chars.iter().take(cut).collect();
            let suffix: String = chars.iter().skip(cut).collect();
            assert!(parse_authorization(&prefix).is_err(), "{prefix}");
            let _ = parse_authorization(&suffix);
            let mut hs = headers.clone();
            set_auth(&mut hs, prefix);
            assert!(run(&hs, KMS_BODY, KMS_NOW).is_err());
        }
        // Byte-level mangling, including multi-byte characters and control characters.
        for (i, junk) in ["é", "\u{0}", "=", ",", "/", ";", " ", "ሴ", "%", "\n"]
            .iter()
            .enumerate()
        {
            for pos in (0..chars.len()).step_by(7) {
                let mut s: String = chars.iter().take(pos).collect();
                s.push_str(junk);
                s.extend(chars.iter().skip(pos + i % 2));
                let _ = parse_authorization(&s);
                let mut hs = headers.clone();
                set_auth(&mut hs, s);
                let _ = run(&hs, KMS_BODY, KMS_NOW);
            }
        }
        for s in [
            "=",
            ",,,,",
            "AWS4-HMAC-SHA256",
            "AWS4-HMAC-SHA256 =",
            "AWS4-HMAC-SHA256 Credential=",
            "AWS4-HMAC-SHA256 Credential=////",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/e/f",
        ] {
            assert!(parse_authorization(s).is_err(), "{s}");
        }
        for d in [
            "",
            "2",
            "20261123T1038",
            "20261323T103817Z",
            "20261123T253817Z",
            "2026112３T10381Z",
            "20261123X103817Z",
            "20260229T000000Z",
        ] {
            assert_eq!(parse_amz_date(d), None, "{d}");
        }
        assert!(parse_amz_date("20240229T000000Z").is_some());
    }

    #[test]
    fn signing_key_matches_published_value() {
        // From the AWS documentation's signing-key example for this secret and scope.
        assert_eq!(
            hex::encode(signing_key(SECRET, "20150830", "us-east-1", "iam")),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
    }

    #[test]
    fn debug_redacts_secret() {
        let p = SigningParams {
            access_key_id: AKID,
            secret_access_key: SECRET,
            region: "us-east-1",
            service: "kms",
            amz_date: KMS_DATE,
        };
        assert!(!format!("{p:?}").contains("EXAMPLEKEY"));
    }
}

#[cfg(test)]
mod signing_key_cache_tests {
    use super::*;

    const AKID: &str = "AKIDEXAMPLE";
    const OLD_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const NEW_SECRET: &str = "rotatedrotatedrotatedrotatedrotatedrot00";
    const AMZ_DATE: &str = "20150830T123600Z";
    const NOW: i64 = 1_440_938_160; // 2015-08-30T12:36:00Z

    /// The headers of a request signed by `AKID` with `secret` for `region` and `service`
    /// at `amz_date`.
    fn signed(secret: &str, region: &str, service: &str, amz_date: &str) -> Vec<(String, String)> {
        let mut headers = vec![
            ("Host".to_string(), "kms.example".to_string()),
            ("X-Amz-Date".to_string(), amz_date.to_string()),
        ];
        let names = vec!["host".to_string(), "x-amz-date".to_string()];
        let auth = authorization_header(
            &request(&headers),
            &names,
            &SigningParams {
                access_key_id: AKID,
                secret_access_key: secret,
                region,
                service,
                amz_date,
            },
        );
        headers.push(("Authorization".to_string(), auth));
        headers
    }

    fn request(headers: &[(String, String)]) -> SignableRequest<'_> {
        SignableRequest {
            method: "POST",
            path: "/",
            query: "",
            headers,
            payload_sha256_hex: EMPTY_SHA256_HEX,
        }
    }

    /// Verifies with the cache, under `secret`, for the regions and service given.
    fn check(
        cache: &SigningKeyCache,
        headers: &[(String, String)],
        secret: &str,
        regions: &[String],
        service: &str,
        now: i64,
    ) -> Result<VerifiedSigV4, SigV4Error> {
        let policy = VerifyPolicy {
            expected_service: service,
            allowed_regions: regions,
            now_unix_secs: now,
            max_skew_secs: MAX_SKEW_SECS,
            keys: Some(cache),
        };
        verify_with(&request(headers), &policy, |id| {
            (id == AKID).then(|| Zeroizing::new(secret.to_string()))
        })
    }

    /// Verifies a `kms` request at `NOW` with the cache, under `secret`.
    fn kms(
        cache: &SigningKeyCache,
        headers: &[(String, String)],
        secret: &str,
    ) -> Result<VerifiedSigV4, SigV4Error> {
        check(cache, headers, secret, &regions(), "kms", NOW)
    }

    fn assert_invalid(r: Result<VerifiedSigV4, SigV4Error>) {
        assert!(matches!(r, Err(SigV4Error::InvalidSignature(_))), "{r:?}");
    }

    fn regions() -> Vec<String> {
        vec!["us-east-1".to_string(), "eu-west-1".to_string()]
    }

    #[test]
    fn a_cached_key_verifies_the_next_request_of_the_same_scope() {
        let cache = SigningKeyCache::new();
        let headers = signed(OLD_SECRET, "us-east-1", "kms", AMZ_DATE);
        for _ in 0..3 {
            let ok = kms(&cache, &headers, OLD_SECRET).unwrap();
            assert_eq!(ok.access_key_id, AKID);
        }
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_new_date_region_or_service_derives_a_new_key() {
        let cache = SigningKeyCache::new();
        let next_day = "20150831T000100Z";
        let cases = [
            ("us-east-1", "kms", AMZ_DATE, NOW),
            ("us-east-1", "kms", next_day, NOW + 41_100),
            ("eu-west-1", "kms", AMZ_DATE, NOW),
            ("us-east-1", "kms-xks-proxy", AMZ_DATE, NOW),
        ];
        for (i, (region, service, date, now)) in cases.into_iter().enumerate() {
            let headers = signed(OLD_SECRET, region, service, date);
            check(&cache, &headers, OLD_SECRET, &regions(), service, now).unwrap();
            assert_eq!(cache.len(), i + 1, "{region} {service} {date}");
        }
        // Each entry holds the key of its own scope.
        let auth = parse_authorization(
            header_value(
                &signed(OLD_SECRET, "eu-west-1", "kms", AMZ_DATE),
                "authorization",
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            *cache.key_for(&auth, OLD_SECRET),
            signing_key(OLD_SECRET, "20150830", "eu-west-1", "kms")
        );
    }

    #[test]
    fn a_rotated_secret_derives_a_new_key_and_the_old_secret_fails() {
        let cache = SigningKeyCache::new();
        let old = signed(OLD_SECRET, "us-east-1", "kms", AMZ_DATE);
        let new = signed(NEW_SECRET, "us-east-1", "kms", AMZ_DATE);
        kms(&cache, &old, OLD_SECRET).unwrap();
        // The key now holds NEW_SECRET: the request signed with it verifies...
        kms(&cache, &new, NEW_SECRET).unwrap();
        // ...and one signed with the old secret fails, though its key was cached.
        assert_invalid(kms(&cache, &old, NEW_SECRET));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_bad_signature_fails_with_a_warm_cache() {
        let cache = SigningKeyCache::new();
        let good = signed(OLD_SECRET, "us-east-1", "kms", AMZ_DATE);
        kms(&cache, &good, OLD_SECRET).unwrap();
        let mut bad = good.clone();
        let auth = &mut bad[2].1;
        let flipped = if auth.ends_with('0') { '1' } else { '0' };
        auth.pop();
        auth.push(flipped);
        assert_invalid(kms(&cache, &bad, OLD_SECRET));
        // Scope checks still come first: a region outside the allowed ones is refused.
        let elsewhere = signed(OLD_SECRET, "ap-south-1", "kms", AMZ_DATE);
        assert_invalid(kms(&cache, &elsewhere, OLD_SECRET));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_pre_parsed_header_verifies_only_as_the_one_authorization_header() {
        let cache = SigningKeyCache::new();
        let mut headers = signed(OLD_SECRET, "us-east-1", "kms", AMZ_DATE);
        let auth = parse_authorization(header_value(&headers, "authorization").unwrap()).unwrap();
        let regions = regions();
        let policy = VerifyPolicy {
            expected_service: "kms",
            allowed_regions: &regions,
            now_unix_secs: NOW,
            max_skew_secs: MAX_SKEW_SECS,
            keys: Some(&cache),
        };
        let lookup = |_: &str| Some(Zeroizing::new(OLD_SECRET.to_string()));
        let ok = verify_parsed(&request(&headers), auth.clone(), &policy, lookup).unwrap();
        assert_eq!(ok.access_key_id, AKID);
        let again = headers[2].clone();
        headers.push(again);
        let err = verify_parsed(&request(&headers), auth, &policy, lookup).unwrap_err();
        assert_eq!(err, incomplete("More than one Authorization header."));
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let cache = SigningKeyCache::new();
        let mut auth = parse_authorization(
            header_value(
                &signed(OLD_SECRET, "us-east-1", "kms", AMZ_DATE),
                "authorization",
            )
            .unwrap(),
        )
        .unwrap();
        for i in 0..SIGNING_KEY_CACHE_CAPACITY + 10 {
            auth.access_key_id = format!("AKID{i}");
            cache.key_for(&auth, OLD_SECRET);
            assert!(cache.len() <= SIGNING_KEY_CACHE_CAPACITY);
        }
        assert_eq!(cache.len(), 10);
    }
}
