//! Condition operators: String*, Numeric*, Date*, Bool, BinaryEquals, IpAddress/NotIpAddress,
//! Arn*, Null, the `...IfExists` forms and the `ForAnyValue:` / `ForAllValues:` set qualifiers.
//!
//! Semantics (spec 3.4): values of one key OR together; for negated operators the list is a NOR.
//! A missing key makes positive operators false, negated operators true, and `...IfExists`
//! true. `ForAnyValue` over an absent/empty key is false, `ForAllValues` true. A policy
//! variable the request cannot resolve (without a default) makes the clause false.

use std::cmp::Ordering;
use std::net::IpAddr;

use base64::Engine as _;

use super::compile::{
    glob_match, has_vars, resolve_to_string, ArnPattern, CCondition, CValues, Tok,
};
use super::context::RequestContext;
use super::model::{OperatorKind, SetQualifier};
use crate::time::days_from_civil;

/// `true` / `false` (ASCII case-insensitive).
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Standard base64 (padding optional).
pub(crate) fn decode_base64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s))
        .ok()
}

/// An exact decimal number borrowed from its text: sign, integer digits without leading zeros,
/// fraction digits without trailing zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal<'a> {
    neg: bool,
    int: &'a str,
    frac: &'a str,
}

impl<'a> Decimal<'a> {
    /// Parses `[+-]digits[.digits]` (also `.5`, `5.`). No exponent, no whitespace.
    pub fn parse(s: &'a str) -> Option<Decimal<'a>> {
        let (neg, body) = match s.as_bytes().first() {
            Some(b'-') => (true, s.get(1..)?),
            Some(b'+') => (false, s.get(1..)?),
            _ => (false, s),
        };
        let (int, frac) = match body.split_once('.') {
            Some((i, f)) => (i, f),
            None => (body, ""),
        };
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let int = int.trim_start_matches('0');
        let frac = frac.trim_end_matches('0');
        let neg = neg && !(int.is_empty() && frac.is_empty());
        Some(Decimal { neg, int, frac })
    }

    fn cmp_magnitude(&self, other: &Decimal<'_>) -> Ordering {
        self.int
            .len()
            .cmp(&other.int.len())
            .then_with(|| self.int.cmp(other.int))
            .then_with(|| self.frac.cmp(other.frac))
    }
}

impl Ord for Decimal<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.neg, other.neg) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => self.cmp_magnitude(other),
            (true, true) => other.cmp_magnitude(self),
        }
    }
}

impl PartialOrd for Decimal<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

const NANOS: i128 = 1_000_000_000;

/// Parses an ISO 8601 date/date-time (`2020-01-02`, `2020-01-02T03:04:05Z`,
/// `2020-01-02T03:04:05.123+01:00`, `2020-01-02T03:04Z`) or epoch seconds (`1577934245`,
/// `1577934245.5`) into nanoseconds since the Unix epoch.
pub fn parse_date(s: &str) -> Option<i128> {
    if let Some(d) = Decimal::parse(s) {
        // Epoch seconds.
        let secs: i128 = if d.int.is_empty() {
            0
        } else {
            d.int.parse().ok()?
        };
        if secs > 1 << 60 {
            return None;
        }
        let frac = d.frac.get(..d.frac.len().min(9)).unwrap_or("");
        let mut nanos: i128 = if frac.is_empty() {
            0
        } else {
            frac.parse().ok()?
        };
        for _ in frac.len()..9 {
            nanos *= 10;
        }
        let v = secs * NANOS + nanos;
        return Some(if d.neg { -v } else { v });
    }
    let (date, time) = match s.split_once(['T', 't']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut dp = date.split('-');
    let (y, mo, d) = (dp.next()?, dp.next()?, dp.next()?);
    if dp.next().is_some() || y.len() != 4 || mo.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, mo, d) = (digits(y)?, digits(mo)?, digits(d)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    let mut total = i128::from(days) * 86_400 * NANOS;
    if let Some(t) = time {
        // Split off the zone.
        let (clock, offset_secs) = if let Some(c) = t.strip_suffix(['Z', 'z']) {
            (c, 0i64)
        } else if let Some(i) = t.rfind(['+', '-']) {
            let (c, z) = t.split_at(i);
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let z = z.get(1..)?;
            let (zh, zm) = match z.split_once(':') {
                Some((h, m)) => (h, m),
                None if z.len() == 4 => (z.get(..2)?, z.get(2..)?),
                None => (z, "00"),
            };
            let (zh, zm) = (digits(zh)?, digits(zm)?);
            if zh > 23 || zm > 59 {
                return None;
            }
            (c, sign * (zh * 3600 + zm * 60))
        } else {
            (t, 0)
        };
        let mut cp = clock.split(':');
        let h = digits(cp.next()?)?;
        let mi = digits(cp.next()?)?;
        let (sec, nanos) = match cp.next() {
            None => (0, 0i128),
            Some(sv) => {
                let (whole, frac) = match sv.split_once('.') {
                    Some((w, f)) => (w, f),
                    None => (sv, ""),
                };
                let sec = digits(whole)?;
                let f = frac.get(..frac.len().min(9)).unwrap_or("");
                if !frac.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let mut n: i128 = if f.is_empty() { 0 } else { f.parse().ok()? };
                for _ in f.len()..9 {
                    n *= 10;
                }
                (sec, n)
            }
        };
        if cp.next().is_some() || h > 23 || mi > 59 || sec > 60 {
            return None;
        }
        total += i128::from(h * 3600 + mi * 60 + sec - offset_secs) * NANOS + nanos;
    }
    Some(total)
}

/// An IPv4 or IPv6 network. A bare address is /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cidr {
    /// IPv4 network (address, prefix length).
    V4(u32, u8),
    /// IPv6 network (address, prefix length).
    V6(u128, u8),
}

impl Cidr {
    /// Parses `a.b.c.d[/n]` or `v6[/n]`.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = addr.parse().ok()?;
        let p = |max: u8| -> Option<u8> {
            match prefix {
                None => Some(max),
                Some(p)
                    if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    p.parse::<u8>().ok().filter(|n| *n <= max)
                }
                Some(_) => None,
            }
        };
        Some(match ip {
            IpAddr::V4(a) => Cidr::V4(u32::from(a), p(32)?),
            IpAddr::V6(a) => Cidr::V6(u128::from(a), p(128)?),
        })
    }

    /// Whether `ip` is inside the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (*self, ip) {
            (Cidr::V4(net, len), IpAddr::V4(a)) => {
                let mask = if len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(len))
                };
                (u32::from(a) & mask) == (net & mask)
            }
            (Cidr::V6(net, len), IpAddr::V6(a)) => {
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(len))
                };
                (u128::from(a) & mask) == (net & mask)
            }
            (Cidr::V4(..), IpAddr::V6(a)) => match a.to_ipv4_mapped() {
                Some(v4) => self.contains(IpAddr::V4(v4)),
                None => false,
            },
            (Cidr::V6(..), IpAddr::V4(_)) => false,
        }
    }
}

/// Case-insensitive comparison without allocating (Unicode lowercase, char by char).
fn eq_ignore_case(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

fn arn_match(p: &ArnPattern, v: &str, ctx: &RequestContext) -> bool {
    match p {
        ArnPattern::Whole(t) => glob_match(t, v, false, ctx),
        ArnPattern::Segments(segs) => {
            let mut parts = v.splitn(6, ':');
            for seg in segs.iter() {
                match parts.next() {
                    Some(part) if glob_match(seg, part, false, ctx) => {}
                    _ => return false,
                }
            }
            true
        }
    }
}

/// Does one request value match one policy value (positive sense)? `None`: the request value
/// is not of the operator's type (never matches).
fn value_matches(kind: OperatorKind, values: &CValues, v: &str, ctx: &RequestContext) -> bool {
    use OperatorKind::*;
    match values {
        CValues::Str(pats) => match kind {
            StringEqualsIgnoreCase | StringNotEqualsIgnoreCase => pats.iter().any(|p| {
                if has_vars(p) {
                    resolve_to_string(p, ctx).is_some_and(|s| eq_ignore_case(&s, v))
                } else {
                    match &**p {
                        [] => v.is_empty(),
                        [Tok::Lit(l)] => eq_ignore_case(l, v),
                        _ => false,
                    }
                }
            }),
            _ => pats.iter().any(|p| glob_match(p, v, false, ctx)),
        },
        CValues::Num(nums) => {
            let Some(rv) = Decimal::parse(v) else {
                return false;
            };
            nums.iter().any(|n| {
                let Some(pv) = Decimal::parse(n) else {
                    return false;
                };
                let o = rv.cmp(&pv);
                match kind {
                    NumericEquals | NumericNotEquals => o == Ordering::Equal,
                    NumericLessThan => o == Ordering::Less,
                    NumericLessThanEquals => o != Ordering::Greater,
                    NumericGreaterThan => o == Ordering::Greater,
                    NumericGreaterThanEquals => o != Ordering::Less,
                    _ => false,
                }
            })
        }
        CValues::Date(dates) => {
            let Some(rv) = parse_date(v) else {
                return false;
            };
            dates.iter().any(|pv| {
                let o = rv.cmp(pv);
                match kind {
                    DateEquals | DateNotEquals => o == Ordering::Equal,
                    DateLessThan => o == Ordering::Less,
                    DateLessThanEquals => o != Ordering::Greater,
                    DateGreaterThan => o == Ordering::Greater,
                    DateGreaterThanEquals => o != Ordering::Less,
                    _ => false,
                }
            })
        }
        CValues::Bool(pats) => {
            let Some(rv) = parse_bool(v) else {
                return false;
            };
            let rv = if rv { "true" } else { "false" };
            pats.iter().any(|p| glob_match(p, rv, true, ctx))
        }
        CValues::Binary(bins) => {
            let mut buf = [0u8; 1024];
            let decoded: Option<std::borrow::Cow<'_, [u8]>> = if v.len() <= 1360 {
                let engine = &base64::engine::general_purpose::STANDARD;
                match engine.decode_slice(v, &mut buf) {
                    Ok(n) => buf.get(..n).map(std::borrow::Cow::Borrowed),
                    Err(_) => decode_base64(v).map(std::borrow::Cow::Owned),
                }
            } else {
                decode_base64(v).map(std::borrow::Cow::Owned)
            };
            match decoded {
                Some(d) => bins.iter().any(|b| **b == *d),
                None => false,
            }
        }
        CValues::Ip(cidrs) => {
            let Ok(ip) = v.parse::<IpAddr>() else {
                return false;
            };
            cidrs.iter().any(|c| c.contains(ip))
        }
        CValues::Arn(pats) => pats.iter().any(|p| arn_match(p, v, ctx)),
        CValues::Null(_) => false,
    }
}

/// Evaluates one compiled condition clause against the request.
///
/// A value with a policy variable that the request cannot resolve (no value, no default) makes
/// the clause fail to match, whatever the operator (negated and `...IfExists` included): IAM
/// says any attempt to match it fails and the statement does not apply.
pub(crate) fn eval_condition(c: &CCondition, ctx: &RequestContext) -> bool {
    if c.has_vars && c.values.has_unresolved_var(ctx) {
        return false;
    }
    let present = ctx.get_lc(&c.key_lc);
    if let CValues::Null(expect_absent) = &c.values {
        let absent = present.is_none_or(|v| v.is_empty());
        return expect_absent.contains(&absent);
    }
    let negated = c.kind.is_negated();
    // Per request value: does it satisfy the operator (negation applied per value)?
    let ok = |v: &String| value_matches(c.kind, &c.values, v, ctx) != negated;
    match c.qualifier {
        Some(SetQualifier::ForAnyValue) => match present {
            None | Some([]) => c.if_exists && present.is_none(),
            Some(vals) => vals.iter().any(ok),
        },
        Some(SetQualifier::ForAllValues) => match present {
            None | Some([]) => true,
            Some(vals) => vals.iter().all(ok),
        },
        None => match present {
            None | Some([]) => c.if_exists || negated,
            Some(vals) => {
                if negated {
                    // NOR: no request value matches any policy value.
                    vals.iter().all(ok)
                } else {
                    vals.iter().any(ok)
                }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::compile::compile;
    use crate::policy::parse::parse_value;
    use crate::policy::PolicyKind;
    use serde_json::json;

    /// Evaluates the condition block `cond` (JSON) of a 2012 identity policy against `ctx`.
    fn cond_with(version: &str, cond: serde_json::Value, ctx: &RequestContext) -> bool {
        let doc = parse_value(
            &json!({"Version": version, "Statement": {"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": cond}}),
            PolicyKind::Identity,
        )
        .expect("parse");
        let c = compile(&doc).expect("compile");
        c.statements[0]
            .conditions
            .iter()
            .all(|cc| eval_condition(cc, ctx))
    }

    fn cond(c: serde_json::Value, ctx: &RequestContext) -> bool {
        cond_with("2012-10-17", c, ctx)
    }

    fn ctx(pairs: &[(&str, &str)]) -> RequestContext {
        let mut c = RequestContext::new(
            "arn:aws:iam::111122223333:user/bob",
            "111122223333",
            "kms:Decrypt",
            "*",
        );
        for (k, v) in pairs {
            c.set(k, *v);
        }
        c
    }

    #[test]
    fn string_family() {
        let c = ctx(&[("kms:ViaService", "ec2.us-west-2.amazonaws.com")]);
        assert!(cond(
            json!({"StringEquals": {"kms:viaservice": "ec2.us-west-2.amazonaws.com"}}),
            &c
        ));
        assert!(!cond(
            json!({"StringEquals": {"kms:ViaService": "EC2.us-west-2.amazonaws.com"}}),
            &c
        ));
        assert!(cond(
            json!({"StringEqualsIgnoreCase": {"kms:ViaService": "EC2.US-west-2.amazonaws.com"}}),
            &c
        ));
        assert!(!cond(
            json!({"StringNotEqualsIgnoreCase": {"kms:ViaService": "EC2.US-west-2.amazonaws.com"}}),
            &c
        ));
        assert!(cond(
            json!({"StringLike": {"kms:ViaService": ["s3.*", "ec2.*"]}}),
            &c
        ));
        assert!(cond(
            json!({"StringLike": {"kms:ViaService": "ec2.*:*"}}),
            &ctx(&[("kms:ViaService", "ec2.a:b/c")])
        ));
        assert!(!cond(
            json!({"StringNotLike": {"kms:ViaService": ["s3.*", "ec2.*"]}}),
            &c
        ));
        assert!(cond(
            json!({"StringNotEquals": {"kms:ViaService": ["s3.x", "rds.y"]}}),
            &c
        ));
        // StringEquals treats * literally.
        assert!(!cond(json!({"StringEquals": {"kms:ViaService": "*"}}), &c));
        assert!(cond(
            json!({"StringEqualsIgnoreCase": {"aws:x": "ÄBC"}}),
            &ctx(&[("aws:x", "äbc")])
        ));
    }

    #[test]
    fn missing_keys_if_exists_and_negation() {
        let c = ctx(&[]);
        assert!(!cond(json!({"StringEquals": {"kms:ViaService": "x"}}), &c));
        assert!(cond(
            json!({"StringNotEquals": {"kms:ViaService": "x"}}),
            &c
        ));
        assert!(cond(
            json!({"StringEqualsIfExists": {"kms:ViaService": "x"}}),
            &c
        ));
        assert!(cond(
            json!({"StringNotEqualsIfExists": {"kms:ViaService": "x"}}),
            &c
        ));
        assert!(cond(
            json!({"NumericLessThanIfExists": {"aws:MultiFactorAuthAge": "3600"}}),
            &c
        ));
        assert!(!cond(
            json!({"NumericLessThan": {"aws:MultiFactorAuthAge": "3600"}}),
            &c
        ));
        assert!(cond(
            json!({"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}),
            &c
        ));
        assert!(!cond(
            json!({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}),
            &c
        ));
        assert!(cond(
            json!({"ArnNotLike": {"aws:SourceArn": "arn:aws:s3:::b"}}),
            &c
        ));
        // IfExists with the key present behaves like the plain operator.
        let c = ctx(&[("kms:ViaService", "y")]);
        assert!(!cond(
            json!({"StringEqualsIfExists": {"kms:ViaService": "x"}}),
            &c
        ));
        assert!(cond(
            json!({"StringNotEqualsIfExists": {"kms:ViaService": "x"}}),
            &c
        ));
    }

    #[test]
    fn set_qualifiers() {
        let mut c = ctx(&[]);
        // absent
        assert!(cond(
            json!({"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["A"]}}),
            &c
        ));
        assert!(!cond(
            json!({"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": ["A"]}}),
            &c
        ));
        // present but empty
        c.set_multi("kms:EncryptionContextKeys", vec![]);
        assert!(cond(
            json!({"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["A"]}}),
            &c
        ));
        assert!(!cond(
            json!({"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": ["A"]}}),
            &c
        ));
        c.set_multi("kms:EncryptionContextKeys", vec!["A".into(), "B".into()]);
        assert!(!cond(
            json!({"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["A"]}}),
            &c
        ));
        assert!(cond(
            json!({"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["A", "B", "C"]}}),
            &c
        ));
        assert!(cond(
            json!({"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": ["B", "Z"]}}),
            &c
        ));
        assert!(!cond(
            json!({"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": ["Z"]}}),
            &c
        ));
        assert!(cond(
            json!({"ForAnyValue:StringNotEquals": {"kms:EncryptionContextKeys": ["A"]}}),
            &c
        ));
        assert!(!cond(
            json!({"ForAllValues:StringNotEquals": {"kms:EncryptionContextKeys": ["A"]}}),
            &c
        ));
        assert!(cond(
            json!({"ForAllValues:StringLike": {"kms:EncryptionContextKeys": ["*"]}}),
            &c
        ));
        // Plain multi-valued: any / NOR
        assert!(cond(
            json!({"StringEquals": {"kms:EncryptionContextKeys": "B"}}),
            &c
        ));
        assert!(!cond(
            json!({"StringNotEquals": {"kms:EncryptionContextKeys": "B"}}),
            &c
        ));
        assert!(cond(
            json!({"ForAnyValue:StringEqualsIfExists": {"aws:TagKeys": "x"}}),
            &c
        ));
    }

    #[test]
    fn null_operator() {
        let c = ctx(&[("kms:ViaService", "x")]);
        assert!(cond(json!({"Null": {"kms:ViaService": "false"}}), &c));
        assert!(!cond(json!({"Null": {"kms:ViaService": "true"}}), &c));
        assert!(cond(json!({"Null": {"kms:RequestAlias": true}}), &c));
        assert!(!cond(json!({"Null": {"kms:RequestAlias": false}}), &c));
        let mut c = ctx(&[]);
        c.set_multi("aws:TagKeys", vec![]);
        assert!(cond(json!({"Null": {"aws:TagKeys": "true"}}), &c));
    }

    #[test]
    fn numeric_family() {
        let c = ctx(&[("kms:ScheduleKeyDeletionPendingWindowInDays", "30")]);
        let k = "kms:ScheduleKeyDeletionPendingWindowInDays";
        assert!(cond(json!({"NumericEquals": {k: "30.0"}}), &c));
        assert!(cond(json!({"NumericEquals": {k: 30}}), &c));
        assert!(cond(json!({"NumericNotEquals": {k: 7}}), &c));
        assert!(cond(json!({"NumericGreaterThanEquals": {k: "30"}}), &c));
        assert!(!cond(json!({"NumericGreaterThan": {k: "30"}}), &c));
        assert!(cond(json!({"NumericGreaterThan": {k: "29.999"}}), &c));
        assert!(cond(json!({"NumericLessThan": {k: "30.0001"}}), &c));
        assert!(cond(json!({"NumericLessThanEquals": {k: "30"}}), &c));
        assert!(cond(json!({"NumericGreaterThan": {k: "-100.5"}}), &c));
        assert!(cond(
            json!({"NumericLessThan": {"x": "-1.5"}}),
            &ctx(&[("x", "-2")])
        ));
        assert!(cond(
            json!({"NumericEquals": {"x": "-0"}}),
            &ctx(&[("x", "0.000")])
        ));
        // Unparsable request value: no match (and negated: NOR over no match = true).
        assert!(!cond(
            json!({"NumericEquals": {"x": "1"}}),
            &ctx(&[("x", "one")])
        ));
        assert!(Decimal::parse("1e3").is_none());
        assert!(Decimal::parse("").is_none());
        assert!(Decimal::parse(".").is_none());
        assert!(Decimal::parse("-.5").unwrap() < Decimal::parse("0").unwrap());
    }

    #[test]
    fn date_family() {
        assert_eq!(parse_date("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_date("1970-01-02"), Some(86_400 * NANOS));
        assert_eq!(parse_date("86400"), Some(86_400 * NANOS));
        assert_eq!(
            parse_date("2020-01-01T01:00:00+01:00"),
            parse_date("2020-01-01T00:00:00Z")
        );
        assert_eq!(
            parse_date("2020-01-01T00:00:00.5Z"),
            parse_date("1577836800.5")
        );
        assert!(parse_date("2020-13-01").is_none());
        assert!(parse_date("yesterday").is_none());
        let c = ctx(&[
            ("aws:CurrentTime", "2024-06-01T12:00:00Z"),
            ("aws:EpochTime", "1717243200"),
        ]);
        assert!(cond(
            json!({"DateGreaterThan": {"aws:CurrentTime": "2024-01-01T00:00:00Z"}}),
            &c
        ));
        assert!(cond(
            json!({"DateLessThan": {"aws:CurrentTime": "1735689600"}}),
            &c
        ));
        assert!(cond(
            json!({"DateEquals": {"aws:EpochTime": "2024-06-01T12:00:00Z"}}),
            &c
        ));
        assert!(cond(
            json!({"DateNotEquals": {"aws:CurrentTime": "2024-06-01"}}),
            &c
        ));
        assert!(cond(
            json!({"DateGreaterThanEquals": {"aws:CurrentTime": "2024-06-01T12:00:00Z"}}),
            &c
        ));
        assert!(!cond(
            json!({"DateLessThanEquals": {"aws:CurrentTime": "2024-06-01T11:59:59Z"}}),
            &c
        ));
    }

    #[test]
    fn bool_and_binary() {
        let c = ctx(&[
            ("aws:SecureTransport", "true"),
            ("kms:GrantIsForAWSResource", "FALSE"),
        ]);
        assert!(cond(json!({"Bool": {"aws:SecureTransport": "true"}}), &c));
        assert!(cond(json!({"Bool": {"aws:SecureTransport": true}}), &c));
        assert!(cond(
            json!({"Bool": {"kms:GrantIsForAWSResource": "false"}}),
            &c
        ));
        assert!(!cond(
            json!({"Bool": {"kms:GrantIsForAWSResource": "true"}}),
            &c
        ));
        assert!(!cond(
            json!({"Bool": {"aws:MultiFactorAuthPresent": "false"}}),
            &c
        ));
        assert!(cond(
            json!({"BoolIfExists": {"aws:MultiFactorAuthPresent": "false"}}),
            &c
        ));
        let c = ctx(&[("x", "AQID")]);
        assert!(cond(json!({"BinaryEquals": {"x": "AQID"}}), &c));
        assert!(!cond(json!({"BinaryEquals": {"x": "AQIE"}}), &c));
        assert!(!cond(
            json!({"BinaryEquals": {"x": "AQID"}}),
            &ctx(&[("x", "not base64!")])
        ));
    }

    #[test]
    fn ip_family() {
        let v4 = ctx(&[("aws:SourceIp", "192.0.2.77")]);
        let v6 = ctx(&[("aws:SourceIp", "2001:db8:1::5")]);
        let nets = json!(["192.0.2.0/24", "2001:db8::/32"]);
        assert!(cond(json!({"IpAddress": {"aws:SourceIp": nets}}), &v4));
        assert!(cond(json!({"IpAddress": {"aws:SourceIp": nets}}), &v6));
        assert!(!cond(json!({"NotIpAddress": {"aws:SourceIp": nets}}), &v6));
        assert!(cond(
            json!({"IpAddress": {"aws:SourceIp": "192.0.2.77"}}),
            &v4
        ));
        assert!(!cond(
            json!({"IpAddress": {"aws:SourceIp": "192.0.2.78"}}),
            &v4
        ));
        assert!(cond(
            json!({"IpAddress": {"aws:SourceIp": "0.0.0.0/0"}}),
            &v4
        ));
        assert!(!cond(
            json!({"IpAddress": {"aws:SourceIp": "0.0.0.0/0"}}),
            &v6
        ));
        assert!(cond(json!({"IpAddress": {"aws:SourceIp": "::/0"}}), &v6));
        assert!(cond(
            json!({"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}),
            &v4
        ));
        assert!(!cond(
            json!({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}),
            &ctx(&[("aws:SourceIp", "bogus")])
        ));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("::1/129").is_none());
        assert!(Cidr::parse("10.0.0.0/").is_none());
    }

    #[test]
    fn arn_family() {
        let c = ctx(&[("aws:SourceArn", "arn:aws:iam::111122223333:role/a/b")]);
        assert!(cond(
            json!({"ArnLike": {"aws:SourceArn": "arn:aws:iam::*:role/*"}}),
            &c
        ));
        assert!(cond(
            json!({"ArnEquals": {"aws:SourceArn": "arn:aws:iam::111122223333:role/a/b"}}),
            &c
        ));
        assert!(cond(
            json!({"ArnLike": {"aws:SourceArn": "arn:aws:iam::111122223333:*"}}),
            &c
        ));
        assert!(cond(json!({"ArnLike": {"aws:SourceArn": "*"}}), &c));
        // * does not span a colon outside the resource segment
        let c7 = ctx(&[(
            "aws:SourceArn",
            "arn:aws:kms:xx:us-east-1:111122223333:key/k",
        )]);
        assert!(!cond(
            json!({"ArnLike": {"aws:SourceArn": "arn:aws:*:us-east-1:111122223333:key/k"}}),
            &c7
        ));
        assert!(cond(
            json!({"StringLike": {"aws:SourceArn": "arn:aws:*:us-east-1:111122223333:key/k"}}),
            &c7
        ));
        assert!(cond(
            json!({"ArnLike": {"aws:SourceArn": "arn:aws:*:*:*:role/*"}}),
            &c
        ));
        assert!(!cond(
            json!({"ArnLike": {"aws:SourceArn": "arn:aws:iam::*:user/*"}}),
            &c
        ));
        assert!(cond(
            json!({"ArnNotLike": {"aws:SourceArn": "arn:aws:iam::*:user/*"}}),
            &c
        ));
        assert!(!cond(
            json!({"ArnNotEquals": {"aws:SourceArn": "arn:aws:iam::111122223333:role/a/b"}}),
            &c
        ));
        // the final segment may contain colons
        let c = ctx(&[("aws:SourceArn", "arn:aws:logs:us-east-1:1:log-group:x:*")]);
        assert!(cond(
            json!({"ArnLike": {"aws:SourceArn": "arn:aws:logs:us-east-1:1:log-group:*"}}),
            &c
        ));
        assert!(!cond(
            json!({"ArnLike": {"aws:SourceArn": "arn:aws:iam::1:x"}}),
            &ctx(&[("aws:SourceArn", "not-an-arn")])
        ));
    }

    #[test]
    fn policy_variables() {
        let c = ctx(&[
            ("aws:username", "bob"),
            ("kms:EncryptionContext:user", "bob"),
            ("aws:PrincipalTag/Team", "Blue"),
            ("aws:ResourceTag/team", "Blue"),
        ]);
        assert!(cond(
            json!({"StringEquals": {"kms:EncryptionContext:user": "${aws:username}"}}),
            &c
        ));
        assert!(cond(
            json!({"StringEquals": {"aws:ResourceTag/team": "${aws:PrincipalTag/team}"}}),
            &c
        ));
        assert!(cond(
            json!({"StringLike": {"kms:EncryptionContext:user": "${aws:username}*"}}),
            &c
        ));
        // Unresolvable without default: the clause does not match, negated operators,
        // IfExists forms and set qualifiers included, even when another value would match.
        for op in [
            "StringEquals",
            "StringNotEquals",
            "StringNotEqualsIgnoreCase",
            "StringNotLike",
            "StringNotEqualsIfExists",
        ] {
            assert!(
                !cond(
                    json!({op: {"kms:EncryptionContext:user": "${aws:userid}"}}),
                    &c
                ),
                "{op}"
            );
            assert!(
                !cond(
                    json!({op: {"kms:EncryptionContext:missing": "${aws:userid}"}}),
                    &c
                ),
                "{op} on an absent key"
            );
        }
        for op in ["ForAllValues:StringNotEquals", "ForAnyValue:StringNotLike"] {
            assert!(
                !cond(
                    json!({op: {"kms:EncryptionContextKeys": "${aws:userid}"}}),
                    &c
                ),
                "{op}"
            );
        }
        assert!(!cond(
            json!({"StringEquals": {"kms:EncryptionContext:user": ["bob", "${aws:userid}"]}}),
            &c
        ));
        assert!(!cond(
            json!({"Bool": {"aws:SecureTransport": "${aws:nope}"}}),
            &c
        ));
        assert!(!cond(
            json!({"ArnNotEquals": {"aws:PrincipalArn": "arn:aws:iam::1:user/${aws:userid}"}}),
            &c
        ));
        // Resolved (here by a default), the negated operator works as usual.
        assert!(cond(
            json!({"StringNotEquals": {"kms:EncryptionContext:user": "${aws:userid, 'x'}"}}),
            &c
        ));
        // Default
        let c2 = ctx(&[("kms:EncryptionContext:user", "none")]);
        assert!(cond(
            json!({"StringEquals": {"kms:EncryptionContext:user": "${aws:username, 'none'}"}}),
            &c2
        ));
        assert!(cond(
            json!({"StringEquals": {"kms:EncryptionContext:user": "${aws:username,'none'}"}}),
            &c2
        ));
        // Version 2008 treats ${} literally
        assert!(!cond_with(
            "2008-10-17",
            json!({"StringEquals": {"kms:EncryptionContext:user": "${aws:username}"}}),
            &c
        ));
        let lit = ctx(&[("kms:EncryptionContext:user", "${aws:username}")]);
        assert!(cond_with(
            "2008-10-17",
            json!({"StringEquals": {"kms:EncryptionContext:user": "${aws:username}"}}),
            &lit
        ));
        // Escapes
        let star = ctx(&[("x", "a*b")]);
        assert!(cond(json!({"StringLike": {"x": "a${*}b"}}), &star));
        assert!(!cond(
            json!({"StringLike": {"x": "a${*}b"}}),
            &ctx(&[("x", "axb")])
        ));
        assert!(cond(
            json!({"StringEquals": {"x": "${$}{x}"}}),
            &ctx(&[("x", "${x}")])
        ));
    }
}
