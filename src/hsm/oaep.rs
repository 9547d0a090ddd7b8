//! EME-OAEP encoding and decoding (RFC 8017 section 7.1) with SHA-256 and MGF1-SHA-256.
//!
//! SoftHSM2 2.6.1 accepts `CKM_RSA_PKCS_OAEP` only with SHA-1 (`CKR_ARGUMENTS_BAD` otherwise),
//! so for RSAES_OAEP_SHA_256 the RSA operation itself runs on the device with `CKM_RSA_X_509`
//! (the private key never leaves it) and the padding is applied or removed here, in the same
//! worker job. Decoding checks every condition without early exits on secret data and
//! reports one undifferentiated failure.

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroizing;

const H_LEN: usize = 32;

fn mgf1(seed: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(len + H_LEN));
    let mut counter: u32 = 0;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(seed);
        h.update(counter.to_be_bytes());
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(len);
    out
}

/// The largest message for a modulus of `k` bytes.
pub(crate) fn max_message(k: usize) -> usize {
    k.saturating_sub(2 * H_LEN + 2)
}

/// `EM` of `k` bytes for `message`, with `seed` (32 random bytes from the device).
pub(crate) fn encode(message: &[u8], k: usize, seed: &[u8; H_LEN]) -> Option<Zeroizing<Vec<u8>>> {
    if message.len() > max_message(k) {
        return None;
    }
    let db_len = k - H_LEN - 1;
    let mut db = Zeroizing::new(vec![0u8; db_len]);
    db[..H_LEN].copy_from_slice(&Sha256::digest(b""));
    db[db_len - message.len() - 1] = 0x01;
    db[db_len - message.len()..].copy_from_slice(message);
    let mask = mgf1(seed, db_len);
    for (d, m) in db.iter_mut().zip(mask.iter()) {
        *d ^= m;
    }
    let seed_mask = mgf1(&db, H_LEN);
    let mut em = Zeroizing::new(vec![0u8; k]);
    for i in 0..H_LEN {
        em[1 + i] = seed[i] ^ seed_mask[i];
    }
    em[1 + H_LEN..].copy_from_slice(&db);
    Some(em)
}

/// The message inside `em` (`k` bytes), or `None` for any decoding error.
pub(crate) fn decode(em: &[u8], k: usize) -> Option<Zeroizing<Vec<u8>>> {
    if k < 2 * H_LEN + 2 || em.len() > k {
        return None;
    }
    // The device may drop leading zero bytes.
    let mut padded = Zeroizing::new(vec![0u8; k]);
    padded[k - em.len()..].copy_from_slice(em);
    let y = padded[0];
    let masked_seed = &padded[1..1 + H_LEN];
    let masked_db = &padded[1 + H_LEN..];
    let seed_mask = mgf1(masked_db, H_LEN);
    let mut seed = Zeroizing::new([0u8; H_LEN]);
    for i in 0..H_LEN {
        seed[i] = masked_seed[i] ^ seed_mask[i];
    }
    let db_mask = mgf1(&seed[..], masked_db.len());
    let mut db = Zeroizing::new(vec![0u8; masked_db.len()]);
    for i in 0..db.len() {
        db[i] = masked_db[i] ^ db_mask[i];
    }
    let mut good = y.ct_eq(&0) & db[..H_LEN].ct_eq(&Sha256::digest(b"")[..]);
    // Find the 0x01 separator after the zero padding, in constant time.
    let mut found = subtle::Choice::from(0);
    let mut index: u32 = 0;
    for (i, b) in db[H_LEN..].iter().enumerate() {
        let is_one = b.ct_eq(&1);
        let is_zero = b.ct_eq(&0);
        let first_one = is_one & !found;
        index.conditional_assign(&(i as u32), first_one);
        // A non-zero, non-one byte before the separator is an error.
        good &= found | is_one | is_zero;
        found |= is_one;
    }
    good &= found;
    if !bool::from(good) {
        return None;
    }
    let start = H_LEN + index as usize + 1;
    Some(Zeroizing::new(db[start..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let k = 256;
        let seed = [7u8; 32];
        for msg in [&b""[..], b"x", &[0u8; 190][..]] {
            let em = encode(msg, k, &seed).unwrap();
            assert_eq!(&decode(&em, k).unwrap()[..], msg);
            let mut bad = em.clone();
            bad[100] ^= 1;
            assert!(decode(&bad, k).is_none());
        }
        assert!(encode(&[0u8; 191], k, &seed).is_none());
        assert_eq!(max_message(256), 190);
        assert_eq!(max_message(512), 446);
    }
}
