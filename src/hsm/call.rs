//! The one way this layer makes a PKCS#11 call: [`Call`] names the function, and
//! [`Counters::run`] / [`Counters::call`] (or `WorkerCtx::call` on a worker's session) count
//! it, time it under its function name and map its error ([`super::error::from_cryptoki`]).
//!
//! Counting is one per logical call: cryptoki's `encrypt` runs `C_EncryptInit` and
//! `C_Encrypt` (each counted once; its internal size-query pass is not counted), and
//! `find_objects` runs `C_FindObjectsInit`, `C_FindObjects` (paged, counted once) and
//! `C_FindObjectsFinal`. The latency of such a call is recorded under its main function
//! (`C_Encrypt`, `C_FindObjects`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use cryptoki::error::Error as CkError;

use super::error::{from_cryptoki, HsmError};
use super::stats::{HistogramSnapshot, LatencyHistogram};

macro_rules! calls {
    ($($variant:ident => $name:literal,)*) => {
        /// A PKCS#11 function this layer calls (or counts as part of a call).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub(crate) enum Call {
            $(
                #[doc = concat!("`", $name, "`")]
                $variant,
            )*
        }

        impl Call {
            /// Every function, in the order of [`Call`]'s discriminants.
            pub(crate) const ALL: &'static [Call] = &[$(Call::$variant,)*];

            /// The PKCS#11 name: `"C_Encrypt"`.
            pub(crate) fn name(self) -> &'static str {
                match self {
                    $(Call::$variant => $name,)*
                }
            }
        }
    };
}

calls! {
    CloseSession => "C_CloseSession",
    CopyObject => "C_CopyObject",
    CreateObject => "C_CreateObject",
    Decrypt => "C_Decrypt",
    DecryptInit => "C_DecryptInit",
    DeriveKey => "C_DeriveKey",
    DestroyObject => "C_DestroyObject",
    Encrypt => "C_Encrypt",
    EncryptInit => "C_EncryptInit",
    FindObjects => "C_FindObjects",
    FindObjectsFinal => "C_FindObjectsFinal",
    FindObjectsInit => "C_FindObjectsInit",
    GenerateKey => "C_GenerateKey",
    GenerateKeyPair => "C_GenerateKeyPair",
    GenerateRandom => "C_GenerateRandom",
    GetAttributeValue => "C_GetAttributeValue",
    GetFunctionList => "C_GetFunctionList",
    GetMechanismList => "C_GetMechanismList",
    GetSessionInfo => "C_GetSessionInfo",
    GetSlotList => "C_GetSlotList",
    GetTokenInfo => "C_GetTokenInfo",
    InitPin => "C_InitPIN",
    InitToken => "C_InitToken",
    Initialize => "C_Initialize",
    Login => "C_Login",
    Logout => "C_Logout",
    OpenSession => "C_OpenSession",
    Sign => "C_Sign",
    SignInit => "C_SignInit",
    UnwrapKey => "C_UnwrapKey",
    Verify => "C_Verify",
    VerifyInit => "C_VerifyInit",
    WrapKey => "C_WrapKey",
}

impl Call {
    /// The functions one cryptoki call of this kind runs, each counted once.
    fn parts(self) -> &'static [Call] {
        match self {
            Call::Encrypt => &[Call::EncryptInit, Call::Encrypt],
            Call::Decrypt => &[Call::DecryptInit, Call::Decrypt],
            Call::Sign => &[Call::SignInit, Call::Sign],
            Call::Verify => &[Call::VerifyInit, Call::Verify],
            Call::FindObjects => &[
                Call::FindObjectsInit,
                Call::FindObjects,
                Call::FindObjectsFinal,
            ],
            _ => &Call::ALL[self as usize..=self as usize],
        }
    }
}

/// Per-function PKCS#11 call counters and latencies, queue waits and rejections.
pub(crate) struct Counters {
    calls: Vec<AtomicU64>,
    latency: Vec<LatencyHistogram>,
    pub(crate) queue_wait: LatencyHistogram,
    pub(crate) busy: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    /// Jobs run a second time because their session died under them (`pool::Retry`).
    pub(crate) retries: AtomicU64,
    /// Jobs the submitting thread ran itself on an inline session (inline dispatch).
    pub(crate) inline: AtomicU64,
    /// Abandoned workers whose stuck call has not returned yet (the device is degraded).
    pub(crate) stuck: AtomicUsize,
    /// Workers abandoned (and replaced) so far.
    pub(crate) replaced: AtomicU64,
    /// Health probes (`C_GetSessionInfo` from [`super::Hsm::ping`]), kept out of `calls` so
    /// that the per-function counters show only what requests caused.
    pub(crate) probes: AtomicU64,
    /// Latency of the health probes.
    pub(crate) probe_latency: LatencyHistogram,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            calls: Call::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            latency: Call::ALL
                .iter()
                .map(|_| LatencyHistogram::default())
                .collect(),
            queue_wait: LatencyHistogram::default(),
            busy: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            inline: AtomicU64::new(0),
            stuck: AtomicUsize::new(0),
            replaced: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            probe_latency: LatencyHistogram::default(),
        }
    }
}

impl Counters {
    /// Make one PKCS#11 call `f` of kind `call`: count it (before it runs, so a call that
    /// never returns is counted) and time it. The cryptoki error is returned as it is, for
    /// callers that classify it; [`Counters::call`] maps it.
    pub(crate) fn run<T>(
        &self,
        call: Call,
        f: impl FnOnce() -> Result<T, CkError>,
    ) -> Result<T, CkError> {
        for part in call.parts() {
            self.calls[*part as usize].fetch_add(1, Ordering::Relaxed);
        }
        let started = Instant::now();
        let r = f();
        self.latency[call as usize].observe(started.elapsed());
        r
    }

    /// [`Counters::run`] with a failure mapped to an [`HsmError`] naming `token`.
    pub(crate) fn call<T>(
        &self,
        call: Call,
        token: &str,
        f: impl FnOnce() -> Result<T, CkError>,
    ) -> Result<T, HsmError> {
        self.run(call, f)
            .map_err(|e| from_cryptoki(call.name(), token, &e))
    }

    /// A health probe (`C_GetSessionInfo`): counted in `probes` and timed apart, not in the
    /// per-function counters.
    pub(crate) fn probe<T>(&self, f: impl FnOnce() -> Result<T, CkError>) -> Result<T, CkError> {
        self.probes.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let r = f();
        self.probe_latency.observe(started.elapsed());
        r
    }

    /// Calls made per function (every function, zeros included).
    pub(crate) fn snapshot(&self) -> std::collections::BTreeMap<&'static str, u64> {
        Call::ALL
            .iter()
            .map(|c| (c.name(), self.calls[*c as usize].load(Ordering::Relaxed)))
            .collect()
    }

    /// Latency snapshots of the functions that have been called, by name.
    pub(crate) fn latency(&self) -> Vec<(&'static str, HistogramSnapshot)> {
        let mut v: Vec<_> = Call::ALL
            .iter()
            .map(|c| (c.name(), self.latency[*c as usize].snapshot()))
            .filter(|(_, s)| s.count > 0)
            .collect();
        v.sort_by_key(|(name, _)| *name);
        v
    }

    /// Sum of all call counters.
    pub(crate) fn total(&self) -> u64 {
        self.calls.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_is_counted_under_its_parts_and_timed_under_its_name() {
        for (i, c) in Call::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "ALL follows the discriminants");
            assert!(c.name().starts_with("C_"));
        }
        let counters = Counters::default();
        let r: Result<(), CkError> = counters.run(Call::Encrypt, || Ok(()));
        r.unwrap();
        let e = counters
            .call::<()>(Call::FindObjects, "tok", || {
                Err(CkError::Pkcs11(
                    cryptoki::error::RvError::DeviceError,
                    cryptoki::context::Function::FindObjects,
                ))
            })
            .unwrap_err();
        assert_eq!(e.function, "C_FindObjects");
        assert_eq!(e.kind, super::super::HsmErrorKind::Unavailable);
        let calls = counters.snapshot();
        for (f, n) in [
            ("C_EncryptInit", 1),
            ("C_Encrypt", 1),
            ("C_FindObjectsInit", 1),
            ("C_FindObjects", 1),
            ("C_FindObjectsFinal", 1),
            ("C_Decrypt", 0),
        ] {
            assert_eq!(calls[f], n, "{f}");
        }
        assert_eq!(counters.total(), 5);
        let timed: Vec<_> = counters.latency().into_iter().map(|(f, _)| f).collect();
        assert_eq!(timed, vec!["C_Encrypt", "C_FindObjects"]);
        let _ = counters.probe(|| Ok::<(), CkError>(()));
        assert_eq!(counters.total(), 5, "a probe is not a call");
        assert_eq!(counters.probes.load(Ordering::Relaxed), 1);
        assert_eq!(counters.probe_latency.snapshot().count, 1);
    }
}
