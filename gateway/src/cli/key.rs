//! `sandstep key generate`: key pairs for handler and manifest signing; `sandstep key
//! root-package`: a root key package (ADU's format) for deployments' `rootKeyPackageUrl`;
//! `sandstep key dps-device-key`: a device's key in a DPS group enrollment.

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use sandstep_signing::jws::PublicJwk;
use sandstep_signing::keys::load_private_jwk;
use sandstep_signing::keys::{generate, KeyKind};
use sandstep_signing::rootkeys::{self, Contents};
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
    /// Write a root key package signed by the roots gateways trust now: it adds roots, disables
    /// roots and signing keys. Serve it and name it in a deployment's `rootKeyPackageUrl`
    /// (`sandstep manifest sign --root-key-package-url`).
    RootPackage(RootPackageArgs),
    /// Print the key a device of a DPS symmetric-key group enrollment registers with: derived
    /// from the group's key and the device's registration id. Run it where the group key is
    /// kept (the factory), and give the device only its own key ([iothub.dps] symmetric-key).
    DpsDeviceKey {
        /// A file holding the enrollment group's primary (or secondary) key, base64.
        #[arg(long)]
        group_key_file: PathBuf,
        #[arg(long)]
        registration_id: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct RootPackageArgs {
    /// A root that signs the package (private RSA JWK); gateways require every root they trust
    /// (or `[trust] root-package-signers`) to have signed. Listed first among the roots.
    #[arg(long = "sign-with", required = true)]
    sign_with: Vec<PathBuf>,
    /// Another root the package lists (public JWK with a kid), e.g. the next one to sign.
    #[arg(long = "root")]
    roots: Vec<PathBuf>,
    /// A root kid gateways must stop trusting.
    #[arg(long = "disable-root")]
    disable_roots: Vec<String>,
    /// A signing key gateways must refuse: its public JWK file, or ADU's name for it (base64url
    /// sha256 of the SubjectPublicKeyInfo).
    #[arg(long = "disable-signing-key")]
    disable_signing_keys: Vec<String>,
    #[arg(long, default_value_t = 1)]
    version: u64,
    /// Seconds since the epoch (default: now); gateways refuse a package older than theirs.
    #[arg(long)]
    published: Option<u64>,
    /// Mark it `isTest` (taken only where `[trust] accept-test-root-packages` is on).
    #[arg(long)]
    test: bool,
    #[arg(long)]
    out: PathBuf,
}

pub fn run(cmd: KeyCommand) -> Result<ExitCode> {
    let (out, kind, kid) = match cmd {
        KeyCommand::Generate { out, kind, kid } => (out, kind, kid),
        KeyCommand::RootPackage(args) => return root_package(args),
        KeyCommand::DpsDeviceKey {
            group_key_file,
            registration_id,
        } => return dps_device_key(&group_key_file, &registration_id),
    };
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

fn dps_device_key(group_key_file: &std::path::Path, registration_id: &str) -> Result<ExitCode> {
    use sandstep::iothub::dps;
    if !dps::valid_registration_id(registration_id) || registration_id.is_empty() {
        bail!("registration id `{registration_id}`: up to 128 letters, digits and - . _ :, ending with a letter, a digit or -");
    }
    let group = std::fs::read_to_string(group_key_file)
        .with_context(|| format!("cannot read {}", group_key_file.display()))?;
    let key = dps::derive_device_key(&group, registration_id)
        .with_context(|| format!("{}", group_key_file.display()))?;
    println!("{key}");
    Ok(ExitCode::SUCCESS)
}

fn read_public(path: &std::path::Path) -> Result<PublicJwk> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    PublicJwk::from_value(&v).with_context(|| format!("{} is not a public JWK", path.display()))
}

fn root_package(args: RootPackageArgs) -> Result<ExitCode> {
    let signers = args
        .sign_with
        .iter()
        .map(|p| load_private_jwk(p).with_context(|| format!("{}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let mut roots: Vec<PublicJwk> = signers.iter().map(|s| s.public()).collect();
    for p in &args.roots {
        roots.push(read_public(p)?);
    }
    if let Some(r) = roots.iter().find(|r| r.kid().is_none()) {
        bail!(
            "every root needs a kid (one of them has none: {})",
            r.thumbprint()
        );
    }
    let mut disabled_signing_keys = Vec::new();
    for k in &args.disable_signing_keys {
        let path = std::path::Path::new(k);
        disabled_signing_keys.push(if path.is_file() {
            read_public(path)?.spki_sha256()
        } else {
            k.clone()
        });
    }
    let published = args.published.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    let contents = Contents {
        version: args.version,
        published,
        is_test: args.test,
        roots,
        disabled_root_kids: args.disable_roots,
        disabled_signing_keys,
    };
    let text = rootkeys::sign(&contents.protected()?, &signers)?;
    std::fs::write(&args.out, text)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "root key package written to {} (published {published}, signed by {})",
        args.out.display(),
        signers
            .iter()
            .filter_map(|s| s.public().kid().map(str::to_owned))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
