//! AWS managed keys: `alias/aws/<service>`, created on first use.
//!
//! AWS has three kinds of KMS key: customer managed, AWS managed and AWS owned. An AWS managed
//! key belongs to the caller's account, is named by a predefined alias `alias/aws/<service>`,
//! and is created the first time a cryptographic operation or DescribeKey names that alias
//! (the DescribeKey and ListAliases entries of the KMS API Reference; the "AWS managed keys"
//! section of the KMS Developer Guide, `concepts.html#aws-managed-key`). Its key policy is
//! AWS's default policy for AWS managed keys (see [`managed_key_policy`]), its material rotates
//! every year (EnableKeyRotation: "KMS always rotates the key material of Amazon Web Services
//! managed keys every year"), and nobody may change it.
//!
//! How users are kept from changing it, as AWS does: the key policy grants no management
//! action and does not delegate to IAM, so PutKeyPolicy, ScheduleKeyDeletion, DisableKey,
//! EnableKey, Enable/DisableKeyRotation, RotateKeyOnDemand, UpdateKeyDescription, TagResource,
//! UpdateAlias and DeleteAlias are AccessDeniedException from the ordinary evaluation (AWS
//! answers the same: its own managed-key policy is what refuses them). CreateAlias with a name
//! under `alias/aws/` is InvalidAliasNameException (kms-spec 1.1 and 1.6; CreateAlias in the
//! API Reference: the prefix is reserved). [`Kms::is_aws_managed`] is the fact the rest of the
//! engine reads (`KeyManager`), derived from the alias: only this module creates `alias/aws/`
//! aliases, and they can be neither repointed nor deleted.
//!
//! Which services: a fixed, documented table ([`SERVICES`]) of AWS services that have managed
//! keys, not any `alias/aws/[a-z0-9-]+`. Accepting any name would let every principal create an
//! unbounded number of HSM objects with DescribeKey calls on made-up names; AWS itself knows
//! only its integrated services and answers NotFoundException for other names.

use std::collections::BTreeMap;
use std::sync::Arc;

use uuid::Uuid;

use super::domain::Origin;
use super::keys::{ENCRYPT_DECRYPT, SYMMETRIC_DEFAULT};
use super::policies::compile_key_policy;
use super::rotation::DEFAULT_ROTATION_PERIOD_DAYS;
use super::specs::SpecKind;
use super::{CachedKey, Kms, KmsError, Resolved};
use crate::identity::arn::{account_root_arn, Arn};
use crate::identity::Caller;
use crate::store::{AliasRecord, KeyLifecycle, KeyRecord, KeyState, StoreError};

/// The alias prefix reserved for AWS managed keys.
pub const AWS_ALIAS_PREFIX: &str = "alias/aws/";
/// `KeyManager` of AWS managed keys.
pub const KEY_MANAGER_AWS: &str = "AWS";
/// `KeyManager` of every other key.
pub const KEY_MANAGER_CUSTOMER: &str = "CUSTOMER";
/// The principal tag a service principal carries to present `kms:ViaService` (its value is
/// the service's endpoint prefix, `s3`, `ec2`, ...).
pub const VIA_SERVICE_TAG: &str = "p11kms:ViaService";

/// One AWS service with an AWS managed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManagedService {
    /// The alias suffix: `alias/aws/<alias>`.
    pub alias: &'static str,
    /// The service's name in the policy's Sid.
    pub name: &'static str,
    /// What the key protects, in the description.
    pub protects: &'static str,
    /// The endpoint prefix of `kms:ViaService` (`<via>.<region>.amazonaws.com`); EBS calls KMS
    /// through EC2.
    pub via: &'static str,
}

const fn svc(
    alias: &'static str,
    name: &'static str,
    protects: &'static str,
    via: &'static str,
) -> ManagedService {
    ManagedService {
        alias,
        name,
        protects,
        via,
    }
}

/// The services whose `alias/aws/<service>` this daemon creates on first use, sorted by alias.
pub const SERVICES: &[ManagedService] = &[
    svc("backup", "Backup", "Backup vaults", "backup"),
    svc(
        "codecommit",
        "CodeCommit",
        "CodeCommit repositories",
        "codecommit",
    ),
    svc("dynamodb", "DynamoDB", "DynamoDB data", "dynamodb"),
    svc("ebs", "EBS", "EBS volumes", "ec2"),
    svc(
        "elasticfilesystem",
        "EFS",
        "EFS file systems",
        "elasticfilesystem",
    ),
    svc("glue", "Glue", "Glue data", "glue"),
    svc("kinesis", "Kinesis", "Kinesis data", "kinesis"),
    svc("lambda", "Lambda", "Lambda functions", "lambda"),
    svc("rds", "RDS", "RDS database volumes", "rds"),
    svc("redshift", "Redshift", "Redshift clusters", "redshift"),
    svc("s3", "S3", "S3 objects", "s3"),
    svc(
        "secretsmanager",
        "Secrets Manager",
        "Secrets Manager secrets",
        "secretsmanager",
    ),
    svc("sns", "SNS", "SNS data", "sns"),
    svc("sqs", "SQS", "SQS messages", "sqs"),
    svc("ssm", "SSM", "SSM parameters", "ssm"),
];

/// The service of a predefined alias name (`alias/aws/s3`), if it is one.
pub fn service_of(alias_name: &str) -> Option<&'static ManagedService> {
    let name = alias_name.strip_prefix(AWS_ALIAS_PREFIX)?;
    SERVICES.iter().find(|s| s.alias == name)
}

/// The description AWS gives its managed keys.
pub fn managed_key_description(s: &ManagedService) -> String {
    format!(
        "Default key that protects my {} when no other key is defined",
        s.protects
    )
}

/// AWS's key policy for an AWS managed key: use by every principal of the account through the
/// service only (`kms:CallerAccount` and `kms:ViaService`), and read access to the key's
/// metadata for the account (delegated to IAM).
pub fn managed_key_policy(
    s: &ManagedService,
    partition: &str,
    region: &str,
    account: &str,
) -> String {
    let root = account_root_arn(partition, account);
    serde_json::json!({
        "Version": "2012-10-17",
        "Id": format!("auto-{}-2", s.alias),
        "Statement": [
            {
                "Sid": format!(
                    "Allow access through {} for all principals in the account that are authorized to use {}",
                    s.name, s.name
                ),
                "Effect": "Allow",
                "Principal": {"AWS": "*"},
                "Action": [
                    "kms:Encrypt",
                    "kms:Decrypt",
                    "kms:ReEncrypt*",
                    "kms:GenerateDataKey*",
                    "kms:CreateGrant",
                    "kms:DescribeKey"
                ],
                "Resource": "*",
                "Condition": {"StringEquals": {
                    "kms:CallerAccount": account,
                    "kms:ViaService": via_service(s.via, region)
                }}
            },
            {
                "Sid": "Allow direct access to key metadata to the account",
                "Effect": "Allow",
                "Principal": {"AWS": root},
                "Action": ["kms:Describe*", "kms:Get*", "kms:List*", "kms:RevokeGrant"],
                "Resource": "*"
            }
        ]
    })
    .to_string()
}

/// The `kms:ViaService` value of a service endpoint prefix in a region.
pub fn via_service(prefix: &str, region: &str) -> String {
    format!("{prefix}.{region}.amazonaws.com")
}

impl Kms {
    /// Whether a key is AWS managed: an `alias/aws/` alias points at it.
    pub fn is_aws_managed(&self, key_id: &str) -> bool {
        self.aliases_of(key_id)
            .iter()
            .any(|a| a.starts_with(AWS_ALIAS_PREFIX))
    }

    /// `KeyManager` of a key: `AWS` or `CUSTOMER`.
    pub(crate) fn key_manager(&self, key_id: &str) -> &'static str {
        if self.is_aws_managed(key_id) {
            KEY_MANAGER_AWS
        } else {
            KEY_MANAGER_CUSTOMER
        }
    }

    /// The predefined alias a key reference names in the caller's own account, if it names one
    /// (`alias/aws/s3` or its alias ARN).
    fn predefined_alias(
        &self,
        caller: &Caller,
        key_ref: &str,
    ) -> Option<(String, &'static ManagedService)> {
        let name = if key_ref.starts_with("arn:") {
            let a = Arn::parse(key_ref).ok()?;
            let here = a.service == "kms"
                && a.partition == self.settings.partition
                && a.region == self.settings.region
                && a.account == caller.account;
            here.then_some(a.resource)?
        } else {
            key_ref
        };
        service_of(name).map(|s| (name.to_string(), s))
    }

    /// Resolves a key reference for an operation that may name a predefined alias: when it
    /// names an AWS managed key that does not exist yet, the key is created first (see
    /// [`Kms::ensure_managed_key`]), so every such operation goes through this one step.
    pub(crate) async fn resolve_or_create_managed(
        &self,
        caller: &Caller,
        key_ref: &str,
        action: &'static str,
        ctx: Option<&BTreeMap<String, String>>,
        dry_run: bool,
    ) -> Result<Resolved, KmsError> {
        self.ensure_managed_key(caller, key_ref, action, ctx, dry_run)
            .await?;
        self.resolve(caller, key_ref, true)
    }

    /// Before an operation that may name a predefined alias (a cryptographic operation or
    /// DescribeKey): when `key_ref` is `alias/aws/<service>` of the caller's account and the key
    /// does not exist yet, creates it, provided the caller would be allowed `action` on it
    /// under its managed-key policy (authorization before any HSM call or store change; a
    /// denied caller creates nothing). Concurrent first uses create one key and one alias.
    /// A dry run that would create the key creates nothing: once the caller is authorized it
    /// answers DryRunOperationException (the key would be new, enabled and symmetric, so no
    /// later state or usage check could fail).
    async fn ensure_managed_key(
        &self,
        caller: &Caller,
        key_ref: &str,
        action: &'static str,
        ctx: Option<&BTreeMap<String, String>>,
        dry_run: bool,
    ) -> Result<(), KmsError> {
        let Some((alias_name, service)) = self.predefined_alias(caller, key_ref) else {
            return Ok(());
        };
        let exists = |k: &Kms| {
            k.cache_read()
                .aliases
                .contains_key(&(caller.account.clone(), alias_name.clone()))
        };
        if exists(self) {
            return Ok(());
        }
        let prospective = self.prospective_managed_key(caller, service)?;
        let resolved = Resolved {
            key: Arc::new(prospective),
            alias: Some(alias_name.clone()),
        };
        self.authorize_key(caller, action, &resolved, ctx)?;
        super::end_dry_run(dry_run)?;
        // The alias name's lock makes the first use single-flight in this process: requests
        // racing for the same not-yet-existing managed key wait for the one creation (held
        // across its HSM job; only they wait). Across nodes the alias's uniqueness in the
        // database decides, and the loser adopts the winner's key.
        let _guard = self
            .key_locks
            .lock(super::locks::LockName::Alias(
                caller.account.clone(),
                alias_name.clone(),
            ))
            .await;
        if exists(self) {
            return Ok(());
        }
        let key = Arc::unwrap_or_clone(resolved.key);
        self.create_managed_key(key, &alias_name).await
    }

    /// The managed key of `service` as it would be created for the caller's account.
    fn prospective_managed_key(
        &self,
        caller: &Caller,
        service: &ManagedService,
    ) -> Result<CachedKey, KmsError> {
        let uuid = Uuid::new_v4();
        let key_id = uuid.hyphenated().to_string();
        let policy = managed_key_policy(
            service,
            &self.settings.partition,
            &self.settings.region,
            &caller.account,
        );
        let compiled = compile_key_policy(&policy)?;
        Ok(CachedKey {
            arn: self.key_arn(&caller.account, &key_id),
            uuid: *uuid.as_bytes(),
            versions: Vec::new(),
            tags: Vec::new(),
            policy: Some(compiled),
            grants: Vec::new(),
            store: None,
            record: KeyRecord {
                key_id,
                account: caller.account.clone(),
                description: managed_key_description(service),
                key_spec: SYMMETRIC_DEFAULT,
                key_usage: ENCRYPT_DECRYPT,
                origin: Origin::AwsKms,
                state: KeyState::Enabled,
                created_at_ms: self.now_ms(),
                deletion_date_ms: None,
                pending_window_days: None,
                current_version: 1,
                policy: policy.into(),
                custom_key_store_id: None,
                xks_key_id: None,
                row_version: 1,
                multi_region: None,
            },
        })
    }

    /// Creates an authorized managed key through the ordinary creation path: the `Creating`
    /// row, then its alias and yearly rotation schedule (so the key is AWS managed from its
    /// first stored moment), then the HSM object and `Enabled`. Callers hold the alias's lock.
    async fn create_managed_key(&self, key: CachedKey, alias_name: &str) -> Result<(), KmsError> {
        let CachedKey {
            mut record, policy, ..
        } = key;
        let compiled = policy
            .ok_or_else(|| KmsError::Internal("the managed key policy did not compile".into()))?;
        record.state = KeyState::Creating;
        let now = record.created_at_ms;
        let key_id = record.key_id.clone();
        let creation = self.insert_creating(&record, &[]).await?;
        let alias = AliasRecord {
            account: record.account.clone(),
            name: alias_name.to_string(),
            key_id: key_id.clone(),
            created_at_ms: now,
            updated_at_ms: now,
        };
        let lifecycle = KeyLifecycle {
            key_id: key_id.clone(),
            rotation_enabled: true,
            rotation_period_days: Some(DEFAULT_ROTATION_PERIOD_DAYS),
            next_rotation_ms: Some(now + i64::from(DEFAULT_ROTATION_PERIOD_DAYS) * 86_400_000),
            ..KeyLifecycle::default()
        };
        let linked = match self
            .store
            .create_alias(&alias, super::aliases::MAX_ALIASES_PER_KEY)
            .await
        {
            Ok(()) => self.store.put_lifecycle(&lifecycle).await,
            Err(e) => Err(e),
        };
        if let Err(e) = linked {
            if let Err(se) = self.store.delete_key(&key_id).await {
                tracing::error!(key_id, error = %se, "could not roll back a managed key row");
            }
            return match e {
                // Another node sharing the store created it first: use that one.
                StoreError::AlreadyExists(_) => self.adopt_stored_alias(&alias).await,
                other => Err(other.into()),
            };
        }
        record.row_version += 1; // put_lifecycle raised it
        let cached = self
            .generate_and_enable(record, SpecKind::Symmetric, Vec::new(), compiled)
            .await?;
        creation.finished();
        self.cache_write().put_alias(alias);
        self.lifecycle_cache_put(lifecycle);
        super::record::managed_key_created(&cached.arn, &cached.record.account, alias_name);
        tracing::info!(
            key_id,
            alias = alias_name,
            "AWS managed key created on first use"
        );
        Ok(())
    }

    /// Loads a managed key's alias, and its key, that another node stored.
    async fn adopt_stored_alias(&self, wanted: &AliasRecord) -> Result<(), KmsError> {
        let stored = self
            .store
            .list_aliases()
            .await?
            .into_iter()
            .find(|a| a.account == wanted.account && a.name == wanted.name)
            .ok_or_else(|| {
                KmsError::Internal(format!(
                    "alias {} vanished while being created",
                    wanted.name
                ))
            })?;
        self.refresh_key(&stored.key_id).await?;
        if let Ok(l) = self.store.load_lifecycles().await {
            if let Some(l) = l.into_iter().find(|l| l.key_id == stored.key_id) {
                self.lifecycle_cache_put(l);
            }
        }
        self.cache_write().put_alias(stored);
        Ok(())
    }

    /// The predefined aliases of the caller's account that have no key yet (ListAliases shows
    /// them without `TargetKeyId`, as AWS does).
    pub(crate) fn unused_predefined_aliases(&self, account: &str) -> Vec<String> {
        let cache = self.cache_read();
        SERVICES
            .iter()
            .map(|s| format!("{AWS_ALIAS_PREFIX}{}", s.alias))
            .filter(|n| {
                !cache
                    .aliases
                    .contains_key(&(account.to_string(), n.clone()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_names_resolve() {
        assert!(SERVICES.windows(2).all(|w| w[0].alias < w[1].alias));
        assert_eq!(service_of("alias/aws/ebs").map(|s| s.via), Some("ec2"));
        assert!(service_of("alias/aws/made-up").is_none());
        assert!(service_of("alias/s3").is_none());
    }

    #[test]
    fn the_policy_is_awss_managed_key_policy() {
        let s = service_of("alias/aws/s3").unwrap();
        let p = managed_key_policy(s, "aws", "us-east-1", "111122223333");
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        let st = &v["Statement"];
        assert_eq!(
            st[0]["Sid"],
            "Allow access through S3 for all principals in the account that are authorized to use S3"
        );
        assert_eq!(st[0]["Principal"]["AWS"], "*");
        assert_eq!(
            st[0]["Condition"]["StringEquals"]["kms:ViaService"],
            "s3.us-east-1.amazonaws.com"
        );
        assert_eq!(
            st[0]["Condition"]["StringEquals"]["kms:CallerAccount"],
            "111122223333"
        );
        assert_eq!(st[1]["Principal"]["AWS"], "arn:aws:iam::111122223333:root");
        assert!(compile_key_policy(&p).is_ok());
        assert_eq!(
            managed_key_description(s),
            "Default key that protects my S3 objects when no other key is defined"
        );
    }
}
