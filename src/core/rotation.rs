//! Rotation: EnableKeyRotation, DisableKeyRotation, GetKeyRotationStatus, RotateKeyOnDemand,
//! ListKeyRotations, and the automatic rotation sweep (kms-spec 1.5 and 4.2).
//!
//! A rotation creates version `v + 1` of a symmetric AWS_KMS key as a new AES-256 object on the
//! token, in two phases like CreateKey: (1) the version row, (2) the HSM object, (3) one
//! transaction switching the key's current version and recording the rotation. Every older
//! version stays on the token and keeps decrypting (a blob names its version). A rotation
//! interrupted after (1) or (2) leaves a version row above the current version; `check` reports
//! it and the key's next rotation completes it (creating the object if it is missing).

use std::sync::Arc;

use super::authz::{AuthzRequest, CtxValue};
use super::change::Retry;
use super::domain::Origin;
use super::keys::{key_material_id, SYMMETRIC_DEFAULT};
use super::operation::{request_parameters, response_elements, Empty, Page, ResponseElements};
use super::residency::Wrapped;
use super::service::{ServiceAction, ServiceEventName};
use super::{validate, CachedKey, InterruptCreate, Kms, KmsError, Resolved};
use crate::hsm::ObjectId;
use crate::identity::Caller;
use crate::store::{KeyLifecycle, KeyState, KeyVersion, RotationEntry};

/// AWS's limit on RotateKeyOnDemand per key.
pub const MAX_ON_DEMAND_ROTATIONS: u32 = 25;
/// RotationPeriodInDays when EnableKeyRotation does not give one.
pub const DEFAULT_ROTATION_PERIOD_DAYS: i32 = 365;
/// `AUTOMATIC` rotation type.
pub const AUTOMATIC: &str = "AUTOMATIC";
/// `ON_DEMAND` rotation type.
pub const ON_DEMAND: &str = "ON_DEMAND";
const DAY_MS: i64 = 86_400_000;
/// RotateKeyOnDemand is a ConflictException while an automatic rotation is due this soon.
const AUTOMATIC_ROTATION_GUARD_MS: i64 = 20 * 60_000;

/// GetKeyRotationStatus output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRotationStatus {
    /// The key ARN.
    pub key_id: String,
    pub key_rotation_enabled: bool,
    pub rotation_period_in_days: Option<i32>,
    pub next_rotation_date_ms: Option<i64>,
    pub on_demand_rotation_start_date_ms: Option<i64>,
}

/// One ListKeyRotations entry (RotationsListEntry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationsListEntry {
    /// The key ARN.
    pub key_id: String,
    pub key_material_id: String,
    /// When this material came by rotation; `None` for the key's original material (listed
    /// with `IncludeKeyMaterial` = `ALL_KEY_MATERIAL`).
    pub rotation_date_ms: Option<i64>,
    /// `AUTOMATIC` or `ON_DEMAND`; `None` for the original material.
    pub rotation_type: Option<String>,
    /// `CURRENT` (encrypts now) or `NON_CURRENT` (decrypts only).
    pub key_material_state: String,
    /// Imported keys: `IMPORTED` or `PENDING_IMPORT`.
    pub import_state: Option<String>,
    /// Imported keys: `KEY_MATERIAL_EXPIRES` or `KEY_MATERIAL_DOES_NOT_EXPIRE`.
    pub expiration_model: Option<String>,
    /// Imported keys whose material expires: when (Unix milliseconds).
    pub valid_to_ms: Option<i64>,
}

/// A request naming one key: DisableKeyRotation, GetKeyRotationStatus, RotateKeyOnDemand.
macro_rules! key_request {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Default)]
        pub struct $name {
            pub key_id: String,
        }

        request_parameters!($name { key_id });
    )*};
}

key_request! {
    /// DisableKeyRotation input.
    DisableKeyRotationRequest;
    /// GetKeyRotationStatus input.
    GetKeyRotationStatusRequest;
    /// RotateKeyOnDemand input.
    RotateKeyOnDemandRequest;
}

/// EnableKeyRotation input.
#[derive(Debug, Clone, Default)]
pub struct EnableKeyRotationRequest {
    pub key_id: String,
    /// 90-2560 days; 365 when not given.
    pub rotation_period_in_days: Option<i32>,
}

request_parameters! {
    EnableKeyRotationRequest { key_id, rotation_period_in_days };
    ListKeyRotationsRequest { key_id, page, include_key_material };
}

response_elements!(RotateKeyOnDemandResponse { key_id });

impl ResponseElements for KeyRotationStatus {}

/// RotateKeyOnDemand output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotateKeyOnDemandResponse {
    /// The key ARN.
    pub key_id: String,
}

/// ListKeyRotations input.
#[derive(Debug, Clone, Default)]
pub struct ListKeyRotationsRequest {
    pub key_id: String,
    /// `Limit` and `Marker`.
    pub page: Page,
    /// `ALL_KEY_MATERIAL` or `ROTATIONS_ONLY` (the default).
    pub include_key_material: Option<String>,
}

impl ResponseElements for ListKeyRotationsResponse {}

/// One page of ListKeyRotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListKeyRotationsResponse {
    pub rotations: Vec<RotationsListEntry>,
    pub next_marker: Option<String>,
}

/// Rotation applies to symmetric keys with AWS_KMS origin only (class ROT).
fn check_rotatable(key: &CachedKey) -> Result<(), KmsError> {
    let r = &key.record;
    if r.key_spec != SYMMETRIC_DEFAULT {
        return Err(KmsError::UnsupportedOperation(format!(
            "{} has key spec {}; rotation applies to symmetric encryption keys only.",
            key.arn, r.key_spec
        )));
    }
    if r.origin != Origin::AwsKms {
        return Err(KmsError::UnsupportedOperation(format!(
            "{} has origin {}; rotation applies to keys with AWS_KMS key material only.",
            key.arn, r.origin
        )));
    }
    Ok(())
}

/// Class ROT's states: Enabled only (`read`: also Disabled and PendingDeletion).
fn check_rotation_state(key: &CachedKey, read: bool) -> Result<(), KmsError> {
    let arn = &key.arn;
    match key.state() {
        KeyState::Enabled => Ok(()),
        KeyState::Disabled | KeyState::PendingDeletion if read => Ok(()),
        KeyState::Disabled => Err(KmsError::Disabled(format!("{arn} is disabled."))),
        KeyState::PendingDeletion => Err(KmsError::InvalidState(format!(
            "{arn} is pending deletion."
        ))),
        KeyState::PendingImport => Err(KmsError::InvalidState(format!("{arn} is pending import."))),
        KeyState::Creating => Err(KmsError::InvalidState(format!("{arn} is creating."))),
        KeyState::Unavailable => Err(KmsError::InvalidState(format!("{arn} is unavailable."))),
    }
}

/// Removes a key from the set of rotations under way when dropped.
struct RotationSlot<'a> {
    kms: &'a Kms,
    key_id: String,
}

impl Drop for RotationSlot<'_> {
    fn drop(&mut self) {
        self.kms
            .rotating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key_id);
    }
}

impl Kms {
    /// A key's lifecycle row (a default one if it has none).
    pub(crate) fn lifecycle_of(&self, key_id: &str) -> KeyLifecycle {
        self.lifecycles
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key_id)
            .cloned()
            .unwrap_or_else(|| KeyLifecycle {
                key_id: key_id.to_string(),
                ..KeyLifecycle::default()
            })
    }

    /// Replaces a key's cached lifecycle (after the store has it).
    pub(crate) fn lifecycle_cache_put(&self, l: KeyLifecycle) {
        self.lifecycles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(l.key_id.clone(), l);
    }

    /// The ids of keys whose cached lifecycle satisfies `due` (the sweeps' work lists).
    pub(crate) fn lifecycle_keys_where(&self, due: impl Fn(&KeyLifecycle) -> bool) -> Vec<String> {
        self.lifecycles
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|l| due(l))
            .map(|l| l.key_id.clone())
            .collect()
    }

    /// Forgets a destroyed key's lifecycle.
    pub(crate) fn lifecycle_cache_remove(&self, key_id: &str) {
        self.lifecycles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key_id);
    }

    fn claim_rotation(&self, key_id: &str) -> Option<RotationSlot<'_>> {
        let mut rotating = self.rotating.lock().unwrap_or_else(|p| p.into_inner());
        if rotating.contains_key(key_id) {
            return None;
        }
        rotating.insert(key_id.to_string(), self.now_ms());
        Some(RotationSlot {
            kms: self,
            key_id: key_id.to_string(),
        })
    }

    /// The key a rotation operation acts on: resolved (by id or ARN, not alias), then
    /// checked by [`Kms::rotation_checks`]. The first steps of GetKeyRotationStatus and
    /// RotateKeyOnDemand.
    fn rotation_key(
        &self,
        caller: &Caller,
        key_id: &str,
        action: &'static str,
        extra: Option<(&'static str, CtxValue)>,
        read: bool,
    ) -> Result<Resolved, KmsError> {
        let resolved = self.resolve(caller, key_id, false)?;
        self.rotation_checks(caller, resolved, action, extra, read)
    }

    /// A resolved key authorized for `action` (with one more condition key when `extra`
    /// gives one), in a state the operation allows (`read`: PendingDeletion too) and a key
    /// that rotates.
    fn rotation_checks(
        &self,
        caller: &Caller,
        resolved: Resolved,
        action: &'static str,
        extra: Option<(&'static str, CtxValue)>,
        read: bool,
    ) -> Result<Resolved, KmsError> {
        let mut authz = AuthzRequest::on_key(action, &resolved);
        if let Some((condition_key, value)) = extra {
            authz = authz.with(condition_key, value);
        }
        self.authorize(caller, authz)?;
        check_rotation_state(&resolved.key, read)?;
        check_rotatable(&resolved.key)?;
        if !read {
            self.check_not_replica(&resolved.key)?;
        }
        Ok(resolved)
    }

    /// Stores a key's lifecycle row and caches it; the store raised the key row's version
    /// with it, and the key's cache entry follows. Callers hold the key's change lock.
    async fn store_lifecycle(&self, key: &CachedKey, l: KeyLifecycle) -> Result<(), KmsError> {
        super::record::before_change().await?;
        self.store.put_lifecycle(&l).await?;
        self.lifecycle_cache_put(l);
        let mut next = key.clone();
        next.record.row_version += 1;
        self.cache_put(next);
        Ok(())
    }

    /// EnableKeyRotation: automatic rotation every `period` days (90-2560, default 365). On a
    /// key that rotates already, a new period moves the next date to last rotation + period.
    pub async fn enable_key_rotation(
        &self,
        caller: &Caller,
        req: EnableKeyRotationRequest,
    ) -> Result<Empty, KmsError> {
        let days = req
            .rotation_period_in_days
            .unwrap_or(DEFAULT_ROTATION_PERIOD_DAYS);
        validate::int_range("rotationPeriodInDays", days, 90, 2560)?;
        let key = self.change_key(caller, &req.key_id, move |resolved| async move {
            let period = ("kms:RotationPeriodInDays", CtxValue::one(days.to_string()));
            let action = "kms:EnableKeyRotation";
            let resolved = self.rotation_checks(caller, resolved, action, Some(period), false)?;
            let now = self.now_ms();
            let mut l = self.lifecycle_of(&resolved.key.record.key_id);
            let next = match (
                l.rotation_enabled,
                l.next_rotation_ms,
                l.rotation_period_days,
            ) {
                (true, Some(next), Some(old)) => {
                    next - i64::from(old) * DAY_MS + i64::from(days) * DAY_MS
                }
                _ => now + i64::from(days) * DAY_MS,
            };
            l.rotation_enabled = true;
            l.rotation_period_days = Some(days);
            l.next_rotation_ms = Some(next);
            self.store_lifecycle(&resolved.key, l).await?;
            tracing::info!(key_id = %resolved.key.record.key_id, days, "automatic rotation enabled");
            Ok(resolved.key.clone())
        })
        .await?;
        self.tell_replicas_rotation(&key).await;
        Ok(Empty)
    }

    /// DisableKeyRotation.
    pub async fn disable_key_rotation(
        &self,
        caller: &Caller,
        req: DisableKeyRotationRequest,
    ) -> Result<Empty, KmsError> {
        let key = self
            .change_key(caller, &req.key_id, move |resolved| async move {
                let action = "kms:DisableKeyRotation";
                let resolved = self.rotation_checks(caller, resolved, action, None, false)?;
                let mut l = self.lifecycle_of(&resolved.key.record.key_id);
                if !l.rotation_enabled {
                    return Ok(None);
                }
                l.rotation_enabled = false;
                l.next_rotation_ms = None;
                self.store_lifecycle(&resolved.key, l).await?;
                Ok(Some(resolved.key.clone()))
            })
            .await?;
        if let Some(key) = key {
            self.tell_replicas_rotation(&key).await;
        }
        Ok(Empty)
    }

    /// GetKeyRotationStatus (Enabled, Disabled or PendingDeletion keys).
    pub async fn get_key_rotation_status(
        &self,
        caller: &Caller,
        req: GetKeyRotationStatusRequest,
    ) -> Result<KeyRotationStatus, KmsError> {
        let resolved =
            self.rotation_key(caller, &req.key_id, "kms:GetKeyRotationStatus", None, true)?;
        let l = self.lifecycle_of(&resolved.key.record.key_id);
        let started = self
            .rotating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&resolved.key.record.key_id)
            .copied();
        Ok(KeyRotationStatus {
            key_id: resolved.key.arn.clone(),
            key_rotation_enabled: l.rotation_enabled,
            rotation_period_in_days: l.rotation_period_days.filter(|_| l.rotation_enabled),
            next_rotation_date_ms: l.next_rotation_ms.filter(|_| l.rotation_enabled),
            on_demand_rotation_start_date_ms: started,
        })
    }

    /// RotateKeyOnDemand: a new version now; at most 25 per key; ConflictException while a
    /// rotation of the key is under way or an automatic one is due within 20 minutes. The
    /// automatic schedule does not move.
    pub async fn rotate_key_on_demand(
        &self,
        caller: &Caller,
        req: RotateKeyOnDemandRequest,
    ) -> Result<RotateKeyOnDemandResponse, KmsError> {
        let resolved =
            self.rotation_key(caller, &req.key_id, "kms:RotateKeyOnDemand", None, false)?;
        let id = resolved.key.record.key_id.clone();
        let Some(_slot) = self.claim_rotation(&id) else {
            return Err(KmsError::Conflict(format!(
                "A rotation of {} is already in progress.",
                resolved.key.arn
            )));
        };
        // The checks run again under the key's lock, on the key as it is then.
        let check = |key: &CachedKey, l: &KeyLifecycle| {
            check_rotation_state(key, false)?;
            if l.rotation_enabled
                && l.next_rotation_ms
                    .is_some_and(|n| n - self.now_ms() <= AUTOMATIC_ROTATION_GUARD_MS)
            {
                return Err(KmsError::Conflict(format!(
                    "An automatic rotation of {} is due within 20 minutes.",
                    key.arn
                )));
            }
            if l.on_demand_rotations >= MAX_ON_DEMAND_ROTATIONS {
                return Err(KmsError::LimitExceeded(format!(
                    "{} has reached the limit of {MAX_ON_DEMAND_ROTATIONS} on-demand rotations.",
                    key.arn
                )));
            }
            Ok(())
        };
        let rotated = self.rotate(&id, ON_DEMAND, check).await?;
        Ok(RotateKeyOnDemandResponse {
            key_id: rotated.arn.clone(),
        })
    }

    /// ListKeyRotations: the key's rotations, oldest first, paginated.
    pub async fn list_key_rotations(
        &self,
        caller: &Caller,
        req: ListKeyRotationsRequest,
    ) -> Result<ListKeyRotationsResponse, KmsError> {
        let (limit, after) = req.page.start()?;
        let key_id = req.key_id.as_str();
        let all_material = match req
            .include_key_material
            .as_deref()
            .filter(|v| !v.is_empty())
        {
            None | Some("ROTATIONS_ONLY") => false,
            Some("ALL_KEY_MATERIAL") => true,
            Some(_) => {
                return Err(KmsError::validation(
                    "includeKeyMaterial",
                    "Member must satisfy enum value set: [ALL_KEY_MATERIAL, ROTATIONS_ONLY]",
                ))
            }
        };
        let resolved = self.resolve(caller, key_id, false)?;
        self.authorize_key(caller, "kms:ListKeyRotations", &resolved, None)?;
        if resolved.key.record.key_spec != SYMMETRIC_DEFAULT {
            check_rotatable(&resolved.key)?;
        }
        let key = &resolved.key;
        let imported = key.record.origin == Origin::External;
        let lifecycle = imported.then(|| self.lifecycle_of(&key.record.key_id));
        let entry = |version: u32, rotation: Option<(i64, String)>| {
            let (rotation_date_ms, rotation_type) = rotation.unzip();
            RotationsListEntry {
                key_id: key.arn.clone(),
                key_material_id: key_material_id(ObjectId::new(key.uuid, version)),
                rotation_date_ms,
                rotation_type,
                key_material_state: if version == key.record.current_version {
                    "CURRENT".into()
                } else {
                    "NON_CURRENT".into()
                },
                import_state: imported.then(|| {
                    if key.record.state == KeyState::PendingImport {
                        "PENDING_IMPORT".into()
                    } else {
                        "IMPORTED".into()
                    }
                }),
                expiration_model: lifecycle.as_ref().and_then(|l| l.expiration_model.clone()),
                valid_to_ms: lifecycle.as_ref().and_then(|l| l.valid_to_ms),
            }
        };
        let entries = self.store.list_rotations(&key.record.key_id).await?;
        // The original material (version 1) has no rotation entry; ALL_KEY_MATERIAL lists it
        // first.
        // Pages are keyed by version, so a marker stays valid while rotations are added.
        let original = (all_material && !key.versions.is_empty()).then(|| (1, entry(1, None)));
        let (rotations, next_marker) = validate::page(
            original
                .into_iter()
                .chain(entries.into_iter().map(|e| {
                    let rotation = Some((e.rotated_at_ms, e.rotation_type));
                    (e.version, entry(e.version, rotation))
                }))
                .map(|(version, e)| (format!("{version:010}"), e)),
            after.as_deref(),
            limit,
        );
        Ok(ListKeyRotationsResponse {
            rotations,
            next_marker,
        })
    }

    /// The cached key `key_id`, as it is now (NotFoundException if it is gone).
    pub(crate) fn current_key(&self, key_id: &str) -> Result<Arc<CachedKey>, KmsError> {
        crate::core::key_id::parse(key_id)
            .ok()
            .and_then(|u| self.key_by_uuid(u.as_bytes()))
            .ok_or_else(|| KmsError::NotFound(format!("Key '{key_id}' does not exist")))
    }

    /// Creates the next version of key `key_id` and switches encryption to it; callers hold
    /// its rotation claim. Completes an interrupted earlier rotation instead of starting
    /// anew. Phase one (the version row) runs under the key's change lock after `check`
    /// passes on the key as it is then; the HSM object is made without any lock; phase two
    /// re-takes the lock and writes compare-and-set on the key as it is then.
    async fn rotate(
        &self,
        key_id: &str,
        rotation_type: &str,
        check: impl Fn(&CachedKey, &KeyLifecycle) -> Result<(), KmsError>,
    ) -> Result<Arc<CachedKey>, KmsError> {
        let made = self.pre_wrap_rotation(key_id).await?;
        let (object, leftover) = self.begin_rotate(key_id, check, made).await?;
        if self.hooks.interrupt_rotation() == InterruptCreate::AfterMetadataRow {
            return Err(KmsError::Internal(
                "rotation interrupted by a test hook after the version row".into(),
            ));
        }
        let present =
            self.blobs.get(object).is_some() || (leftover && self.hsm.exists(object).await?);
        if !present {
            if let Err(e) = self.generate_rotated(object).await {
                if !leftover {
                    self.abort_rotate(key_id, object.version()).await;
                }
                return Err(e);
            }
        }
        if self.hooks.interrupt_rotation() == InterruptCreate::AfterHsmObject {
            return Err(KmsError::Internal(
                "rotation interrupted by a test hook after the HSM object".into(),
            ));
        }
        // A multi-Region primary's replicas hold the version before anything encrypts
        // under it; a replica that cannot be reached leaves the rotation to be completed.
        self.push_version_to_replicas(key_id, object.version())
            .await?;
        let rotated = self
            .finish_rotate(key_id, object.version(), rotation_type)
            .await?;
        self.tell_replicas_current(&rotated).await;
        Ok(rotated)
    }

    /// In wrapped residency, the next version's key material, made before phase one: a blob
    /// leaves no token object behind, so it is stored with the version row in one step.
    /// `None` in token residency, and when an interrupted rotation is to be completed.
    async fn pre_wrap_rotation(&self, key_id: &str) -> Result<Option<(u32, Wrapped)>, KmsError> {
        let key = self.current_key(key_id)?;
        let current = key.record.current_version;
        if !self.wraps_new_keys(&key.record) || key.versions.iter().any(|v| *v > current) {
            return Ok(None);
        }
        let Some(version) = current.checked_add(1) else {
            return Ok(None); // begin_rotate answers LimitExceeded
        };
        let object = ObjectId::new(key.uuid, version);
        let blob = self.hsm.generate_wrapped_aes(object).await?;
        Ok(Some((version, Wrapped::secret(blob))))
    }

    /// Phase one of a rotation, under the key's lock: the new version's row (the key keeps
    /// encrypting under its current version), with its blob when `made` (wrapped residency),
    /// or the leftover version of an interrupted one.
    async fn begin_rotate(
        &self,
        key_id: &str,
        check: impl Fn(&CachedKey, &KeyLifecycle) -> Result<(), KmsError>,
        made: Option<(u32, Wrapped)>,
    ) -> Result<(ObjectId, bool), KmsError> {
        let _guard = self.key_locks.key(key_id).await;
        let key = self.current_key(key_id)?;
        check(&key, &self.lifecycle_of(key_id))?;
        super::record::before_change().await?;
        let current = key.record.current_version;
        let highest = key.versions.iter().copied().max().unwrap_or(current);
        let leftover = highest > current;
        let version = if leftover {
            tracing::warn!(
                key_id,
                version = highest,
                "completing an interrupted rotation"
            );
            highest
        } else {
            current.checked_add(1).ok_or_else(|| {
                KmsError::LimitExceeded(format!("{} has no version number left.", key.arn))
            })?
        };
        let object = ObjectId::new(key.uuid, version);
        let blob = match made {
            Some((v, blob)) if v == version => Some(blob),
            Some(_) => {
                return Err(KmsError::Conflict(format!(
                    "{} was rotated meanwhile; try again.",
                    key.arn
                )))
            }
            None => None,
        };
        if !leftover {
            self.store
                .begin_rotation(&KeyVersion {
                    key_id: key_id.to_string(),
                    version,
                    created_at_ms: self.now_ms(),
                    wrapped: blob.as_ref().map(super::residency::stored),
                })
                .await?;
            if let Some(blob) = blob {
                self.blobs.put(object, blob);
            }
            // The cache follows the store: the new version is known (not yet current).
            let mut pending = (*key).clone();
            pending.versions.push(version);
            pending.versions.sort_unstable();
            self.cache_put(pending);
        }
        Ok((object, leftover))
    }

    /// Undoes phase one of a rotation whose HSM object could not be made.
    async fn abort_rotate(&self, key_id: &str, version: u32) {
        let _guard = self.key_locks.key(key_id).await;
        match self.store.abort_rotation(key_id, version).await {
            Ok(()) => {
                if let Ok(key) = self.current_key(key_id) {
                    let mut back = (*key).clone();
                    back.versions.retain(|v| *v != version);
                    self.cache_put(back);
                }
            }
            Err(se) => {
                tracing::error!(key_id, version, error = %se, "could not roll back a failed rotation row")
            }
        }
    }

    /// Phase two of a rotation: switch, record, schedule, compare-and-set on the key as it is
    /// when the lock is re-taken, retried on fresh state when another node changed the key.
    /// If every attempt loses, the version row and HSM object stay, and the next rotation of
    /// the key completes them.
    async fn finish_rotate(
        &self,
        key_id: &str,
        version: u32,
        rotation_type: &str,
    ) -> Result<Arc<CachedKey>, KmsError> {
        for _ in 0..super::change::CHANGE_ATTEMPTS {
            let _guard = self.key_locks.key(key_id).await;
            let key = self.current_key(key_id)?;
            match self.try_finish_rotate(&key, version, rotation_type).await {
                Err(Retry::Stale) => {
                    tracing::info!(key_id, version, "key changed during its rotation; retrying");
                    self.refresh_key(key_id).await?;
                }
                other => return other.map_err(Retry::into_error),
            }
        }
        tracing::error!(
            key_id,
            version,
            "rotation not finished: the key kept changing"
        );
        Err(Retry::Stale.into_error())
    }

    /// One attempt at phase two of a rotation on `key` as cached now.
    async fn try_finish_rotate(
        &self,
        key: &CachedKey,
        version: u32,
        rotation_type: &str,
    ) -> Result<Arc<CachedKey>, Retry> {
        let key_id = key.record.key_id.clone();
        let now = self.now_ms();
        let mut cached = key.clone();
        cached.record.current_version = version;
        if !cached.versions.contains(&version) {
            cached.versions.push(version);
            cached.versions.sort_unstable();
        }
        let mut l = self.lifecycle_of(&key_id);
        if rotation_type == ON_DEMAND {
            l.on_demand_rotations += 1;
        } else if let (Some(next), Some(days)) = (l.next_rotation_ms, l.rotation_period_days) {
            let period = i64::from(days) * DAY_MS;
            let mut n = next + period;
            if n <= now {
                n = now + period;
            }
            l.next_rotation_ms = Some(n);
        }
        let entry = RotationEntry {
            key_id: key_id.clone(),
            version,
            rotated_at_ms: now,
            rotation_type: rotation_type.to_string(),
        };
        self.store
            .finish_rotation(&cached.record, &entry, &l)
            .await?;
        cached.record.row_version += 1;
        self.lifecycle_cache_put(l);
        let arc = self.cache_put(cached);
        tracing::info!(key_id, version, rotation_type, "key rotated");
        Ok(arc)
    }

    /// Rotates every key whose automatic rotation date has passed by the engine's clock.
    /// Disabled keys wait until they are enabled again. Reports each rotation (`RotateKey`,
    /// with its outcome) to the service sink and returns what it did; a key that failed is
    /// retried by the next sweep.
    pub async fn sweep_rotations(&self) -> Result<Vec<ServiceAction>, KmsError> {
        let now = self.now_ms();
        let is_due =
            |l: &KeyLifecycle| l.rotation_enabled && l.next_rotation_ms.is_some_and(|n| n <= now);
        let due = self.lifecycle_keys_where(is_due);
        let mut done = Vec::new();
        for key_id in due {
            if !self.service_ready() {
                tracing::warn!("rotation sweep paused: the audit trail cannot be written");
                break;
            }
            let Some(_slot) = self.claim_rotation(&key_id) else {
                continue;
            };
            let Ok(key) = self.current_key(&key_id) else {
                continue;
            };
            // Checked here to skip keys not due, and again under the key's lock by `rotate`.
            let check = |key: &CachedKey, l: &KeyLifecycle| {
                if key.record.state != KeyState::Enabled || !is_due(l) {
                    return Err(KmsError::InvalidState(format!(
                        "{} is not due for rotation.",
                        key.arn
                    )));
                }
                check_rotatable(key)?;
                // A multi-Region replica shows its primary's schedule; the primary rotates.
                self.check_not_replica(key)
            };
            if check(&key, &self.lifecycle_of(&key_id)).is_err() {
                continue;
            }
            let result = match self.service_intent(ServiceEventName::RotateKey, &key).await {
                Ok(()) => self.rotate(&key_id, AUTOMATIC, check).await,
                Err(e) => Err(e),
            };
            // One key's failure (device hiccup) must not hold back the others: log, retry on
            // the next sweep.
            let mut action =
                ServiceAction::on(ServiceEventName::RotateKey, &key, &result, self.now_ms());
            match &result {
                Ok(rotated) => action.key_version = Some(rotated.record.current_version),
                Err(e) => {
                    tracing::error!(key_id, error = %e, "automatic rotation failed; will retry")
                }
            }
            self.report_service(&action).await;
            done.push(action);
        }
        Ok(done)
    }
}
