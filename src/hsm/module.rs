//! The PKCS#11 module: one initialised `Pkcs11` per module path per process (with its
//! token-object gate), tokens found by label, and user login.
//!
//! SoftHSM2 (and other modules) misbehave when initialised and finalised
//! repeatedly in one process, so the first [`super::Hsm`] that needs a module
//! loads and initialises it (with `CKF_OS_LOCKING_OK`) and every later one
//! shares it. It is never finalised: it lives until the process exits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use super::call::{Call, Counters};
use super::error::{from_cryptoki, HsmError, HsmErrorKind};
use super::gate::Gate;
use super::Pin;

/// One loaded module instance, shared by every [`super::Hsm`] on it.
#[derive(Clone)]
pub(crate) struct Instance {
    /// The initialised library.
    pub(crate) pkcs11: Arc<Pkcs11>,
    /// Object creation and destruction run alone on a module instance; every other job on it
    /// shares. SoftHSM2 answers CKR_GENERAL_ERROR or garbled attributes now and then when one
    /// session creates token objects while another reads or creates (seen in this crate's
    /// tests, about one run in three). Creation is bound by token file writes and rare, so
    /// readers barely ever wait. Per instance: several `Hsm`s on one library share it, and a
    /// store on another library (another device) never waits for this one.
    pub(crate) token_objects: Arc<Gate>,
}

type Registry = Mutex<HashMap<PathBuf, Instance>>;

static MODULES: OnceLock<Registry> = OnceLock::new();

/// The process-wide initialised module loaded from `path` (loading and
/// initialising it on first use, counted in `counters`). `token` only labels errors.
pub(crate) fn module(path: &Path, token: &str, counters: &Counters) -> Result<Instance, HsmError> {
    // Canonicalise so that two spellings of one library share one context.
    let key = std::fs::canonicalize(path).map_err(|e| {
        HsmError::new(
            HsmErrorKind::Config,
            "C_Initialize",
            token,
            format!("PKCS#11 module {}: {e}", path.display()),
        )
    })?;
    let mut reg = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(loaded) = reg.get(&key) {
        return Ok(loaded.clone());
    }
    let pkcs11 = counters
        .call(Call::GetFunctionList, token, || Pkcs11::new(&key))
        .map_err(|mut err| {
            err.kind = HsmErrorKind::Config;
            err
        })?;
    let args = CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK);
    match counters.run(Call::Initialize, || pkcs11.initialize(args)) {
        Ok(()) => {}
        // Something else in this process (another library) initialised the
        // module already: that is fine, we share it and never finalise it.
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(from_cryptoki(Call::Initialize.name(), token, &e)),
    }
    tracing::info!(module = %key.display(), "PKCS#11 module initialised");
    let loaded = Instance {
        pkcs11: Arc::new(pkcs11),
        token_objects: Arc::new(Gate::new()),
    };
    reg.insert(key, loaded.clone());
    Ok(loaded)
}

/// `C_GetTokenInfo` of `slot`, asked again (up to three times, 20 ms apart) while it answers
/// `CKR_GENERAL_ERROR`: SoftHSM2 answers so for a token whose files another process is
/// writing at that moment (seen in CI, another test's daemon saving objects on its own token
/// while `check` looked for a label). Any other answer is final.
fn token_info_settled(
    pkcs11: &Pkcs11,
    slot: Slot,
    counters: &Counters,
) -> Result<cryptoki::slot::TokenInfo, CkError> {
    let mut tries = 0;
    loop {
        match counters.run(Call::GetTokenInfo, || pkcs11.get_token_info(slot)) {
            Err(CkError::Pkcs11(RvError::GeneralError, _)) if tries < 3 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// The slot holding the one token labelled `label`. Errors if there is none
/// or more than one (slot numbers are never used: SoftHSM2 renumbers them).
pub(crate) fn find_token(
    pkcs11: &Pkcs11,
    label: &str,
    counters: &Counters,
) -> Result<Slot, HsmError> {
    let slots = counters.call(Call::GetSlotList, label, || pkcs11.get_slots_with_token())?;
    let mut found = Vec::new();
    for slot in slots {
        match token_info_settled(pkcs11, slot, counters) {
            Ok(info) if info.label().trim_end() == label => found.push(slot),
            Ok(_) => {}
            // A slot whose token vanished between the two calls is skipped.
            Err(CkError::Pkcs11(RvError::TokenNotPresent | RvError::SlotIdInvalid, _)) => {}
            Err(e) => return Err(from_cryptoki(Call::GetTokenInfo.name(), label, &e)),
        }
    }
    match found.len() {
        1 => Ok(found[0]),
        0 => Err(HsmError::new(
            HsmErrorKind::Config,
            "C_GetTokenInfo",
            label,
            super::error::NO_TOKEN_WITH_LABEL,
        )),
        n => Err(HsmError::new(
            HsmErrorKind::Config,
            "C_GetTokenInfo",
            label,
            format!("{n} tokens share this label"),
        )),
    }
}

/// What [`probe_token`] found: the token's identity as the device reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenProbe {
    pub manufacturer: String,
    pub model: String,
    pub serial_number: String,
}

/// Runs `f` on a fresh R/W session of token `label` in this process, outside any worker pool
/// (the security officer's ceremonies), then logs out and closes the session whatever `f`
/// answered.
pub(crate) fn with_standalone_session<T>(
    module_path: &Path,
    label: &str,
    f: impl FnOnce(&Counters, &Session) -> Result<T, HsmError>,
) -> Result<T, HsmError> {
    let counters = Counters::default();
    let pkcs11 = module(module_path, label, &counters)?.pkcs11;
    let slot = find_token(&pkcs11, label, &counters)?;
    let session = counters.call(Call::OpenSession, label, || pkcs11.open_rw_session(slot))?;
    let outcome = f(&counters, &session);
    let _ = counters.run(Call::Logout, || session.logout());
    let _ = counters.run(Call::CloseSession, || session.close());
    outcome
}

/// Loads the module at `module_path` and finds the one token labelled `label`, without opening
/// a session or logging in (`p11kms check` on a custom key store's cluster: its PIN is the
/// store's password, which the operator does not configure). Blocking.
pub fn probe_token(module_path: &Path, label: &str) -> Result<TokenProbe, HsmError> {
    let counters = Counters::default();
    let pkcs11 = module(module_path, label, &counters)?.pkcs11;
    let slot = find_token(&pkcs11, label, &counters)?;
    let info = counters.call(Call::GetTokenInfo, label, || pkcs11.get_token_info(slot))?;
    Ok(TokenProbe {
        manufacturer: info.manufacturer_id().trim_end().to_string(),
        model: info.model().trim_end().to_string(),
        serial_number: info.serial_number().trim_end().to_string(),
    })
}

/// Log the user in on `session`. Login state is per token per process, so
/// `CKR_USER_ALREADY_LOGGED_IN` (another session or `Hsm` did it) is success.
pub(crate) fn login(
    counters: &Counters,
    session: &Session,
    pin: &Pin,
    token: &str,
) -> Result<(), HsmError> {
    let auth = AuthPin::from(pin.expose());
    match counters.run(Call::Login, || session.login(UserType::User, Some(&auth))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => {
            let mut err = from_cryptoki(Call::Login.name(), token, &e);
            if matches!(
                e,
                CkError::Pkcs11(
                    RvError::PinIncorrect | RvError::PinLocked | RvError::PinInvalid,
                    _
                )
            ) {
                err.kind = HsmErrorKind::Config;
            }
            Err(err)
        }
    }
}

/// Initialises a token labelled `label` (security officer PIN `so_pin`, user PIN `user_pin`)
/// in the module's first uninitialised slot, unless a token with that label exists already.
/// Returns whether it created one. For development tokens (SoftHSM2 always offers a free
/// slot); production tokens are initialised with the vendor's tools.
pub fn init_token(
    module_path: &Path,
    label: &str,
    so_pin: &Pin,
    user_pin: &Pin,
) -> Result<bool, HsmError> {
    // Development set-up: the calls are counted for no `Hsm`.
    let counters = Counters::default();
    let c = &counters;
    let pkcs11 = module(module_path, label, c)?.pkcs11;
    if find_token(&pkcs11, label, c).is_ok() {
        return Ok(false);
    }
    let free = c
        .call(Call::GetSlotList, label, || pkcs11.get_slots_with_token())?
        .into_iter()
        .find(|s| {
            c.run(Call::GetTokenInfo, || pkcs11.get_token_info(*s))
                .is_ok_and(|i| !i.token_initialized())
        })
        .ok_or_else(|| {
            HsmError::new(
                HsmErrorKind::Config,
                Call::InitToken.name(),
                label,
                "the module offers no uninitialised token slot",
            )
        })?;
    let so = AuthPin::from(so_pin.expose());
    c.call(Call::InitToken, label, || {
        pkcs11.init_token(free, &so, label)
    })?;
    // SoftHSM2 moves an initialised token to a new slot number: find it again by label.
    let slot = find_token(&pkcs11, label, c)?;
    let session = c.call(Call::OpenSession, label, || pkcs11.open_rw_session(slot))?;
    c.call(Call::Login, label, || {
        session.login(UserType::So, Some(&so))
    })?;
    let user = AuthPin::from(user_pin.expose());
    c.call(Call::InitPin, label, || session.init_pin(&user))?;
    let _ = c.run(Call::Logout, || session.logout());
    let _ = c.run(Call::CloseSession, || session.close());
    Ok(true)
}
