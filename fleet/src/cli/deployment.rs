//! What the operator commands that make deployments share (`deploy`, `rollout create`): the
//! manifest and its signing options, the signed deployment document, new workflow ids.

use anyhow::{bail, Context as _, Result};
use clap::Args;
use sandstep_model::deployment::{Deployment, Workflow};
use sandstep_model::manifest::Manifest;
use sandstep_signing::keys::load_private_jwk;
use sandstep_signing::manifest as manifest_sig;
use std::path::PathBuf;

/// What a deployment is made of (`deploy`, `rollout create`): the manifest, where its files
/// are, and how it is signed.
#[derive(Debug, Args)]
pub struct DeploymentArgs {
    /// The update manifest.
    #[arg(long)]
    manifest: PathBuf,
    /// Where devices fetch the files: URL = this base + fileName.
    #[arg(long)]
    files_url: String,
    /// The signing key (private JWK).
    #[arg(long, alias = "key")]
    sign_key: Option<PathBuf>,
    /// The root key that vouches for the signing key.
    #[arg(long)]
    root_key: Option<PathBuf>,
    /// The signing key already signed by a root (compact JWS file), instead of --root-key.
    #[arg(long)]
    sjwk: Option<PathBuf>,
    /// Deploy without a signature (devices refuse it unless configured otherwise).
    #[arg(long)]
    unsigned: bool,
    /// A root key package (from `sandstep key root-package`) devices take before they check
    /// the signature: the deployment's `rootKeyPackageUrl`.
    #[arg(long)]
    root_key_package_url: Option<String>,
}

/// ADU's deployment document for the manifest, signed, its files at `--files-url` + file name;
/// with the manifest's update id (`provider/name/version`).
pub fn deployment(args: &DeploymentArgs, workflow: Workflow) -> Result<(Deployment, String)> {
    let (manifest, files_url, signing) = (&args.manifest, &args.files_url, args);
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let parsed = Manifest::parse(&text)
        .with_context(|| format!("{} is not a valid manifest", manifest.display()))?;
    let signature = match (&signing.sign_key, signing.unsigned) {
        (Some(k), _) => {
            let key = load_private_jwk(k)?;
            let sjwk = match (&signing.root_key, &signing.sjwk) {
                (Some(r), _) => {
                    manifest_sig::sign_signing_key(&key.public(), &load_private_jwk(r)?)?
                }
                (None, Some(p)) => std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?
                    .trim()
                    .to_owned(),
                (None, None) => bail!("--sign-key needs --root-key or --sjwk"),
            };
            Some(manifest_sig::sign(&text, &key, &sjwk))
        }
        (None, true) => None,
        (None, false) => bail!("give --sign-key (with --root-key or --sjwk), or --unsigned"),
    };
    let base = if files_url.ends_with('/') {
        files_url.to_owned()
    } else {
        format!("{files_url}/")
    };
    let doc = Deployment {
        workflow,
        update_manifest: Some(text),
        update_manifest_signature: signature,
        file_urls: parsed
            .files
            .iter()
            .map(|(fid, f)| (fid.clone(), format!("{base}{}", f.file_name)))
            .collect(),
        root_key_package_url: args.root_key_package_url.clone(),
    };
    doc.check()?;
    Ok((doc, parsed.update_id.to_string()))
}

/// A new workflow id.
pub fn new_workflow_id(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:04x}",
        sandstep_transport::clock::now_ms(),
        fastrand::u16(..)
    )
}
