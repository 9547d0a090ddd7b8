//! Parsed policy documents: a faithful, validated image of the JSON, before compilation.

use crate::wire_enum::wire_enum;

/// Effect of a statement, and of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    /// The statement (or decision) allows.
    Allow,
    /// The statement (or decision) denies.
    Deny,
}

impl Effect {
    /// `"Allow"` or `"Deny"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "Allow",
            Effect::Deny => "Deny",
        }
    }
}

/// Policy language version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `2008-10-17` (also the default when `Version` is absent): `${...}` is literal text.
    V2008_10_17,
    /// `2012-10-17`: policy variables are substituted.
    V2012_10_17,
}

impl Version {
    /// Whether `${...}` policy variables are interpreted.
    pub fn variables_enabled(self) -> bool {
        matches!(self, Version::V2012_10_17)
    }
}

/// A whole policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDocument {
    /// Language version.
    pub version: Version,
    /// Optional `Id`.
    pub id: Option<String>,
    /// Statements, in document order.
    pub statements: Vec<Statement>,
}

/// The principal part of a statement (`Principal` or `NotPrincipal`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalSpec {
    /// `"*"`.
    Any,
    /// `{"AWS": .., "Service": .., "Federated": .., "CanonicalUser": ..}`.
    Map {
        /// `AWS` entries: `*`, account ids, IAM / STS ARNs.
        aws: Vec<String>,
        /// `Service` entries.
        service: Vec<String>,
        /// `Federated` entries.
        federated: Vec<String>,
        /// `CanonicalUser` entries (never match a KMS caller).
        canonical_user: Vec<String>,
    },
}

/// One statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Optional `Sid`.
    pub sid: Option<String>,
    /// `Allow` / `Deny`.
    pub effect: Effect,
    /// `Principal` (`negated == false`) or `NotPrincipal` (`negated == true`); `None` if neither.
    pub principal: Option<(PrincipalSpec, bool)>,
    /// `Action` patterns, or `NotAction` patterns when `actions_negated`.
    pub actions: Vec<String>,
    /// True for `NotAction`.
    pub actions_negated: bool,
    /// `Resource` patterns, or `NotResource` patterns when `resources_negated`.
    pub resources: Vec<String>,
    /// True for `NotResource`.
    pub resources_negated: bool,
    /// Condition clauses, all ANDed.
    pub conditions: Vec<Condition>,
}

/// Set qualifier of a condition operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetQualifier {
    /// `ForAnyValue:`.
    ForAnyValue,
    /// `ForAllValues:`.
    ForAllValues,
}

wire_enum!(
    /// Operator families and members (without qualifier or `IfExists`), by their canonical
    /// AWS names.
    OperatorKind {
        StringEquals,
        StringNotEquals,
        StringEqualsIgnoreCase,
        StringNotEqualsIgnoreCase,
        StringLike,
        StringNotLike,
        NumericEquals,
        NumericNotEquals,
        NumericLessThan,
        NumericLessThanEquals,
        NumericGreaterThan,
        NumericGreaterThanEquals,
        DateEquals,
        DateNotEquals,
        DateLessThan,
        DateLessThanEquals,
        DateGreaterThan,
        DateGreaterThanEquals,
        Bool,
        BinaryEquals,
        IpAddress,
        NotIpAddress,
        ArnEquals,
        ArnLike,
        ArnNotEquals,
        ArnNotLike,
        Null,
    }
);

impl OperatorKind {
    /// Looks an operator up by its canonical name (case-insensitive).
    pub fn from_name(name: &str) -> Option<OperatorKind> {
        OperatorKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str().eq_ignore_ascii_case(name))
    }

    /// Negated operators: the policy value list is a NOR, and a missing key makes them true.
    pub fn is_negated(self) -> bool {
        use OperatorKind::*;
        matches!(
            self,
            StringNotEquals
                | StringNotEqualsIgnoreCase
                | StringNotLike
                | NumericNotEquals
                | DateNotEquals
                | NotIpAddress
                | ArnNotEquals
                | ArnNotLike
        )
    }

    /// Whether policy variables are substituted in values of this operator.
    pub fn allows_variables(self) -> bool {
        use OperatorKind::*;
        matches!(
            self,
            StringEquals
                | StringNotEquals
                | StringEqualsIgnoreCase
                | StringNotEqualsIgnoreCase
                | StringLike
                | StringNotLike
                | Bool
                | ArnEquals
                | ArnLike
                | ArnNotEquals
                | ArnNotLike
        )
    }
}

/// A full operator: optional set qualifier, kind, optional `IfExists`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operator {
    /// `ForAnyValue:` / `ForAllValues:` prefix.
    pub qualifier: Option<SetQualifier>,
    /// The operator proper.
    pub kind: OperatorKind,
    /// `...IfExists` suffix.
    pub if_exists: bool,
}

impl Operator {
    /// Parses `ForAllValues:StringEqualsIfExists` and friends. `None` if unknown.
    pub fn parse(text: &str) -> Option<Operator> {
        let (qualifier, rest) = if let Some(r) = strip_prefix_ci(text, "ForAnyValue:") {
            (Some(SetQualifier::ForAnyValue), r)
        } else if let Some(r) = strip_prefix_ci(text, "ForAllValues:") {
            (Some(SetQualifier::ForAllValues), r)
        } else {
            (None, text)
        };
        if let Some(kind) = OperatorKind::from_name(rest) {
            return Some(Operator {
                qualifier,
                kind,
                if_exists: false,
            });
        }
        let base = strip_suffix_ci(rest, "IfExists")?;
        let kind = OperatorKind::from_name(base)?;
        if kind == OperatorKind::Null {
            return None;
        }
        Some(Operator {
            qualifier,
            kind,
            if_exists: true,
        })
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

fn strip_suffix_ci<'a>(s: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = s.len().checked_sub(suffix.len())?;
    let tail = s.get(cut..)?;
    if tail.eq_ignore_ascii_case(suffix) {
        s.get(..cut)
    } else {
        None
    }
}

/// One `Operator: { Key: values }` clause (a block with several keys becomes several clauses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// Operator as written.
    pub operator_text: String,
    /// Parsed operator.
    pub operator: Operator,
    /// Condition key as written.
    pub key: String,
    /// Values (JSON numbers and booleans are turned into their text).
    pub values: Vec<String>,
}
