//! `sandstep manifest`: write manifests (`new`, `add-file`, `from-import`, with each file's size
//! and hash computed here; the rules are in `sandstep_model::authoring`), and `sign` one in ADU's
//! layout into a deployment document.

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use sandstep_model::deployment::{action, Deployment, Workflow};
use sandstep_model::manifest::Manifest;
use sandstep_signing::keys::load_private_jwk;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use super::manifest_authoring as authoring;
pub use authoring::{FromImportArgs, NewArgs};

#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// Write a new update manifest (v5) from a step list and the files in --files-dir: each
    /// file's sizeInBytes and sha256 are computed, file ids are the file names.
    New(NewArgs),
    /// Add files to a manifest (or refresh their size and hash after a rebuild), optionally
    /// listing them in one step.
    AddFile {
        /// The manifest to change (rewritten in place; sign it again afterwards).
        manifest: PathBuf,
        /// The files (their names become file ids, unless the manifest already has them).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also list them in this step's `files` (0-based).
        #[arg(long)]
        step: Option<usize>,
    },
    /// Convert an ADU import manifest (the form ADU's docs and tooling write) into the manifest
    /// devices read; reference steps become child manifest files written beside the payloads.
    FromImport(FromImportArgs),
    /// Sign a manifest: the signing key signs the manifest's sha256, and the signing key is
    /// itself signed by a root key (or given already signed with --sjwk).
    Sign(SignArgs),
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The manifest (JSON); its exact bytes are signed.
    manifest: PathBuf,
    /// The signing key (a private JWK from `sandstep key generate --kind manifest-rsa|manifest-ed25519`).
    #[arg(long, alias = "signing-key")]
    key: PathBuf,
    /// The root key that vouches for the signing key (its kid names it).
    #[arg(long, conflicts_with = "sjwk")]
    root_key: Option<PathBuf>,
    /// The signing key already signed by a root (a file holding the compact JWS), so the
    /// root key can stay offline.
    #[arg(long)]
    sjwk: Option<PathBuf>,
    /// Write a deployment document here (workflow, updateManifest, signature, fileUrls);
    /// without it, only the signature is printed.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Workflow id for the deployment document (default: derived from the manifest).
    #[arg(long)]
    workflow_id: Option<String>,
    /// Base URL for fileUrls (URL = base + fileName) in the deployment document.
    #[arg(long)]
    files_url: Option<String>,
    /// Only write the signed signing key (sjwk) for later use with --sjwk, to this file.
    #[arg(long)]
    write_sjwk: Option<PathBuf>,
    /// `rootKeyPackageUrl` of the deployment document: the root key package (from `sandstep
    /// key root-package`) gateways take before they check the signature.
    #[arg(long, requires = "out")]
    root_key_package_url: Option<String>,
}

pub fn run(cmd: ManifestCommand) -> Result<ExitCode> {
    match cmd {
        ManifestCommand::New(args) => authoring::new(args),
        ManifestCommand::AddFile {
            manifest,
            files,
            step,
        } => authoring::add_file(&manifest, &files, step),
        ManifestCommand::FromImport(args) => authoring::from_import(args),
        ManifestCommand::Sign(args) => sign(args),
    }
}

fn sign(args: SignArgs) -> Result<ExitCode> {
    let SignArgs {
        manifest,
        key,
        root_key,
        sjwk,
        out,
        workflow_id,
        files_url,
        write_sjwk,
        root_key_package_url,
    } = args;
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let parsed = Manifest::parse(&text)
        .with_context(|| format!("{} is not a valid manifest", manifest.display()))?;
    let signing = load_private_jwk(&key)?;
    let sjwk = match (root_key, sjwk) {
        (Some(root), _) => sandstep_signing::manifest::sign_signing_key(
            &signing.public(),
            &load_private_jwk(&root)?,
        )
        .with_context(|| format!("{}", root.display()))?,
        (None, Some(p)) => std::fs::read_to_string(&p)
            .with_context(|| format!("cannot read {}", p.display()))?
            .trim()
            .to_owned(),
        (None, None) => bail!(
            "give --root-key ROOT (to sign the signing key now) or --sjwk FILE (already signed)"
        ),
    };
    if let Some(p) = write_sjwk {
        std::fs::write(&p, &sjwk).with_context(|| format!("cannot write {}", p.display()))?;
        println!("signed signing key written to {}", p.display());
    }
    let signature = sandstep_signing::manifest::sign(&text, &signing, &sjwk);
    let Some(out) = out else {
        println!("{signature}");
        return Ok(ExitCode::SUCCESS);
    };
    let file_urls: BTreeMap<String, String> = match &files_url {
        Some(base) => {
            let base = if base.ends_with('/') {
                base.clone()
            } else {
                format!("{base}/")
            };
            parsed
                .files
                .iter()
                .map(|(id, f)| (id.clone(), format!("{base}{}", f.file_name)))
                .collect()
        }
        None => BTreeMap::new(),
    };
    let id = workflow_id.unwrap_or_else(|| {
        let digest = sandstep_signing::manifest::manifest_digest(&text);
        format!("wf-{}", &hex::encode(digest.as_bytes())[..16])
    });
    let doc = Deployment {
        workflow: Workflow {
            action: action::PROCESS_DEPLOYMENT,
            id,
            retry_timestamp: None,
        },
        update_manifest: Some(text),
        update_manifest_signature: Some(signature),
        file_urls,
        root_key_package_url,
    };
    doc.check()
        .context("the deployment document would be refused")?;
    std::fs::write(&out, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "deployment document written to {} (workflow {})",
        out.display(),
        doc.workflow.id
    );
    Ok(ExitCode::SUCCESS)
}
