//! Multi-Region keys (issue 20): the `mrk-` keys that several p11kms Regions share, and the
//! two AWS operations on them, ReplicateKey and UpdatePrimaryRegion.
//!
//! A Region is a deployment with its own store and HSM (`[kms] region`); its peers are named
//! in `[region.peers.<name>]` and reached through a [`RegionLink`] (the daemon's gRPC
//! `RegionService`, `region_link`). Key material moves only wrapped, HSM to HSM: the primary's
//! device wraps each version under the replica device's transport key, which this token's
//! security officer made trusted (`p11kms region trust`; a key pair's private half travels
//! under that Region's carrier key, itself wrapped under the transport key), and the
//! replica's device unwraps it, into a token object or, in wrapped residency, straight into
//! a blob under its own master key. What the peer does with what it receives is [`super::region_peer`].
//!
//! Every Region's row of a key holds the same [`MultiRegion`] (the primary's Region and the
//! replicas' Regions), so DescribeKey shows the same `MultiRegionConfiguration` everywhere.
//! The primary is the one that changes it: it asks the peers first and writes its own row
//! last, so that a peer that cannot be reached leaves the primary as it was.

use std::sync::Arc;

use super::authz::{AuthzRequest, CtxValue};
use super::domain::Origin;
use super::keys::{CreateKeyRequest, KeyMetadata};
use super::operation::{request_parameters, Empty, ResponseElements};
use super::specs::SpecKind;
use super::tags::with_request_tags;
use super::{check_state, validate, CachedKey, Kms, KmsError, StateClass};
use crate::hsm::region::RegionName;
use crate::hsm::wrapped::BlobKind;
use crate::hsm::{Hsm, ObjectId, PairSpec};
use crate::identity::{arn, Caller};
use crate::store::{KeyRecord, MultiRegion, Tag};
use crate::wire_enum::wire_enum;

wire_enum!(
    /// Whether a multi-Region key is its primary or a replica (`kms:MultiRegionKeyType`).
    MultiRegionKeyType {
        Primary = "PRIMARY",
        Replica = "REPLICA",
    }
);

/// The type of the multi-Region key `m` in Region `local`.
pub fn key_type(m: &MultiRegion, local: &str) -> MultiRegionKeyType {
    if m.primary_region == local {
        MultiRegionKeyType::Primary
    } else {
        MultiRegionKeyType::Replica
    }
}

/// One Region's key of a multi-Region key, as KeyMetadata lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiRegionKey {
    pub arn: String,
    pub region: String,
}

/// KeyMetadata's `MultiRegionConfiguration`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiRegionConfiguration {
    pub multi_region_key_type: MultiRegionKeyType,
    pub primary_key: MultiRegionKey,
    pub replica_keys: Vec<MultiRegionKey>,
}

/// CreateKey's refusals for `MultiRegion: true`: not in a custom key store (as AWS), not for
/// imported key material, and not Ed25519 (the device cannot wrap its private key).
pub(crate) fn check_multi_region_choice(
    req: &CreateKeyRequest,
    origin: Origin,
    kind: SpecKind,
) -> Result<(), KmsError> {
    if req.custom_key_store_id.is_some() || origin != Origin::AwsKms {
        let why = match origin {
            Origin::External => {
                "p11kms does not yet make multi-Region keys for imported key material."
            }
            _ => "You cannot create a multi-Region key in a custom key store.",
        };
        return Err(KmsError::UnsupportedOperation(why.into()));
    }
    if let SpecKind::Pair(PairSpec::Ed25519) = kind {
        return Err(KmsError::UnsupportedOperation(
            "Ed25519 key pairs cannot be multi-Region keys: the HSM does not wrap their private keys (docs/regions.md).".into(),
        ));
    }
    Ok(())
}

/// The device kind of a secret key spec's versions (AES-256 or HMAC).
pub(crate) fn secret_blob_kind(kind: SpecKind) -> BlobKind {
    match kind {
        SpecKind::Hmac(a) => BlobKind::Hmac(a),
        SpecKind::Symmetric | SpecKind::Pair(_) => BlobKind::Aes256,
    }
}

/// Why a call to a peer Region did not give an answer of the peer's own.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// `[region.peers]` names no such Region.
    #[error("Region {0} is not a peer Region of this deployment")]
    UnknownPeer(String),
    /// The peer could not be reached, or did not answer in time.
    #[error("Region {region} could not be reached: {detail}")]
    Unreachable { region: String, detail: String },
    /// The peer answered with an error of its own (an AWS exception).
    #[error("{0}")]
    Refused(KmsError),
}

impl From<PeerError> for KmsError {
    fn from(e: PeerError) -> Self {
        match e {
            PeerError::UnknownPeer(_) => KmsError::UnsupportedOperation(e.to_string()),
            PeerError::Unreachable { .. } => KmsError::KeyUnavailable(e.to_string()),
            PeerError::Refused(inner) => inner,
        }
    }
}

/// How this Region reaches its peers (the daemon's `region_link`, over gRPC).
#[async_trait::async_trait]
pub trait RegionLink: Send + Sync {
    /// The configured peer Regions.
    fn peers(&self) -> Vec<String>;
    /// The principal `region`'s daemon is known as here, when configured.
    fn peer_principal(&self, region: &str) -> Option<String>;
    /// Asks `peer` to make a replica ([`super::region_peer`]'s AcceptReplica).
    async fn accept_replica(
        &self,
        peer: &str,
        req: AcceptReplicaRequest,
    ) -> Result<AcceptReplicaResponse, PeerError>;
    /// Tells `peer` of a change to a key it holds ([`super::region_peer`]'s
    /// UpdateMultiRegionKey).
    async fn update_multi_region_key(
        &self,
        peer: &str,
        req: UpdateMultiRegionKeyRequest,
    ) -> Result<Empty, PeerError>;
}

/// One key version's material on its way to a peer: wrapped by the sending device under the
/// receiving device's trusted transport key.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplicaVersion {
    pub version: u32,
    pub created_at_ms: i64,
    /// The transport blob (only the receiving device can unwrap it).
    pub material: Vec<u8>,
}

crate::redact::redacted_debug!(ReplicaVersion {
    version,
    created_at_ms,
    material: redacted
});

/// Automatic rotation as the primary has it: a property every Region's key shares. Replicas
/// show it (GetKeyRotationStatus) and never rotate by themselves; the primary's rotations
/// reach them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedRotation {
    pub enabled: bool,
    pub period_days: Option<i32>,
    pub next_rotation_ms: Option<i64>,
}

/// AcceptReplica: what the primary's Region sends to make a replica.
#[derive(Debug, Clone, Default)]
pub struct AcceptReplicaRequest {
    /// The sending (primary) Region.
    pub source_region: String,
    /// The principal that called ReplicateKey (authorized for `kms:CreateKey` here).
    pub principal_arn: String,
    pub key_id: String,
    pub account: String,
    pub key_spec: String,
    pub key_usage: String,
    pub current_version: u32,
    /// The Regions after this replica is added (this Region among the replicas).
    pub primary_region: String,
    pub replica_regions: Vec<String>,
    pub policy: Option<String>,
    pub bypass_policy_lockout_safety_check: bool,
    pub description: String,
    pub tags: Vec<Tag>,
    pub versions: Vec<ReplicaVersion>,
    /// The primary's automatic rotation, when it has ever been enabled.
    pub rotation: Option<SharedRotation>,
}

/// AcceptReplica's answer: the replica as its Region sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptReplicaResponse {
    pub key_metadata: KeyMetadata,
    pub policy: String,
    pub tags: Vec<Tag>,
}

/// UpdateMultiRegionKey: a change the primary's Region makes to a key every Region holds.
#[derive(Debug, Clone, Default)]
pub struct UpdateMultiRegionKeyRequest {
    /// The sending Region (the primary's, or the old primary's on a primary change).
    pub source_region: String,
    /// The principal that called the operation behind it.
    pub principal_arn: String,
    pub key_id: String,
    /// The Regions after the change.
    pub primary_region: String,
    pub replica_regions: Vec<String>,
    /// A new key material version (rotation), wrapped for this Region.
    pub new_version: Option<ReplicaVersion>,
    /// The version new encryptions use from now on, when it changes.
    pub current_version: Option<u32>,
    /// The primary's automatic rotation, when it changed.
    pub rotation: Option<SharedRotation>,
}

/// ReplicateKey input.
#[derive(Debug, Clone, Default)]
pub struct ReplicateKeyRequest {
    pub key_id: String,
    pub replica_region: String,
    pub policy: Option<String>,
    pub bypass_policy_lockout_safety_check: bool,
    pub description: String,
    pub tags: Vec<Tag>,
}

/// ReplicateKey output: the replica's metadata, policy and tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicateKeyResponse {
    pub replica_key_metadata: KeyMetadata,
    pub replica_policy: String,
    pub replica_tags: Vec<Tag>,
}

/// UpdatePrimaryRegion input.
#[derive(Debug, Clone, Default)]
pub struct UpdatePrimaryRegionRequest {
    pub key_id: String,
    pub primary_region: String,
}

request_parameters! {
    ReplicateKeyRequest {
        key_id, replica_region, policy, bypass_policy_lockout_safety_check, description, tags,
    };
    UpdatePrimaryRegionRequest { key_id, primary_region };
}

impl ResponseElements for ReplicateKeyResponse {
    fn response_elements(&self) -> serde_json::Value {
        let m = &self.replica_key_metadata;
        serde_json::json!({"replicaKeyMetadata": {"keyId": m.key_id, "arn": m.arn}})
    }
}

impl Kms {
    /// The engine's peer link, once the daemon has wired it.
    pub fn set_region_link(&self, link: Arc<dyn RegionLink>) {
        let _ = self.region_link.set(link);
    }

    fn link(&self) -> Result<&Arc<dyn RegionLink>, KmsError> {
        self.region_link.get().ok_or_else(|| {
            KmsError::UnsupportedOperation("This deployment has no peer Regions.".into())
        })
    }

    /// An UpdateMultiRegionKey from this Region naming `key_id`'s Regions `m`, nothing else
    /// set: every change a Region sends starts from it.
    fn order(&self, key_id: &str, m: &MultiRegion) -> UpdateMultiRegionKeyRequest {
        UpdateMultiRegionKeyRequest {
            source_region: self.settings.region.clone(),
            key_id: key_id.to_string(),
            primary_region: m.primary_region.clone(),
            replica_regions: m.replica_regions.clone(),
            ..Default::default()
        }
    }

    /// The key ARN of `key_id` in `region`.
    pub(crate) fn key_arn_in(&self, region: &str, account: &str, key_id: &str) -> String {
        arn::key_arn(&self.settings.partition, region, account, key_id)
    }

    /// KeyMetadata's `MultiRegionConfiguration` of a key; `None` for a single-Region key.
    pub(crate) fn multi_region_configuration(
        &self,
        key: &CachedKey,
    ) -> Option<MultiRegionConfiguration> {
        let r = &key.record;
        let m = r.multi_region.as_ref()?;
        let entry = |region: &str| MultiRegionKey {
            arn: self.key_arn_in(region, &r.account, &r.key_id),
            region: region.to_string(),
        };
        Some(MultiRegionConfiguration {
            multi_region_key_type: key_type(m, &self.settings.region),
            primary_key: entry(&m.primary_region),
            replica_keys: m.replica_regions.iter().map(|r| entry(r)).collect(),
        })
    }

    /// The multi-Region key `key` is, in this Region: refused unless it is its primary.
    fn primary_here<'k>(&self, key: &'k CachedKey) -> Result<&'k MultiRegion, KmsError> {
        let arn = &key.arn;
        let m = key.record.multi_region.as_ref().ok_or_else(|| {
            KmsError::UnsupportedOperation(format!("{arn} is not a multi-Region key."))
        })?;
        if m.primary_region != self.settings.region {
            return Err(KmsError::UnsupportedOperation(format!(
                "{arn} is not a multi-Region primary key. Its primary key is in {}.",
                m.primary_region
            )));
        }
        Ok(m)
    }

    /// A peer Region name from a request member: a Region name, not this one, configured.
    fn peer_region(&self, member: &str, region: &str) -> Result<RegionName, KmsError> {
        let name = RegionName::parse(region).ok_or_else(|| {
            KmsError::validation(member, "Member must be a Region name ([a-z0-9-]{1,32})")
        })?;
        if region == self.settings.region {
            return Err(KmsError::Validation(format!(
                "{region} is this key's own Region."
            )));
        }
        if !self.link()?.peers().iter().any(|p| p == region) {
            return Err(PeerError::UnknownPeer(region.into()).into());
        }
        Ok(name)
    }

    /// ReplicateKey: a replica of the multi-Region primary key `req.key_id` in
    /// `req.replica_region`, with the same key id and key material. The material of every
    /// version is wrapped on this HSM under the replica Region's trusted transport key and
    /// unwrapped on the replica Region's HSM; the replica's Region authorizes the caller
    /// for `kms:CreateKey` and writes its row; this Region then adds the replica to its own.
    pub async fn replicate_key(
        &self,
        caller: &Caller,
        req: ReplicateKeyRequest,
    ) -> Result<ReplicateKeyResponse, KmsError> {
        validate::description(&req.description)?;
        validate::tags(&req.tags)?;
        let region = req.replica_region.clone();
        self.peer_region("replicaRegion", &region)?;
        let link = self.link()?.clone();
        let answer = self
            .change_key(caller, &req.key_id, |resolved| {
                let (req, link) = (req.clone(), link.clone());
                async move {
                    let key = resolved.key.clone();
                    let authz = AuthzRequest::on_key("kms:ReplicateKey", &resolved).with(
                        "kms:ReplicaRegion",
                        CtxValue::one(req.replica_region.as_str()),
                    );
                    self.authorize(caller, with_request_tags(authz, &req.tags))?;
                    check_state(&key, StateClass::Use)?;
                    let m = self.primary_here(&key)?.clone();
                    let listed = m.replica_regions.contains(&req.replica_region);
                    if listed
                        && self
                            .replica_answers(&link, &key, &m, &req.replica_region)
                            .await
                    {
                        return Err(KmsError::AlreadyExists(format!(
                            "{} already has a replica in {}.",
                            key.arn, req.replica_region
                        ))
                        .into());
                    }
                    // A listed replica its Region no longer has (its deletion report was
                    // lost) is made again.
                    let mut after = m.clone();
                    after.replica_regions.retain(|r| *r != req.replica_region);
                    after.replica_regions.push(req.replica_region.clone());
                    let accept = self.replica_order(caller, &key, &req, &after).await?;
                    let answer = link
                        .accept_replica(&req.replica_region, accept)
                        .await
                        .map_err(KmsError::from)?;
                    let updated = self
                        .update_record(&key, |r| r.multi_region = Some(after.clone()))
                        .await;
                    if let Err(e) = updated {
                        self.forget_replica(caller, &link, &key, &req.replica_region, &m)
                            .await;
                        return Err(e);
                    }
                    Ok((answer, after))
                }
            })
            .await?;
        let (answer, after) = answer;
        self.tell_replicas(
            &caller.principal_arn,
            &req.key_id,
            &after,
            &[region.as_str()],
        )
        .await;
        Ok(ReplicateKeyResponse {
            replica_key_metadata: answer.key_metadata,
            replica_policy: answer.policy,
            replica_tags: answer.tags,
        })
    }

    /// What the replica's Region receives: the key's shared properties, the replica's own
    /// policy, description and tags, and every version's material wrapped for that Region.
    async fn replica_order(
        &self,
        caller: &Caller,
        key: &CachedKey,
        req: &ReplicateKeyRequest,
        after: &MultiRegion,
    ) -> Result<AcceptReplicaRequest, KmsError> {
        let r = &key.record;
        let stored = self.store.get_key(&r.key_id).await?;
        let stored = stored.map(|b| b.versions).unwrap_or_default();
        let mut versions = Vec::with_capacity(stored.len());
        for v in stored.iter().filter(|v| key.versions.contains(&v.version)) {
            let material = self
                .wrap_for_peer(key, v.version, &req.replica_region)
                .await?;
            versions.push(ReplicaVersion {
                version: v.version,
                created_at_ms: v.created_at_ms,
                material,
            });
        }
        Ok(AcceptReplicaRequest {
            source_region: self.settings.region.clone(),
            principal_arn: caller.principal_arn.clone(),
            key_id: r.key_id.clone(),
            account: r.account.clone(),
            key_spec: r.key_spec.to_string(),
            key_usage: r.key_usage.to_string(),
            current_version: r.current_version,
            primary_region: after.primary_region.clone(),
            replica_regions: after.replica_regions.clone(),
            policy: req.policy.clone(),
            bypass_policy_lockout_safety_check: req.bypass_policy_lockout_safety_check,
            description: req.description.clone(),
            tags: req.tags.clone(),
            versions,
            rotation: self.shared_rotation(&r.key_id),
        })
    }

    /// The key's automatic rotation as its replicas take it (`None` if never enabled).
    pub(crate) fn shared_rotation(&self, key_id: &str) -> Option<SharedRotation> {
        let l = self.lifecycle_of(key_id);
        (l.rotation_enabled || l.rotation_period_days.is_some()).then_some(SharedRotation {
            enabled: l.rotation_enabled,
            period_days: l.rotation_period_days,
            next_rotation_ms: l.next_rotation_ms,
        })
    }

    /// After EnableKeyRotation or DisableKeyRotation on a multi-Region primary: its replicas
    /// take the schedule (best effort, as the Regions list).
    pub(crate) async fn tell_replicas_rotation(&self, key: &CachedKey) {
        let Some(m) = &key.record.multi_region else {
            return;
        };
        if m.primary_region != self.settings.region {
            return;
        }
        let Ok(link) = self.link() else { return };
        for region in &m.replica_regions {
            let req = UpdateMultiRegionKeyRequest {
                rotation: self.shared_rotation(&key.record.key_id),
                ..self.order(&key.record.key_id, m)
            };
            if let Err(e) = link.update_multi_region_key(region, req).await {
                tracing::warn!(key_id = %key.record.key_id, region = %region, error = %e,
                    "a replica did not take the primary's rotation schedule; will retry");
                self.mark_resync(&key.record.key_id, region);
            }
        }
    }

    /// Version `v` of `key` wrapped on this HSM for `peer`'s device (a token object's, or in
    /// wrapped residency its blob's, unwrapped and rewrapped in one HSM job): the bytes of a
    /// [`PeerBlob`], with a key pair's carrier and public key.
    pub(crate) async fn wrap_for_peer(
        &self,
        key: &CachedKey,
        v: u32,
        peer: &str,
    ) -> Result<Vec<u8>, KmsError> {
        let peer_name = RegionName::parse(peer)
            .ok_or_else(|| KmsError::Internal(format!("bad peer Region name {peer}")))?;
        let object = ObjectId::new(key.uuid, v);
        let hsm = self.device_of_record(&key.record)?;
        let exported = match self.blobs.get(object) {
            Some(blob) => {
                let public = self.blobs.pair_public_key(object).map(|p| (*p).clone());
                hsm.export_blob_for_peer(object, blob, public, peer_name)
                    .await
            }
            None => {
                let kind = self.version_kind(&hsm, &key.record).await?;
                hsm.export_for_peer(object, kind, peer_name).await
            }
        };
        exported
            .map(|b| b.to_bytes())
            .map_err(|e| region_hsm_error("wrap the key material for", peer, e))
    }

    /// The device kind of `record`'s versions: AES-256, HMAC, or a key pair's private half
    /// as this device holds it.
    pub(crate) async fn version_kind(
        &self,
        hsm: &Hsm,
        record: &KeyRecord,
    ) -> Result<BlobKind, KmsError> {
        match super::specs::kind(record.key_spec) {
            Some(SpecKind::Pair(p)) => {
                let usage = super::specs::pair_usage(record.key_usage);
                Ok(hsm.pair_blob_kind(p, usage).await?)
            }
            Some(kind) => Ok(secret_blob_kind(kind)),
            None => Err(KmsError::Internal(format!(
                "unknown key spec {}",
                record.key_spec
            ))),
        }
    }

    /// Whether `region` still holds its replica of `key` (asked with an unchanged update): a
    /// replica whose Region answers NotFound was deleted there and its report lost; a Region
    /// that cannot be reached counts as holding it.
    async fn replica_answers(
        &self,
        link: &Arc<dyn RegionLink>,
        key: &CachedKey,
        m: &MultiRegion,
        region: &str,
    ) -> bool {
        let probe = self.order(&key.record.key_id, m);
        !matches!(
            link.update_multi_region_key(region, probe).await,
            Err(PeerError::Refused(KmsError::NotFound(_)))
        )
    }

    /// Undoes a replica whose primary row could not be written: the replica's Region is told
    /// to drop it (best effort; `p11kms check` there shows what is left if it cannot be).
    async fn forget_replica(
        &self,
        caller: &Caller,
        link: &Arc<dyn RegionLink>,
        key: &CachedKey,
        region: &str,
        before: &MultiRegion,
    ) {
        let req = UpdateMultiRegionKeyRequest {
            principal_arn: caller.principal_arn.clone(),
            ..self.order(&key.record.key_id, before)
        };
        if let Err(e) = link.update_multi_region_key(region, req).await {
            tracing::error!(key_id = %key.record.key_id, region, error = %e,
                "a replica whose primary row was not written could not be withdrawn");
        }
    }

    /// Tells every Region of `after` except this one and `skip` the key's new Regions (best
    /// effort: a Region that cannot be reached keeps the old list until the next change).
    pub(crate) async fn tell_replicas(
        &self,
        principal_arn: &str,
        key_id: &str,
        after: &MultiRegion,
        skip: &[&str],
    ) {
        let Ok(link) = self.link() else { return };
        let local = self.settings.region.as_str();
        let others = std::iter::once(&after.primary_region)
            .chain(&after.replica_regions)
            .filter(|r| r.as_str() != local && !skip.contains(&r.as_str()));
        for region in others {
            let req = UpdateMultiRegionKeyRequest {
                principal_arn: principal_arn.to_string(),
                ..self.order(key_id, after)
            };
            if let Err(e) = link.update_multi_region_key(region, req).await {
                tracing::warn!(key_id, region = %region, error = %e,
                    "a peer Region did not take a multi-Region key's new Regions; will retry");
                self.mark_resync(key_id, region);
            }
        }
    }

    /// UpdatePrimaryRegion: the replica in `req.primary_region` becomes the primary and this
    /// Region's key a replica. The new primary's Region takes the change first; then this
    /// Region's row; then the other replicas are told.
    pub async fn update_primary_region(
        &self,
        caller: &Caller,
        req: UpdatePrimaryRegionRequest,
    ) -> Result<Empty, KmsError> {
        let target = req.primary_region.clone();
        self.peer_region("primaryRegion", &target)?;
        let link = self.link()?.clone();
        let after = self
            .change_key(caller, &req.key_id, |resolved| {
                let (target, link) = (target.clone(), link.clone());
                async move {
                    let key = resolved.key.clone();
                    let authz = AuthzRequest::on_key("kms:UpdatePrimaryRegion", &resolved)
                        .with("kms:PrimaryRegion", CtxValue::one(target.as_str()));
                    self.authorize(caller, authz)?;
                    check_state(&key, StateClass::Use)?;
                    let m = self.primary_here(&key)?;
                    if !m.replica_regions.contains(&target) {
                        return Err(KmsError::NotFound(format!(
                            "{} has no replica in {target}.",
                            key.arn
                        ))
                        .into());
                    }
                    let after = swapped(m, &target);
                    let order = UpdateMultiRegionKeyRequest {
                        principal_arn: caller.principal_arn.clone(),
                        ..self.order(&key.record.key_id, &after)
                    };
                    link.update_multi_region_key(&target, order)
                        .await
                        .map_err(KmsError::from)?;
                    self.update_record(&key, |r| r.multi_region = Some(after.clone()))
                        .await?;
                    Ok(after)
                }
            })
            .await?;
        self.tell_replicas(
            &caller.principal_arn,
            &req.key_id,
            &after,
            &[target.as_str()],
        )
        .await;
        Ok(Empty)
    }
}

impl Kms {
    /// ScheduleKeyDeletion of a multi-Region primary that still has replicas is refused: its
    /// replicas are deleted first, or another Region is made the primary. (AWS accepts the
    /// request and holds such a key in `PendingReplicaDeletion` until its last replica is
    /// gone; p11kms refuses it up front, `docs/regions.md`.)
    pub(crate) fn check_no_replicas(&self, key: &CachedKey) -> Result<(), KmsError> {
        match &key.record.multi_region {
            Some(m) if m.primary_region == self.settings.region && !m.replica_regions.is_empty() => {
                Err(KmsError::UnsupportedOperation(format!(
                    "{} is a multi-Region primary key with replicas in {}. Delete its replicas first, or make another Region the primary (UpdatePrimaryRegion).",
                    key.arn,
                    m.replica_regions.join(", ")
                )))
            }
            _ => Ok(()),
        }
    }

    /// After a multi-Region replica is deleted here: its primary's Region drops this Region
    /// from the key's replicas (best effort; if the primary cannot be reached, its list keeps
    /// this Region until an operator replicates again or the next change).
    pub(crate) async fn report_replica_deleted(&self, key: &CachedKey) {
        let Some(m) = &key.record.multi_region else {
            return;
        };
        let local = self.settings.region.as_str();
        if m.primary_region == local {
            return;
        }
        let Ok(link) = self.link() else { return };
        let req = UpdateMultiRegionKeyRequest {
            source_region: local.to_string(),
            principal_arn: String::new(),
            key_id: key.record.key_id.clone(),
            primary_region: m.primary_region.clone(),
            replica_regions: m
                .replica_regions
                .iter()
                .filter(|r| *r != local)
                .cloned()
                .collect(),
            new_version: None,
            current_version: None,
            rotation: None,
        };
        if let Err(e) = link.update_multi_region_key(&m.primary_region, req).await {
            tracing::warn!(key_id = %key.record.key_id, primary = %m.primary_region, error = %e,
                "the primary Region did not learn that this replica was deleted");
        }
    }

    /// Refuses a change only the primary makes (rotation) on a multi-Region replica.
    pub(crate) fn check_not_replica(&self, key: &CachedKey) -> Result<(), KmsError> {
        match &key.record.multi_region {
            Some(m) if m.primary_region != self.settings.region => {
                Err(KmsError::UnsupportedOperation(format!(
                    "{} is a multi-Region replica key: its rotation is managed by its primary key in {}.",
                    key.arn, m.primary_region
                )))
            }
            _ => Ok(()),
        }
    }

    /// A rotated version's key material: a multi-Region key's extractable only under trusted
    /// keys, any other key's never extractable.
    pub(crate) async fn generate_rotated(&self, object: ObjectId) -> Result<(), KmsError> {
        let multi = super::key_id::is_multi_region(&uuid::Uuid::from_bytes(object.key_id()));
        let made = match multi {
            true => {
                self.hsm
                    .generate_multi_region_key(object, BlobKind::Aes256)
                    .await
            }
            false => self.hsm.generate_aes_key(object).await,
        };
        Ok(made?)
    }

    /// Rotation of a multi-Region primary, before the new version becomes current: each
    /// replica's Region receives the version's material, wrapped for its HSM. Any failure
    /// stops the rotation; the version stays pending and the next rotation completes it
    /// (a replica that already holds it keeps it).
    pub(crate) async fn push_version_to_replicas(
        &self,
        key_id: &str,
        version: u32,
    ) -> Result<(), KmsError> {
        let key = self.current_key(key_id)?;
        let Some(m) = key.record.multi_region.clone() else {
            return Ok(());
        };
        if m.replica_regions.is_empty() {
            return Ok(());
        }
        let link = self.link()?.clone();
        let created_at_ms = self.now_ms();
        for region in &m.replica_regions {
            let material = self.wrap_for_peer(&key, version, region).await?;
            let req = UpdateMultiRegionKeyRequest {
                new_version: Some(ReplicaVersion {
                    version,
                    created_at_ms,
                    material,
                }),
                ..self.order(key_id, &m)
            };
            match link.update_multi_region_key(region, req).await {
                Ok(_) => {}
                // Deleted there, its report lost: no longer a replica.
                Err(PeerError::Refused(KmsError::NotFound(_))) => {
                    self.drop_gone_replica(key_id, region).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Removes `region` from the key's replicas (its Region no longer has the replica).
    async fn drop_gone_replica(&self, key_id: &str, region: &str) -> Result<(), KmsError> {
        let _guard = self.key_locks.key(key_id).await;
        let key = self.current_key(key_id)?;
        let Some(mut m) = key.record.multi_region.clone() else {
            return Ok(());
        };
        m.replica_regions.retain(|r| r != region);
        self.update_record(&key, |r| r.multi_region = Some(m))
            .await
            .map_err(|e| e.into_error())?;
        tracing::warn!(
            key_id,
            region,
            "a replica its Region no longer has was dropped from the key's Regions"
        );
        Ok(())
    }

    /// After a multi-Region primary's rotation: each replica encrypts under the new version
    /// too (best effort: one that misses it keeps encrypting under the previous version,
    /// which every Region decrypts, until the next change reaches it).
    pub(crate) async fn tell_replicas_current(&self, key: &CachedKey) {
        let Some(m) = &key.record.multi_region else {
            return;
        };
        let Ok(link) = self.link() else { return };
        for region in &m.replica_regions {
            let req = UpdateMultiRegionKeyRequest {
                current_version: Some(key.record.current_version),
                ..self.order(&key.record.key_id, m)
            };
            if let Err(e) = link.update_multi_region_key(region, req).await {
                tracing::warn!(key_id = %key.record.key_id, region = %region, error = %e,
                    "a replica did not switch to the primary's new key material version; will retry");
                self.mark_resync(&key.record.key_id, region);
            }
        }
    }
}

impl Kms {
    /// Remembers that `region` missed a change to `key_id`'s shared state: the primary's
    /// sweeps push the whole state to it until it takes it ([`Kms::resync_regions`]).
    pub(crate) fn mark_resync(&self, key_id: &str, region: &str) {
        let mut pending = self.region_resync.lock().unwrap_or_else(|p| p.into_inner());
        pending.insert((key_id.to_string(), region.to_string()));
    }

    fn unmark_resync(&self, pair: &(String, String)) {
        let mut pending = self.region_resync.lock().unwrap_or_else(|p| p.into_inner());
        pending.remove(pair);
    }

    /// One sweep's retry of every missed change: where this Region is the key's primary and
    /// the Region still one of its replicas, the key's Regions, current version and rotation
    /// schedule are sent whole. A Region that still cannot be reached stays pending; one that
    /// refuses is logged and dropped (a retry would not change its answer). In memory only: a
    /// restart forgets them, and the next change to the key reaches every Region again.
    pub(crate) async fn resync_regions(&self) -> usize {
        let pending: Vec<(String, String)> = {
            let p = self.region_resync.lock().unwrap_or_else(|p| p.into_inner());
            p.iter().cloned().collect()
        };
        let Ok(link) = self.link() else { return 0 };
        let mut done = 0;
        for pair in pending {
            let Some(req) = self.whole_state(&pair.0, &pair.1) else {
                self.unmark_resync(&pair);
                continue;
            };
            match link.update_multi_region_key(&pair.1, req).await {
                Err(PeerError::Unreachable { .. }) => continue,
                Err(e) => tracing::warn!(key_id = %pair.0, region = %pair.1, error = %e,
                    "a replica refused the primary's state; not retried"),
                Ok(_) => done += 1,
            }
            self.unmark_resync(&pair);
        }
        done
    }

    /// The whole shared state of `key_id` for replica `region`, if this Region is still its
    /// primary and `region` one of its replicas.
    fn whole_state(&self, key_id: &str, region: &str) -> Option<UpdateMultiRegionKeyRequest> {
        let key = self.current_key(key_id).ok()?;
        let m = key.record.multi_region.as_ref()?;
        let primary_here = m.primary_region == self.settings.region;
        if !primary_here || !m.replica_regions.iter().any(|r| r == region) {
            return None;
        }
        Some(UpdateMultiRegionKeyRequest {
            current_version: Some(key.record.current_version),
            rotation: self.shared_rotation(key_id),
            ..self.order(key_id, m)
        })
    }
}

/// `m` with `new_primary` as the primary and the old primary among the replicas, in its
/// place.
fn swapped(m: &MultiRegion, new_primary: &str) -> MultiRegion {
    let replica_regions = m
        .replica_regions
        .iter()
        .map(|r| match r == new_primary {
            true => m.primary_region.clone(),
            false => r.clone(),
        })
        .collect();
    MultiRegion {
        primary_region: new_primary.to_string(),
        replica_regions,
    }
}

/// A device failure while moving key material to or from a peer Region.
pub(crate) fn region_hsm_error(what: &str, peer: &str, e: crate::hsm::HsmError) -> KmsError {
    use crate::hsm::HsmErrorKind as K;
    match e.kind {
        K::Config => KmsError::UnsupportedOperation(format!(
            "This Region's HSM cannot {what} {peer}: {}. Has the security officer run `p11kms region trust --region {peer}`?",
            e.detail.as_deref().unwrap_or("no trusted key for that Region")
        )),
        _ => KmsError::KeyUnavailable(format!("The HSM could not {what} {peer}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions(p: &str, r: &[&str]) -> MultiRegion {
        MultiRegion {
            primary_region: p.into(),
            replica_regions: r.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_primary_swap_keeps_the_order_of_the_replicas() {
        let m = regions("us-east-1", &["eu-west-1", "ap-south-1"]);
        assert_eq!(
            swapped(&m, "ap-south-1"),
            regions("ap-south-1", &["eu-west-1", "us-east-1"])
        );
        assert_eq!(key_type(&m, "us-east-1"), MultiRegionKeyType::Primary);
        assert_eq!(key_type(&m, "eu-west-1"), MultiRegionKeyType::Replica);
    }
}
