//! `sandstep handler install|list|remove|sign|verify`: the handler registry and signatures;
//! `handler new|build` (a vendor's project) are in `handler_kit`.

use super::common::Common;
use anyhow::{Context as _, Result};
use clap::Subcommand;
use sandstep::loader::Loader;
use sandstep::policy::Policy;
use sandstep::registry::Registry;
use sandstep::trust::handler_sig;
use sandstep::trust::TrustStore;
use sandstep::workflow::now_ms;
use sandstep_signing::keys::load_handler_key;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum HandlerCommand {
    /// Write a new handler project in DIR: the handler (a Rust crate for the SDK with a native
    /// test, or a Python or JavaScript module with the WIT package), a sample manifest and
    /// payload, a README with the next commands.
    New {
        /// The project's directory (created; its name becomes the crate's).
        dir: PathBuf,
        /// The handler id it serves, e.g. contoso/config:1.
        #[arg(long)]
        id: String,
        /// The language: a Rust crate for the SDK, or Python (componentize-py) or JavaScript
        /// (componentize-js) against the WIT package.
        #[arg(long, value_enum, default_value = "rust")]
        lang: super::handler_build::Lang,
    },
    /// Build a handler project into a component (rustup's wasm32-wasip2 target when installed,
    /// else Debian's Rust toolchain) and print its imports and the capabilities they need.
    Build {
        /// The project's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Run a handler project's own native tests: `cargo test` (Rust), `python3 -m unittest`
    /// (Python), `node --test` with the kit's harness (JavaScript).
    Test {
        /// The project's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Verify a signed component, check its imports against the policy for the id, precompile
    /// it, and register it as the handler for the id.
    Install {
        /// The signed handler component (.wasm).
        component: PathBuf,
        /// The handler id it serves, e.g. microsoft/script:1.
        #[arg(long)]
        id: String,
    },
    /// Install the default handlers (`sandstep handler defaults`) from a directory of signed
    /// components named <component>.wasm, under all their ids.
    InstallDefaults {
        /// The directory holding a signed <component>.wasm for each default handler.
        dir: PathBuf,
    },
    /// Show the registered handlers: id, digest, signers, and what the policy grants each
    /// (capabilities, and directories as guest=host (rw|ro)).
    List,
    /// Print the default handlers, one a line: the component's name, then the ids it serves
    /// (the build, signing and packaging scripts read this list).
    Defaults,
    /// Forget a handler id (and its precompiled artefact when no other id uses it).
    Remove {
        /// The handler id.
        id: String,
    },
    /// Sign a component with a handler key (wasmsign2 format; earlier signatures are kept).
    Sign {
        /// The component (.wasm).
        component: PathBuf,
        /// The secret key file (from `sandstep key generate`).
        #[arg(long)]
        key: PathBuf,
        /// Where to write the signed component (default: replace the input).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Say who signed a component, or why it is refused.
    Verify {
        /// The component (.wasm).
        component: PathBuf,
        /// A directory of trusted public keys (*.pub); default: the data dir's trust store.
        #[arg(long)]
        trust: Option<PathBuf>,
    },
}

fn trusted_from_dir(dir: &std::path::Path) -> Result<Vec<sandstep::trust::TrustedHandlerKey>> {
    let mut keys = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("--trust {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".pub") else {
            continue;
        };
        let bytes = std::fs::read(e.path())?;
        let key = wasmsign2::PublicKey::from_bytes(&bytes)
            .with_context(|| format!("{}: not a handler public key", e.path().display()))?
            .attach_default_key_id();
        keys.push(sandstep::trust::TrustedHandlerKey {
            name: stem.to_owned(),
            key,
            scope: Vec::new(),
        });
    }
    Ok(keys)
}

pub async fn run(cmd: HandlerCommand, common: &Common) -> Result<ExitCode> {
    // Signing and verifying need no data dir.
    let cmd = match cmd {
        HandlerCommand::Sign {
            component,
            key,
            out,
        } => return sign(&component, &key, out),
        HandlerCommand::Verify { component, trust } => return verify(&component, trust, common),
        HandlerCommand::New { dir, id, lang } => {
            super::handler_kit::new_project(&dir, &id, lang)?;
            return Ok(ExitCode::SUCCESS);
        }
        HandlerCommand::Build { dir } => {
            super::handler_build::build(&dir)?;
            return Ok(ExitCode::SUCCESS);
        }
        HandlerCommand::Test { dir } => return super::handler_build::test(&dir),
        HandlerCommand::Defaults => {
            for d in sandstep::defaults::DEFAULT_HANDLERS {
                println!("{} {}", d.component, d.ids.join(" "));
            }
            return Ok(ExitCode::SUCCESS);
        }
        other => other,
    };
    let config = common.load_config()?;
    let data = common.data_dir(&config)?;
    let loader = Loader::new(
        Registry::open(data.handlers()?)?,
        TrustStore::load(&data, &config.trust)?,
        super::common::sandbox(&data)?,
    );
    let policy = config.policy();
    match cmd {
        HandlerCommand::Install { component, id } => {
            install(&loader, &policy, &component, &id).await?;
        }
        HandlerCommand::InstallDefaults { dir } => {
            for h in sandstep::defaults::DEFAULT_HANDLERS {
                let path = dir.join(format!("{}.wasm", h.component));
                for id in h.ids {
                    install(&loader, &policy, &path, id).await?;
                }
            }
        }
        HandlerCommand::List => {
            let entries = loader.registry().list()?;
            if entries.is_empty() {
                println!("no handlers registered in {}", data.path().display());
            }
            for e in entries {
                println!(
                    "{:<28} sha256:{}  signed by {:<16} granted: {}",
                    e.id,
                    &e.digest[..16],
                    e.signers.join(","),
                    granted(&policy, &e.id)
                );
            }
        }
        HandlerCommand::Remove { id } => {
            let e = loader.remove(&id)?;
            println!("removed {} (sha256 {})", e.id, e.digest);
        }
        HandlerCommand::Sign { .. }
        | HandlerCommand::Verify { .. }
        | HandlerCommand::New { .. }
        | HandlerCommand::Build { .. }
        | HandlerCommand::Test { .. }
        | HandlerCommand::Defaults => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `handler sign`: embeds a signature section with `key`.
fn sign(component: &Path, key: &Path, out: Option<PathBuf>) -> Result<ExitCode> {
    let bytes =
        std::fs::read(component).with_context(|| format!("cannot read {}", component.display()))?;
    let (sk, pk) = load_handler_key(key)?;
    let signed =
        handler_sig::sign(&bytes, &sk, &pk).with_context(|| format!("{}", component.display()))?;
    let out = out.unwrap_or_else(|| component.to_owned());
    std::fs::write(&out, signed).with_context(|| format!("cannot write {}", out.display()))?;
    println!("signed {} with {}", out.display(), key.display());
    Ok(ExitCode::SUCCESS)
}

/// `handler verify`: who signed it, against a key dir or the data dir's trusted keys.
fn verify(component: &Path, trust: Option<PathBuf>, common: &Common) -> Result<ExitCode> {
    let bytes =
        std::fs::read(component).with_context(|| format!("cannot read {}", component.display()))?;
    let keys = match &trust {
        Some(dir) => trusted_from_dir(dir)?,
        None => {
            let config = common.load_config()?;
            let data = common.data_dir(&config)?;
            TrustStore::load(&data, &config.trust)?.handler_keys
        }
    };
    Ok(match handler_sig::verify(&bytes, &keys) {
        Ok(signers) => {
            println!("{}: signed by {}", component.display(), signers.join(", "));
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}: refused: {e}", component.display());
            ExitCode::FAILURE
        }
    })
}

/// `handler install` of one component under one id.
async fn install(loader: &Loader, policy: &Policy, component: &Path, id: &str) -> Result<()> {
    let bytes =
        std::fs::read(component).with_context(|| format!("cannot read {}", component.display()))?;
    let source = component.display().to_string();
    let (entry, handler) = loader.install(id, bytes, &source, policy, now_ms()).await?;
    println!(
        "installed {} ({} bytes, sha256 {}), signed by {}",
        entry.id,
        entry.size,
        entry.digest,
        entry.signers.join(", ")
    );
    let caps: Vec<&str> = handler.capabilities().iter().map(|c| c.name()).collect();
    if !caps.is_empty() {
        println!("  capabilities: {}", caps.join(", "));
    }
    Ok(())
}

/// What the policy grants a handler id, for `handler list`: its capabilities and the host
/// directories it maps in (`dirs`, `component-dirs`), or `-`.
fn granted(policy: &Policy, id: &str) -> String {
    let mut parts: Vec<String> = policy
        .grants(id)
        .capabilities()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    let access = |writable: bool| if writable { "rw" } else { "ro" };
    if let Some(h) = policy.handler(id) {
        parts.extend(
            h.dirs
                .iter()
                .map(|d| format!("{}={} ({})", d.guest, d.host.display(), access(d.writable))),
        );
        parts.extend(h.component_dirs.iter().map(|d| {
            format!(
                "{}=<component {}> under {} ({})",
                d.guest,
                d.property,
                d.under.display(),
                access(d.writable)
            )
        }));
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}
