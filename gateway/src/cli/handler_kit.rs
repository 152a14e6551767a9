//! `sandstep handler new` and `handler build`: a handler project from a template, anywhere on
//! disk, in Rust, Python or JavaScript, and its build into a component: Rust with the toolchain
//! this machine has (rustup's wasm32-wasip2 target, else Debian's Rust with the standard library
//! built from source, as scripts/build-components.sh builds the project's own guests), Python
//! with componentize-py, JavaScript with componentize-js (their official toolchains, on PATH).
//! The Python and JavaScript templates are the handlers in examples/, with the id replaced.

use anyhow::{bail, Context as _, Result};
use sandstep::capability::{classify_import, ImportKind};
use sandstep_model::authoring;
use sandstep_model::UpdateId;
use std::path::{Path, PathBuf};
use std::process::Command;

const CARGO_TOML: &str = include_str!("../../templates/rust/Cargo.toml");
const LIB_RS: &str = include_str!("../../templates/rust/lib.rs");
const README: &str = include_str!("../../templates/rust/README.md");
const PY_APP: &str = include_str!("../../../examples/python-handler/app.py");
const PY_README: &str = include_str!("../../templates/python/README.md");
const JS_APP: &str = include_str!("../../../examples/js-handler/handler.js");
const JS_README: &str = include_str!("../../templates/js/README.md");
/// The WIT package a Python or JavaScript project is built against.
const WIT: &str = include_str!("../../../wit/handler.wit");
/// The handler ids the examples carry, replaced by the new project's.
const PY_EXAMPLE_ID: &str = "acme/pyconfig:1";
const JS_EXAMPLE_ID: &str = "acme/jscheck:1";
/// The world non-Rust handlers target: logging and progress, nothing to grant.
const BASE_WORLD: &str = "sandstep:handler/handler";
/// The versions the SDK is tested with: a new project starts from them.
const LOCK: &str = include_str!("../../../Cargo.lock");
const SAMPLE_FILE: &str = "app.conf";

/// Debian's wasm32-wasip2 recipe (packages and flags), shared with scripts/build-components.sh.
const DEBIAN_RECIPE: &str = include_str!("../../../scripts/debian-wasip2.env");

/// A `NAME="value"` of the recipe.
fn debian_recipe(name: &str) -> &'static str {
    DEBIAN_RECIPE
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix('=')?
                .strip_prefix('"')?
                .strip_suffix('"')
        })
        .expect("scripts/debian-wasip2.env names it")
}

/// The Debian packages that build wasm32-wasip2 components without rustup's target.
pub fn debian_toolchain() -> Vec<&'static str> {
    debian_recipe("DEBIAN_PACKAGES")
        .split_whitespace()
        .collect()
}

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
    let krate = crate_name_of(dir_name)?;
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

/// The crate (and component) name a project directory's name gives: lower case, runs of other
/// characters as `-`; it must start with a letter.
pub fn crate_name_of(dir_name: &str) -> Result<String, String> {
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
    Ok(krate)
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

/// A handler project's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

impl Lang {
    /// The language of the project in `dir`, told by its files.
    fn of(dir: &Path) -> Result<Lang> {
        [
            ("Cargo.toml", Lang::Rust),
            ("app.py", Lang::Python),
            ("handler.js", Lang::Js),
        ]
        .into_iter()
        .find(|(file, _)| dir.join(file).is_file())
        .map(|(_, lang)| lang)
        .with_context(|| {
            format!(
                "{}: no Cargo.toml, app.py or handler.js: not a handler project (sandstep handler new makes one)",
                dir.display()
            )
        })
    }

    /// The sample step's handlerProperties.
    fn sample_properties(self) -> serde_json::Value {
        match self {
            Lang::Rust | Lang::Python => {
                serde_json::json!({"fileName": SAMPLE_FILE, "installedCriteria": "1.0"})
            }
            Lang::Js => serde_json::json!({"installedCriteria": "1.0", "currentVersion": "0.9"}),
        }
    }
}

/// `handler new DIR --id ID [--lang L]`: writes the project.
pub fn new_project(dir: &Path, id: &str, lang: Lang) -> Result<()> {
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
    std::fs::create_dir_all(dir.join("payload"))?;
    let write = |rel: &str, text: &str| {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    match lang {
        Lang::Rust => {
            let sdk = find_sdk()?;
            write("Cargo.toml", &render(CARGO_TOML, &names, id, &sdk))?;
            write("src/lib.rs", &render(LIB_RS, &names, id, &sdk))?;
            write("README.md", &render(README, &names, id, &sdk))?;
            write("Cargo.lock", LOCK)?;
        }
        Lang::Python | Lang::Js => {
            let (app, file, example_id, readme) = match lang {
                Lang::Python => (PY_APP, "app.py", PY_EXAMPLE_ID, PY_README),
                _ => (JS_APP, "handler.js", JS_EXAMPLE_ID, JS_README),
            };
            write(file, &example_as(app, example_id, id, &names))?;
            write("README.md", &render(readme, &names, id, Path::new("")))?;
            write("wit/handler.wit", WIT)?;
        }
    }
    write(".gitignore", "/target\n*.key\n__pycache__/\n")?;
    write(&format!("payload/{SAMPLE_FILE}"), "greeting=hello\n")?;
    let manifest = sample_manifest(&names, id, lang, &dir.join("payload"))?;
    write("manifest.json", &manifest)?;
    println!(
        "wrote {} ({}, handler {id}); next: cd {} && sandstep handler build",
        dir.display(),
        names.krate,
        dir.display()
    );
    Ok(())
}

/// An example handler's source as the new project's: its id, and its build line's paths.
fn example_as(source: &str, example_id: &str, id: &str, names: &Names) -> String {
    let example_wasm = format!(
        "{}.wasm",
        example_id.split(['/', ':']).nth(1).unwrap_or_default()
    );
    source
        .replace(example_id, id)
        .replace("../../wit", "wit")
        .replace(&example_wasm, &format!("target/{}.wasm", names.krate))
}

/// A one-step manifest installing the sample file with the new handler.
fn sample_manifest(names: &Names, id: &str, lang: Lang, payload: &Path) -> Result<String> {
    let update = UpdateId {
        provider: names.vendor.clone(),
        name: names.krate.clone(),
        version: "1.0".into(),
    };
    let compat: serde_json::Map<String, serde_json::Value> = serde_json::from_value(
        serde_json::json!({"manufacturer": names.vendor, "model": names.krate}),
    )?;
    let step = serde_json::json!({"handler": id, "files": [SAMPLE_FILE],
        "handlerProperties": lang.sample_properties()});
    let created = super::manifest_authoring::chrono_now();
    Ok(authoring::new_manifest(
        &update,
        &[compat],
        &[step],
        &created,
        &|n| super::manifest_authoring::facts(&payload.join(n)),
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
    debian_toolchain()
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
                debian_toolchain().join(" ")
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
            .env("RUSTFLAGS", debian_recipe("DEBIAN_RUSTFLAGS"))
            .args([
                "build",
                "--profile",
                "guest",
                "--target",
                "wasm32-wasip2",
                "-Zbuild-std=std,panic_abort",
            ]);
    }
    cmd.current_dir(dir);
    Ok(cmd)
}

/// `handler build [DIR]`: builds the component and prints it with what it imports.
pub fn build(dir: &Path) -> Result<PathBuf> {
    let wasm = match Lang::of(dir)? {
        Lang::Rust => build_rust(dir)?,
        lang => build_other(dir, lang)?,
    };
    let bytes =
        std::fs::read(&wasm).with_context(|| format!("the build wrote no {}", wasm.display()))?;
    println!("{} ({} bytes)", wasm.display(), bytes.len());
    print!("{}", describe_imports(&bytes));
    Ok(wasm)
}

fn build_rust(dir: &Path) -> Result<PathBuf> {
    let krate = crate_name(dir)?;
    let status = build_command(dir)?.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build of {} failed ({status})", dir.display());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("target"));
    Ok(target.join(format!(
        "wasm32-wasip2/guest/{}.wasm",
        krate.replace('-', "_")
    )))
}

/// A Python or JavaScript project through its official toolchain, into `target/<name>.wasm`.
fn build_other(dir: &Path, lang: Lang) -> Result<PathBuf> {
    let dir_name = dir
        .canonicalize()?
        .file_name()
        .and_then(|n| n.to_str().map(str::to_owned))
        .context("the project directory has no name")?;
    let krate = crate_name_of(&dir_name).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(dir.join("target"))?;
    let out = format!("target/{krate}.wasm");
    let (tool, args, install) = match lang {
        Lang::Python => (
            "componentize-py",
            vec![
                "-d",
                "wit",
                "-w",
                BASE_WORLD,
                "componentize",
                "app",
                "-o",
                &out,
            ],
            "pip install componentize-py==0.25.1",
        ),
        _ => (
            "componentize-js",
            // No HTTP or fetch: sandstep offers handlers no network.
            vec![
                "handler.js",
                "--wit",
                "wit",
                "--world-name",
                BASE_WORLD,
                "-d",
                "http",
                "fetch-event",
                "-o",
                &out,
            ],
            "npm install -g @bytecodealliance/componentize-js@0.23.0",
        ),
    };
    let status = match Command::new(tool).args(&args).current_dir(dir).status() {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{tool} is not on PATH: `{install}` (or scripts/guest-toolchains.sh in a sandstep checkout)")
        }
        Err(e) => return Err(e).with_context(|| format!("cannot run {tool}")),
    };
    if !status.success() {
        bail!("{tool} failed on {} ({status})", dir.display());
    }
    Ok(dir.join(out))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debians_recipe_is_read_from_the_file_build_components_sources() {
        assert_eq!(
            debian_toolchain(),
            [
                "rustc-web",
                "cargo-web",
                "rust-web-src",
                "wasi-libc",
                "lld-14"
            ]
        );
        let flags = debian_recipe("DEBIAN_RUSTFLAGS");
        assert!(
            flags.starts_with("-C link-self-contained=no") && flags.ends_with("crt1-reactor.o"),
            "{flags}"
        );
    }

    #[test]
    fn a_projects_names_come_from_its_directory_and_handler_id() {
        let n = names("Acme Config_2", "acme/config:1").unwrap();
        assert_eq!(n.krate, "acme-config-2");
        assert_eq!(n.type_name, "AcmeConfig2Handler");
        assert_eq!(n.vendor, "acme");
        assert!(names("2fast", "acme/x:1")
            .unwrap_err()
            .contains("start with a letter"));
        assert!(names("ok", "acme-x")
            .unwrap_err()
            .contains("vendor/name:version"));
    }

    #[test]
    fn the_language_templates_are_the_examples_with_the_new_id_and_paths() {
        let n = names("acme-py", "acme/thing:2").unwrap();
        let py = example_as(PY_APP, PY_EXAMPLE_ID, "acme/thing:2", &n);
        assert!(py.contains("`acme/thing:2`") && !py.contains(PY_EXAMPLE_ID));
        assert!(py.contains("componentize-py -d wit -w sandstep:handler/handler componentize app -o target/acme-py.wasm"));
        let js = example_as(JS_APP, JS_EXAMPLE_ID, "acme/thing:2", &n);
        assert!(
            js.contains("--wit wit --world-name sandstep:handler/handler")
                && !js.contains(JS_EXAMPLE_ID)
        );
    }
}
