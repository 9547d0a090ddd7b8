//! STS on the AWS door: the Query protocol (form-encoded `Action=...&Version=2011-06-15`, XML
//! responses shaped exactly as AWS STS shapes them), signed with SigV4 service `sts`.
//! AssumeRole and GetCallerIdentity, as the gRPC SecurityTokenService serves them.

use serde_json::{json, Value};

use super::error::{xml_escape, STS_XMLNS};
use super::kms::{Call, Reply};
use crate::core::sts::AssumeRoleRequest;
use crate::core::KmsError;
use crate::identity::Caller;

/// The SigV4 signing service of STS.
pub const SERVICE: &str = "sts";

/// The STS actions served.
pub const ACTIONS: &[&str] = &["AssumeRole", "GetCallerIdentity"];

/// The form value of `name` (the last one, if repeated).
fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The `Action` of a Query form (the last one, if repeated; empty when absent), and the
/// served action it names, if any.
pub fn action(form: &[(String, String)]) -> (&str, Option<&'static str>) {
    let action = field(form, "Action").unwrap_or("");
    (action, ACTIONS.iter().copied().find(|a| *a == action))
}

/// `Tags.member.N.Key` / `Tags.member.N.Value`, in N order.
fn tags(form: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(usize, String, String)> = Vec::new();
    for (k, v) in form {
        let Some(rest) = k.strip_prefix("Tags.member.") else {
            continue;
        };
        let Some((n, part)) = rest.split_once('.') else {
            continue;
        };
        let Ok(n) = n.parse::<usize>() else {
            continue;
        };
        let i = match out.iter().position(|t| t.0 == n) {
            Some(i) => i,
            None => {
                out.push((n, String::new(), String::new()));
                out.len() - 1
            }
        };
        match part {
            "Key" => out[i].1 = v.clone(),
            "Value" => out[i].2 = v.clone(),
            _ => {}
        }
    }
    out.sort_by_key(|t| t.0);
    out.into_iter().map(|(_, k, v)| (k, v)).collect()
}

fn iso8601(ms: i64) -> String {
    crate::core::authz::iso8601(ms)
}

fn response_metadata(request_id: &str) -> String {
    format!(
        "  <ResponseMetadata>\n    <RequestId>{}</RequestId>\n  </ResponseMetadata>\n",
        xml_escape(request_id)
    )
}

/// The AssumeRole input of a Query form (the last value of a repeated field wins; tags in
/// member order). Public for the fuzz targets.
pub fn assume_role_request(form: &[(String, String)]) -> Result<AssumeRoleRequest, KmsError> {
    let duration_seconds =
        match field(form, "DurationSeconds") {
            None | Some("") => None,
            Some(d) => Some(d.parse::<i32>().map_err(|_| {
                KmsError::validation("durationSeconds", "Member must be an integer")
            })?),
        };
    Ok(AssumeRoleRequest {
        role_arn: field(form, "RoleArn").unwrap_or_default().to_string(),
        role_session_name: field(form, "RoleSessionName")
            .unwrap_or_default()
            .to_string(),
        duration_seconds,
        policy: field(form, "Policy")
            .filter(|p| !p.is_empty())
            .map(str::to_string),
        tags: tags(form),
    })
}

/// Builds the engine call of an STS action; the reply body is the XML document (as a JSON
/// string) and its audit elements.
pub fn prepare(
    kms: std::sync::Arc<crate::core::Kms>,
    caller: Caller,
    action: &'static str,
    form: Vec<(String, String)>,
    request_id: String,
) -> Call {
    Box::pin(async move {
        match action {
            "AssumeRole" => {
                let out = kms
                    .assume_role(&caller, assume_role_request(&form)?)
                    .await?;
                let xml = format!(
                    "<AssumeRoleResponse xmlns=\"{STS_XMLNS}\">\n  <AssumeRoleResult>\n    <AssumedRoleUser>\n      <AssumedRoleId>{}</AssumedRoleId>\n      <Arn>{}</Arn>\n    </AssumedRoleUser>\n    <Credentials>\n      <AccessKeyId>{}</AccessKeyId>\n      <SecretAccessKey>{}</SecretAccessKey>\n      <SessionToken>{}</SessionToken>\n      <Expiration>{}</Expiration>\n    </Credentials>\n  </AssumeRoleResult>\n{}</AssumeRoleResponse>\n",
                    xml_escape(&out.assumed_role_id),
                    xml_escape(&out.assumed_role_arn),
                    xml_escape(&out.access_key_id),
                    xml_escape(&out.secret_access_key),
                    xml_escape(&out.session_token),
                    iso8601(out.expiration_ms),
                    response_metadata(&request_id),
                );
                // The access key id and expiry only; never the secret or the session token.
                Ok(Reply {
                    body: Value::String(xml),
                    elements: json!({
                        "credentials": {
                            "accessKeyId": out.access_key_id,
                            "expiration": iso8601(out.expiration_ms),
                        },
                        "assumedRoleUser": {
                            "assumedRoleId": out.assumed_role_id,
                            "arn": out.assumed_role_arn,
                        },
                    }),
                })
            }
            _ => {
                let id = kms.get_caller_identity(&caller);
                let xml = format!(
                    "<GetCallerIdentityResponse xmlns=\"{STS_XMLNS}\">\n  <GetCallerIdentityResult>\n    <Arn>{}</Arn>\n    <UserId>{}</UserId>\n    <Account>{}</Account>\n  </GetCallerIdentityResult>\n{}</GetCallerIdentityResponse>\n",
                    xml_escape(&id.arn),
                    xml_escape(&id.user_id),
                    xml_escape(&id.account),
                    response_metadata(&request_id),
                );
                Ok(Reply {
                    body: Value::String(xml),
                    elements: Value::Null,
                })
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_read_in_member_order() {
        let form = [
            ("Tags.member.2.Value", "v2"),
            ("Tags.member.1.Key", "k1"),
            ("Tags.member.2.Key", "k2"),
            ("Tags.member.1.Value", "v1"),
            ("RoleArn", "r"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(
            tags(&form),
            vec![("k1".into(), "v1".into()), ("k2".into(), "v2".into())]
        );
        assert_eq!(field(&form, "RoleArn"), Some("r"));
        assert_eq!(field(&form, "Policy"), None);
    }
}
