//! The propagation suite: how long a change made on one node of a cluster takes to be in
//! force on another, as a client sees it (docs/scaling.md, the staleness bound). Each round:
//! DisableKey on node A; from its answer on, Encrypt on node B every millisecond until B
//! answers DisabledException (one sample); then EnableKey on A and Encrypt on B until it
//! works again (another sample).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{create_key, pb, percentile, reason, Client, Conn};

/// Longest wait for one change to reach B before the suite gives up.
const GIVE_UP: Duration = Duration::from_secs(30);
/// Pause between two Encrypts on B.
const POLL: Duration = Duration::from_millis(1);

/// Runs `rounds` rounds between `a` and `b` on a new key made on `a`; the JSON of the case.
pub(crate) async fn run(a: &Conn, b: &Conn, rounds: usize) -> Result<Value, String> {
    let (mut ca, mut cb) = (a.client(0), b.client(0));
    let key_id = create_key(a, &mut ca, None)
        .await
        .map_err(|s| format!("CreateKey on A: {}", reason(&s)))?;
    wait_for(b, &mut cb, &key_id, true).await?;
    let mut disable_us = Vec::with_capacity(rounds);
    let mut enable_us = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        for (enabled, out) in [(false, &mut disable_us), (true, &mut enable_us)] {
            set_enabled(a, &mut ca, &key_id, enabled).await?;
            let t0 = Instant::now();
            wait_for(b, &mut cb, &key_id, enabled).await?;
            out.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
        }
    }
    Ok(json!({
        "case": "propagation",
        "rounds": rounds,
        "disable_key_ms": summary(disable_us),
        "enable_key_ms": summary(enable_us),
        "poll_ms": POLL.as_secs_f64() * 1000.0,
    }))
}

/// p50, p99 and max of microsecond samples, in milliseconds.
fn summary(mut us: Vec<u32>) -> Value {
    us.sort_unstable();
    let ms = |v: Option<u32>| v.map(|u| f64::from(u) / 1000.0);
    json!({
        "p50": ms(percentile(&us, 0.5)),
        "p99": ms(percentile(&us, 0.99)),
        "max": ms(us.last().copied()),
    })
}

async fn set_enabled(conn: &Conn, c: &mut Client, key_id: &str, on: bool) -> Result<(), String> {
    let r = if on {
        let req = pb::EnableKeyRequest {
            key_id: key_id.into(),
        };
        c.enable_key(conn.req(req, "EnableKey")).await.map(drop)
    } else {
        let req = pb::DisableKeyRequest {
            key_id: key_id.into(),
        };
        c.disable_key(conn.req(req, "DisableKey")).await.map(drop)
    };
    r.map_err(|s| format!("Enable/DisableKey on A: {}", reason(&s)))
}

/// Encrypts on `conn` until it works (`usable`) or answers DisabledException (not `usable`).
async fn wait_for(conn: &Conn, c: &mut Client, key_id: &str, usable: bool) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let req = pb::EncryptRequest {
            key_id: key_id.into(),
            plaintext: vec![0x5a; 32],
            ..Default::default()
        };
        let now_usable = match c.encrypt(conn.req(req, "Encrypt")).await {
            Ok(_) => true,
            Err(s) if reason(&s) == "DisabledException" => false,
            // Not known on B yet (NotFoundException) counts as not usable.
            Err(s) if reason(&s) == "NotFoundException" => false,
            Err(s) => return Err(format!("Encrypt on B: {}", reason(&s))),
        };
        if now_usable == usable {
            return Ok(());
        }
        if start.elapsed() > GIVE_UP {
            return Err(format!("the change did not reach B within {GIVE_UP:?}"));
        }
        tokio::time::sleep(POLL).await;
    }
}
