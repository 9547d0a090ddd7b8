//! Shorthands for the gRPC steps the integration tests repeat. Each one is a single step that
//! fails loudly, with the daemon's status, when the daemon answers with an error.

use p11kms::pb;

use super::{wait_for, Client};

/// Unwraps a gRPC answer into its message: `c.encrypt(req).await.reply()`.
pub trait Reply<T> {
    /// The answer's message; panics at the caller's line with the status on an error.
    fn reply(self) -> T;
}

impl<T> Reply<T> for Result<tonic::Response<T>, tonic::Status> {
    #[track_caller]
    fn reply(self) -> T {
        self.unwrap().into_inner()
    }
}

/// A CreateKey request for `spec` and `usage`, everything else default.
pub fn key_request(spec: &str, usage: &str) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        key_spec: spec.into(),
        key_usage: usage.into(),
        ..Default::default()
    }
}

/// Creates a key from `req` and returns its metadata.
pub async fn create_key_meta(c: &mut Client, req: pb::CreateKeyRequest) -> pb::KeyMetadata {
    c.create_key(req)
        .await
        .expect("create key")
        .into_inner()
        .key_metadata
        .expect("metadata")
}

/// GenerateMac with HMAC_SHA_256 over `message` under `key`: the tag.
pub async fn hmac_sha256(c: &mut Client, key: &str, message: &[u8]) -> Vec<u8> {
    c.generate_mac(pb::GenerateMacRequest {
        message: message.to_vec(),
        key_id: key.into(),
        mac_algorithm: "HMAC_SHA_256".into(),
        grant_tokens: vec![],
        dry_run: false,
    })
    .await
    .reply()
    .mac
}

/// Creates a key from `req` and returns its id.
pub async fn create_key_from(c: &mut Client, req: pb::CreateKeyRequest) -> String {
    create_key_meta(c, req).await.key_id
}

/// CreateAlias `name` for `key`.
pub async fn try_create_alias(
    c: &mut Client,
    name: &str,
    key: &str,
) -> Answer<pb::CreateAliasResponse> {
    c.create_alias(pb::CreateAliasRequest {
        alias_name: name.into(),
        target_key_id: key.into(),
    })
    .await
}

/// CreateAlias `name` for `key`, which must succeed.
pub async fn create_alias(c: &mut Client, name: &str, key: &str) {
    try_create_alias(c, name, key)
        .await
        .unwrap_or_else(|e| panic!("CreateAlias {name}: {e}"));
}

/// The key policy of `key` (GetKeyPolicy of the policy `default`), which must succeed.
pub async fn key_policy(c: &mut Client, key: &str) -> String {
    c.get_key_policy(pb::GetKeyPolicyRequest {
        key_id: key.into(),
        policy_name: "default".into(),
    })
    .await
    .unwrap_or_else(|s| panic!("get the key policy of {key}: {s:?}"))
    .into_inner()
    .policy
}

/// CreateKey of a symmetric key with origin EXTERNAL (no key material until it is imported);
/// its id.
pub async fn create_external_key(c: &mut Client) -> String {
    let req = pb::CreateKeyRequest {
        origin: "EXTERNAL".into(),
        ..Default::default()
    };
    create_key_from(c, req).await
}

/// CreateKey of a symmetric key with the key policy `policy`; its id.
pub async fn create_key_with_policy(c: &mut Client, policy: String) -> String {
    let req = pb::CreateKeyRequest {
        policy,
        ..Default::default()
    };
    create_key_from(c, req).await
}

/// DescribeKey of `key`: its metadata, or the daemon's error.
pub async fn try_describe(c: &mut Client, key: &str) -> Result<pb::KeyMetadata, tonic::Status> {
    c.describe_key(pb::DescribeKeyRequest {
        key_id: key.into(),
        grant_tokens: vec![],
    })
    .await
    .map(|r| r.into_inner().key_metadata.expect("metadata"))
}

/// DescribeKey of `key`, which must succeed.
pub async fn describe_key(c: &mut Client, key: &str) -> pb::KeyMetadata {
    try_describe(c, key)
        .await
        .unwrap_or_else(|s| panic!("describe key {key}: {s:?}"))
}

/// The daemon's answer to a call: its response, or its error.
pub type Answer<T> = Result<tonic::Response<T>, tonic::Status>;

/// Declares `try_<call>(c, key, <more>)` shorthands, one line a call: the RPC `method` with
/// `key` as its request's `key_id` and the named `fields` from the extra arguments; each
/// returns the daemon's [`Answer`], for tests that check an error as much as a success.
macro_rules! key_calls {
    ($(
        $(#[$doc:meta])*
        $name:ident($($arg:ident: $ty:ty),*) = $method:ident($req:ident { $($field:ident),* })
            -> $resp:ident;
    )*) => {$(
        $(#[$doc])*
        pub async fn $name(c: &mut Client, key: &str, $($arg: $ty),*) -> Answer<pb::$resp> {
            c.$method(pb::$req { key_id: key.into(), $($field: $arg),* }).await
        }
    )*};
}

key_calls! {
    /// EnableKey of `key`.
    try_enable_key() = enable_key(EnableKeyRequest {}) -> EnableKeyResponse;
    /// DisableKey of `key`.
    try_disable_key() = disable_key(DisableKeyRequest {}) -> DisableKeyResponse;
    /// CancelKeyDeletion of `key`.
    try_cancel_deletion() = cancel_key_deletion(CancelKeyDeletionRequest {})
        -> CancelKeyDeletionResponse;
    /// ScheduleKeyDeletion of `key` in `pending_window_in_days` days (the default when `None`).
    try_schedule_deletion(pending_window_in_days: Option<i32>)
        = schedule_key_deletion(ScheduleKeyDeletionRequest { pending_window_in_days })
        -> ScheduleKeyDeletionResponse;
    /// EnableKeyRotation of `key` every `rotation_period_in_days` days (the default when `None`).
    try_enable_rotation(rotation_period_in_days: Option<i32>)
        = enable_key_rotation(EnableKeyRotationRequest { rotation_period_in_days })
        -> EnableKeyRotationResponse;
    /// DisableKeyRotation of `key`.
    try_disable_rotation() = disable_key_rotation(DisableKeyRotationRequest {})
        -> DisableKeyRotationResponse;
}

/// Disables `key`, which must succeed.
pub async fn disable_key(c: &mut Client, key: &str) {
    try_disable_key(c, key)
        .await
        .unwrap_or_else(|s| panic!("disable key {key}: {s:?}"));
}

/// An Encrypt request of `plaintext` under `key`, everything else default.
pub fn encrypt_request(key: &str, plaintext: &[u8]) -> pb::EncryptRequest {
    pb::EncryptRequest {
        key_id: key.into(),
        plaintext: plaintext.to_vec(),
        ..Default::default()
    }
}

/// An Encrypt request of `plaintext` under `key` with the encryption algorithm `alg`,
/// everything else default.
pub fn encrypt_request_alg(key: &str, plaintext: &[u8], alg: &str) -> pb::EncryptRequest {
    pb::EncryptRequest {
        encryption_algorithm: alg.into(),
        ..encrypt_request(key, plaintext)
    }
}

/// Encrypt of `pt` under `key` with the encryption context `ec`: the ciphertext blob, or the
/// daemon's error.
pub async fn encrypt_with(
    c: &mut Client,
    key: &str,
    pt: &[u8],
    ec: &[(&str, &str)],
) -> Result<Vec<u8>, tonic::Status> {
    c.encrypt(pb::EncryptRequest {
        encryption_context: super::ctx(ec),
        ..encrypt_request(key, pt)
    })
    .await
    .map(|r| r.into_inner().ciphertext_blob)
}

/// Decrypt of `blob` with the encryption context `ec`: the plaintext, or the daemon's error.
pub async fn decrypt_with(
    c: &mut Client,
    blob: &[u8],
    ec: &[(&str, &str)],
) -> Result<Vec<u8>, tonic::Status> {
    c.decrypt(pb::DecryptRequest {
        ciphertext_blob: blob.to_vec(),
        encryption_context: super::ctx(ec),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().plaintext)
}

/// The `x-amzn-RequestId` a gRPC answer carries.
pub fn request_id<T>(r: &tonic::Response<T>) -> String {
    r.metadata()
        .get("x-amzn-requestid")
        .expect("request id")
        .to_str()
        .unwrap()
        .to_string()
}

/// The key ids on ListKeys' first page, `limit` of them at most (the daemon's default page
/// size when `None`).
pub async fn list_key_ids(c: &mut Client, limit: Option<i32>) -> Vec<String> {
    let keys = list_key_entries(c, limit).await;
    keys.into_iter().map(|k| k.key_id).collect()
}

/// A Decrypt request of `blob` with the encryption context `ec`, everything else default.
pub fn decrypt_request(blob: &[u8], ec: &[(&str, &str)]) -> pb::DecryptRequest {
    pb::DecryptRequest {
        ciphertext_blob: blob.to_vec(),
        encryption_context: super::ctx(ec),
        ..Default::default()
    }
}

/// A Decrypt request of `blob` under the asymmetric `key` with the encryption algorithm `alg`,
/// everything else default.
pub fn decrypt_request_alg(blob: &[u8], key: &str, alg: &str) -> pb::DecryptRequest {
    pb::DecryptRequest {
        key_id: key.into(),
        encryption_algorithm: alg.into(),
        ..decrypt_request(blob, &[])
    }
}

/// An Encrypt request of `plaintext` under `key` with the encryption context `ec`, everything
/// else default.
pub fn encrypt_request_ctx(key: &str, plaintext: &[u8], ec: &[(&str, &str)]) -> pb::EncryptRequest {
    pb::EncryptRequest {
        encryption_context: super::ctx(ec),
        ..encrypt_request(key, plaintext)
    }
}

/// A GenerateDataKey request for an AES-256 data key under `key`, everything else default.
pub fn data_key_request(key: &str) -> pb::GenerateDataKeyRequest {
    pb::GenerateDataKeyRequest {
        key_id: key.into(),
        key_spec: "AES_256".into(),
        ..Default::default()
    }
}

/// Declares `<name>(c, <selector>)` shorthands, one line a listing: the entries on the first
/// page of the RPC `method`, whose request sets only the selector (`key_id` for a per-key list,
/// `limit` for an account-wide one); the call must succeed.
macro_rules! first_pages {
    ($(
        $(#[$doc:meta])*
        $name:ident($sel:ident: $ty:ty) = $method:ident($req:ident).$field:ident: $entry:ident;
    )*) => {$(
        $(#[$doc])*
        pub async fn $name(c: &mut Client, $sel: $ty) -> Vec<pb::$entry> {
            c.$method(pb::$req {
                $sel: $sel.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("{} of {:?}: {s:?}", stringify!($method), $sel))
            .into_inner()
            .$field
        }
    )*};
}

first_pages! {
    /// The tags on `key_id`.
    list_tags(key_id: &str) = list_resource_tags(ListResourceTagsRequest).tags: Tag;
    /// The aliases of `key_id`.
    list_aliases_of(key_id: &str) = list_aliases(ListAliasesRequest).aliases: AliasListEntry;
    /// The grants on `key_id`.
    list_grants_of(key_id: &str) = list_grants(ListGrantsRequest).grants: GrantListEntry;
    /// The rotations of `key_id`.
    list_rotations_of(key_id: &str) =
        list_key_rotations(ListKeyRotationsRequest).rotations: RotationsListEntry;
    /// The keys, `limit` of them at most (the daemon's default page size when `None`).
    list_key_entries(limit: Option<i32>) = list_keys(ListKeysRequest).keys: KeyListEntry;
    /// The aliases, `limit` of them at most (the daemon's default page size when `None`).
    list_alias_entries(limit: Option<i32>) = list_aliases(ListAliasesRequest).aliases: AliasListEntry;
}

/// The tag `key` = `value`.
pub fn tag(key: impl Into<String>, value: impl Into<String>) -> pb::Tag {
    pb::Tag {
        tag_key: key.into(),
        tag_value: value.into(),
    }
}

/// Tags `key` with one tag, which must succeed.
pub async fn tag_key(c: &mut Client, key: &str, tag_key: &str, tag_value: &str) {
    c.tag_resource(pb::TagResourceRequest {
        key_id: key.into(),
        tags: vec![tag(tag_key, tag_value)],
    })
    .await
    .unwrap_or_else(|s| panic!("tag {key}: {s:?}"));
}

/// Schedules the deletion of `key` in `days` days, which must succeed.
pub async fn schedule_deletion(c: &mut Client, key: &str, days: i32) {
    try_schedule_deletion(c, key, Some(days))
        .await
        .unwrap_or_else(|s| panic!("schedule the deletion of {key}: {s:?}"));
}

/// RotateKeyOnDemand of `key`: the key id the daemon answers with, or its error.
pub async fn rotate_on_demand(c: &mut Client, key: &str) -> Result<String, tonic::Status> {
    c.rotate_key_on_demand(pb::RotateKeyOnDemandRequest { key_id: key.into() })
        .await
        .map(|r| r.into_inner().key_id)
}

/// The DER public key of the asymmetric `key`, which must succeed.
pub async fn public_key(c: &mut Client, key: &str) -> Vec<u8> {
    c.get_public_key(pb::GetPublicKeyRequest {
        key_id: key.into(),
        grant_tokens: vec![],
    })
    .await
    .unwrap_or_else(|s| panic!("get the public key of {key}: {s:?}"))
    .into_inner()
    .public_key
}

/// The store `id` as DescribeCustomKeyStores lists it.
pub async fn describe_store(c: &mut Client, id: &str) -> pb::CustomKeyStoresListEntry {
    let r = c
        .describe_custom_key_stores(pb::DescribeCustomKeyStoresRequest {
            custom_key_store_id: id.into(),
            ..Default::default()
        })
        .await
        .expect("describe the store")
        .into_inner();
    assert_eq!(r.custom_key_stores.len(), 1, "{r:?}");
    r.custom_key_stores.into_iter().next().unwrap()
}

/// Waits (bounded) until store `id` leaves CONNECTING; its (state, error code).
pub async fn settled(c: &mut Client, id: &str) -> (String, String) {
    let mut last = (String::new(), String::new());
    let settled = wait_for(async || {
        let s = describe_store(c, id).await;
        last = (s.connection_state, s.connection_error_code);
        last.0 != "CONNECTING"
    })
    .await;
    assert!(settled, "store {id} still CONNECTING");
    last
}

/// ConnectCustomKeyStore of `id`, then its settled state.
pub async fn connect(c: &mut Client, id: &str) -> (String, String) {
    c.connect_custom_key_store(pb::ConnectCustomKeyStoreRequest {
        custom_key_store_id: id.into(),
    })
    .await
    .expect("connect");
    settled(c, id).await
}
