//! The bodies of the HSM operations. Each runs inside a worker job, on the
//! worker's own session, and makes every PKCS#11 call through `WorkerCtx::call`.

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectHandle};
use cryptoki::session::SessionState;
use zeroize::Zeroizing;

use super::call::Call;
use super::error::{is_handle_invalid, is_session_broken, rv_string, HsmError, HsmErrorKind};
use super::objects::{
    class_name, cmk_aes_template, mechanism_name, session_wrapping_key_template, CopyState,
    ObjectId, Part,
};
use super::pool::WorkerCtx;
use super::{AadBuilder, GcmSealed, KeyAttributes, ObjectInfo, GCM_IV_LEN, GCM_TAG_LEN};

/// GCM tag length in bits.
const TAG_BITS: u64 = (GCM_TAG_LEN * 8) as u64;

// ---------------------------------------------------------------- handles

/// Find the token object of `part` with `CKA_ID` = `id` (a linear scan in SoftHSM2).
/// `Ok(None)` if absent; an error if not unique.
pub(crate) fn find_part(
    ctx: &mut WorkerCtx,
    id: &ObjectId,
    part: Part,
) -> Result<Option<ObjectHandle>, HsmError> {
    let search = [
        Attribute::Class(part.class()),
        Attribute::Token(true),
        Attribute::Id(id.0.to_vec()),
    ];
    find_unique(ctx, &search, |n| {
        format!("{n} {part:?} objects share the CKA_ID of {id}")
    })
}

/// Pauses before the objects a search found several of are looked at again (see
/// [`find_unique`]).
const CLASH_PAUSES_MS: [u64; 3] = [1, 2, 4];

/// The one object `search` finds, `None` for none; an error (detail from `clash`) when
/// several match what should be unique.
///
/// When several are found, each is asked again after a short pause, up to three times,
/// whether it is still a token object, before the clash is believed: SoftHSM2's
/// `C_CopyObject` puts the copy in the session store with every attribute of the original,
/// `CKA_TOKEN` included, before it applies the copy's template, so a search in another
/// thread can see a token object twice for an instant (a worker copying a key into its
/// session while another looks the key up). The copy it saw is then a session object, or
/// gone.
pub(crate) fn find_unique(
    ctx: &mut WorkerCtx,
    search: &[Attribute],
    clash: impl FnOnce(usize) -> String,
) -> Result<Option<ObjectHandle>, HsmError> {
    let mut found = ctx.call(Call::FindObjects, |s| s.find_objects(search))?;
    for pause in CLASH_PAUSES_MS {
        if found.len() < 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(pause));
        found = still_token_objects(ctx, &found)?;
    }
    at_most_one(ctx, &found, clash)
}

/// Those of `handles` that are still token objects (a destroyed one is left out).
fn still_token_objects(
    ctx: &mut WorkerCtx,
    handles: &[ObjectHandle],
) -> Result<Vec<ObjectHandle>, HsmError> {
    let mut kept = Vec::with_capacity(handles.len());
    for &h in handles {
        match ctx.call_raw(Call::GetAttributeValue, |s| {
            s.get_attributes(h, &[AttributeType::Token])
        }) {
            Ok(a) if a.contains(&Attribute::Token(true)) => kept.push(h),
            Ok(_) => {}
            Err(e) if is_handle_invalid(&e) => {}
            Err(e) => return Err(ctx.fail(Call::GetAttributeValue, &e)),
        }
    }
    Ok(kept)
}

/// The one handle a search found, `None` for none; an error (detail from `clash`, given how
/// many) when several objects match what should be unique.
pub(crate) fn at_most_one(
    ctx: &WorkerCtx,
    found: &[ObjectHandle],
    clash: impl FnOnce(usize) -> String,
) -> Result<Option<ObjectHandle>, HsmError> {
    match found {
        [] => Ok(None),
        [h] => Ok(Some(*h)),
        many => Err(HsmError::new(
            HsmErrorKind::Other,
            "C_FindObjects",
            ctx.token(),
            clash(many.len()),
        )),
    }
}

/// Refuses to make a key object with the CKA_ID of `id` (in PKCS#11 `function`) when one is
/// already known. Key ids are fresh UUIDs from the engine, so the token is not scanned for a
/// duplicate (a linear scan per creation); only a cached handle is checked.
pub(crate) fn refuse_known_id(
    ctx: &WorkerCtx,
    id: &ObjectId,
    function: &'static str,
) -> Result<(), HsmError> {
    match ctx.shared.handles.get(id) {
        Some(_) => Err(HsmError::new(
            HsmErrorKind::Other,
            function,
            ctx.token(),
            format!("a key object with the CKA_ID of {id} already exists"),
        )),
        None => Ok(()),
    }
}

/// Reads attribute `ty` of object `h` and takes its value with `pick`; an error with detail
/// `missing` when the token returns no such attribute (or `pick` refuses it).
pub(crate) fn read_attribute<T>(
    ctx: &mut WorkerCtx,
    h: ObjectHandle,
    ty: AttributeType,
    pick: impl FnMut(Attribute) -> Option<T>,
    missing: &'static str,
) -> Result<T, HsmError> {
    let attrs = ctx.call(Call::GetAttributeValue, |s| s.get_attributes(h, &[ty]))?;
    attrs.into_iter().find_map(pick).ok_or_else(|| {
        HsmError::new(
            HsmErrorKind::Other,
            "C_GetAttributeValue",
            ctx.token(),
            missing,
        )
    })
}

fn resolve_part(
    ctx: &mut WorkerCtx,
    id: &ObjectId,
    part: Part,
) -> Result<(ObjectHandle, bool), HsmError> {
    if let Some(h) = ctx.shared.handles.get_part(id, part) {
        return Ok((h, true));
    }
    match find_part(ctx, id, part)? {
        Some(h) => {
            ctx.shared.handles.insert_part(*id, part, h);
            Ok((h, false))
        }
        None => Err(HsmError::not_found(
            ctx.token(),
            format!("no {part:?} key object with the CKA_ID of {id}"),
        )),
    }
}

/// Run `f` with the handle of (`id`, `part`). If a cached handle turns out invalid (destroyed
/// elsewhere, device lost our handles) it is evicted, looked up again, and `f` retried once.
pub(crate) fn with_part<T>(
    ctx: &mut WorkerCtx,
    id: &ObjectId,
    part: Part,
    mut f: impl FnMut(&mut WorkerCtx, ObjectHandle) -> Result<T, HsmError>,
) -> Result<T, HsmError> {
    let (h, cached) = resolve_part(ctx, id, part)?;
    match f(ctx, h) {
        Err(e) if cached && e.kind == HsmErrorKind::ObjectNotFound => {
            ctx.shared.handles.evict_part(id, part);
            let (h, _) = resolve_part(ctx, id, part)?;
            f(ctx, h)
        }
        other => other,
    }
}

/// [`with_part`] for the secret-key object of a symmetric or HMAC key version.
fn with_key<T>(
    ctx: &mut WorkerCtx,
    id: &ObjectId,
    f: impl FnMut(&mut WorkerCtx, ObjectHandle) -> Result<T, HsmError>,
) -> Result<T, HsmError> {
    with_part(ctx, id, Part::Secret, f)
}

/// Run `f` with the fastest handle of (`id`, `part`): for a wrapped key, its unwrapped
/// session object (`wrapped::with_wrapped`); else its session-object copy (made on first
/// use, see [`super::objects::SessionCopies`]), else the token object. A copy the device no
/// longer knows (its session was reset) is forgotten and `f` runs on the token object, so a
/// lost copy never fails a request.
pub(crate) fn with_copy<T>(
    ctx: &mut WorkerCtx,
    id: &ObjectId,
    part: Part,
    mut f: impl FnMut(&mut WorkerCtx, ObjectHandle) -> Result<T, HsmError>,
) -> Result<T, HsmError> {
    // A wrapped key (issue 19) is served from the worker's unwrapped cache or its blob.
    if let Some(answer) = super::wrapped::with_wrapped(ctx, id, part, &mut f) {
        return answer;
    }
    if ctx.shared.copies.enabled() {
        let copy = match ctx.shared.copies.get(id, part, ctx.current_epoch()) {
            Some(CopyState::Live { handle, .. }) => Some(handle),
            Some(CopyState::Refused) => None,
            None => make_copy(ctx, id, part)?,
        };
        if let Some(h) = copy {
            match f(ctx, h) {
                Err(e) if e.kind == HsmErrorKind::ObjectNotFound => {
                    ctx.shared.copies.evict(id, part);
                }
                // A device reset in the middle of a call can surface as any error (SoftHSM2
                // has answered CKR_KEY_TYPE_INCONSISTENT): an unexpected failure on a session
                // that is no longer logged in is the device's, not the request's.
                Err(mut e) if e.kind == HsmErrorKind::Other && !session_logged_in(ctx) => {
                    ctx.shared.copies.evict(id, part);
                    e.kind = HsmErrorKind::Unavailable;
                    return Err(e);
                }
                other => return other,
            }
        }
    }
    with_part(ctx, id, part, f)
}

/// Copy the token object (`id`, `part`) into a session object of this worker's session and
/// cache it. `Ok(None)` when no copy is to be used: the session is about to be reopened, the
/// cache is full, or the device refuses the copy (remembered; logged once per object).
fn make_copy(
    ctx: &mut WorkerCtx,
    id: &ObjectId,
    part: Part,
) -> Result<Option<ObjectHandle>, HsmError> {
    let epoch = ctx.session_epoch();
    if epoch != ctx.current_epoch() || !ctx.shared.copies.has_room() {
        return Ok(None);
    }
    let copied = with_part(ctx, id, part, |ctx, h| {
        ctx.call(Call::CopyObject, |s| {
            s.copy_object(h, &[Attribute::Token(false)])
        })
    });
    let copy = match copied {
        Ok(copy) => copy,
        Err(e)
            if matches!(
                e.kind,
                HsmErrorKind::ObjectNotFound | HsmErrorKind::Unavailable
            ) =>
        {
            return Err(e)
        }
        Err(e) => {
            tracing::warn!(token = %ctx.token(), object = %id, ?part, error = %e,
                "the token would not copy this key object into a session object; using the token object");
            ctx.shared.copies.refuse(*id, part);
            return Ok(None);
        }
    };
    match ctx.shared.copies.insert(*id, part, copy, epoch) {
        Ok(()) => Ok(Some(copy)),
        Err(ours) => {
            // Another worker cached a copy first (or the cache filled up): ours goes.
            destroy_copy(ctx, ours);
            Ok(ctx
                .shared
                .copies
                .get(id, part, epoch)
                .and_then(|s| match s {
                    CopyState::Live { handle, .. } => Some(handle),
                    CopyState::Refused => None,
                }))
        }
    }
}

/// Destroy a session-object copy; a handle already gone is fine, other failures are logged.
fn destroy_copy(ctx: &mut WorkerCtx, h: ObjectHandle) {
    if let Err(e) = ctx.call_raw(Call::DestroyObject, |s| s.destroy_object(h)) {
        if !is_handle_invalid(&e) {
            let err = ctx.fail(Call::DestroyObject, &e);
            tracing::warn!(token = %ctx.token(), error = %err, "could not destroy a session copy of a key");
        }
    }
}

/// Forget the copy of (`id`, `part`), destroying it if it is still alive. Called before the
/// token object is destroyed.
pub(crate) fn discard_copy(ctx: &mut WorkerCtx, id: &ObjectId, part: Part) {
    if let Some(state) = ctx.shared.copies.evict(id, part) {
        discard(ctx, state);
    }
}

fn discard(ctx: &mut WorkerCtx, state: CopyState) {
    if let CopyState::Live { handle, epoch } = state {
        if epoch == ctx.current_epoch() {
            destroy_copy(ctx, handle);
        }
    }
}

/// Destroy the session copies of every object of every version of `key_id`; returns how many
/// were known.
pub(crate) fn drop_session_copies(ctx: &mut WorkerCtx, key_id: &[u8; 16]) -> usize {
    let gone = ctx.shared.copies.evict_key(key_id);
    let n = gone.len();
    for (_, state) in gone {
        discard(ctx, state);
    }
    n
}

// ---------------------------------------------------------------- primitives

fn random_iv(ctx: &mut WorkerCtx) -> Result<[u8; GCM_IV_LEN], HsmError> {
    let mut iv = [0u8; GCM_IV_LEN];
    ctx.call(Call::GenerateRandom, |s| s.generate_random_slice(&mut iv))?;
    Ok(iv)
}

fn gcm_params<'a>(
    ctx: &WorkerCtx,
    iv: &'a mut [u8; GCM_IV_LEN],
    aad: &'a [u8],
    function: Call,
) -> Result<GcmParams<'a>, HsmError> {
    GcmParams::new(iv, aad, TAG_BITS.into()).map_err(|e| {
        HsmError::new(
            HsmErrorKind::Other,
            function.name(),
            ctx.token(),
            format!("bad GCM parameters: {e}"),
        )
    })
}

/// AES-GCM encrypt with a fresh HSM-generated IV.
fn seal(
    ctx: &mut WorkerCtx,
    id: &ObjectId,
    plaintext: &[u8],
    aad: &AadBuilder,
) -> Result<GcmSealed, HsmError> {
    let iv = random_iv(ctx)?;
    let aad = aad(&iv);
    let ciphertext_and_tag = with_copy(ctx, id, Part::Secret, |ctx, h| {
        let mut iv_buf = iv;
        let params = gcm_params(ctx, &mut iv_buf, &aad, Call::EncryptInit)?;
        ctx.call(Call::Encrypt, |s| {
            s.encrypt(&Mechanism::AesGcm(params), h, plaintext)
        })
    })?;
    Ok(GcmSealed {
        iv,
        ciphertext_and_tag,
    })
}

/// AES-GCM decrypt, with the tag-failure classification.
fn open(
    ctx: &mut WorkerCtx,
    id: &ObjectId,
    iv: &[u8; GCM_IV_LEN],
    ciphertext_and_tag: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    if ciphertext_and_tag.len() < GCM_TAG_LEN {
        return Err(HsmError::new(
            HsmErrorKind::AuthFailed,
            "C_Decrypt",
            ctx.token(),
            "ciphertext shorter than the GCM tag",
        ));
    }
    with_copy(ctx, id, Part::Secret, |ctx, h| {
        let mut iv_buf = *iv;
        let params = gcm_params(ctx, &mut iv_buf, aad, Call::DecryptInit)?;
        let r = ctx.call_raw(Call::Decrypt, |s| {
            s.decrypt(&Mechanism::AesGcm(params), h, ciphertext_and_tag)
        });
        match r {
            Ok(plaintext) => Ok(Zeroizing::new(plaintext)),
            Err(
                e @ CkError::Pkcs11(
                    RvError::GeneralError
                    | RvError::EncryptedDataInvalid
                    | RvError::EncryptedDataLenRange,
                    Function::Decrypt,
                ),
            ) => Err(classify_open_failure(ctx, h, &e)),
            Err(e) => Err(ctx.fail(Call::Decrypt, &e)),
        }
    })
}

/// Whether the worker's session still answers `C_GetSessionInfo` and is logged in: the first
/// half of telling a bad input (healthy device) from a sick device after a failed call.
pub(crate) fn session_logged_in(ctx: &mut WorkerCtx) -> bool {
    match ctx.call(Call::GetSessionInfo, |s| s.get_session_info()) {
        Ok(info) => matches!(
            info.session_state(),
            SessionState::RwUser | SessionState::RoUser
        ),
        Err(_) => false,
    }
}

/// SoftHSM2 answers a GCM tag failure with `CKR_GENERAL_ERROR`. Tell a forged
/// or corrupted ciphertext from a sick device by probing, in the same job,
/// the session (`C_GetSessionInfo`: usable and logged in) and the key
/// (`C_GetAttributeValue(CKA_CLASS)`). Healthy -> `AuthFailed`; the key gone
/// -> `ObjectNotFound`; anything else -> `Unavailable`.
fn classify_open_failure(ctx: &mut WorkerCtx, key: ObjectHandle, e: &CkError) -> HsmError {
    let mut err = super::error::from_cryptoki(Call::Decrypt.name(), ctx.token(), e);
    if !session_logged_in(ctx) {
        err.kind = HsmErrorKind::Unavailable;
        err.detail = Some("decrypt failed and the session probe failed".into());
        return err;
    }
    match ctx.call_raw(Call::GetAttributeValue, |s| {
        s.get_attributes(key, &[AttributeType::Class])
    }) {
        Ok(attrs) if attrs.iter().any(|a| matches!(a, Attribute::Class(_))) => {
            err.kind = HsmErrorKind::AuthFailed;
            err.detail = Some("GCM authentication failed".into());
        }
        Ok(_) => {
            err.kind = HsmErrorKind::Unavailable;
            err.detail = Some("decrypt failed and the key probe returned no class".into());
        }
        Err(pe) if is_handle_invalid(&pe) => {
            err.kind = HsmErrorKind::ObjectNotFound;
            err.detail = Some("decrypt failed and the key handle is no longer valid".into());
        }
        Err(pe) => {
            ctx.fail(Call::GetAttributeValue, &pe);
            err.kind = HsmErrorKind::Unavailable;
            err.detail = Some("decrypt failed and the key probe failed".into());
        }
    }
    err
}

// ---------------------------------------------------------------- operations

/// Generate a CMK version (AES-256 token key) and cache its handle.
pub(crate) fn generate_aes_key(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    label: &str,
) -> Result<(), HsmError> {
    refuse_known_id(ctx, &id, "C_GenerateKey")?;
    let template = cmk_aes_template(&id, label);
    let h = ctx.call(Call::GenerateKey, |s| {
        s.generate_key(&Mechanism::AesKeyGen, &template)
    })?;
    ctx.shared.handles.insert(id, h);
    tracing::debug!(token = %ctx.token(), object = %id, "HSM key generated");
    Ok(())
}

/// Generates the AES key `id` unless the token has it: the search and the creation in one
/// exclusive job, so daemons sharing the token (under its lock file) make it once. Whether
/// it was created.
pub(crate) fn ensure_aes_key(ctx: &mut WorkerCtx, id: ObjectId) -> Result<bool, HsmError> {
    if exists(ctx, id)? {
        return Ok(false);
    }
    generate_aes_key(ctx, id, &id.label())?;
    Ok(true)
}

/// AES-256-GCM encrypt under `id`.
pub(crate) fn encrypt_gcm(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    plaintext: &[u8],
    aad: &AadBuilder,
) -> Result<GcmSealed, HsmError> {
    seal(ctx, &id, plaintext, aad)
}

/// AES-256-GCM encrypt under `id`, then, in the same job, decrypt the result and check that
/// it gives the plaintext back (compared in constant time). A mismatch is
/// [`HsmErrorKind::Other`]: the device answered, but not with a ciphertext it can open.
pub(crate) fn encrypt_gcm_checked(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    plaintext: &[u8],
    aad: &AadBuilder,
) -> Result<GcmSealed, HsmError> {
    use subtle::ConstantTimeEq as _;
    let sealed = seal(ctx, &id, plaintext, aad)?;
    let back = open(
        ctx,
        &id,
        &sealed.iv,
        &sealed.ciphertext_and_tag,
        &aad(&sealed.iv),
    )?;
    if !bool::from(back.as_slice().ct_eq(plaintext)) {
        return Err(HsmError::new(
            HsmErrorKind::Other,
            "C_Decrypt",
            ctx.token(),
            "the ciphertext just made does not decrypt to its plaintext",
        ));
    }
    Ok(sealed)
}

/// AES-256-GCM decrypt under `id`.
pub(crate) fn decrypt_gcm(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    iv: &[u8; GCM_IV_LEN],
    ciphertext_and_tag: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    open(ctx, &id, iv, ciphertext_and_tag, aad)
}

/// `n` random bytes, encrypted under `id`, in one job.
pub(crate) fn generate_data_key(
    ctx: &mut WorkerCtx,
    id: ObjectId,
    n: usize,
    aad: &AadBuilder,
) -> Result<(Zeroizing<Vec<u8>>, GcmSealed), HsmError> {
    let key = random(ctx, n)?;
    let sealed = seal(ctx, &id, &key, aad)?;
    Ok((key, sealed))
}

/// Decrypt under `src`, encrypt under `dst`; the plaintext stays here.
pub(crate) fn reencrypt_gcm(
    ctx: &mut WorkerCtx,
    src: ObjectId,
    iv: &[u8; GCM_IV_LEN],
    ciphertext_and_tag: &[u8],
    src_aad: &[u8],
    dst: ObjectId,
    dst_aad: &AadBuilder,
) -> Result<GcmSealed, HsmError> {
    let plaintext = open(ctx, &src, iv, ciphertext_and_tag, src_aad)?;
    seal(ctx, &dst, &plaintext, dst_aad)
}

/// `n` bytes from the HSM's RNG.
pub(crate) fn random(ctx: &mut WorkerCtx, n: usize) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    let mut out = Zeroizing::new(vec![0u8; n]);
    ctx.call(Call::GenerateRandom, |s| s.generate_random_slice(&mut out))?;
    Ok(out)
}

/// Destroy the key object `id` (and its session copy) and evict its handle.
pub(crate) fn destroy(ctx: &mut WorkerCtx, id: ObjectId) -> Result<(), HsmError> {
    discard_copy(ctx, &id, Part::Secret);
    let r = with_key(ctx, &id, |ctx, h| {
        ctx.call(Call::DestroyObject, |s| s.destroy_object(h))
    });
    // Whatever happened, the handle must not be trusted any more.
    ctx.shared.handles.evict(&id);
    r?;
    tracing::debug!(token = %ctx.token(), object = %id, "HSM key destroyed");
    Ok(())
}

/// Whether `id` exists. A cached handle is confirmed with one cheap
/// `C_GetAttributeValue(CKA_CLASS)`; otherwise the token is searched.
pub(crate) fn exists(ctx: &mut WorkerCtx, id: ObjectId) -> Result<bool, HsmError> {
    if let Some(h) = ctx.shared.handles.get(&id) {
        match ctx.call_raw(Call::GetAttributeValue, |s| {
            s.get_attributes(h, &[AttributeType::Class])
        }) {
            Ok(_) => return Ok(true),
            Err(e) if is_handle_invalid(&e) => ctx.shared.handles.evict(&id),
            Err(e) => return Err(ctx.fail(Call::GetAttributeValue, &e)),
        }
    }
    match find_part(ctx, &id, Part::Secret)? {
        Some(h) => {
            ctx.shared.handles.insert(id, h);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// The attributes [`KeyAttributes`] reports, for every kind of key object.
pub(crate) const CUSTODY_ATTRIBUTES: &[AttributeType] = &[
    AttributeType::Token,
    AttributeType::Private,
    AttributeType::Sensitive,
    AttributeType::AlwaysSensitive,
    AttributeType::Extractable,
    AttributeType::NeverExtractable,
    AttributeType::Encrypt,
    AttributeType::Decrypt,
    AttributeType::Wrap,
    AttributeType::Unwrap,
    AttributeType::Sign,
    AttributeType::Verify,
    AttributeType::Derive,
    AttributeType::SignRecover,
    AttributeType::VerifyRecover,
    AttributeType::AllowedMechanisms,
];

/// Read the custody attributes of `id`.
pub(crate) fn key_attributes(ctx: &mut WorkerCtx, id: ObjectId) -> Result<KeyAttributes, HsmError> {
    let attrs = with_key(ctx, &id, custody_attributes)?;
    Ok(key_attributes_from(attrs))
}

/// Read [`CUSTODY_ATTRIBUTES`] of the object `h`.
pub(crate) fn custody_attributes(
    ctx: &mut WorkerCtx,
    h: ObjectHandle,
) -> Result<Vec<Attribute>, HsmError> {
    ctx.call(Call::GetAttributeValue, |s| {
        s.get_attributes(h, CUSTODY_ATTRIBUTES)
    })
}

/// Custody attributes from what `C_GetAttributeValue` returned (absent ones stay false).
pub(crate) fn key_attributes_from(attrs: Vec<Attribute>) -> KeyAttributes {
    let mut k = KeyAttributes::default();
    for a in attrs {
        match a {
            Attribute::Token(v) => k.token = v,
            Attribute::Private(v) => k.private = v,
            Attribute::Sensitive(v) => k.sensitive = v,
            Attribute::AlwaysSensitive(v) => k.always_sensitive = v,
            Attribute::Extractable(v) => k.extractable = v,
            Attribute::NeverExtractable(v) => k.never_extractable = v,
            Attribute::Encrypt(v) => k.encrypt = v,
            Attribute::Decrypt(v) => k.decrypt = v,
            Attribute::Wrap(v) => k.wrap = v,
            Attribute::Unwrap(v) => k.unwrap = v,
            Attribute::Sign(v) => k.sign = v,
            Attribute::Verify(v) => k.verify = v,
            Attribute::Derive(v) => k.derive = v,
            Attribute::SignRecover(v) => k.sign_recover = v,
            Attribute::VerifyRecover(v) => k.verify_recover = v,
            Attribute::AllowedMechanisms(ms) => {
                k.allowed_mechanisms = ms.into_iter().map(mechanism_name).collect()
            }
            _ => {}
        }
    }
    k
}

/// Try to read `CKA_VALUE`; fails for sensitive keys.
pub(crate) fn try_read_value(
    ctx: &mut WorkerCtx,
    id: ObjectId,
) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    with_key(ctx, &id, |ctx, h| {
        let info = ctx.call(Call::GetAttributeValue, |s| {
            s.get_attribute_info(h, &[AttributeType::Value])
        })?;
        let refused = |rv: RvError| HsmError {
            kind: HsmErrorKind::Other,
            function: "C_GetAttributeValue",
            rv: Some(rv_string(rv)),
            token: ctx.token().to_owned(),
            detail: Some("CKA_VALUE cannot be read".into()),
        };
        match info.first() {
            Some(AttributeInfo::Available(_)) => {}
            Some(AttributeInfo::Sensitive) => return Err(refused(RvError::AttributeSensitive)),
            Some(AttributeInfo::TypeInvalid) => return Err(refused(RvError::AttributeTypeInvalid)),
            _ => {
                return Err(HsmError::new(
                    HsmErrorKind::Other,
                    "C_GetAttributeValue",
                    ctx.token(),
                    "CKA_VALUE is unavailable",
                ))
            }
        }
        let value = |a| match a {
            Attribute::Value(v) => Some(Zeroizing::new(v)),
            _ => None,
        };
        read_attribute(
            ctx,
            h,
            AttributeType::Value,
            value,
            "CKA_VALUE is unavailable",
        )
    })
}

/// Generate a session wrapping key and try to wrap `id` with it
/// (`CKM_AES_KEY_WRAP_PAD`). The wrapping key is destroyed either way.
pub(crate) fn try_wrap_with_new_key(
    ctx: &mut WorkerCtx,
    id: ObjectId,
) -> Result<Vec<u8>, HsmError> {
    let (target, _) = resolve_part(ctx, &id, Part::Secret)?;
    let template = session_wrapping_key_template();
    let wrapping = ctx.call(Call::GenerateKey, |s| {
        s.generate_key(&Mechanism::AesKeyGen, &template)
    })?;
    let wrapped = ctx.call(Call::WrapKey, |s| {
        s.wrap_key(&Mechanism::AesKeyWrapPad, wrapping, target)
    });
    if let Err(err) = ctx.call(Call::DestroyObject, |s| s.destroy_object(wrapping)) {
        tracing::warn!(error = %err, "could not destroy the custody-probe wrapping key");
    }
    wrapped
}

/// Every object the logged-in user can see, with id, label and class.
pub(crate) fn list_objects(ctx: &mut WorkerCtx) -> Result<Vec<ObjectInfo>, HsmError> {
    let handles = ctx.call(Call::FindObjects, |s| s.find_objects(&[]))?;
    let mut out = Vec::with_capacity(handles.len());
    let wanted = [
        AttributeType::Id,
        AttributeType::Label,
        AttributeType::Class,
        AttributeType::Token,
    ];
    for h in handles {
        let attrs = match ctx.call_raw(Call::GetAttributeValue, |s| s.get_attributes(h, &wanted)) {
            Ok(a) => a,
            // Destroyed between the search and now.
            Err(e) if is_handle_invalid(&e) => continue,
            Err(e) if is_session_broken(&e) => return Err(ctx.fail(Call::GetAttributeValue, &e)),
            // An object the device cannot describe (SoftHSM2 answers
            // CKR_ATTRIBUTE_VALUE_INVALID for an object file torn by a kill -9 mid-write)
            // is listed as unreadable, with no id, rather than failing the whole scan: it
            // then matches no key version, and a version whose object it was shows as missing.
            Err(e) => {
                let err = ctx.fail(Call::GetAttributeValue, &e);
                tracing::warn!(error = %err, "a token object cannot be read; listed as unreadable");
                out.push(ObjectInfo {
                    id: Vec::new(),
                    label: String::new(),
                    class: "UNREADABLE".into(),
                    token: true,
                });
                continue;
            }
        };
        let mut info = ObjectInfo {
            id: Vec::new(),
            label: String::new(),
            class: String::new(),
            token: false,
        };
        for a in attrs {
            match a {
                Attribute::Id(v) => info.id = v,
                Attribute::Label(v) => info.label = String::from_utf8_lossy(&v).into_owned(),
                Attribute::Class(c) => info.class = class_name(c),
                Attribute::Token(t) => info.token = t,
                _ => {}
            }
        }
        out.push(info);
    }
    Ok(out)
}

/// Health: the worker session is usable and logged in.
pub(crate) fn ping(ctx: &mut WorkerCtx) -> Result<(), HsmError> {
    // Health probes are counted apart (`health_probes`), so the per-function counters show
    // only what requests caused: a denied request must leave them unchanged.
    let session = &ctx.session;
    let probed = ctx.shared.counters.probe(|| session.get_session_info());
    let info = probed.map_err(|e| ctx.fail(Call::GetSessionInfo, &e))?;
    match info.session_state() {
        SessionState::RwUser | SessionState::RoUser => Ok(()),
        state => Err(HsmError::new(
            HsmErrorKind::Unavailable,
            "C_GetSessionInfo",
            ctx.token(),
            format!("session is not logged in ({state:?})"),
        )),
    }
}
