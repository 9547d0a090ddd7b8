//! A tiny DER writer and reader for the few structures p11kms builds from device attributes:
//! `SubjectPublicKeyInfo` (RSA, EC), PKCS#8 `PrivateKeyInfo` (RSA, EC) for data key pairs,
//! PKCS#1 v1.5 `DigestInfo` prefixes, and ECDSA `Ecdsa-Sig-Value` parsing.
//!
//! Every writer returns a `Zeroizing` buffer, so private-key structures are wiped when dropped.

use zeroize::Zeroizing;

/// DER of OID 1.2.840.113549.1.1.1 (rsaEncryption).
pub(crate) const OID_RSA_ENCRYPTION: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
/// DER of OID 1.2.840.10045.2.1 (id-ecPublicKey).
pub(crate) const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// DER NULL.
const NULL: &[u8] = &[0x05, 0x00];

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;

/// One TLV with a definite length.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Zeroizing<Vec<u8>> {
    let n = content.len();
    let mut out = Zeroizing::new(Vec::with_capacity(n + 6));
    out.push(tag);
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = (n as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (4 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A SEQUENCE of already-encoded parts.
pub(crate) fn seq(parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
    let mut body = Zeroizing::new(Vec::with_capacity(parts.iter().map(|p| p.len()).sum()));
    for p in parts {
        body.extend_from_slice(p);
    }
    tlv(SEQUENCE, &body)
}

/// A non-negative INTEGER from big-endian magnitude bytes.
pub(crate) fn uint(magnitude: &[u8]) -> Zeroizing<Vec<u8>> {
    let start = magnitude
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(magnitude.len());
    let m = &magnitude[start..];
    let mut body = Zeroizing::new(Vec::with_capacity(m.len() + 1));
    if m.is_empty() || m[0] & 0x80 != 0 {
        body.push(0);
    }
    body.extend_from_slice(m);
    tlv(INTEGER, &body)
}

/// An OCTET STRING.
pub(crate) fn octets(content: &[u8]) -> Zeroizing<Vec<u8>> {
    tlv(OCTET_STRING, content)
}

/// A BIT STRING with no unused bits.
pub(crate) fn bits(content: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut body = Zeroizing::new(Vec::with_capacity(content.len() + 1));
    body.push(0);
    body.extend_from_slice(content);
    tlv(BIT_STRING, &body)
}

/// `SubjectPublicKeyInfo` of an RSA key.
pub(crate) fn rsa_spki(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let alg = seq(&[OID_RSA_ENCRYPTION, NULL]);
    let key = seq(&[&uint(modulus), &uint(exponent)]);
    seq(&[&alg, &bits(&key)]).to_vec()
}

/// `SubjectPublicKeyInfo` of an EC key: `curve_oid` is the DER OID, `point` the uncompressed
/// point.
pub(crate) fn ec_spki(curve_oid: &[u8], point: &[u8]) -> Vec<u8> {
    let alg = seq(&[OID_EC_PUBLIC_KEY, curve_oid]);
    seq(&[&alg, &bits(point)]).to_vec()
}

/// The uncompressed point of an EC `SubjectPublicKeyInfo` on the curve `curve_oid` (DER
/// OID): `None` unless `spki` is exactly one SEQUENCE of the id-ecPublicKey algorithm with that
/// named curve and a BIT STRING holding an uncompressed point of `field_len`-byte coordinates.
/// Whether the point is on the curve is left to the device.
pub(crate) fn ec_point_from_spki(
    spki: &[u8],
    curve_oid: &[u8],
    field_len: usize,
) -> Option<Vec<u8>> {
    let (SEQUENCE, body, []) = read_tlv(spki)? else {
        return None;
    };
    let (SEQUENCE, alg, rest) = read_tlv(body)? else {
        return None;
    };
    let (BIT_STRING, key, []) = read_tlv(rest)? else {
        return None;
    };
    let (OID, oid, params) = read_tlv(alg)? else {
        return None;
    };
    if oid != &OID_EC_PUBLIC_KEY[2..] || params != curve_oid {
        return None;
    }
    let (&unused, point) = key.split_first()?;
    (unused == 0 && point.len() == 1 + 2 * field_len && point[0] == 0x04).then(|| point.to_vec())
}

/// The (modulus, exponent) of an RSA `SubjectPublicKeyInfo`, without sign bytes; `None`
/// unless `spki` is exactly one SEQUENCE of the rsaEncryption algorithm (NULL parameters) and a
/// BIT STRING holding `RSAPublicKey`.
pub(crate) fn rsa_from_spki(spki: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (SEQUENCE, body, []) = read_tlv(spki)? else {
        return None;
    };
    let (SEQUENCE, alg, rest) = read_tlv(body)? else {
        return None;
    };
    if alg != [OID_RSA_ENCRYPTION, NULL].concat() {
        return None;
    }
    let (BIT_STRING, key, []) = read_tlv(rest)? else {
        return None;
    };
    let (0, key) = key.split_first()? else {
        return None;
    };
    let (SEQUENCE, ints, []) = read_tlv(key)? else {
        return None;
    };
    let (INTEGER, n, rest) = read_tlv(ints)? else {
        return None;
    };
    let (INTEGER, e, []) = read_tlv(rest)? else {
        return None;
    };
    let magnitude = |v: &[u8]| v.strip_prefix(&[0]).unwrap_or(v).to_vec();
    Some((magnitude(n), magnitude(e)))
}

/// DER OID of Ed25519 (1.3.101.112): the algorithm of its SPKI, and its `CKA_EC_PARAMS`.
pub(crate) const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// `SubjectPublicKeyInfo` of an Ed25519 key (RFC 8410): the algorithm has no parameters.
pub(crate) fn ed25519_spki(point: &[u8]) -> Vec<u8> {
    let alg = seq(&[OID_ED25519]);
    seq(&[&alg, &bits(point)]).to_vec()
}

/// An Ed25519 `CKA_EC_POINT`: a DER OCTET STRING of the 32-byte public key (PKCS#11 3.0), or
/// the bare 32 bytes.
pub(crate) fn ed25519_point_from_attr(v: &[u8]) -> Option<Vec<u8>> {
    if let Some((OCTET_STRING, point, [])) = read_tlv(v) {
        if point.len() == 32 {
            return Some(point.to_vec());
        }
    }
    (v.len() == 32).then(|| v.to_vec())
}

/// PKCS#8 `PrivateKeyInfo` of an Ed25519 key (RFC 8410): the 32-byte private key (seed) in
/// an OCTET STRING inside the privateKey OCTET STRING. `None` unless `seed` is 32 bytes.
pub(crate) fn ed25519_pkcs8(seed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if seed.len() != 32 {
        return None;
    }
    let alg = seq(&[OID_ED25519]);
    Some(seq(&[&uint(&[0]), &alg, &octets(&octets(seed))]))
}

/// The parts of an RSA private key, big-endian magnitudes.
pub(crate) struct RsaPrivateParts {
    pub(crate) n: Zeroizing<Vec<u8>>,
    pub(crate) e: Zeroizing<Vec<u8>>,
    pub(crate) d: Zeroizing<Vec<u8>>,
    pub(crate) p: Zeroizing<Vec<u8>>,
    pub(crate) q: Zeroizing<Vec<u8>>,
    pub(crate) dp: Zeroizing<Vec<u8>>,
    pub(crate) dq: Zeroizing<Vec<u8>>,
    pub(crate) qinv: Zeroizing<Vec<u8>>,
}

/// PKCS#8 `PrivateKeyInfo` wrapping a PKCS#1 `RSAPrivateKey`.
pub(crate) fn rsa_pkcs8(k: &RsaPrivateParts) -> Zeroizing<Vec<u8>> {
    let rsa = seq(&[
        &uint(&[0]),
        &uint(&k.n),
        &uint(&k.e),
        &uint(&k.d),
        &uint(&k.p),
        &uint(&k.q),
        &uint(&k.dp),
        &uint(&k.dq),
        &uint(&k.qinv),
    ]);
    let alg = seq(&[OID_RSA_ENCRYPTION, NULL]);
    seq(&[&uint(&[0]), &alg, &octets(&rsa)])
}

/// PKCS#8 `PrivateKeyInfo` wrapping an RFC 5915 `ECPrivateKey` (with the curve and the
/// public point). `d` is left-padded to `field_len` bytes.
pub(crate) fn ec_pkcs8(
    curve_oid: &[u8],
    field_len: usize,
    d: &[u8],
    point: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let start = d.iter().position(|b| *b != 0).unwrap_or(d.len());
    let d = &d[start..];
    if d.len() > field_len {
        return None;
    }
    let mut scalar = Zeroizing::new(vec![0u8; field_len]);
    scalar[field_len - d.len()..].copy_from_slice(d);
    let ec = seq(&[
        &uint(&[1]),
        &octets(&scalar),
        &tlv(0xa0, curve_oid),
        &tlv(0xa1, &bits(point)),
    ]);
    let alg = seq(&[OID_EC_PUBLIC_KEY, curve_oid]);
    Some(seq(&[&uint(&[0]), &alg, &octets(&ec)]))
}

/// Reads one TLV: (tag, content, rest). Definite lengths up to 4 bytes, minimal encoding.
pub(crate) fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for b in &rest[..n] {
            len = (len << 8) | *b as usize;
        }
        if len < 0x80 || rest[0] == 0 {
            return None;
        }
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// `CKA_EC_POINT` is a DER OCTET STRING wrapping the point (PKCS#11 2.40); some modules answer
/// the bare point. Returns the uncompressed point.
pub(crate) fn ec_point_from_attr(v: &[u8], field_len: usize) -> Option<Vec<u8>> {
    let want = 1 + 2 * field_len;
    if let Some((OCTET_STRING, point, [])) = read_tlv(v) {
        if point.len() == want && point[0] == 0x04 {
            return Some(point.to_vec());
        }
    }
    (v.len() == want && v[0] == 0x04).then(|| v.to_vec())
}

/// DER `Ecdsa-Sig-Value` -> raw `r || s`, each left-padded to `field_len`. `None` if the
/// input is not exactly one well-formed SEQUENCE of two positive INTEGERs that fit.
pub(crate) fn ecdsa_der_to_raw(der: &[u8], field_len: usize) -> Option<Vec<u8>> {
    let (tag, body, rest) = read_tlv(der)?;
    if tag != SEQUENCE || !rest.is_empty() {
        return None;
    }
    let (t1, r, body) = read_tlv(body)?;
    let (t2, s, body) = read_tlv(body)?;
    if t1 != INTEGER || t2 != INTEGER || !body.is_empty() {
        return None;
    }
    let mut out = vec![0u8; 2 * field_len];
    for (i, x) in [r, s].into_iter().enumerate() {
        if x.is_empty() || x[0] & 0x80 != 0 {
            return None;
        }
        // Minimal encoding: a leading zero only before a byte with the high bit set.
        if x.len() > 1 && x[0] == 0 && x[1] & 0x80 == 0 {
            return None;
        }
        let start = x.iter().position(|b| *b != 0).unwrap_or(x.len());
        let m = &x[start..];
        if m.is_empty() || m.len() > field_len {
            return None;
        }
        let end = (i + 1) * field_len;
        out[end - m.len()..end].copy_from_slice(m);
    }
    Some(out)
}

/// DER prefix of a PKCS#1 v1.5 `DigestInfo` for a SHA-2 digest of `len` bytes.
pub(crate) fn digest_info_prefix(len: usize) -> Option<&'static [u8]> {
    match len {
        32 => Some(&[
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ]),
        48 => Some(&[
            0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x02, 0x05, 0x00, 0x04, 0x30,
        ]),
        64 => Some(&[
            0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x03, 0x05, 0x00, 0x04, 0x40,
        ]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_of_a_small_key_is_well_formed() {
        let der = rsa_spki(&[0x00, 0xc1, 0x02], &[1, 0, 1]);
        assert_eq!(der[0], 0x30);
        assert_eq!(der[1] as usize, der.len() - 2);
        // modulus gets a leading zero (high bit set), exponent stays 3 bytes
        assert!(der.windows(5).any(|w| w == [0x02, 0x03, 0x00, 0xc1, 0x02]));
        assert!(der.ends_with(&[0x02, 0x03, 0x01, 0x00, 0x01]));
    }

    #[test]
    fn lengths_and_integers() {
        assert_eq!(&*tlv(0x04, &[1, 2]), &[0x04, 2, 1, 2]);
        let long = tlv(0x04, &[0u8; 200]);
        assert_eq!(&long[..3], &[0x04, 0x81, 200]);
        let longer = tlv(0x04, &[0u8; 300]);
        assert_eq!(&longer[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(&*uint(&[0, 0, 0x80]), &[0x02, 2, 0, 0x80]);
        assert_eq!(&*uint(&[0]), &[0x02, 1, 0]);
        assert_eq!(&*uint(&[1, 0, 1]), &[0x02, 3, 1, 0, 1]);
        let (t, c, r) = read_tlv(&longer).unwrap();
        assert_eq!((t, c.len(), r.len()), (0x04, 300, 0));
        assert!(
            read_tlv(&[0x04, 0x81, 0x05, 1, 2, 3, 4, 5]).is_none(),
            "non-minimal length"
        );
    }

    #[test]
    fn ecdsa_round_trip() {
        for field in [32usize, 48, 66] {
            let mut raw = vec![0u8; 2 * field];
            raw[0] = 0x80;
            raw[field] = 0;
            raw[field + 1] = 0x01;
            raw[2 * field - 1] = 7;
            let der = crate::hsm::signing::ecdsa_raw_to_der(&raw).unwrap();
            assert_eq!(ecdsa_der_to_raw(&der, field).unwrap(), raw);
            let mut bad = der.clone();
            bad.push(0);
            assert!(ecdsa_der_to_raw(&bad, field).is_none());
        }
        assert!(ecdsa_der_to_raw(&[0x30, 0x00], 32).is_none());
    }

    #[test]
    fn ec_spki_round_trip_and_refusals() {
        use crate::hsm::asym::Curve;
        for curve in [Curve::P256, Curve::P384, Curve::P521] {
            let n = curve.field_len();
            let mut point = vec![0x04];
            point.extend((0..2 * n).map(|i| i as u8));
            let spki = ec_spki(curve.oid_der(), &point);
            assert_eq!(
                ec_point_from_spki(&spki, curve.oid_der(), n).as_deref(),
                Some(&point[..])
            );
            // Another curve's OID, a compressed point, trailing bytes: refused.
            let other = if curve == Curve::P256 {
                Curve::P384
            } else {
                Curve::P256
            };
            assert!(ec_point_from_spki(&spki, other.oid_der(), n).is_none());
            let mut compressed = vec![0x02];
            compressed.extend(&point[1..=n]);
            assert!(
                ec_point_from_spki(&ec_spki(curve.oid_der(), &compressed), curve.oid_der(), n)
                    .is_none()
            );
            let mut trailing = spki.clone();
            trailing.push(0);
            assert!(ec_point_from_spki(&trailing, curve.oid_der(), n).is_none());
        }
        let rsa = rsa_spki(&[0x00, 0xc1, 0x02], &[1, 0, 1]);
        assert!(ec_point_from_spki(&rsa, Curve::P256.oid_der(), 32).is_none());
        assert!(ec_point_from_spki(&[], Curve::P256.oid_der(), 32).is_none());
    }

    #[test]
    fn ed25519_points_and_spki() {
        let key: Vec<u8> = (1..=32).collect();
        let wrapped = octets(&key);
        assert_eq!(ed25519_point_from_attr(&wrapped).as_deref(), Some(&key[..]));
        assert_eq!(ed25519_point_from_attr(&key).as_deref(), Some(&key[..]));
        assert!(ed25519_point_from_attr(&key[..31]).is_none());
        assert!(ed25519_point_from_attr(&octets(&key[..31])).is_none());
        let spki = ed25519_spki(&key);
        assert_eq!(spki.len(), 44);
        assert_eq!(
            &spki[..12],
            &[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00]
        );
        assert_eq!(&spki[12..], &key[..]);
        let pkcs8 = ed25519_pkcs8(&key).unwrap();
        assert_eq!(pkcs8.len(), 48);
        assert_eq!(
            &pkcs8[..16],
            &[
                0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
                0x04, 0x20
            ]
        );
        assert_eq!(&pkcs8[16..], &key[..]);
        assert!(ed25519_pkcs8(&key[..31]).is_none());
    }
}
