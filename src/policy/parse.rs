//! JSON -> [`PolicyDocument`], with validation. Every error names the faulty element,
//! e.g. `Statement[2].Condition: unknown operator 'StringEqualz'`.

use serde_json::{Map, Value};

use super::model::{
    Condition, Effect, Operator, PolicyDocument, PrincipalSpec, SetQualifier, Statement, Version,
};
use super::{PolicyError, PolicyKind};

fn mp(msg: impl Into<String>) -> PolicyError {
    PolicyError::Malformed(msg.into())
}

/// Parses policy text. Does not check the size limit (see [`super::check_key_policy_size`]).
pub fn parse_text(text: &str, kind: PolicyKind) -> Result<PolicyDocument, PolicyError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        mp(format!(
            "policy is not valid JSON: {} at line {} column {}",
            json_error_kind(&e),
            e.line(),
            e.column()
        ))
    })?;
    parse_value(&value, kind)
}

fn json_error_kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "data error",
        serde_json::error::Category::Eof => "unexpected end of input",
    }
}

/// Parses an already-decoded JSON value.
pub fn parse_value(value: &Value, kind: PolicyKind) -> Result<PolicyDocument, PolicyError> {
    let obj = value
        .as_object()
        .ok_or_else(|| mp("policy document must be a JSON object"))?;
    for k in obj.keys() {
        if !matches!(k.as_str(), "Version" | "Id" | "Statement") {
            return Err(mp(format!("unknown policy element '{k}'")));
        }
    }
    let version = match obj.get("Version") {
        None => Version::V2008_10_17,
        Some(Value::String(s)) if s == "2012-10-17" => Version::V2012_10_17,
        Some(Value::String(s)) if s == "2008-10-17" => Version::V2008_10_17,
        Some(Value::String(s)) => {
            return Err(mp(format!(
                "Version: unsupported policy version '{s}' (use 2012-10-17)"
            )))
        }
        Some(_) => return Err(mp("Version: must be a string")),
    };
    let id = match obj.get("Id") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(mp("Id: must be a string")),
    };
    let raw_statements: Vec<&Value> = match obj.get("Statement") {
        None => return Err(mp("Statement: missing")),
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v @ Value::Object(_)) => vec![v],
        Some(_) => return Err(mp("Statement: must be an object or an array of objects")),
    };
    if raw_statements.is_empty() {
        return Err(mp("Statement: must contain at least one statement"));
    }
    let mut statements = Vec::with_capacity(raw_statements.len());
    for (i, st) in raw_statements.into_iter().enumerate() {
        statements.push(parse_statement(st, i, kind)?);
    }
    Ok(PolicyDocument {
        version,
        id,
        statements,
    })
}

fn parse_statement(v: &Value, i: usize, kind: PolicyKind) -> Result<Statement, PolicyError> {
    let at = format!("Statement[{i}]");
    let obj = v
        .as_object()
        .ok_or_else(|| mp(format!("{at}: must be a JSON object")))?;
    for k in obj.keys() {
        if !matches!(
            k.as_str(),
            "Sid"
                | "Effect"
                | "Principal"
                | "NotPrincipal"
                | "Action"
                | "NotAction"
                | "Resource"
                | "NotResource"
                | "Condition"
        ) {
            return Err(mp(format!("{at}: unknown element '{k}'")));
        }
    }
    let sid = match obj.get("Sid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(mp(format!("{at}.Sid: must be a string"))),
    };
    let effect = match obj.get("Effect") {
        Some(Value::String(s)) if s == "Allow" => Effect::Allow,
        Some(Value::String(s)) if s == "Deny" => Effect::Deny,
        Some(Value::String(s)) => {
            return Err(mp(format!(
                "{at}.Effect: must be 'Allow' or 'Deny', not '{s}'"
            )))
        }
        Some(_) => return Err(mp(format!("{at}.Effect: must be a string"))),
        None => return Err(mp(format!("{at}: missing Effect"))),
    };

    let principal = match (obj.get("Principal"), obj.get("NotPrincipal")) {
        (Some(_), Some(_)) => {
            return Err(mp(format!(
                "{at}: Principal and NotPrincipal are mutually exclusive"
            )))
        }
        (Some(p), None) => Some((parse_principal(p, &format!("{at}.Principal"))?, false)),
        (None, Some(p)) => Some((parse_principal(p, &format!("{at}.NotPrincipal"))?, true)),
        (None, None) => None,
    };
    match (kind, &principal) {
        (PolicyKind::Key, None) => {
            return Err(mp(format!(
                "{at}: a key policy statement must have a Principal or NotPrincipal"
            )))
        }
        (PolicyKind::Key, Some(_)) => {}
        (_, Some((_, neg))) => {
            let el = if *neg { "NotPrincipal" } else { "Principal" };
            return Err(mp(format!(
                "{at}.{el}: not allowed in {} policies",
                kind.describe()
            )));
        }
        (_, None) => {}
    }

    let (actions, actions_negated) = either(obj, "Action", "NotAction", &at, |s, path| {
        validate_action(s, path)
    })?;
    let (resources, resources_negated) = either(obj, "Resource", "NotResource", &at, |s, path| {
        if s.is_empty() {
            Err(mp(format!("{path}: empty resource")))
        } else {
            Ok(())
        }
    })?;

    let conditions = match obj.get("Condition") {
        None => Vec::new(),
        Some(c) => parse_conditions(c, &format!("{at}.Condition"))?,
    };

    Ok(Statement {
        sid,
        effect,
        principal,
        actions,
        actions_negated,
        resources,
        resources_negated,
        conditions,
    })
}

fn either(
    obj: &Map<String, Value>,
    pos: &str,
    neg: &str,
    at: &str,
    check: impl Fn(&str, &str) -> Result<(), PolicyError>,
) -> Result<(Vec<String>, bool), PolicyError> {
    let (v, negated, name) = match (obj.get(pos), obj.get(neg)) {
        (Some(_), Some(_)) => {
            return Err(mp(format!("{at}: {pos} and {neg} are mutually exclusive")))
        }
        (Some(v), None) => (v, false, pos),
        (None, Some(v)) => (v, true, neg),
        (None, None) => return Err(mp(format!("{at}: missing {pos} or {neg}"))),
    };
    let path = format!("{at}.{name}");
    let list = string_list(v, &path)?;
    if list.is_empty() {
        return Err(mp(format!("{path}: must not be empty")));
    }
    for (j, s) in list.iter().enumerate() {
        check(s, &format!("{path}[{j}]"))?;
    }
    Ok((list, negated))
}

fn string_list(v: &Value, path: &str) -> Result<Vec<String>, PolicyError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(j, x)| match x {
                Value::String(s) => Ok(s.clone()),
                _ => Err(mp(format!("{path}[{j}]: must be a string"))),
            })
            .collect(),
        _ => Err(mp(format!(
            "{path}: must be a string or an array of strings"
        ))),
    }
}

fn validate_action(s: &str, path: &str) -> Result<(), PolicyError> {
    if s == "*" {
        return Ok(());
    }
    match s.split_once(':') {
        Some((svc, name))
            if !svc.is_empty()
                && !name.is_empty()
                && svc.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !name.contains(':') =>
        {
            Ok(())
        }
        _ => Err(mp(format!(
            "{path}: invalid action '{s}' (expected 'service:Action')"
        ))),
    }
}

fn parse_principal(v: &Value, path: &str) -> Result<PrincipalSpec, PolicyError> {
    match v {
        Value::String(s) if s == "*" => Ok(PrincipalSpec::Any),
        Value::String(s) => Err(mp(format!(
            "{path}: '{s}' must be \"*\" or an object such as {{\"AWS\": ...}}"
        ))),
        Value::Object(m) => {
            if m.is_empty() {
                return Err(mp(format!("{path}: must not be empty")));
            }
            let mut aws = Vec::new();
            let mut service = Vec::new();
            let mut federated = Vec::new();
            let mut canonical_user = Vec::new();
            for (k, val) in m {
                let p = format!("{path}.{k}");
                let list = string_list(val, &p)?;
                if list.is_empty() {
                    return Err(mp(format!("{p}: must not be empty")));
                }
                match k.as_str() {
                    "AWS" => {
                        for (j, s) in list.iter().enumerate() {
                            validate_aws_principal(s, &format!("{p}[{j}]"))?;
                        }
                        aws = list;
                    }
                    "Service" => service = list,
                    "Federated" => federated = list,
                    "CanonicalUser" => canonical_user = list,
                    _ => return Err(mp(format!("{path}: unknown principal type '{k}'"))),
                }
            }
            Ok(PrincipalSpec::Map {
                aws,
                service,
                federated,
                canonical_user,
            })
        }
        _ => Err(mp(format!("{path}: must be \"*\" or an object"))),
    }
}

fn validate_aws_principal(s: &str, path: &str) -> Result<(), PolicyError> {
    if s == "*" {
        return Ok(());
    }
    if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(());
    }
    if s.contains('*') || s.contains('?') {
        return Err(mp(format!(
            "{path}: wildcards are not allowed in principal '{s}'"
        )));
    }
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts.first() == Some(&"arn")
        && parts.get(1).is_some_and(|p| p.starts_with("aws"))
        && matches!(parts.get(2), Some(&"iam") | Some(&"sts"))
        && parts
            .get(4)
            .is_some_and(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()))
        && parts.get(5).is_some_and(|r| !r.is_empty());
    if ok {
        Ok(())
    } else {
        Err(mp(format!(
            "{path}: invalid principal '{s}' (expected \"*\", a 12-digit account id or an IAM/STS ARN)"
        )))
    }
}

fn parse_conditions(v: &Value, path: &str) -> Result<Vec<Condition>, PolicyError> {
    let obj = v
        .as_object()
        .ok_or_else(|| mp(format!("{path}: must be an object")))?;
    let mut out = Vec::new();
    for (op_text, block) in obj {
        let operator = Operator::parse(op_text)
            .ok_or_else(|| mp(format!("{path}: unknown operator '{op_text}'")))?;
        let p = format!("{path}.{op_text}");
        let block = block
            .as_object()
            .ok_or_else(|| mp(format!("{p}: must be an object of condition keys")))?;
        if block.is_empty() {
            return Err(mp(format!("{p}: must name at least one condition key")));
        }
        for (key, vals) in block {
            let kp = format!("{p}.{key}");
            if key.is_empty() {
                return Err(mp(format!("{p}: empty condition key")));
            }
            let lower = key.to_lowercase();
            if lower.starts_with("kms:encryptioncontext:") {
                if key.contains("${") {
                    return Err(mp(format!(
                        "{kp}: policy variables are not allowed in condition key names"
                    )));
                }
                if operator.qualifier == Some(SetQualifier::ForAllValues) {
                    return Err(mp(format!(
                        "{kp}: ForAllValues cannot be used with single-valued key '{key}' (overly permissive condition)"
                    )));
                }
            }
            if operator.qualifier.is_some() && operator.kind == super::model::OperatorKind::Null {
                return Err(mp(format!("{p}: set qualifiers cannot be used with Null")));
            }
            let values = condition_values(vals, &kp)?;
            out.push(Condition {
                operator_text: op_text.clone(),
                operator,
                key: key.clone(),
                values,
            });
        }
    }
    Ok(out)
}

fn condition_values(v: &Value, path: &str) -> Result<Vec<String>, PolicyError> {
    fn scalar(v: &Value, path: &str) -> Result<String, PolicyError> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(mp(format!(
                "{path}: condition values must be strings, numbers or booleans"
            ))),
        }
    }
    match v {
        Value::Array(a) => {
            if a.is_empty() {
                return Err(mp(format!("{path}: empty value list")));
            }
            a.iter()
                .enumerate()
                .map(|(j, x)| scalar(x, &format!("{path}[{j}]")))
                .collect()
        }
        other => Ok(vec![scalar(other, path)?]),
    }
}
