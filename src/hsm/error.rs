//! Errors of the HSM layer.
//!
//! Every failure names the PKCS#11 function (or, for failures that are not a
//! PKCS#11 return value, the HSM operation), the return value where there is
//! one, and the token label. Errors never carry PINs, plaintext or key bytes.

use std::fmt;

use cryptoki::error::{Error as CkError, Rv, RvError};

/// What kind of failure happened; this is what callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HsmErrorKind {
    /// The job queue is full; nothing was done. Retry later (throttling).
    Busy,
    /// The job waited in the queue past its deadline; nothing was done.
    Timeout,
    /// An AES-GCM open failed on a healthy device: bad tag, wrong AAD or
    /// malformed ciphertext (maps to InvalidCiphertextException).
    AuthFailed,
    /// The device, token, session or library is not usable.
    Unavailable,
    /// No object with that CKA_ID (or its handle is no longer valid).
    ObjectNotFound,
    /// Configuration problem: module, token label, PIN, sizes.
    Config,
    /// A wrapped key's blob was refused before unwrapping: its tag does not verify on the
    /// device for the key version it was presented for (edited, or moved to another key's
    /// row), or it names a master key the token does not have. Nothing was unwrapped.
    BlobRejected,
    /// Anything else (including refusals such as CKR_KEY_UNEXTRACTABLE).
    Other,
}

/// An HSM failure: `<function> failed on token '<label>': <rv or detail>`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{function} failed on token '{token}': {}", self.reason())]
pub struct HsmError {
    /// Classification for callers.
    pub kind: HsmErrorKind,
    /// The PKCS#11 function (`"C_Decrypt"`), or the operation for failures
    /// that have no return value (`"encrypt_gcm"` when the queue is full).
    pub function: &'static str,
    /// The PKCS#11 return value, e.g. `"CKR_GENERAL_ERROR (0x5)"`.
    pub rv: Option<String>,
    /// Label of the token the call was made against.
    pub token: String,
    /// Extra explanation when there is no return value or it needs context.
    /// Never contains secrets.
    pub detail: Option<String>,
}

/// Why a device could not be opened and logged into ([`super::Hsm::open`]), in the terms a
/// custom key store reports (its `ConnectionErrorCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFailure {
    /// The PIN was refused (`CKR_PIN_INCORRECT`, `CKR_PIN_INVALID`, `CKR_PIN_LEN_RANGE`).
    BadPin,
    /// The user PIN is locked (`CKR_PIN_LOCKED`).
    PinLocked,
    /// No token has the label.
    TokenAbsent,
    /// The device does not answer (`CKR_DEVICE_REMOVED`, `CKR_DEVICE_ERROR`,
    /// `CKR_TOKEN_NOT_PRESENT`, `CKR_DEVICE_MEMORY`, or an unusable session).
    DeviceGone,
    /// Anything else (the module does not load, an unexpected return value).
    Other,
}

/// The detail of [`module::find_token`](super::module)'s error when no token has the label.
pub(crate) const NO_TOKEN_WITH_LABEL: &str = "no token with this label";

impl HsmError {
    /// Why an open or login failed, as a custom key store reports it.
    pub fn open_failure(&self) -> OpenFailure {
        const BAD_PIN: &[&str] = &["CKR_PIN_INCORRECT", "CKR_PIN_INVALID", "CKR_PIN_LEN_RANGE"];
        const GONE: &[&str] = &[
            "CKR_DEVICE_REMOVED",
            "CKR_DEVICE_ERROR",
            "CKR_TOKEN_NOT_PRESENT",
            "CKR_DEVICE_MEMORY",
        ];
        if BAD_PIN.iter().any(|n| self.rv_is(n)) {
            OpenFailure::BadPin
        } else if self.rv_is("CKR_PIN_LOCKED") {
            OpenFailure::PinLocked
        } else if self.detail.as_deref() == Some(NO_TOKEN_WITH_LABEL) {
            OpenFailure::TokenAbsent
        } else if GONE.iter().any(|n| self.rv_is(n)) || self.kind == HsmErrorKind::Unavailable {
            OpenFailure::DeviceGone
        } else {
            OpenFailure::Other
        }
    }

    /// A search (`C_FindObjects`) that found no object: `what` says which.
    pub fn not_found(token: &str, what: impl Into<String>) -> Self {
        HsmError::new(HsmErrorKind::ObjectNotFound, "C_FindObjects", token, what)
    }

    /// An error without a PKCS#11 return value.
    pub fn new(
        kind: HsmErrorKind,
        function: &'static str,
        token: &str,
        detail: impl Into<String>,
    ) -> Self {
        HsmError {
            kind,
            function,
            rv: None,
            token: token.to_owned(),
            detail: Some(detail.into()),
        }
    }

    /// The PKCS#11 return value as a raw `CK_RV`, when the error has one.
    pub fn rv_code(&self) -> Option<u64> {
        let rv = self.rv.as_deref()?;
        let hex = rv.rsplit_once("(0x")?.1.strip_suffix(')')?;
        u64::from_str_radix(hex, 16).ok()
    }

    /// True when the PKCS#11 return value has this name (`"CKR_KEY_UNEXTRACTABLE"`).
    pub fn rv_is(&self, name: &str) -> bool {
        self.rv
            .as_deref()
            .and_then(|rv| rv.split_whitespace().next())
            .is_some_and(|n| n == name)
    }

    fn reason(&self) -> String {
        match (&self.rv, &self.detail) {
            (Some(rv), None) => rv.clone(),
            (Some(rv), Some(d)) => format!("{rv} ({d})"),
            (None, Some(d)) => d.clone(),
            (None, None) => format!("{:?}", self.kind),
        }
    }
}

/// Classify a PKCS#11 return value. Decrypt failures that may be tag
/// failures are classified by the decrypt path itself (with device probes).
pub(crate) fn kind_of_rv(rv: RvError) -> HsmErrorKind {
    use RvError::*;
    match rv {
        DeviceError
        | DeviceMemory
        | DeviceRemoved
        | TokenNotPresent
        | TokenNotRecognized
        | SessionHandleInvalid
        | SessionClosed
        | SessionCount
        // Our jobs always finish their operations; an active one means the session handle
        // now names another session (handles are reused after a device reset).
        | OperationActive
        | CryptokiNotInitialized
        | UserNotLoggedIn
        | HostMemory
        | GeneralError
        | FunctionFailed
        | FunctionCanceled
        | CantLock
        | MutexBad
        | MutexNotLocked
        | SlotIdInvalid => HsmErrorKind::Unavailable,
        ObjectHandleInvalid | KeyHandleInvalid => HsmErrorKind::ObjectNotFound,
        PinIncorrect
        | PinInvalid
        | PinLenRange
        | PinExpired
        | PinLocked
        | UserPinNotInitialized => HsmErrorKind::Config,
        _ => HsmErrorKind::Other,
    }
}

/// True for return values that mean "this object handle is not (or no
/// longer) valid".
pub(crate) fn is_handle_invalid(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid, _)
    )
}

/// True for return values after which a worker should reopen its session.
pub(crate) fn is_session_broken(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::OperationActive
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::UserNotLoggedIn
                | RvError::DeviceError,
            _
        )
    )
}

/// Build an [`HsmError`] from a cryptoki error. `function` is used when the
/// error does not say which function failed.
pub(crate) fn from_cryptoki(function: &'static str, token: &str, e: &CkError) -> HsmError {
    match e {
        CkError::Pkcs11(rv, f) => HsmError {
            kind: kind_of_rv(*rv),
            function: function_name(*f).unwrap_or(function),
            rv: Some(rv_string(*rv)),
            token: token.to_owned(),
            detail: None,
        },
        CkError::LibraryLoading(_) | CkError::MissingSymbol(_) => HsmError {
            kind: HsmErrorKind::Config,
            function,
            rv: None,
            token: token.to_owned(),
            detail: Some(e.to_string()),
        },
        CkError::NullFunctionPointer | CkError::NotSupported => HsmError {
            kind: HsmErrorKind::Unavailable,
            function,
            rv: None,
            token: token.to_owned(),
            detail: Some(e.to_string()),
        },
        other => HsmError {
            kind: HsmErrorKind::Other,
            function,
            rv: None,
            token: token.to_owned(),
            detail: Some(other.to_string()),
        },
    }
}

/// The `CKR_*` name and code of a return value: `"CKR_GENERAL_ERROR (0x5)"`.
pub(crate) fn rv_string(rv: RvError) -> String {
    match rv {
        RvError::VendorDefined(code) => format!("CKR_VENDOR_DEFINED (0x{code:x})"),
        RvError::UnknownErrorCode(code) => format!("unknown CK_RV (0x{code:x})"),
        _ => RV_NAMES
            .iter()
            .find(|(_, code)| Rv::from(*code) == Rv::Error(rv))
            .map(|(name, code)| format!("{name} (0x{code:x})"))
            .unwrap_or_else(|| format!("{rv:?}")),
    }
}

/// The `C_*` name of a cryptoki function, for the functions this layer uses.
pub(crate) fn function_name(f: cryptoki::context::Function) -> Option<&'static str> {
    use cryptoki::context::Function as F;
    Some(match f {
        F::Initialize => "C_Initialize",
        F::GetSlotList => "C_GetSlotList",
        F::GetTokenInfo => "C_GetTokenInfo",
        F::GetMechanismList => "C_GetMechanismList",
        F::GetMechanismInfo => "C_GetMechanismInfo",
        F::OpenSession => "C_OpenSession",
        F::CloseSession => "C_CloseSession",
        F::GetSessionInfo => "C_GetSessionInfo",
        F::Login => "C_Login",
        F::Logout => "C_Logout",
        F::CreateObject => "C_CreateObject",
        F::CopyObject => "C_CopyObject",
        F::DestroyObject => "C_DestroyObject",
        F::GetAttributeValue => "C_GetAttributeValue",
        F::FindObjectsInit => "C_FindObjectsInit",
        F::FindObjects => "C_FindObjects",
        F::FindObjectsFinal => "C_FindObjectsFinal",
        F::EncryptInit => "C_EncryptInit",
        F::Encrypt => "C_Encrypt",
        F::DecryptInit => "C_DecryptInit",
        F::Decrypt => "C_Decrypt",
        F::SignInit => "C_SignInit",
        F::Sign => "C_Sign",
        F::VerifyInit => "C_VerifyInit",
        F::Verify => "C_Verify",
        F::GenerateKey => "C_GenerateKey",
        F::GenerateKeyPair => "C_GenerateKeyPair",
        F::WrapKey => "C_WrapKey",
        F::UnwrapKey => "C_UnwrapKey",
        F::GenerateRandom => "C_GenerateRandom",
        _ => return None,
    })
}

impl fmt::Display for HsmErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Names and codes of the return values cryptoki knows (from cryptoki-sys).
const RV_NAMES: &[(&str, u64)] = &[
    ("CKR_CANCEL", 0x1),
    ("CKR_HOST_MEMORY", 0x2),
    ("CKR_SLOT_ID_INVALID", 0x3),
    ("CKR_GENERAL_ERROR", 0x5),
    ("CKR_FUNCTION_FAILED", 0x6),
    ("CKR_ARGUMENTS_BAD", 0x7),
    ("CKR_NO_EVENT", 0x8),
    ("CKR_NEED_TO_CREATE_THREADS", 0x9),
    ("CKR_CANT_LOCK", 0xa),
    ("CKR_ATTRIBUTE_READ_ONLY", 0x10),
    ("CKR_ATTRIBUTE_SENSITIVE", 0x11),
    ("CKR_ATTRIBUTE_TYPE_INVALID", 0x12),
    ("CKR_ATTRIBUTE_VALUE_INVALID", 0x13),
    ("CKR_ACTION_PROHIBITED", 0x1b),
    ("CKR_DATA_INVALID", 0x20),
    ("CKR_DATA_LEN_RANGE", 0x21),
    ("CKR_DEVICE_ERROR", 0x30),
    ("CKR_DEVICE_MEMORY", 0x31),
    ("CKR_DEVICE_REMOVED", 0x32),
    ("CKR_ENCRYPTED_DATA_INVALID", 0x40),
    ("CKR_ENCRYPTED_DATA_LEN_RANGE", 0x41),
    ("CKR_FUNCTION_CANCELED", 0x50),
    ("CKR_FUNCTION_NOT_PARALLEL", 0x51),
    ("CKR_FUNCTION_NOT_SUPPORTED", 0x54),
    ("CKR_KEY_HANDLE_INVALID", 0x60),
    ("CKR_KEY_SIZE_RANGE", 0x62),
    ("CKR_KEY_TYPE_INCONSISTENT", 0x63),
    ("CKR_KEY_NOT_NEEDED", 0x64),
    ("CKR_KEY_CHANGED", 0x65),
    ("CKR_KEY_NEEDED", 0x66),
    ("CKR_KEY_INDIGESTIBLE", 0x67),
    ("CKR_KEY_FUNCTION_NOT_PERMITTED", 0x68),
    ("CKR_KEY_NOT_WRAPPABLE", 0x69),
    ("CKR_KEY_UNEXTRACTABLE", 0x6a),
    ("CKR_MECHANISM_INVALID", 0x70),
    ("CKR_MECHANISM_PARAM_INVALID", 0x71),
    ("CKR_OBJECT_HANDLE_INVALID", 0x82),
    ("CKR_OPERATION_ACTIVE", 0x90),
    ("CKR_OPERATION_NOT_INITIALIZED", 0x91),
    ("CKR_PIN_INCORRECT", 0xa0),
    ("CKR_PIN_INVALID", 0xa1),
    ("CKR_PIN_LEN_RANGE", 0xa2),
    ("CKR_PIN_EXPIRED", 0xa3),
    ("CKR_PIN_LOCKED", 0xa4),
    ("CKR_SESSION_CLOSED", 0xb0),
    ("CKR_SESSION_COUNT", 0xb1),
    ("CKR_SESSION_HANDLE_INVALID", 0xb3),
    ("CKR_SESSION_PARALLEL_NOT_SUPPORTED", 0xb4),
    ("CKR_SESSION_READ_ONLY", 0xb5),
    ("CKR_SESSION_EXISTS", 0xb6),
    ("CKR_SESSION_READ_ONLY_EXISTS", 0xb7),
    ("CKR_SESSION_READ_WRITE_SO_EXISTS", 0xb8),
    ("CKR_SIGNATURE_INVALID", 0xc0),
    ("CKR_SIGNATURE_LEN_RANGE", 0xc1),
    ("CKR_TEMPLATE_INCOMPLETE", 0xd0),
    ("CKR_TEMPLATE_INCONSISTENT", 0xd1),
    ("CKR_TOKEN_NOT_PRESENT", 0xe0),
    ("CKR_TOKEN_NOT_RECOGNIZED", 0xe1),
    ("CKR_TOKEN_WRITE_PROTECTED", 0xe2),
    ("CKR_UNWRAPPING_KEY_HANDLE_INVALID", 0xf0),
    ("CKR_UNWRAPPING_KEY_SIZE_RANGE", 0xf1),
    ("CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT", 0xf2),
    ("CKR_USER_ALREADY_LOGGED_IN", 0x100),
    ("CKR_USER_NOT_LOGGED_IN", 0x101),
    ("CKR_USER_PIN_NOT_INITIALIZED", 0x102),
    ("CKR_USER_TYPE_INVALID", 0x103),
    ("CKR_USER_ANOTHER_ALREADY_LOGGED_IN", 0x104),
    ("CKR_USER_TOO_MANY_TYPES", 0x105),
    ("CKR_WRAPPED_KEY_INVALID", 0x110),
    ("CKR_WRAPPED_KEY_LEN_RANGE", 0x112),
    ("CKR_WRAPPING_KEY_HANDLE_INVALID", 0x113),
    ("CKR_WRAPPING_KEY_SIZE_RANGE", 0x114),
    ("CKR_WRAPPING_KEY_TYPE_INCONSISTENT", 0x115),
    ("CKR_RANDOM_SEED_NOT_SUPPORTED", 0x120),
    ("CKR_RANDOM_NO_RNG", 0x121),
    ("CKR_DOMAIN_PARAMS_INVALID", 0x130),
    ("CKR_CURVE_NOT_SUPPORTED", 0x140),
    ("CKR_BUFFER_TOO_SMALL", 0x150),
    ("CKR_SAVED_STATE_INVALID", 0x160),
    ("CKR_INFORMATION_SENSITIVE", 0x170),
    ("CKR_STATE_UNSAVEABLE", 0x180),
    ("CKR_CRYPTOKI_NOT_INITIALIZED", 0x190),
    ("CKR_CRYPTOKI_ALREADY_INITIALIZED", 0x191),
    ("CKR_MUTEX_BAD", 0x1a0),
    ("CKR_MUTEX_NOT_LOCKED", 0x1a1),
    ("CKR_NEW_PIN_MODE", 0x1b0),
    ("CKR_NEXT_OTP", 0x1b1),
    ("CKR_EXCEEDED_MAX_ITERATIONS", 0x1b5),
    ("CKR_FIPS_SELF_TEST_FAILED", 0x1b6),
    ("CKR_LIBRARY_LOAD_FAILED", 0x1b7),
    ("CKR_PIN_TOO_WEAK", 0x1b8),
    ("CKR_PUBLIC_KEY_INVALID", 0x1b9),
    ("CKR_FUNCTION_REJECTED", 0x200),
];
