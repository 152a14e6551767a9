//! `manifest new`, `manifest add-file`, `manifest from-import`: the file I/O around
//! `sandstep_model::authoring` (which decides what is written).

use anyhow::{bail, Context as _, Result};
use clap::Args;
use sandstep_model::authoring::{self, FileFacts, Import};
use sandstep_model::UpdateId;
use serde_json::{Map, Value};
use sha2::Digest as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The update id: PROVIDER/NAME/VERSION (e.g. contoso/toaster/1.0).
    #[arg(long)]
    update_id: String,
    /// A compatibility entry, KEY=VALUE[,KEY=VALUE...] (e.g. manufacturer=contoso,model=toaster);
    /// repeat for several.
    #[arg(long, required = true)]
    compat: Vec<String>,
    /// A step as JSON, in order; files by file name: {"handler": "microsoft/script:1", "files":
    /// ["install.sh"], "handlerProperties": {...}}, or {"type": "reference",
    /// "detachedManifestFileId": "child.json"} for a child manifest file.
    #[arg(long)]
    step: Vec<String>,
    /// A JSON file holding the array of steps (instead of --step).
    #[arg(long, conflicts_with = "step")]
    steps: Option<PathBuf>,
    /// Where the step files are.
    #[arg(long, default_value = ".")]
    files_dir: PathBuf,
    /// Where the manifest is written.
    #[arg(long)]
    out: PathBuf,
    /// A rollback: devices with a newer version of this update install it anyway (the
    /// manifest's signed `"sandstep": {"allowDowngrade": true}`); without it they refuse it
    /// (B010000A).
    #[arg(long)]
    allow_downgrade: bool,
    /// When devices may download this update, in their local time: `Mon-Fri 22:00-06:00`
    /// (repeat for several; signed as `sandstep.downloadWindows`). Where the gateway has its
    /// own `[windows] download`, both must be open.
    #[arg(long, value_name = "WINDOW")]
    download_window: Vec<String>,
    /// When devices may begin to install it (signed as `sandstep.installWindows`).
    #[arg(long, value_name = "WINDOW")]
    install_window: Vec<String>,
    /// A bandwidth cap for this update's downloads, in bytes a second (signed as
    /// `sandstep.maxBytesPerSec`; the gateway's own cap holds too).
    #[arg(long, value_name = "BYTES")]
    max_bytes_per_sec: Option<u64>,
}

#[derive(Debug, Args)]
pub struct FromImportArgs {
    /// The import manifest (e.g. contoso.toaster.1.0.importmanifest.json).
    import: PathBuf,
    /// The import manifest of a child update a reference step names; every other import
    /// manifest in the same directory is looked at too.
    #[arg(long)]
    child: Vec<PathBuf>,
    /// Where the payload files are, and where child manifests are written (default: the
    /// import manifest's directory).
    #[arg(long)]
    files_dir: Option<PathBuf>,
    /// Take a local file that differs from the size and hash the import manifest declares as
    /// it is (by default that is an error naming both).
    #[arg(long)]
    use_local_files: bool,
    /// Where the manifest is written (default: <files-dir>/<provider>.<name>.<version>.manifest.json).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Size and sha256 of `path`, `None` when it does not exist.
pub(super) fn facts(path: &Path) -> Result<Option<FileFacts>, authoring::FactsError> {
    let err = |cause| authoring::FactsError {
        path: path.display().to_string(),
        cause,
    };
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok(Some(FileFacts {
        size,
        sha256: h.finalize().into(),
    }))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(sandstep_model::json::strip_bom(&bytes))
        .with_context(|| format!("{} is not JSON", path.display()))
}

fn parse_update_id(s: &str) -> Result<UpdateId> {
    let parts: Vec<&str> = s.split('/').collect();
    let [provider, name, version] = parts[..] else {
        bail!("--update-id `{s}`: give PROVIDER/NAME/VERSION, e.g. contoso/toaster/1.0");
    };
    Ok(UpdateId {
        provider: provider.into(),
        name: name.into(),
        version: version.into(),
    })
}

fn parse_compat(s: &str) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    for pair in s.split(',') {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("--compat `{s}`: give KEY=VALUE[,KEY=VALUE...], e.g. manufacturer=contoso,model=toaster");
        };
        m.insert(k.trim().into(), Value::String(v.trim().into()));
    }
    Ok(m)
}

pub fn new(args: NewArgs) -> Result<ExitCode> {
    let id = parse_update_id(&args.update_id)?;
    let compat = args
        .compat
        .iter()
        .map(|c| parse_compat(c))
        .collect::<Result<Vec<_>>>()?;
    let steps: Vec<Value> = match &args.steps {
        Some(p) => match read_json(p)? {
            Value::Array(a) => a,
            _ => bail!("{}: must be a JSON array of steps", p.display()),
        },
        None => args
            .step
            .iter()
            .enumerate()
            .map(|(i, s)| {
                serde_json::from_str(s).with_context(|| format!("--step #{}: not JSON", i + 1))
            })
            .collect::<Result<_>>()?,
    };
    if steps.is_empty() {
        bail!("give the steps: --step JSON (repeated) or --steps FILE");
    }
    let dir = args.files_dir.clone();
    let created = chrono_now();
    let mut text =
        authoring::new_manifest(&id, &compat, &steps, &created, &|n| facts(&dir.join(n)))?;
    if args.allow_downgrade {
        text = authoring::allow_downgrade(&text)?;
    }
    text = authoring::with_delivery(
        &text,
        &args.download_window,
        &args.install_window,
        args.max_bytes_per_sec,
    )?;
    check_apt_manifests(&text, &dir)?;
    write(&args.out, &text)?;
    println!("manifest written to {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

/// Each apt step's apt manifest parses as the apt handler parses it on the device
/// (`sandstep_model::apt`, ADU's `apt_parser.cpp` rules).
fn check_apt_manifests(text: &str, dir: &Path) -> Result<()> {
    let manifest: Value = serde_json::from_str(text)?;
    for (field, name) in authoring::apt_manifest_files(&manifest) {
        let path = dir.join(&name);
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if let Err(e) = sandstep_model::apt::AptManifest::parse(&bytes) {
            bail!("the new manifest: {field}: apt manifest `{name}`: {e} (microsoft/apt:1 refuses it)");
        }
    }
    Ok(())
}

/// Now as ADU's tooling writes `createdDateTime` (ISO 8601, UTC).
pub(super) fn chrono_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    sandstep_transport::clock::iso8601_utc(secs)
}

pub fn add_file(manifest: &Path, files: &[PathBuf], step: Option<usize>) -> Result<ExitCode> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let mut names = Vec::new();
    let mut paths = std::collections::BTreeMap::new();
    for f in files {
        let Some(name) = f.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            bail!("{}: not a file", f.display());
        };
        paths.insert(name.clone(), f.clone());
        names.push(name);
    }
    let doc = manifest.display().to_string();
    let out = authoring::add_files(&doc, &text, &names, step, &|n| match paths.get(n) {
        Some(p) => facts(p),
        None => Ok(None),
    })?;
    write(manifest, &out)?;
    println!(
        "{} files added to {} (sign it again)",
        names.len(),
        manifest.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Import manifests that may be the children: the --child files, then every other JSON file
/// beside the parent that looks like one.
fn child_candidates(parent: &Path, given: &[PathBuf]) -> Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    for p in given {
        out.push((p.display().to_string(), read_json(p)?));
    }
    let dir = parent
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let p = e.path();
        let is_json = p.extension().is_some_and(|x| x == "json");
        if !is_json || p == parent || given.contains(&p) {
            continue;
        }
        if let Ok(v) = read_json(&p) {
            let looks_like = v.get("updateId").is_some()
                && (v.get("instructions").is_some() || v.get("updateType").is_some())
                && v.get("files").is_none_or(Value::is_array);
            if looks_like {
                out.push((p.display().to_string(), v));
            }
        }
    }
    Ok(out)
}

pub fn from_import(args: FromImportArgs) -> Result<ExitCode> {
    let import = read_json(&args.import)?;
    let files_dir = match &args.files_dir {
        Some(d) => d.clone(),
        None => args
            .import
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned(),
    };
    let candidates = child_candidates(&args.import, &args.child)?;
    let find = |want: &UpdateId| {
        candidates
            .iter()
            .find(|(_, v)| {
                v.get("updateId")
                    .and_then(|i| serde_json::from_value::<UpdateId>(i.clone()).ok())
                    .as_ref()
                    == Some(want)
            })
            .cloned()
    };
    let dir = files_dir.clone();
    let facts_in_dir = |n: &str| facts(&dir.join(n));
    let how = Import {
        child: &find,
        facts: &facts_in_dir,
        prefer_local: args.use_local_files,
    };
    let converted = authoring::from_import(&args.import.display().to_string(), &import, &how)?;
    for (name, text) in &converted.children {
        let p = files_dir.join(name);
        write(&p, text)?;
        println!("child manifest written to {}", p.display());
    }
    let out = match args.out {
        Some(o) => o,
        None => {
            let id: UpdateId = serde_json::from_value(import["updateId"].clone())
                .context("the import manifest's updateId")?;
            files_dir.join(authoring::child_file_name(&id))
        }
    };
    write(&out, &converted.manifest)?;
    println!("manifest written to {}", out.display());
    Ok(ExitCode::SUCCESS)
}
