//! `sandstep trust add|list`: the data dir's trusted keys.

use super::common::Common;
use anyhow::{bail, Context as _, Result};
use clap::{Subcommand, ValueEnum};
use sandstep::datadir::write_atomic;
use sandstep::trust::root_package;
use sandstep::trust::{Scope, TrustStore};
use sandstep_signing::jws::PublicJwk;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum What {
    /// A handler signing key (wasmsign2 public key).
    Handler,
    /// A manifest root key (public JWK with a kid).
    Root,
}

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Trust a public key (copied into <data-dir>/trust/handlers or trust/roots).
    Add {
        what: What,
        /// The public key file (NAME.pub from `sandstep key generate`); for `root`, also ADU's
        /// root key package file (root keys, disabled root keys, disabled signing keys).
        key: PathBuf,
        /// The name it is known by (default: the file name without .pub and .key).
        #[arg(long)]
        name: Option<String>,
        /// For a handler key: what it may sign (repeatable): a vendor (`contoso`: contoso/*
        /// ids, never contosoevil/*), a handler (`contoso/modem`: every version) or an id
        /// (`contoso/modem:1`); without, any handler id.
        #[arg(long)]
        scope: Vec<String>,
    },
    /// Show the trusted keys.
    List,
}

pub fn run(cmd: TrustCommand, common: &Common) -> Result<ExitCode> {
    let config = common.load_config()?;
    let data = common.data_dir(&config)?;
    match cmd {
        TrustCommand::Add {
            what,
            key,
            name,
            scope,
        } => {
            let bytes =
                std::fs::read(&key).with_context(|| format!("cannot read {}", key.display()))?;
            let name = match name {
                Some(n) => n,
                None => key
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(|n| {
                        // vendor.key.pub (from `key generate --out vendor.key`) is "vendor".
                        n.trim_end_matches(".pub")
                            .trim_end_matches(".key")
                            .trim_end_matches(".json")
                            .trim_end_matches(".rootkeys")
                            .to_owned()
                    })
                    .context("the key path has no file name")?,
            };
            if sandstep_model::manifest::check_plain_name(&name).is_err() || name.starts_with('.') {
                bail!("`{name}` cannot name a key file; use --name with a plain name");
            }
            let (dir, file) = match what {
                What::Handler => {
                    wasmsign2::PublicKey::from_bytes(&bytes).with_context(|| {
                        format!("{} is not a handler public key", key.display())
                    })?;
                    (data.trust_handlers()?, format!("{name}.pub"))
                }
                What::Root => {
                    let v: serde_json::Value =
                        serde_json::from_slice(sandstep_model::json::strip_bom(&bytes))
                            .with_context(|| format!("{} is not JSON", key.display()))?;
                    (data.trust_roots()?, root_file(&v, &key, &name)?)
                }
            };
            let scope = scope
                .iter()
                .map(|s| Scope::parse(s).context("--scope"))
                .collect::<Result<Vec<_>>>()?;
            let lines: Vec<&str> = scope.iter().map(Scope::line).collect();
            if matches!(what, What::Handler) {
                // Written first, so the key is never trusted wider than asked for.
                let scope_file = format!("{name}.scope");
                if scope.is_empty() {
                    let _ = dir.remove_file(&scope_file);
                } else {
                    write_atomic(&dir, &scope_file, lines.join("\n").as_bytes(), 0o644)?;
                }
            } else if !scope.is_empty() {
                bail!("--scope is for handler keys");
            }
            write_atomic(&dir, &file, &bytes, 0o644)?;
            match scope.is_empty() {
                true => println!("trusted {name}"),
                false => println!("trusted {name} for {}", shown(&scope)),
            }
        }
        TrustCommand::List => list(&TrustStore::load(&data, &config.trust)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// `sandstep trust list`: handler keys, roots (the operator's and those a deployment's root key
/// package brought) and that package.
fn list(store: &TrustStore) {
    for k in &store.handler_keys {
        let scope = match k.scope.is_empty() {
            true => "any handler id".to_owned(),
            false => shown(&k.scope),
        };
        println!(
            "handler key {}  id {}  signs {scope}",
            k.name,
            k.key.key_id().map(hex::encode).unwrap_or_default()
        );
    }
    let fetched_roots = match &store.fetched {
        Some(Ok(a)) => a.package.roots.clone(),
        _ => Vec::new(),
    };
    let listed = store.roots.iter().map(|r| (r, "")).chain(
        fetched_roots
            .iter()
            .map(|r| (r, " (from a deployment's root key package)")),
    );
    for (r, origin) in listed {
        let disabled = if store.root_disabled(r.kid().unwrap_or("")) {
            " (disabled)"
        } else {
            ""
        };
        println!(
            "root {}  {}{disabled}{origin}",
            r.kid().unwrap_or("?"),
            r.thumbprint()
        );
    }
    match &store.fetched {
        Some(Ok(a)) => println!(
            "root key package from deployments: published {}, {} roots, {} disabled roots, {} disabled signing keys",
            a.package.published.unwrap_or(0),
            a.package.roots.len(),
            a.package.disabled_root_kids.len(),
            a.package.disabled_signing_keys.len()
        ),
        Some(Err(why)) => println!("root key package from deployments: REFUSED: {why}; every manifest is refused until a deployment brings a good one"),
        None => {}
    }
}

/// Checks a root key file (a public JWK with a kid, or ADU's root key package) and says what it
/// holds; returns the file name it is kept under.
fn root_file(v: &serde_json::Value, key: &std::path::Path, name: &str) -> Result<String> {
    if root_package::is_package(v) {
        let pkg = root_package::parse(v).with_context(|| format!("{}", key.display()))?;
        for r in &pkg.roots {
            println!("root key {}", r.kid().unwrap_or("?"));
        }
        for kid in &pkg.disabled_root_kids {
            println!("disabled root key {kid}");
        }
        for hash in &pkg.disabled_signing_keys {
            println!("disabled signing key {hash}");
        }
        return Ok(format!("{name}{}", root_package::SUFFIX));
    }
    let jwk = PublicJwk::from_value(v).with_context(|| format!("{}", key.display()))?;
    if v.get("d").is_some() {
        bail!(
            "{} holds a private key; give the public one (NAME.pub)",
            key.display()
        );
    }
    if jwk.kid().is_none() {
        bail!("{}: a root key needs a `kid`", key.display());
    }
    Ok(format!("{name}.pub"))
}

/// Scopes as `trust add` and `trust list` show them: `contoso/*`, `contoso/modem:*`, an id.
fn shown(scope: &[Scope]) -> String {
    scope
        .iter()
        .map(Scope::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
