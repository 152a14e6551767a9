//! `sandstep handler build` and `handler test`: a handler project's component and its native
//! tests. Rust builds with the toolchain this machine has (rustup's wasm32-wasip2 target, else
//! Debian's Rust with the standard library built from source, as scripts/build-components.sh
//! builds the project's own guests), Python with componentize-py, JavaScript with
//! componentize-js (their official toolchains, on PATH). Native tests: `cargo test`,
//! `python3 -m unittest`, `node --test` with the kit's harness (sandstep-hooks.js).

use anyhow::{bail, Context as _, Result};
use sandstep::capability::{classify_import, ImportKind};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The world a Python project (and a JavaScript one made before its own world) targets:
/// logging and progress, nothing to grant.
const BASE_WORLD: &str = "sandstep:handler/handler";
/// A JavaScript project's own world (wit/world.wit): the base world and WASI's file system.
const JS_WORLD: &str = "local:handler/handler";
const CARGO_CONFIG: &str = include_str!("../../templates/rust/cargo-config.toml");

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

/// Writes `.cargo/config.toml`, which tells cargo where this machine's SDK is, unless it
/// already names that place. The project's Cargo.toml names the SDK by version only, so the
/// project builds wherever it is cloned.
pub fn write_cargo_config(dir: &Path) -> Result<()> {
    let sdk = find_sdk()?;
    let text = CARGO_CONFIG.replace("@SDK@", &sdk.display().to_string());
    let path = dir.join(".cargo/config.toml");
    if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    std::fs::create_dir_all(dir.join(".cargo"))?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// `handler test [DIR]`: the project's native tests, with the language's own runner.
pub fn test(dir: &Path) -> Result<ExitCode> {
    let (tool, args, hint): (&str, &[&str], &str) = match Lang::of(dir)? {
        Lang::Rust => {
            write_cargo_config(dir)?;
            (
                "cargo",
                &["test"],
                "rustup (https://rustup.rs) or Debian's cargo",
            )
        }
        Lang::Python => (
            "python3",
            &["-m", "unittest", "-v"],
            "apt-get install python3",
        ),
        Lang::Js => (
            "node",
            &["--import", "./sandstep-hooks.js", "--test"],
            "apt-get install nodejs (18.19 or later)",
        ),
    };
    let status = run_tool(dir, tool, args, hint)?;
    if !status.success() {
        bail!("the tests of {} failed ({status})", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a language's tool in the project; one missing from PATH fails saying how to get it.
fn run_tool(
    dir: &Path,
    tool: &str,
    args: &[&str],
    install: &str,
) -> Result<std::process::ExitStatus> {
    match Command::new(tool).args(args).current_dir(dir).status() {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{tool} is not on PATH: {install}")
        }
        Err(e) => Err(e).with_context(|| format!("cannot run {tool}")),
    }
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
    write_cargo_config(dir)?;
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
                js_world(dir),
                "-d",
                "http",
                "fetch-event",
                "-o",
                &out,
            ],
            "npm install -g @bytecodealliance/componentize-js@0.23.0",
        ),
    };
    let hint = format!("`{install}` (or scripts/guest-toolchains.sh in a sandstep checkout)");
    let status = run_tool(dir, tool, &args, &hint)?;
    if !status.success() {
        bail!("{tool} failed on {} ({status})", dir.display());
    }
    Ok(dir.join(out))
}

/// A JavaScript project's world: its own (wit/world.wit, with WASI's file system), or the base
/// world for a project made before there was one.
fn js_world(dir: &Path) -> &'static str {
    if dir.join("wit/world.wit").is_file() {
        JS_WORLD
    } else {
        BASE_WORLD
    }
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
    fn the_cargo_config_is_written_once_and_again_when_it_names_another_place() {
        let t = tempfile::tempdir().unwrap();
        write_cargo_config(t.path()).unwrap();
        let path = t.path().join(".cargo/config.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("[patch.crates-io]") && text.contains("sandstep-sdk = { path = "));
        std::fs::write(&path, "stale").unwrap();
        write_cargo_config(t.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}
