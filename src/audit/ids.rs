//! Request and event ids: random (version 4) UUIDs without a system call per id.
//!
//! Each thread keeps 4 KiB of operating-system randomness (`getrandom`, through ring's
//! `SystemRandom`) and cuts 16-byte ids from it, so 256 ids cost one system call instead of
//! 256. The ids stay as unguessable and as unique (across threads and restarts) as
//! `Uuid::new_v4`: every byte is fresh OS randomness, used once.

use std::cell::RefCell;

use ring::rand::SecureRandom;
use uuid::Uuid;

const POOL_BYTES: usize = 4096;

struct Pool {
    bytes: Box<[u8; POOL_BYTES]>,
    used: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool {
        bytes: Box::new([0; POOL_BYTES]),
        used: POOL_BYTES,
    });
}

/// A fresh random (version 4) UUID.
pub fn uuid_v4() -> Uuid {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.used + 16 > POOL_BYTES {
            if ring::rand::SystemRandom::new()
                .fill(&mut p.bytes[..])
                .is_err()
            {
                return Uuid::new_v4();
            }
            p.used = 0;
        }
        let at = p.used;
        let mut b = [0u8; 16];
        b.copy_from_slice(&p.bytes[at..at + 16]);
        // Used once: wipe the bytes handed out.
        p.bytes[at..at + 16].fill(0);
        p.used = at + 16;
        uuid::Builder::from_random_bytes(b).into_uuid()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_v4_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let u = uuid_v4();
            assert_eq!(u.get_version_num(), 4);
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
            assert!(seen.insert(u));
        }
        let other = std::thread::spawn(|| (0..300).map(|_| uuid_v4()).collect::<Vec<_>>())
            .join()
            .unwrap();
        assert!(other.iter().all(|u| !seen.contains(u)));
    }
}
