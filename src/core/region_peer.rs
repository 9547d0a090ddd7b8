//! What a Region does when a peer Region asks (issue 20): AcceptReplica makes a replica of a
//! multi-Region key from material the peer's HSM wrapped for this one, UpdateMultiRegionKey
//! takes a change the key's primary made (new Regions, a primary change, a rotated version).
//!
//! The caller is the peer daemon (its own credentials, `[region.peers]` on its side), which
//! needs `p11kms:AcceptReplica` or `p11kms:UpdateMultiRegionKey` on `*` in this Region's
//! identity policies, and must name a Region this one has as a peer. The principal that
//! called ReplicateKey or UpdatePrimaryRegion in the primary's Region is then authorized
//! here too, as AWS does: `kms:CreateKey` for a new replica (identity policies: the key
//! does not exist yet), `kms:UpdatePrimaryRegion` on this Region's key when it becomes the
//! primary.

use std::sync::Arc;

use super::authz::{AuthzRequest, CtxValue};
use super::domain::{KeySpec, KeyUsage, Origin};
use super::operation::{request_parameters, response_elements, Empty};
use super::policies::compile_key_policy;
use super::regions::{
    key_type, region_hsm_error, AcceptReplicaRequest, AcceptReplicaResponse, MultiRegionKeyType,
    ReplicaVersion, SharedRotation, UpdateMultiRegionKeyRequest,
};
use super::residency::Wrapped;
use super::specs::SpecKind;
use super::tags::with_request_tags;
use super::{validate, CachedKey, Kms, KmsError, Resolved};
use crate::hsm::wrapped::{BlobKind, WrappedBlob};
use crate::hsm::{HsmErrorKind, ObjectId, PeerBlob};
use crate::identity::{AuthMethod, Caller};
use crate::store::{KeyRecord, KeyState, KeyVersion, MultiRegion};

request_parameters! {
    AcceptReplicaRequest {
        source_region, principal_arn, key_id, primary_region, replica_regions, policy,
        bypass_policy_lockout_safety_check, description, tags,
    };
    UpdateMultiRegionKeyRequest {
        source_region, principal_arn, key_id, primary_region, replica_regions, current_version,
    };
}

impl AcceptReplicaResponse {
    fn key_id(&self) -> &str {
        &self.key_metadata.key_id
    }
}

response_elements!(AcceptReplicaResponse { key_id = Self::key_id });

impl Kms {
    /// AcceptReplica: the replica of `req.key_id` in this Region, from the primary's Region.
    /// Its row is written in `Creating` first; every version's material is unwrapped on this
    /// HSM; then the versions and `Enabled` are written in one transaction. Any failure
    /// removes what was made.
    pub async fn accept_replica(
        &self,
        caller: &Caller,
        req: AcceptReplicaRequest,
    ) -> Result<AcceptReplicaResponse, KmsError> {
        self.authorize(caller, AuthzRequest::new("p11kms:AcceptReplica", "*"))?;
        self.check_peer_order(
            caller,
            &req.source_region,
            &req.primary_region,
            &req.replica_regions,
        )?;
        let uuid = multi_region_uuid(&req.key_id)?;
        // A replica deleted here before may be made again (as AWS allows).
        if self.key_by_uuid(uuid.as_bytes()).is_some() {
            return Err(KmsError::AlreadyExists(format!(
                "{} already exists in {}.",
                self.key_arn(&req.account, &req.key_id),
                self.settings.region
            )));
        }
        let target = self.on_behalf_of(&req.principal_arn, &req.account)?;
        self.authorize_replica_create(&target, &req)?;
        validate::description(&req.description)?;
        validate::tags(&req.tags)?;
        let record = self.replica_record(&req)?;
        let compiled = compile_key_policy(&record.policy)?;
        if req.policy.is_some() {
            self.check_policy_principals(&compiled)?;
            if !req.bypass_policy_lockout_safety_check {
                let prospective =
                    self.new_cached(record.clone(), Vec::new(), Vec::new(), compiled.clone())?;
                self.lockout_check(&target, &prospective, &compiled)?;
            }
        }
        let creation = self.insert_creating(&record, &req.tags).await?;
        let made = self.unwrap_replica_versions(&record, uuid, &req).await;
        let versions = match made {
            Ok(v) => v,
            Err(e) => {
                self.withdraw_creating(&record, uuid, &req.versions).await;
                creation.finished();
                return Err(e);
            }
        };
        let mut enabled = record.clone();
        enabled.state = KeyState::Enabled;
        let rows: Vec<KeyVersion> = versions.iter().map(|(row, _)| row.clone()).collect();
        if let Err(e) = self.store.add_versions_and_update(&rows, &enabled).await {
            self.withdraw_creating(&record, uuid, &req.versions).await;
            creation.finished();
            return Err(e.into());
        }
        creation.finished();
        enabled.row_version += 1;
        if let Some(r) = req.rotation {
            let mut l = self.lifecycle_of(&req.key_id);
            apply_rotation(&mut l, r);
            match self.store.put_lifecycle(&l).await {
                Ok(()) => {
                    enabled.row_version += 1;
                    self.lifecycle_cache_put(l);
                }
                Err(e) => tracing::warn!(key_id = %req.key_id, error = %e,
                    "the replica's rotation schedule was not stored"),
            }
        }
        for (row, wrapped) in versions {
            if let Some(w) = wrapped {
                self.blobs
                    .put(ObjectId::new(*uuid.as_bytes(), row.version), w);
            }
        }
        let numbers = rows.iter().map(|v| v.version).collect();
        let cached = self.new_cached(enabled, numbers, req.tags.clone(), compiled)?;
        let cached = self.cache_put(cached);
        self.cache_write().deleted.remove(&uuid);
        tracing::info!(key_id = %req.key_id, source = %req.source_region, "replica key created");
        Ok(AcceptReplicaResponse {
            key_metadata: self.key_metadata(&cached),
            policy: cached.record.policy.to_string(),
            tags: req.tags,
        })
    }

    /// A peer's order is for this deployment: from a configured peer Region, which is the
    /// key's primary, with this Region among the Regions it names.
    fn check_peer_order(
        &self,
        caller: &Caller,
        source: &str,
        primary: &str,
        replicas: &[String],
    ) -> Result<(), KmsError> {
        self.check_known_peer(caller, source)?;
        let local = &self.settings.region;
        let here = primary == local || replicas.iter().any(|r| r == local);
        if !here || replicas.iter().any(|r| r == primary) {
            return Err(KmsError::Validation(format!(
                "The Regions of this multi-Region key do not include {local} once."
            )));
        }
        Ok(())
    }

    /// `source` is one of this Region's configured peers, and `caller` is that Region's
    /// daemon when `[region.peer_principals]` names it.
    fn check_known_peer(&self, caller: &Caller, source: &str) -> Result<(), KmsError> {
        let link = self.region_link.get();
        if !link.is_some_and(|l| l.peers().iter().any(|p| p == source)) {
            return Err(KmsError::AccessDenied(format!(
                "{source} is not a peer Region of {}.",
                self.settings.region
            )));
        }
        match link.and_then(|l| l.peer_principal(source)) {
            Some(p) if p != caller.principal_arn => Err(KmsError::AccessDenied(format!(
                "{} is not the daemon of {source}.",
                caller.principal_arn
            ))),
            _ => Ok(()),
        }
    }

    /// The principal a peer acts for, as a caller of this Region (it must exist in this
    /// Region's identity directory, in the key's account).
    fn on_behalf_of(&self, principal_arn: &str, account: &str) -> Result<Caller, KmsError> {
        let denied = || {
            KmsError::AccessDenied(format!(
                "User: {principal_arn} is not authorized to perform: kms:CreateKey in {}",
                self.settings.region
            ))
        };
        let principal = self
            .directory
            .current()
            .principal(principal_arn)
            .ok_or_else(denied)?;
        let caller = Caller::new(principal, AuthMethod::Internal, None, true);
        if caller.account != account {
            return Err(denied());
        }
        Ok(caller)
    }

    /// `kms:CreateKey` (and `kms:TagResource` with tags) for the replica, as CreateKey
    /// authorizes a new key, with `kms:MultiRegionKeyType` `REPLICA`.
    fn authorize_replica_create(
        &self,
        target: &Caller,
        req: &AcceptReplicaRequest,
    ) -> Result<(), KmsError> {
        let bypass = match req.bypass_policy_lockout_safety_check {
            true => "true",
            false => "false",
        };
        let authz = AuthzRequest::new("kms:CreateKey", "*")
            .with("kms:KeySpec", CtxValue::one(req.key_spec.as_str()))
            .with("kms:KeyUsage", CtxValue::one(req.key_usage.as_str()))
            .with("kms:KeyOrigin", CtxValue::one("AWS_KMS"))
            .with("kms:MultiRegion", CtxValue::one("true"))
            .with("kms:MultiRegionKeyType", CtxValue::one("REPLICA"))
            .with("kms:BypassPolicyLockoutSafetyCheck", CtxValue::one(bypass));
        self.authorize(target, with_request_tags(authz, &req.tags))?;
        if !req.tags.is_empty() {
            let tag_authz = AuthzRequest::new("kms:TagResource", "*");
            self.authorize(target, with_request_tags(tag_authz, &req.tags))?;
        }
        Ok(())
    }

    /// The replica's row, in `Creating`.
    fn replica_record(&self, req: &AcceptReplicaRequest) -> Result<KeyRecord, KmsError> {
        let spec = KeySpec::parse(&req.key_spec).filter(|s| super::specs::kind(*s).is_some());
        let (Some(key_spec), Some(key_usage), false) = (
            spec,
            KeyUsage::parse(&req.key_usage),
            req.versions.is_empty(),
        ) else {
            return Err(KmsError::Validation(
                "The replica's key spec, key usage or key material is missing.".into(),
            ));
        };
        if !req
            .versions
            .iter()
            .any(|v| v.version == req.current_version)
        {
            return Err(KmsError::Validation(
                "The replica's current version has no key material.".into(),
            ));
        }
        let policy = match &req.policy {
            Some(p) => p.clone(),
            None => crate::policy::default_key_policy(&self.settings.partition, &req.account),
        };
        Ok(KeyRecord {
            key_id: req.key_id.clone(),
            account: req.account.clone(),
            description: req.description.clone(),
            key_spec,
            key_usage,
            origin: Origin::AwsKms,
            state: KeyState::Creating,
            // The replica's own creation (AWS shows it so; the creating grace counts from it).
            created_at_ms: self.now_ms(),
            deletion_date_ms: None,
            pending_window_days: None,
            current_version: req.current_version,
            policy: policy.into(),
            custom_key_store_id: None,
            xks_key_id: None,
            row_version: 1,
            multi_region: Some(MultiRegion {
                primary_region: req.primary_region.clone(),
                replica_regions: req.replica_regions.clone(),
            }),
        })
    }

    /// Unwraps every version's material on this HSM; the version rows to write (with their
    /// blobs in wrapped residency).
    async fn unwrap_replica_versions(
        &self,
        record: &KeyRecord,
        uuid: uuid::Uuid,
        req: &AcceptReplicaRequest,
    ) -> Result<Vec<(KeyVersion, Option<Wrapped>)>, KmsError> {
        let kind = self.version_kind(&self.hsm, record).await?;
        let mut rows = Vec::with_capacity(req.versions.len());
        for v in &req.versions {
            let wrapped = self
                .unwrap_from_peer(record, uuid, kind, v, &req.source_region)
                .await?;
            let row = KeyVersion {
                key_id: record.key_id.clone(),
                version: v.version,
                created_at_ms: v.created_at_ms,
                wrapped: wrapped.as_ref().map(super::residency::stored),
            };
            rows.push((row, wrapped));
        }
        Ok(rows)
    }

    /// One version's material from `source`, unwrapped on this HSM: into the version's token
    /// object(s) with the multi-Region custody, or in wrapped residency rewrapped on the
    /// device under this Region's master key (the blob is returned).
    async fn unwrap_from_peer(
        &self,
        record: &KeyRecord,
        uuid: uuid::Uuid,
        kind: BlobKind,
        v: &ReplicaVersion,
        source: &str,
    ) -> Result<Option<Wrapped>, KmsError> {
        let refused = || {
            KmsError::Internal(format!(
                "The HSM of {} refused the key material sent by {source}: it was altered or not wrapped for this Region.",
                self.settings.region
            ))
        };
        let blob = PeerBlob::from_bytes(&v.material).map_err(|_| refused())?;
        let object = ObjectId::new(*uuid.as_bytes(), v.version);
        let public_key = blob.public_key.clone();
        let made = match self.wraps_new_keys(record) {
            true => self
                .hsm
                .import_from_peer_wrapped(object, kind, blob)
                .await
                .map(|b| Some(wrapped_of(b, public_key))),
            false => self
                .hsm
                .import_from_peer(object, kind, blob)
                .await
                .map(|()| None),
        };
        made.map_err(|e| match e.kind {
            HsmErrorKind::BlobRejected => refused(),
            _ => region_hsm_error("unwrap the key material from", source, e),
        })
    }

    /// Removes a replica whose creation failed: the versions' objects, then the row.
    async fn withdraw_creating(
        &self,
        record: &KeyRecord,
        uuid: uuid::Uuid,
        versions: &[ReplicaVersion],
    ) {
        let pair = matches!(super::specs::kind(record.key_spec), Some(SpecKind::Pair(_)));
        for v in versions {
            let object = ObjectId::new(*uuid.as_bytes(), v.version);
            let destroyed = match pair {
                true => self.hsm.destroy_key_pair(object).await,
                false => self.hsm.destroy(object).await,
            };
            if let Err(e) = destroyed {
                if e.kind != HsmErrorKind::ObjectNotFound {
                    tracing::error!(key_id = %record.key_id, error = %e,
                        "a failed replica's key object could not be destroyed; `p11kms check` reports it");
                }
            }
        }
        if let Err(e) = self.store.delete_key(&record.key_id).await {
            tracing::error!(key_id = %record.key_id, error = %e,
                "a failed replica's row could not be removed; reconciliation resolves it");
        }
    }

    /// UpdateMultiRegionKey: the key's Regions as the primary's Region now has them, a new
    /// version's material, or a new current version. A Region the new Regions leave out
    /// drops its key's row (a replica the primary withdrew).
    pub async fn update_multi_region_key(
        &self,
        caller: &Caller,
        req: UpdateMultiRegionKeyRequest,
    ) -> Result<Empty, KmsError> {
        self.authorize(
            caller,
            AuthzRequest::new("p11kms:UpdateMultiRegionKey", "*"),
        )?;
        let uuid = multi_region_uuid(&req.key_id)?;
        let Some(key) = self.key_by_uuid(uuid.as_bytes()) else {
            return Err(KmsError::NotFound(format!(
                "Key '{}' does not exist in {}",
                req.key_id, self.settings.region
            )));
        };
        let local = self.settings.region.clone();
        let current = key.record.multi_region.clone().ok_or_else(|| {
            KmsError::UnsupportedOperation(format!("{} is not a multi-Region key.", key.arn))
        })?;
        self.check_known_peer(caller, &req.source_region)?;
        // Only the key's primary (or the old primary handing over) sends changes; a replica
        // only reports its own deletion, to the primary.
        if req.source_region != current.primary_region {
            return self.take_replica_deletion(&key, &current, &req).await;
        }
        let stays = req.primary_region == local || req.replica_regions.contains(&local);
        if !stays {
            return self.drop_withdrawn_replica(&key).await;
        }
        let becomes_primary = req.primary_region == local && current.primary_region != local;
        if becomes_primary {
            let target = self.on_behalf_of(&req.principal_arn, &key.record.account)?;
            let resolved = Resolved {
                key: key.clone(),
                alias: None,
            };
            let authz = AuthzRequest::on_key("kms:UpdatePrimaryRegion", &resolved)
                .with("kms:PrimaryRegion", CtxValue::one(local.as_str()));
            self.authorize(&target, authz)?;
        }
        if let Some(v) = &req.new_version {
            self.take_peer_version(&key, uuid, v, &req.source_region)
                .await?;
        }
        if let Some(r) = req.rotation {
            self.take_shared_rotation(&key.record.key_id, r).await?;
        }
        self.apply_regions(&key, &req).await?;
        // The new primary answers for the other replicas from now on: its sweeps make sure
        // each has the swap, whatever the old primary could tell them.
        if becomes_primary {
            for r in req
                .replica_regions
                .iter()
                .filter(|r| **r != req.source_region)
            {
                self.mark_resync(&req.key_id, r);
            }
        }
        Ok(Empty)
    }

    /// At the primary: a replica's Region reports that its replica was deleted. The one
    /// change a replica may send: the same primary, and the replicas without the sender.
    async fn take_replica_deletion(
        &self,
        key: &Arc<CachedKey>,
        current: &MultiRegion,
        req: &UpdateMultiRegionKeyRequest,
    ) -> Result<Empty, KmsError> {
        let source = &req.source_region;
        let expected: Vec<String> = current
            .replica_regions
            .iter()
            .filter(|r| *r != source)
            .cloned()
            .collect();
        // The list the replica sends may be stale (it missed an update): the primary's own,
        // without the sender, is what is written.
        let own_deletion = current.primary_region == self.settings.region
            && current.replica_regions.contains(source)
            && req.primary_region == current.primary_region
            && !req.replica_regions.contains(source)
            && req.new_version.is_none()
            && req.current_version.is_none();
        if !own_deletion {
            return Err(KmsError::AccessDenied(format!(
                "{source} is not the primary Region of {}.",
                key.arn
            )));
        }
        let corrected = UpdateMultiRegionKeyRequest {
            replica_regions: expected.clone(),
            ..req.clone()
        };
        self.apply_regions(key, &corrected).await?;
        let after = MultiRegion {
            primary_region: current.primary_region.clone(),
            replica_regions: expected,
        };
        self.tell_replicas("", &key.record.key_id, &after, &[source.as_str()])
            .await;
        Ok(Empty)
    }

    /// Writes the new Regions (and current version) on this Region's row.
    async fn apply_regions(
        &self,
        key: &Arc<CachedKey>,
        req: &UpdateMultiRegionKeyRequest,
    ) -> Result<Empty, KmsError> {
        let key_id = key.record.key_id.clone();
        let after = MultiRegion {
            primary_region: req.primary_region.clone(),
            replica_regions: req.replica_regions.clone(),
        };
        let _guard = self.key_locks.key(&key_id).await;
        let fresh = self.key_by_uuid(&key.uuid).unwrap_or_else(|| key.clone());
        if let Some(v) = req.current_version {
            if !fresh.versions.contains(&v) {
                return Err(KmsError::Validation(format!(
                    "Version {v} of {key_id} has no key material in {}.",
                    self.settings.region
                )));
            }
        }
        self.update_record(&fresh, |r| {
            r.multi_region = Some(after);
            if let Some(v) = req.current_version {
                r.current_version = v;
            }
        })
        .await
        .map_err(|e| e.into_error())?;
        let kind = key_type(
            fresh.record.multi_region.as_ref().unwrap_or(&MultiRegion {
                primary_region: String::new(),
                replica_regions: Vec::new(),
            }),
            &self.settings.region,
        );
        tracing::info!(key_id, was = %kind, primary = %req.primary_region, "multi-Region key updated by its primary");
        Ok(Empty)
    }

    /// A new version of a replica's key material (the primary rotated): unwrapped on this HSM
    /// and its row added; the key's current version does not change here.
    async fn take_peer_version(
        &self,
        key: &Arc<CachedKey>,
        uuid: uuid::Uuid,
        v: &ReplicaVersion,
        source: &str,
    ) -> Result<(), KmsError> {
        if key.versions.contains(&v.version) {
            return Ok(());
        }
        if key_type(
            key.record.multi_region.as_ref().expect("checked"),
            &self.settings.region,
        ) != MultiRegionKeyType::Replica
        {
            return Err(KmsError::UnsupportedOperation(
                "Only a replica takes key material from its primary.".into(),
            ));
        }
        let kind = self.version_kind(&self.hsm, &key.record).await?;
        let wrapped = self
            .unwrap_from_peer(&key.record, uuid, kind, v, source)
            .await?;
        let row = KeyVersion {
            key_id: key.record.key_id.clone(),
            version: v.version,
            created_at_ms: v.created_at_ms,
            wrapped: wrapped.as_ref().map(super::residency::stored),
        };
        let _guard = self.key_locks.key(&key.record.key_id).await;
        let fresh = self.key_by_uuid(&key.uuid).unwrap_or_else(|| key.clone());
        let record = fresh.record.clone();
        let object = ObjectId::new(*uuid.as_bytes(), v.version);
        if let Err(e) = self.store.add_versions_and_update(&[row], &record).await {
            if wrapped.is_none() {
                let _ = self.hsm.destroy(object).await;
            }
            return Err(e.into());
        }
        if let Some(w) = wrapped {
            self.blobs.put(object, w);
        }
        let mut cached = (*fresh).clone();
        cached.record.row_version += 1;
        cached.versions.push(v.version);
        self.cache_put(cached);
        Ok(())
    }

    /// The primary's automatic rotation schedule, stored as this replica's (which the sweeper
    /// never acts on: replicas rotate when their primary does).
    async fn take_shared_rotation(&self, key_id: &str, r: SharedRotation) -> Result<(), KmsError> {
        let _guard = self.key_locks.key(key_id).await;
        let mut l = self.lifecycle_of(key_id);
        apply_rotation(&mut l, r);
        self.store.put_lifecycle(&l).await?;
        self.lifecycle_cache_put(l);
        self.refresh_key(key_id).await.map(|_| ())
    }

    /// A replica its primary withdrew (its ReplicateKey could not finish): its objects and
    /// row are removed at once; it was never answered to anyone as made.
    async fn drop_withdrawn_replica(&self, key: &Arc<CachedKey>) -> Result<Empty, KmsError> {
        let pair = matches!(
            super::specs::kind(key.record.key_spec),
            Some(SpecKind::Pair(_))
        );
        for &v in &key.versions {
            let _ = self
                .destroy_version_objects(key, ObjectId::new(key.uuid, v), pair)
                .await;
        }
        self.store.delete_key(&key.record.key_id).await?;
        self.cache_write()
            .remove_key(&uuid::Uuid::from_bytes(key.uuid));
        tracing::warn!(key_id = %key.record.key_id, "replica withdrawn by its primary Region");
        Ok(Empty)
    }
}

/// `r` written on a lifecycle row.
fn apply_rotation(l: &mut crate::store::KeyLifecycle, r: SharedRotation) {
    l.rotation_enabled = r.enabled;
    l.rotation_period_days = r.period_days;
    l.next_rotation_ms = r.next_rotation_ms.filter(|_| r.enabled);
}

/// The 16 bytes of a multi-Region key id; ValidationException for anything else.
fn multi_region_uuid(key_id: &str) -> Result<uuid::Uuid, KmsError> {
    super::key_id::parse(key_id)
        .ok()
        .filter(super::key_id::is_multi_region)
        .ok_or_else(|| KmsError::validation("keyId", "Member must be a multi-Region key id"))
}

/// A blob made from a peer's material, as the engine keeps it (a key pair's with its public
/// key).
fn wrapped_of(blob: WrappedBlob, public_key: Option<Vec<u8>>) -> Wrapped {
    match public_key {
        Some(spki) => Wrapped::pair(blob, spki),
        None => Wrapped::secret(blob),
    }
}
