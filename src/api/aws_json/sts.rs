//! STS on the AWS door: the Query protocol (form-encoded `Action=...&Version=2011-06-15`, XML
//! responses shaped exactly as AWS STS shapes them), signed with SigV4 service `sts`.
//! AssumeRole and GetCallerIdentity, as the gRPC SecurityTokenService serves them.

use std::sync::Arc;

use serde_json::Value;

use super::error::{xml_escape, STS_XMLNS};
use super::kms::{Call, Reply};
use crate::core::operation::{Operation, ResponseElements};
use crate::core::sts::{
    AssumeRoleRequest, AssumeRoleResponse, CallerIdentity, GetCallerIdentityRequest,
};
use crate::core::{Kms, KmsError};
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
    crate::time::iso8601(ms)
}

fn response_metadata(request_id: &str) -> String {
    format!(
        "  <ResponseMetadata>\n    <RequestId>{}</RequestId>\n  </ResponseMetadata>\n",
        xml_escape(request_id)
    )
}

/// A core request read from its STS Query form.
trait FromForm: Sized {
    /// Reads the request; a malformed member is a ValidationException.
    fn from_form(form: &[(String, String)]) -> Result<Self, KmsError>;
}

/// A core response rendered as its STS XML document.
trait ToXml {
    /// The document, with the request id in its `ResponseMetadata`.
    fn to_xml(&self, request_id: &str) -> String;
}

type Prepare = fn(Arc<Kms>, Caller, &[(String, String)], String) -> Call;

/// One STS action of the table: its core operation's name, engine call and audit parameters.
struct Action {
    name: &'static str,
    prepare: Prepare,
    parameters: fn(&[(String, String)]) -> Value,
}

/// The table entry of a core operation.
const fn entry_of<O>() -> Action
where
    O: Operation + FromForm,
    O::Response: ToXml,
{
    Action {
        name: O::NAME,
        prepare: run::<O>,
        parameters: parameters::<O>,
    }
}

/// The door's STS table: each action and its core operation.
const TABLE: &[Action] = &[
    entry_of::<AssumeRoleRequest>(),
    entry_of::<GetCallerIdentityRequest>(),
];

/// The table entry of an action (one of [`ACTIONS`]; anything else reads as
/// GetCallerIdentity, which takes no input).
fn entry(name: &str) -> &'static Action {
    TABLE
        .iter()
        .find(|a| a.name == name)
        .unwrap_or(&TABLE[TABLE.len() - 1])
}

/// The one engine call of every STS action: reads the form, runs the operation, renders
/// the XML document (as a JSON string) and its audit elements.
fn run<O>(kms: Arc<Kms>, caller: Caller, form: &[(String, String)], request_id: String) -> Call
where
    O: Operation + FromForm,
    O::Response: ToXml,
{
    let request = O::from_form(form);
    Box::pin(async move {
        let response = request?.run(kms, caller).await?;
        Ok(Reply {
            body: Value::String(response.to_xml(&request_id)),
            elements: response.response_elements(),
        })
    })
}

/// What the audit trail records of a request: the form read as the core request (nothing
/// when the form does not read).
fn parameters<O: Operation + FromForm>(form: &[(String, String)]) -> Value {
    O::from_form(form)
        .map(|r| r.request_parameters())
        .unwrap_or_default()
}

/// The audit parameters of an STS action's form.
pub fn request_parameters(action: &str, form: &[(String, String)]) -> Value {
    (entry(action).parameters)(form)
}

/// The AssumeRole input of a Query form (the last value of a repeated field wins; tags in
/// member order). Public for the fuzz targets.
pub fn assume_role_request(form: &[(String, String)]) -> Result<AssumeRoleRequest, KmsError> {
    AssumeRoleRequest::from_form(form)
}

/// Builds the engine call of an STS action (one of [`ACTIONS`]).
pub fn prepare(
    kms: Arc<Kms>,
    caller: Caller,
    action: &'static str,
    form: Vec<(String, String)>,
    request_id: String,
) -> Call {
    (entry(action).prepare)(kms, caller, &form, request_id)
}

impl FromForm for AssumeRoleRequest {
    fn from_form(form: &[(String, String)]) -> Result<Self, KmsError> {
        let duration_seconds = match field(form, "DurationSeconds") {
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
}

impl ToXml for AssumeRoleResponse {
    fn to_xml(&self, request_id: &str) -> String {
        format!(
            "<AssumeRoleResponse xmlns=\"{STS_XMLNS}\">\n  <AssumeRoleResult>\n    <AssumedRoleUser>\n      <AssumedRoleId>{}</AssumedRoleId>\n      <Arn>{}</Arn>\n    </AssumedRoleUser>\n    <Credentials>\n      <AccessKeyId>{}</AccessKeyId>\n      <SecretAccessKey>{}</SecretAccessKey>\n      <SessionToken>{}</SessionToken>\n      <Expiration>{}</Expiration>\n    </Credentials>\n  </AssumeRoleResult>\n{}</AssumeRoleResponse>\n",
            xml_escape(&self.assumed_role_id),
            xml_escape(&self.assumed_role_arn),
            xml_escape(&self.access_key_id),
            xml_escape(&self.secret_access_key),
            xml_escape(&self.session_token),
            iso8601(self.expiration_ms),
            response_metadata(request_id),
        )
    }
}

impl FromForm for GetCallerIdentityRequest {
    fn from_form(_: &[(String, String)]) -> Result<Self, KmsError> {
        Ok(GetCallerIdentityRequest)
    }
}

impl ToXml for CallerIdentity {
    fn to_xml(&self, request_id: &str) -> String {
        format!(
            "<GetCallerIdentityResponse xmlns=\"{STS_XMLNS}\">\n  <GetCallerIdentityResult>\n    <Arn>{}</Arn>\n    <UserId>{}</UserId>\n    <Account>{}</Account>\n  </GetCallerIdentityResult>\n{}</GetCallerIdentityResponse>\n",
            xml_escape(&self.arn),
            xml_escape(&self.user_id),
            xml_escape(&self.account),
            response_metadata(request_id),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sts_form_is_logged_without_secrets() {
        let form = [
            ("Action", "AssumeRole"),
            ("RoleArn", "arn:aws:iam::111122223333:role/R"),
            ("RoleSessionName", "s"),
            ("DurationSeconds", "900"),
            ("Tags.member.1.Key", "team"),
            ("Tags.member.1.Value", "blue"),
            ("SecretAccessKey", "never"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let p = request_parameters("AssumeRole", &form);
        assert_eq!(
            p,
            serde_json::json!({
                "roleArn": "arn:aws:iam::111122223333:role/R",
                "roleSessionName": "s",
                "durationSeconds": 900,
                "tags": [{"key": "team", "value": "blue"}],
            })
        );
        assert_eq!(
            request_parameters("GetCallerIdentity", &form),
            serde_json::json!({})
        );
    }

    #[test]
    fn the_table_serves_every_action() {
        let names: Vec<&str> = TABLE.iter().map(|a| a.name).collect();
        assert_eq!(names, ACTIONS);
    }

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
