//! `sandstep handler new` and `handler build`: a handler project from a template, anywhere on
//! disk, and its build into a component with the toolchain this machine has (rustup's
//! wasm32-wasip2 target, else Debian's Rust with the standard library built from source, as
//! scripts/build-components.sh builds the project's own guests).

use anyhow::{bail, Context as _, Result};
use sandstep::capability::{classify_import, ImportKind};
use sandstep_model::authoring::{self, FileFacts};
use sandstep_model::UpdateId;
use std::path::{Path, PathBuf};
use std::process::Command;

const CARGO_TOML: &str = include_str!("../../templates/rust/Cargo.toml");
const LIB_RS: &str = include_str!("../../templates/rust/lib.rs");
const README: &str = include_str!("../../templates/rust/README.md");
/// The versions the SDK is tested with: a new project starts from them.
const LOCK: &str = include_str!("../../../Cargo.lock");
const SAMPLE_FILE: &str = "app.conf";

/// The Debian packages that build wasm32-wasip2 components without rustup's target.
pub const DEBIAN_TOOLCHAIN: [&str; 5] = [
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "wasi-libc",
    "lld-14",
];

/// A project's names, derived from its directory and handler id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The crate (and component file) name.
    pub krate: String,
    /// The handler type's name.
    pub type_name: String,
    /// The vendor: the handler id's part before `/`.
    pub vendor: String,
}

/// Names for a project in directory `dir_name` serving handler `id`; refuses an id that is not
/// `vendor/name:version` and a directory name with nothing to make a crate name of.
pub fn names(dir_name: &str, id: &str) -> Result<Names, String> {
    if !sandstep_model::manifest::is_handler_id(id) {
        return Err(format!(
            "--id {id}: a handler id is vendor/name:version, e.g. contoso/config:1"
        ));
    }
    let krate: String = dir_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .trim_matches('-')
        .to_owned();
    if !krate.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!(
            "{dir_name}: the directory's name must start with a letter (it names the crate)"
        ));
    }
    let type_name: String = krate
        .split('-')
        .filter(|w| !w.is_empty())
        .map(|w| w[..1].to_ascii_uppercase() + &w[1..])
        .collect::<String>()
        + "Handler";
    let vendor = id.split('/').next().unwrap_or_default().to_owned();
    Ok(Names {
        krate,
        type_name,
        vendor,
    })
}

/// Fills a template's placeholders.
pub fn render(template: &str, names: &Names, id: &str, sdk: &Path) -> String {
    template
        .replace("@CRATE@", &names.krate)
        .replace("@STRUCT@", &names.type_name)
        .replace("@ID@", id)
        .replace("@SDK@", &sdk.display().to_string())
}

/// Where the SDK's crate is: $SANDSTEP_SDK, the package's copy, or this build's source tree.
fn find_sdk() -> Result<PathBuf> {
    let candidates = [
        std::env::var_os("SANDSTEP_SDK").map(PathBuf::from),
        Some(PathBuf::from("/usr/share/sandstep/rust/sdk")),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk")),
    ];
    for c in candidates.into_iter().flatten() {
        if c.join("Cargo.toml").is_file() {
            return Ok(c.canonicalize()?);
        }
    }
    bail!("no sandstep-sdk found: set SANDSTEP_SDK to the sdk directory of a sandstep checkout")
}

/// `handler new DIR --id ID`: writes the project.
pub fn new_project(dir: &Path, id: &str) -> Result<()> {
    let dir_name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: not a directory name", dir.display()))?;
    let names = names(dir_name, id).map_err(anyhow::Error::msg)?;
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{}: exists and is not empty; choose a new directory",
            dir.display()
        );
    }
    let sdk = find_sdk()?;
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::create_dir_all(dir.join("payload"))?;
    let write = |rel: &str, text: &str| {
        std::fs::write(dir.join(rel), text)
            .with_context(|| format!("writing {}", dir.join(rel).display()))
    };
    write("Cargo.toml", &render(CARGO_TOML, &names, id, &sdk))?;
    write("src/lib.rs", &render(LIB_RS, &names, id, &sdk))?;
    write("README.md", &render(README, &names, id, &sdk))?;
    write("Cargo.lock", LOCK)?;
    write(".gitignore", "/target\n*.key\n")?;
    write(&format!("payload/{SAMPLE_FILE}"), "greeting=hello\n")?;
    write(
        "manifest.json",
        &sample_manifest(&names, id, &dir.join("payload"))?,
    )?;
    println!(
        "wrote {} ({}, handler {id}); next: cd {} && sandstep handler build",
        dir.display(),
        names.krate,
        dir.display()
    );
    Ok(())
}

/// A one-step manifest installing the sample file with the new handler.
fn sample_manifest(names: &Names, id: &str, payload: &Path) -> Result<String> {
    let update = UpdateId {
        provider: names.vendor.clone(),
        name: names.krate.clone(),
        version: "1.0".into(),
    };
    let compat: serde_json::Map<String, serde_json::Value> = serde_json::from_value(
        serde_json::json!({"manufacturer": names.vendor, "model": names.krate}),
    )?;
    let step = serde_json::json!({"handler": id, "files": [SAMPLE_FILE],
        "handlerProperties": {"fileName": SAMPLE_FILE, "installedCriteria": "1.0"}});
    let facts = |name: &str| -> Result<Option<FileFacts>, String> {
        let bytes = std::fs::read(payload.join(name)).map_err(|e| format!("{name}: {e}"))?;
        Ok(Some(FileFacts {
            size: bytes.len() as u64,
            sha256: sandstep::digest::Sha256::digest(&bytes),
        }))
    };
    let created = super::manifest_authoring::chrono_now();
    Ok(authoring::new_manifest(
        &update,
        &[compat],
        &[step],
        &created,
        &facts,
    )?)
}

/// The crate name in `dir/Cargo.toml`.
fn crate_name(dir: &Path) -> Result<String> {
    let path = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{} (is this a handler project?)", path.display()))?;
    let doc: toml::Table = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    doc.get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned)
        .with_context(|| format!("{}: no [package] name", path.display()))
}

fn rustup_has_wasip2() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == "wasm32-wasip2")
        })
}

/// The Debian toolchain packages this machine lacks.
fn missing_debian_packages() -> Vec<&'static str> {
    DEBIAN_TOOLCHAIN
        .into_iter()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f", "${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

/// The cargo invocation that builds `dir` as a component.
fn build_command(dir: &Path) -> Result<Command> {
    let mut cmd;
    if rustup_has_wasip2() {
        cmd = Command::new("cargo");
        cmd.args(["build", "--profile", "guest", "--target", "wasm32-wasip2"]);
    } else {
        let missing = missing_debian_packages();
        if !missing.is_empty() {
            bail!(
                "no wasm32-wasip2 target in rustup, and Debian's toolchain is missing {}: run `apt-get install -y {}` (as root), or `rustup target add wasm32-wasip2`",
                missing.join(" "),
                DEBIAN_TOOLCHAIN.join(" ")
            );
        }
        cmd = Command::new("/usr/bin/cargo");
        // Debian's rustc links wasip2 through its wasi-libc and wasm-ld, with an _initialize
        // so static constructors run; std is built from Debian's rust-web-src.
        for var in [
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTUP_TOOLCHAIN",
            "CARGO",
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
        ] {
            cmd.env_remove(var);
        }
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("/usr/bin:{path}"))
            .env("RUSTC", "/usr/bin/rustc")
            .env("RUSTDOC", "/usr/bin/rustdoc")
            .env("RUSTC_BOOTSTRAP", "1")
            .env("RUSTFLAGS", "-C link-self-contained=no -L /usr/lib/wasm32-wasi -C link-arg=--wasm-ld-path=/usr/bin/wasm-ld-14 -C link-arg=/usr/lib/wasm32-wasi/crt1-reactor.o")
            .args(["build", "--profile", "guest", "--target", "wasm32-wasip2", "-Zbuild-std=std,panic_abort"]);
    }
    cmd.current_dir(dir);
    Ok(cmd)
}

/// `handler build [DIR]`: builds the component and prints it with what it imports.
pub fn build(dir: &Path) -> Result<PathBuf> {
    let krate = crate_name(dir)?;
    let status = build_command(dir)?.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build of {} failed ({status})", dir.display());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("target"));
    let wasm = target.join(format!(
        "wasm32-wasip2/guest/{}.wasm",
        krate.replace('-', "_")
    ));
    let bytes =
        std::fs::read(&wasm).with_context(|| format!("the build wrote no {}", wasm.display()))?;
    println!("{} ({} bytes)", wasm.display(), bytes.len());
    print!("{}", describe_imports(&bytes));
    Ok(wasm)
}

/// What a component imports, and the capabilities a gateway must grant for it.
pub fn describe_imports(component: &[u8]) -> String {
    let Some(imports) = sandstep::wasm_binary::component_imports(component) else {
        return "imports: cannot be read (not a component?)\n".into();
    };
    let mut out = String::new();
    let mut needs = Vec::new();
    for i in &imports {
        let kind = match classify_import(i) {
            ImportKind::Base => "always available".to_owned(),
            ImportKind::Capability(c) => {
                needs.push(c.name());
                format!("needs the `{}` grant", c.name())
            }
            ImportKind::Unknown => "unknown to sandstep: install will refuse it".to_owned(),
        };
        out.push_str(&format!("  import {i}: {kind}\n"));
    }
    needs.sort_unstable();
    needs.dedup();
    out.push_str(&match needs.as_slice() {
        [] => "capabilities: none needed (no policy grant required)\n".to_owned(),
        caps => format!(
            "capabilities: {} (the gateway's policy must grant them for this handler id)\n",
            caps.join(", ")
        ),
    });
    out
}
