//! Client certificates to principals.
//!
//! The TLS layer has already verified the chain against the configured client CA; this maps a
//! verified leaf to a principal ARN by its subject CN or one of its SAN URIs. A certificate
//! that matches no binding is unknown, and the door answers UNAUTHENTICATED.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, RwLock};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What part of a certificate a binding matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertMatcher {
    /// The subject common name, exactly.
    SubjectCn(String),
    /// A URI subject alternative name, exactly (for SPIFFE ids and the like).
    SanUri(String),
}

/// One binding: a certificate matcher and the principal it authenticates as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertBinding {
    pub matcher: CertMatcher,
    pub principal_arn: String,
}

/// Upper bound on remembered certificate lookups, so a flood of distinct (valid) certificates
/// cannot grow memory without limit.
const CACHE_LIMIT: usize = 10_000;

/// A fast hasher for the certificate cache. Every mTLS request looks its leaf (about 1 KB of
/// DER) up, and SipHash over it cost about 1 µs per request. Keys are leaves the TLS layer
/// has already verified against the client CA, and the cache is bounded, so a non-keyed
/// multiply-rotate hash (FxHash's) is safe here: nobody can mint colliding keys at will.
#[derive(Default)]
struct DerHasher(u64);

impl Hasher for DerHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type DerCache = HashMap<Vec<u8>, Option<Arc<str>>, BuildHasherDefault<DerHasher>>;

/// The certificate bindings, with a cache from leaf DER to the resolved principal so a
/// certificate is parsed once, not per request.
#[derive(Debug, Default)]
pub struct CertificateDirectory {
    bindings: Vec<CertBinding>,
    cache: RwLock<DerCache>,
}

impl CertificateDirectory {
    /// A directory over the given bindings.
    pub fn new(bindings: Vec<CertBinding>) -> Self {
        CertificateDirectory {
            bindings,
            cache: RwLock::new(DerCache::default()),
        }
    }

    /// The principal a verified leaf certificate (DER) maps to, if any.
    pub fn principal_for(&self, leaf_der: &[u8]) -> Option<Arc<str>> {
        if let Ok(cache) = self.cache.read() {
            if let Some(hit) = cache.get(leaf_der) {
                return hit.clone();
            }
        }
        let resolved = self.resolve(leaf_der).map(Arc::from);
        if let Ok(mut cache) = self.cache.write() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(leaf_der.to_vec(), resolved.clone());
        }
        resolved
    }

    fn resolve(&self, leaf_der: &[u8]) -> Option<&str> {
        let (_, cert) = X509Certificate::from_der(leaf_der).ok()?;
        let cns: Vec<&str> = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .collect();
        let mut uris: Vec<&str> = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(u) = name {
                    uris.push(u);
                }
            }
        }
        self.bindings.iter().find_map(|b| {
            let hit = match &b.matcher {
                CertMatcher::SubjectCn(cn) => cns.iter().any(|c| c == cn),
                CertMatcher::SanUri(uri) => uris.iter().any(|u| u == uri),
            };
            hit.then_some(b.principal_arn.as_str())
        })
    }
}

/// The names a certificate gives its subject: each subject common name, then each DNS
/// subject alternative name (what mutual TLS checks against an expected subject, as the XKS
/// door does for `cks.kms.<region>.amazonaws.com`). Empty when the DER does not parse.
pub fn subject_names(leaf_der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(leaf_der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(d) = name {
                names.push(d.to_string());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, uri: Option<&str>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        if let Some(u) = uri {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(u.try_into().unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn subject_names_are_the_cn_then_dns_sans() {
        let mut params =
            rcgen::CertificateParams::new(vec!["cks.kms.eu-west-1.amazonaws.com".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cks.kms.us-east-1.amazonaws.com");
        let key = rcgen::KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        assert_eq!(
            subject_names(&der),
            [
                "cks.kms.us-east-1.amazonaws.com",
                "cks.kms.eu-west-1.amazonaws.com"
            ]
        );
        assert!(subject_names(b"not a certificate").is_empty());
    }

    #[test]
    fn maps_by_cn_and_uri_and_refuses_unknown() {
        let dir = CertificateDirectory::new(vec![
            CertBinding {
                matcher: CertMatcher::SubjectCn("admin".into()),
                principal_arn: "arn:aws:iam::111122223333:user/admin".into(),
            },
            CertBinding {
                matcher: CertMatcher::SanUri("spiffe://corp/app".into()),
                principal_arn: "arn:aws:iam::111122223333:role/app".into(),
            },
        ]);
        let admin = cert("admin", None);
        assert_eq!(
            dir.principal_for(&admin).as_deref(),
            Some("arn:aws:iam::111122223333:user/admin")
        );
        // Cached answer is the same.
        assert_eq!(
            dir.principal_for(&admin).as_deref(),
            Some("arn:aws:iam::111122223333:user/admin")
        );
        assert_eq!(
            dir.principal_for(&cert("svc", Some("spiffe://corp/app")))
                .as_deref(),
            Some("arn:aws:iam::111122223333:role/app")
        );
        assert_eq!(dir.principal_for(&cert("Admin", None)), None);
        assert_eq!(dir.principal_for(b"not a certificate"), None);
    }
}
