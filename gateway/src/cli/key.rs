//! `sandstep key generate`: key pairs for handler and manifest signing.

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use sandstep_signing::keys::{generate, KeyKind};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    /// Ed25519 in wasmsign2's format, for signing handler components.
    Handler,
    /// RSA 3072 JWK (RS256, as ADU), for manifest root and signing keys.
    ManifestRsa,
    /// Ed25519 JWK (EdDSA), for manifest root and signing keys.
    ManifestEd25519,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Write a new key pair: the secret at NAME (mode 0600), the public key at NAME.pub.
    Generate {
        /// Path of the secret key file; NAME.pub is written beside it.
        #[arg(long)]
        out: PathBuf,
        /// What the key signs.
        #[arg(long, value_enum, default_value = "handler")]
        kind: Kind,
        /// Key id (manifest keys; default: the file name). A root key's kid names it in signatures.
        #[arg(long)]
        kid: Option<String>,
    },
}

pub fn run(cmd: KeyCommand) -> Result<ExitCode> {
    let KeyCommand::Generate { out, kind, kid } = cmd;
    let kind = match kind {
        Kind::Handler => KeyKind::Handler,
        Kind::ManifestRsa => KeyKind::ManifestRsa,
        Kind::ManifestEd25519 => KeyKind::ManifestEd25519,
    };
    let (secret, public) = generate(&out, kind, kid)?;
    println!("secret key: {} (keep it private)", secret.display());
    println!("public key: {}", public.display());
    Ok(ExitCode::SUCCESS)
}
