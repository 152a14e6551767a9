//! The keys and signatures sandstep's two halves share. The gateway verifies what operators
//! and vendors sign; the fleet side signs deployments; neither needs the other to do it.
//!
//! - [`jws`]: compact JWS and JWK, RS256 and EdDSA only.
//! - [`keys`]: key files as `sandstep key generate` writes them (handler keys in wasmsign2's
//!   format, manifest keys as JWKs).
//! - [`manifest`]: ADU's manifest signature (`updateManifestSignature`, `sjwk`), made.
//!   Verifying it against trusted roots is the gateway's (`sandstep::trust::manifest_sig`).
//! - [`rootkeys`]: ADU's root key package: what its roots sign and where the signatures go.

pub mod jws;
pub mod keys;
pub mod manifest;
pub mod rootkeys;
