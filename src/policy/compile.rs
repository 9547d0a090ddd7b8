//! Compiled, matcher-ready form of a policy: patterns pre-tokenized (actions lowercased),
//! principals classified, condition keys lowercased, CIDRs / numbers / dates / base64 decoded.
//! Compilation rejects values that could never be evaluated (MalformedPolicyDocument).

use super::conditions::{self, Cidr};
use super::context::RequestContext;
use super::model::{
    Condition, Effect, OperatorKind, PolicyDocument, PrincipalSpec, SetQualifier, Statement,
};
use super::PolicyError;

/// One token of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tok {
    /// Literal text.
    Lit(Box<str>),
    /// `*`: any run of characters.
    Star,
    /// `?`: exactly one character.
    One,
    /// `${key}` or `${key, 'default'}` (key lowercased); resolved at evaluation time.
    Var {
        key_lc: Box<str>,
        default: Option<Box<str>>,
    },
}

/// A tokenized pattern.
pub(crate) type Pattern = Box<[Tok]>;

/// Tokenizes `s`. `wildcards`: `*`/`?` are wildcards (else literal). `vars`: `${...}` is
/// interpreted (2012-10-17). `lowercase`: literal text is ASCII-lowercased.
pub(crate) fn tokenize(s: &str, wildcards: bool, vars: bool, lowercase: bool) -> Pattern {
    let mut out: Vec<Tok> = Vec::new();
    let mut lit = String::new();
    let flush = |lit: &mut String, out: &mut Vec<Tok>| {
        if !lit.is_empty() {
            let t = std::mem::take(lit);
            out.push(Tok::Lit(t.into_boxed_str()));
        }
    };
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if vars && rest.starts_with("${") {
            if let Some(end) = rest.find('}') {
                let inner = rest.get(2..end).unwrap_or("");
                if let Some(tok) = parse_var(inner) {
                    match tok {
                        Tok::Lit(l) => lit.push_str(&l),
                        t => {
                            flush(&mut lit, &mut out);
                            out.push(t);
                        }
                    }
                    rest = rest.get(end + 1..).unwrap_or("");
                    continue;
                }
            }
        }
        match c {
            '*' if wildcards => {
                flush(&mut lit, &mut out);
                if out.last() != Some(&Tok::Star) {
                    out.push(Tok::Star);
                }
            }
            '?' if wildcards => {
                flush(&mut lit, &mut out);
                out.push(Tok::One);
            }
            c if lowercase => lit.push(c.to_ascii_lowercase()),
            c => lit.push(c),
        }
        rest = rest.get(c.len_utf8()..).unwrap_or("");
    }
    flush(&mut lit, &mut out);
    out.into_boxed_slice()
}

/// `inner` is the text between `${` and `}`.
fn parse_var(inner: &str) -> Option<Tok> {
    match inner {
        "*" => return Some(Tok::Lit("*".into())),
        "?" => return Some(Tok::Lit("?".into())),
        "$" => return Some(Tok::Lit("$".into())),
        _ => {}
    }
    let (key, default) = match inner.split_once(',') {
        None => (inner.trim(), None),
        Some((k, d)) => {
            let d = d.trim();
            let d = d.strip_prefix('\'')?.strip_suffix('\'')?;
            (k.trim(), Some(d.to_string().into_boxed_str()))
        }
    };
    if key.is_empty() || key.contains(|c: char| c.is_whitespace() || c == '$' || c == '{') {
        return None;
    }
    Some(Tok::Var {
        key_lc: key.to_lowercase().into_boxed_str(),
        default,
    })
}

/// Resolves a variable against the request: a single value, or the default. `None` means the
/// pattern cannot match.
#[inline]
fn resolve_var<'a>(
    key_lc: &str,
    default: &'a Option<Box<str>>,
    ctx: &'a RequestContext,
) -> Option<&'a str> {
    match ctx.get_lc(key_lc) {
        Some([one]) => Some(one.as_str()),
        _ => default.as_deref(),
    }
}

#[inline]
fn next_char_len(text: &[u8], pos: usize) -> usize {
    match text.get(pos) {
        None => 0,
        Some(b) if *b < 0x80 => 1,
        Some(b) if *b >= 0xF0 => 4,
        Some(b) if *b >= 0xE0 => 3,
        Some(_) => 2,
    }
}

#[inline]
fn lit_at(text: &[u8], pos: usize, lit: &[u8], ci: bool) -> bool {
    match text.get(pos..pos + lit.len()) {
        Some(seg) if ci => seg.eq_ignore_ascii_case(lit),
        Some(seg) => seg == lit,
        None => false,
    }
}

/// Matches `text` against a token pattern without allocating. `ci`: ASCII case-insensitive
/// literals. Variables are resolved from `ctx`; an unresolvable one fails the match.
pub(crate) fn glob_match(toks: &[Tok], text: &str, ci: bool, ctx: &RequestContext) -> bool {
    // Fast paths.
    match toks {
        [] => return text.is_empty(),
        [Tok::Star] => return true,
        [Tok::Lit(l)] => {
            return if ci {
                l.eq_ignore_ascii_case(text)
            } else {
                **l == *text
            }
        }
        [Tok::Lit(l), Tok::Star] => return lit_at(text.as_bytes(), 0, l.as_bytes(), ci),
        _ => {}
    }
    let t = text.as_bytes();
    let mut i = 0usize;
    let mut pos = 0usize;
    let mut star: Option<(usize, usize)> = None;
    loop {
        let advanced = match toks.get(i) {
            Some(Tok::Star) => {
                if i + 1 == toks.len() {
                    return true;
                }
                star = Some((i, pos));
                i += 1;
                continue;
            }
            Some(Tok::One) => {
                let n = next_char_len(t, pos);
                if n > 0 {
                    pos += n;
                    true
                } else {
                    false
                }
            }
            Some(Tok::Lit(l)) => {
                if lit_at(t, pos, l.as_bytes(), ci) {
                    pos += l.len();
                    true
                } else {
                    false
                }
            }
            Some(Tok::Var { key_lc, default }) => match resolve_var(key_lc, default, ctx) {
                None => return false,
                Some(v) => {
                    if lit_at(t, pos, v.as_bytes(), ci) {
                        pos += v.len();
                        true
                    } else {
                        false
                    }
                }
            },
            None => {
                if pos == t.len() {
                    return true;
                }
                false
            }
        };
        if advanced {
            i += 1;
            continue;
        }
        match star {
            Some((si, sp)) => {
                let n = next_char_len(t, sp);
                if n == 0 {
                    return false;
                }
                star = Some((si, sp + n));
                pos = sp + n;
                i = si + 1;
            }
            None => return false,
        }
    }
}

/// Whether the pattern contains a variable.
pub(crate) fn has_vars(p: &[Tok]) -> bool {
    p.iter().any(|t| matches!(t, Tok::Var { .. }))
}

/// Resolves a pattern without wildcards to a string (allocates; used only when variables
/// are present). `None` if a variable is unresolvable.
pub(crate) fn resolve_to_string(p: &[Tok], ctx: &RequestContext) -> Option<String> {
    let mut s = String::new();
    for t in p {
        match t {
            Tok::Lit(l) => s.push_str(l),
            Tok::Star => s.push('*'),
            Tok::One => s.push('?'),
            Tok::Var { key_lc, default } => s.push_str(resolve_var(key_lc, default, ctx)?),
        }
    }
    Some(s)
}

/// A principal entry of the `AWS` kind, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AwsPrincipal {
    /// `*`
    Any,
    /// Account root (`123456789012` or `arn:aws:iam::123456789012:root`): the account id.
    Account(Box<str>),
    /// Role ARN: matches the role's sessions.
    Role {
        arn: Box<str>,
        account: Box<str>,
        name: Box<str>,
    },
    /// User ARN, assumed-role session ARN or any other ARN: exact match.
    Exact(Box<str>),
}

/// Compiled `Principal` / `NotPrincipal`.
#[derive(Debug, Clone)]
pub(crate) struct CPrincipal {
    pub negated: bool,
    pub any: bool,
    pub aws: Box<[AwsPrincipal]>,
    /// Service / Federated / CanonicalUser values: exact match on the caller ARN.
    pub others: Box<[Box<str>]>,
}

/// Borrowed classification of an `AWS` principal string (also used for grantees).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PrinRef<'a> {
    Any,
    Account(&'a str),
    Role {
        arn: &'a str,
        account: &'a str,
        name: &'a str,
    },
    Exact(&'a str),
}

/// The service, account and resource of an ARN (`arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE`,
/// the resource keeping any further colons); `None` with fewer than six parts.
pub(crate) fn arn_parts(arn: &str) -> Option<(&str, &str, &str)> {
    let mut it = arn.splitn(6, ':');
    match (
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
    ) {
        (Some(_), Some(_), Some(svc), Some(_), Some(acct), Some(res)) => Some((svc, acct, res)),
        _ => None,
    }
}

/// Classifies `*`, a bare account id, `arn:..:iam::ACCT:root`, a role ARN, or anything else.
pub(crate) fn classify_ref(s: &str) -> PrinRef<'_> {
    if s == "*" {
        return PrinRef::Any;
    }
    if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
        return PrinRef::Account(s);
    }
    if let Some(("iam", acct, res)) = arn_parts(s) {
        if res == "root" {
            return PrinRef::Account(acct);
        }
        if let Some(path) = res.strip_prefix("role/") {
            let name = path.rsplit('/').next().unwrap_or(path);
            return PrinRef::Role {
                arn: s,
                account: acct,
                name,
            };
        }
    }
    PrinRef::Exact(s)
}

impl AwsPrincipal {
    /// Borrowed view.
    pub(crate) fn as_ref(&self) -> PrinRef<'_> {
        match self {
            AwsPrincipal::Any => PrinRef::Any,
            AwsPrincipal::Account(a) => PrinRef::Account(a),
            AwsPrincipal::Role { arn, account, name } => PrinRef::Role { arn, account, name },
            AwsPrincipal::Exact(s) => PrinRef::Exact(s),
        }
    }
}

fn classify_aws(s: &str) -> AwsPrincipal {
    match classify_ref(s) {
        PrinRef::Any => AwsPrincipal::Any,
        PrinRef::Account(a) => AwsPrincipal::Account(a.into()),
        PrinRef::Role { arn, account, name } => AwsPrincipal::Role {
            arn: arn.into(),
            account: account.into(),
            name: name.into(),
        },
        PrinRef::Exact(e) => AwsPrincipal::Exact(e.into()),
    }
}

fn compile_principal(spec: &PrincipalSpec, negated: bool) -> CPrincipal {
    match spec {
        PrincipalSpec::Any => CPrincipal {
            negated,
            any: true,
            aws: Box::new([]),
            others: Box::new([]),
        },
        PrincipalSpec::Map {
            aws,
            service,
            federated,
            canonical_user,
        } => {
            let aws: Box<[AwsPrincipal]> = aws.iter().map(|s| classify_aws(s)).collect();
            CPrincipal {
                negated,
                any: aws.contains(&AwsPrincipal::Any),
                aws,
                others: service
                    .iter()
                    .chain(federated)
                    .chain(canonical_user)
                    .map(|s| s.as_str().into())
                    .collect(),
            }
        }
    }
}

/// Compiled values of a condition clause, per operator family.
#[derive(Debug, Clone)]
pub(crate) enum CValues {
    /// String family (Equals/IgnoreCase: no wildcards; Like: wildcards).
    Str(Box<[Pattern]>),
    /// Numeric family: validated decimal text.
    Num(Box<[Box<str>]>),
    /// Date family: nanoseconds since the epoch.
    Date(Box<[i128]>),
    /// Bool: `true`/`false` patterns (may contain variables).
    Bool(Box<[Pattern]>),
    /// BinaryEquals: decoded bytes.
    Binary(Box<[Box<[u8]>]>),
    /// IpAddress / NotIpAddress.
    Ip(Box<[Cidr]>),
    /// Arn family.
    Arn(Box<[ArnPattern]>),
    /// Null: expected absence.
    Null(Box<[bool]>),
}

/// An ARN pattern: six colon-separated segments, or a whole-string glob when the pattern
/// has fewer than six segments (e.g. `*`).
#[derive(Debug, Clone)]
pub(crate) enum ArnPattern {
    Segments(Box<[Pattern]>),
    Whole(Pattern),
}

/// `None` when the pattern has 2 to 5 segments (not an ARN pattern).
fn compile_arn(s: &str, vars: bool) -> Option<ArnPattern> {
    let toks = tokenize(s, true, vars, false);
    let mut segs: Vec<Vec<Tok>> = vec![Vec::new()];
    for t in toks.iter() {
        match t {
            Tok::Lit(l) if segs.len() < 6 => {
                let mut rest: &str = l;
                while segs.len() < 6 {
                    match rest.split_once(':') {
                        Some((a, b)) => {
                            if !a.is_empty() {
                                if let Some(last) = segs.last_mut() {
                                    last.push(Tok::Lit(a.into()));
                                }
                            }
                            segs.push(Vec::new());
                            rest = b;
                        }
                        None => break,
                    }
                }
                if !rest.is_empty() {
                    if let Some(last) = segs.last_mut() {
                        last.push(Tok::Lit(rest.into()));
                    }
                }
            }
            other => {
                if let Some(last) = segs.last_mut() {
                    last.push(other.clone());
                }
            }
        }
    }
    match segs.len() {
        6 => Some(ArnPattern::Segments(
            segs.into_iter().map(Vec::into_boxed_slice).collect(),
        )),
        1 => Some(ArnPattern::Whole(toks)),
        _ => None,
    }
}

/// A compiled condition clause.
#[derive(Debug, Clone)]
pub(crate) struct CCondition {
    pub key_lc: Box<str>,
    pub qualifier: Option<SetQualifier>,
    pub kind: OperatorKind,
    pub if_exists: bool,
    pub values: CValues,
    /// Some value holds a policy variable (checked for resolvability at evaluation time).
    pub has_vars: bool,
}

impl CValues {
    /// Does some value hold a variable that the request cannot resolve (no value, no default)?
    pub(crate) fn has_unresolved_var(&self, ctx: &RequestContext) -> bool {
        let unresolved = |p: &[Tok]| {
            p.iter().any(|t| match t {
                Tok::Var { key_lc, default } => resolve_var(key_lc, default, ctx).is_none(),
                _ => false,
            })
        };
        self.any_pattern(unresolved)
    }

    /// Does some value hold a policy variable?
    fn has_vars(&self) -> bool {
        self.any_pattern(has_vars)
    }

    /// Whether `pred` holds for some token pattern of the values (an ARN pattern's whole or
    /// any of its segments); never for values without patterns.
    fn any_pattern(&self, pred: impl Fn(&[Tok]) -> bool) -> bool {
        match self {
            CValues::Str(pats) | CValues::Bool(pats) => pats.iter().any(|p| pred(p)),
            CValues::Arn(pats) => pats.iter().any(|p| match p {
                ArnPattern::Whole(t) => pred(t),
                ArnPattern::Segments(segs) => segs.iter().any(|t| pred(t)),
            }),
            _ => false,
        }
    }
}

/// Compiles one condition: its values are checked and parsed for the operator's type.
fn compile_condition(c: &Condition, vars: bool, at: &str) -> Result<CCondition, PolicyError> {
    let kind = c.operator.kind;
    let vars = vars && kind.allows_variables();
    let bad = |v: &str, what: &str| {
        PolicyError::Malformed(format!(
            "{at}.Condition.{}.{}: invalid {what} '{v}'",
            c.operator_text, c.key
        ))
    };
    let values = compile_values(&c.values, kind, vars, &bad)?;
    Ok(CCondition {
        key_lc: c.key.to_lowercase().into_boxed_str(),
        qualifier: c.operator.qualifier,
        kind,
        if_exists: c.operator.if_exists,
        has_vars: values.has_vars(),
        values,
    })
}

/// The condition values parsed for the operator's type (`vars`: policy variables allowed);
/// the first invalid value is refused with `bad(value, what)`.
fn compile_values(
    values: &[String],
    kind: OperatorKind,
    vars: bool,
    bad: &dyn Fn(&str, &str) -> PolicyError,
) -> Result<CValues, PolicyError> {
    use OperatorKind::*;
    Ok(match kind {
        StringEquals | StringNotEquals | StringEqualsIgnoreCase | StringNotEqualsIgnoreCase => {
            CValues::Str(
                values
                    .iter()
                    .map(|v| tokenize(v, false, vars, false))
                    .collect(),
            )
        }
        StringLike | StringNotLike => CValues::Str(
            values
                .iter()
                .map(|v| tokenize(v, true, vars, false))
                .collect(),
        ),
        NumericEquals
        | NumericNotEquals
        | NumericLessThan
        | NumericLessThanEquals
        | NumericGreaterThan
        | NumericGreaterThanEquals => CValues::Num(parse_each(values, |v| {
            match conditions::Decimal::parse(v) {
                Some(_) => Ok(v.into()),
                None => Err(bad(v, "number")),
            }
        })?),
        DateEquals
        | DateNotEquals
        | DateLessThan
        | DateLessThanEquals
        | DateGreaterThan
        | DateGreaterThanEquals => CValues::Date(parse_each(values, |v| {
            conditions::parse_date(v).ok_or_else(|| bad(v, "date"))
        })?),
        Bool => CValues::Bool(parse_each(values, |v| {
            let p = tokenize(v, false, vars, true);
            if !has_vars(&p) && conditions::parse_bool(v).is_none() {
                return Err(bad(v, "boolean (expected true or false)"));
            }
            Ok(p)
        })?),
        BinaryEquals => CValues::Binary(parse_each(values, |v| {
            conditions::decode_base64(v)
                .map(Vec::into_boxed_slice)
                .ok_or_else(|| bad(v, "base64 value"))
        })?),
        IpAddress | NotIpAddress => CValues::Ip(parse_each(values, |v| {
            Cidr::parse(v).ok_or_else(|| bad(v, "IP address or CIDR"))
        })?),
        ArnEquals | ArnLike | ArnNotEquals | ArnNotLike => CValues::Arn(parse_each(values, |v| {
            compile_arn(v, vars).ok_or_else(|| bad(v, "ARN (expected 6 colon-separated segments)"))
        })?),
        Null => CValues::Null(parse_each(values, |v| {
            conditions::parse_bool(v).ok_or_else(|| bad(v, "Null value (expected true or false)"))
        })?),
    })
}

/// Parses every value in order with `parse`, stopping at the first error.
fn parse_each<T>(
    values: &[String],
    mut parse: impl FnMut(&str) -> Result<T, PolicyError>,
) -> Result<Box<[T]>, PolicyError> {
    values.iter().map(|v| parse(v)).collect()
}

/// A compiled statement.
#[derive(Debug, Clone)]
pub(crate) struct CStatement {
    /// `Sid`, else `Statement[i]`.
    pub label: Box<str>,
    pub effect: Effect,
    pub principal: Option<CPrincipal>,
    /// Lowercased action patterns.
    pub actions: Box<[Pattern]>,
    pub actions_negated: bool,
    pub resources: Box<[Pattern]>,
    pub resources_negated: bool,
    pub conditions: Box<[CCondition]>,
}

fn compile_statement(st: &Statement, i: usize, vars: bool) -> Result<CStatement, PolicyError> {
    let at = format!("Statement[{i}]");
    let label = match &st.sid {
        Some(s) if !s.is_empty() => s.clone(),
        _ => at.clone(),
    };
    let conditions = st
        .conditions
        .iter()
        .map(|c| compile_condition(c, vars, &at))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CStatement {
        label: label.into_boxed_str(),
        effect: st.effect,
        principal: st
            .principal
            .as_ref()
            .map(|(spec, neg)| compile_principal(spec, *neg)),
        actions: st
            .actions
            .iter()
            .map(|a| tokenize(a, true, false, true))
            .collect(),
        actions_negated: st.actions_negated,
        resources: st
            .resources
            .iter()
            .map(|r| tokenize(r, true, vars, false))
            .collect(),
        resources_negated: st.resources_negated,
        conditions: conditions.into_boxed_slice(),
    })
}

/// A compiled policy body.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub statements: Box<[CStatement]>,
    pub has_deny: bool,
    pub has_allow: bool,
}

/// Compiles a parsed document.
pub(crate) fn compile(doc: &PolicyDocument) -> Result<Compiled, PolicyError> {
    let vars = doc.version.variables_enabled();
    let statements = doc
        .statements
        .iter()
        .enumerate()
        .map(|(i, s)| compile_statement(s, i, vars))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Compiled {
        has_deny: statements.iter().any(|s| s.effect == Effect::Deny),
        has_allow: statements.iter().any(|s| s.effect == Effect::Allow),
        statements: statements.into_boxed_slice(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RequestContext {
        let mut c = RequestContext::new(
            "arn:aws:iam::111122223333:user/bob",
            "111122223333",
            "kms:Decrypt",
            "*",
        );
        c.set("aws:username", "bob");
        c
    }

    fn m(p: &str, t: &str) -> bool {
        glob_match(&tokenize(p, true, true, false), t, false, &ctx())
    }

    #[test]
    fn glob_basics() {
        assert!(m("*", ""));
        assert!(m("a*c", "abbbc"));
        assert!(m("a*c", "ac"));
        assert!(!m("a*c", "acb"));
        assert!(m("a?c", "abc"));
        assert!(m("a?c", "aéc"));
        assert!(!m("a?c", "ac"));
        assert!(m("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!m("*a*b*c", "xxaxxbxxcxx"));
        assert!(m("alias/finance*", "alias/finance-key"));
        assert!(m("a**b", "ab"));
        assert!(m(
            "arn:aws:kms:*:111122223333:key/*",
            "arn:aws:kms:us-west-2:111122223333:key/1"
        ));
        assert!(!m("Alice", "alice"));
    }

    #[test]
    fn action_patterns_are_case_insensitive() {
        let p = tokenize("KMS:Decrypt", true, false, true);
        assert!(glob_match(&p, "kms:decrypt", true, &ctx()));
        assert!(glob_match(&p, "kms:Decrypt", true, &ctx()));
        let p = tokenize("kms:generatedatakey*", true, false, true);
        assert!(glob_match(&p, "kms:GenerateDataKeyPair", true, &ctx()));
        assert!(!glob_match(&p, "kms:Decrypt", true, &ctx()));
    }

    #[test]
    fn variables_and_escapes() {
        assert!(m("home/${aws:username}/*", "home/bob/x"));
        assert!(!m("home/${aws:username}/*", "home/alice/x"));
        assert!(m("${aws:userid, 'none'}", "none"));
        assert!(!m("${aws:userid}", ""));
        assert!(m("a${*}b", "a*b"));
        assert!(!m("a${*}b", "axb"));
        assert!(m("${?}${$}", "?$"));
        // 2008: literal
        let p = tokenize("${aws:username}", true, false, false);
        assert!(!glob_match(&p, "bob", false, &ctx()));
        let p = tokenize("${aws:username}", false, false, false);
        assert!(glob_match(&p, "${aws:username}", false, &ctx()));
    }

    #[test]
    fn arn_segments() {
        match compile_arn("arn:aws:iam::*:role/x", false) {
            Some(ArnPattern::Segments(s)) => assert_eq!(s.len(), 6),
            _ => panic!("expected segments"),
        }
        assert!(matches!(
            compile_arn("*", false),
            Some(ArnPattern::Whole(_))
        ));
        assert!(compile_arn("arn:aws:*:role/a", false).is_none());
    }
}
