//! Decision cost: a 20-statement key policy with conditions, 5 identity policies, 1 grant.
//! Plain std timing (harness = false). Prints one JSON line. The scenario lives in
//! `p11kms::policy::bench_scenario` (shared with `p11kms-bench --suite policy`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use p11kms::policy::bench_scenario::{self, Scenario};
use p11kms::policy::evaluate;

fn main() {
    let scenario = Scenario::build();
    scenario.with_input(|input| {
        let first = evaluate(input);
        assert!(
            first.is_allow(),
            "bench request must be allowed: {}",
            first.summary()
        );

        // Warm up, then run up to 1,000,000 decisions or 10 s, whichever comes first.
        for _ in 0..10_000 {
            black_box(evaluate(black_box(input)));
        }
        let budget = Duration::from_secs(10);
        let target = 1_000_000u64;
        let start = Instant::now();
        let mut n = 0u64;
        while n < target {
            for _ in 0..1_000 {
                black_box(evaluate(black_box(input)));
            }
            n += 1_000;
            if start.elapsed() > budget {
                break;
            }
        }
        let elapsed = start.elapsed();
        let ns = elapsed.as_nanos() as f64 / n as f64;
        println!(
            "{{\"bench\":\"policy_eval\",\"key_policy_statements\":{},\"identity_policies\":{},\"grants\":{},\"decisions\":{n},\"elapsed_ms\":{:.1},\"ns_per_decision\":{ns:.1},\"decisions_per_sec\":{:.0}}}",
            bench_scenario::KEY_POLICY_STATEMENTS,
            bench_scenario::IDENTITY_POLICIES,
            bench_scenario::GRANTS,
            elapsed.as_secs_f64() * 1e3,
            1e9 / ns
        );
    });
}
