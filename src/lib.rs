//! # p11kms: an on-premises key management daemon in front of a PKCS#11 HSM
//!
//! Customer master keys live in the HSM and never leave it in plaintext. Every request is
//! authenticated, then authorized by AWS-KMS-style policy evaluation, and only then run on the
//! device. `ARCHITECTURE.md` (in the shared design folder) is the full design; this is the map.
//!
//! ## Crate map
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the TOML config file: typed, validated before any port is bound, secrets from file or env (`config::xks`: the XKS door's key stores and their credential files; `config::console`: the operator console) |
//! | [`core`] | the operations, one file per family (`keys`, `usage`, `aliases`, `tags`, `policies`, `crypto`, `asym`, `grants`, `rotation`, `import`, `explain`, `sts`, `xks`: the XKS proxy API's operations, with `xks_health`: its deep, cached health check of every backing HSM), each in one shape (`operation`: request, response, audit parameters); several nodes on one store (`locks`: per-key change locks; `change`: compare-and-set writes retried on fresh state; `follow`: the cache follows other nodes' changes through the change log; `lead`: background duties on one node; `session_vault`: AssumeRole sessions in the store), and the custom key stores (`keystores`: the six store operations; `connections`: each store's device or proxy and connection life cycle, the password sealed on the default HSM; `external`: external key stores' members, the proxy's failures mapped to AWS answers, their keys' double encryption); wrapped-key residency (`residency`: the blobs of wrapped key versions and a device's master; `rewrap`: online master-key rotation; `migrate`: moving keys between residencies; `blob_check`: blobs unwrapped on the device for `check`); multi-Region keys (`regions`: ReplicateKey, UpdatePrimaryRegion, the shared properties a primary pushes; `region_peer`: what a peer Region's daemon asks of this one; `key_id`: the two key id shapes, `mrk-` ids as UUID v8 bytes); the operator console's operations (`admin`: ListPrincipals and GetHealth, the markers of their pages; `audit_trail`: SearchAuditTrail and VerifyAuditTrail on this node's trail); the typed domain (`domain`, `algorithms`), key resolution, the authorizer seam, `KmsError` |
//! | [`policy`] | the pure policy language: parsing, compilation, conditions, evaluation with a trace |
//! | [`identity`] | ARNs, principals, the [`identity::Caller`] that authentication yields, certificate bindings |
//! | [`metrics`] | Prometheus metrics: requests, latencies, HSM calls and queue, decisions, audit; `metrics::ring`: the last 15 minutes of requests in 10 s points, for GetHealth |
//! | [`hsm`] | everything PKCS#11 (the only place `cryptoki` is imported): module, token, sessions, handle cache, operations; `pool`: the worker threads, the queue, the watchdog and inline dispatch (a request's own thread runs its fast job under light load); `wrapped`: key material wrapped under trusted master keys and unwrapped per worker; `region`, `region_peer`: moving key material between Regions' devices under SO-trusted transport keys, a key pair's private half under a trusted carrier key |
//! | [`store`] | metadata persistence behind [`store::MetadataStore`]: one SQL implementation over sqlx's `Any` driver, SQLite embedded by default or PostgreSQL shared by several nodes; SQLite's start-up load of every key through a rusqlite bulk reader (row versions, the change log, stored sessions, the lead of background duties) |
//! | [`ciphertext`] | ciphertext format v1 and its AAD |
//! | [`audit`] | the tamper-evident audit trail: events, the hash-chained group-committed writer, HSM-signed checkpoints, the offline verifier |
//! | [`api`] | the doors (gRPC on tonic; the HTTP doors, the AWS door and the XKS door (AWS KMS's external key store proxy API, `docs/xks.md`), on one listener and listed in [`api::HTTP_DOORS`]; gRPC's `RegionService` answers peer Regions; `api::console`: the operator console's built files under `/console/` on the AWS door's listener), and the one mapping from `KmsError` to each wire's error |
//! | [`server`] | wiring: `server::run(config, shutdown)` starts the real daemon (tests use port 0) |
//! | [`check`] | `p11kms check`: config, token, mechanisms, store/token reconciliation, wrapped residency's masters and blobs (`core::blob_check`) |
//! | [`client`] | the gRPC client used by the CLI's client commands |
//! | [`region_link`] | the outbound side of multi-Region keys: calls to the peer Regions' gRPC `RegionService` (`[region.peers]`), as the engine's `RegionLink` |
//! | [`xks_client`] | the outbound XKS proxy client of `EXTERNAL_KEY_STORE` custom key stores: SigV4-signed calls to a proxy's health, metadata, encrypt and decrypt, pooled, 250 ms each, typed errors |
//! | [`devsetup`] | the dev set-up: dev CA, server and admin certificates, config, PIN files |
//! | [`pb`] | generated protobuf/gRPC types for `p11kms.v1` |
//! | [`time`] | civil dates and UTC timestamp formats (ISO 8601, SigV4's `X-Amz-Date`): the one converter |
//! | [`redact`] | `redacted_debug!`: the one way a type holding a secret gets its `Debug` |
//! | [`wire_enum`] | `wire_enum!` and `WireEnum`: every AWS enum declared once, read and written through one bound |
//! | [`encoding`] | `sha256_hex`, `public_key_pem`, percent-decoding: small encodings every layer shares |
//!
//! The `p11kms` command line is not part of this library: it is the binary's own `src/main.rs`
//! (parse, dispatch) and `src/cli/` (one module per command family), and reaches the daemon
//! through [`client`].
//!
//! The request path: door -> authenticate ([`identity::Caller`]) -> core operation -> resolve
//! key (cache) -> authorize -> key state -> HSM -> reply.

#![deny(unsafe_code)]

pub mod api;
pub mod audit;
pub mod check;
pub mod ciphertext;
pub mod client;
pub mod config;
pub mod core;
pub mod devsetup;
pub mod encoding;
pub mod hsm;
pub mod identity;
pub mod metrics;
pub mod policy;
pub mod redact;
pub mod region_link;
pub mod server;
pub mod store;
pub mod time;
pub mod wire_enum;
pub mod xks_client;

/// Generated protobuf and gRPC types of the `p11kms.v1` package.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("p11kms.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("p11kms_descriptor");
}
