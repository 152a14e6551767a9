//! `sandstep handler new`: a handler project from a template, anywhere on disk, in Rust, Python
//! or JavaScript. Each language's project is the same handler (it installs the step's file into
//! the granted directory `/config` and records the version in `/state`), the language's kit
//! (the Rust SDK by version, `sandstep.py`, `sandstep.js` with its native test harness), its
//! native tests, a sample manifest and payload, the gateway policy granting `/config`
//! (`gateway.toml`), and a README whose commands the suite runs as written. `handler build` and
//! `handler test` are in handler_build.

use super::handler_build::{crate_name_of, write_cargo_config, Lang};
use anyhow::{bail, Context as _, Result};
use sandstep_model::authoring;
use sandstep_model::UpdateId;
use std::path::Path;

/// A project file: where it goes and its template.
type Template = (&'static str, &'static str);

const RUST: &[Template] = &[
    (
        "Cargo.toml",
        include_str!("../../templates/rust/Cargo.toml"),
    ),
    ("src/lib.rs", include_str!("../../templates/rust/lib.rs")),
    ("README.md", include_str!("../../templates/rust/README.md")),
    // The versions the SDK is tested with: a new project starts from them.
    ("Cargo.lock", include_str!("../../../Cargo.lock")),
];

const PYTHON: &[Template] = &[
    ("app.py", include_str!("../../templates/python/app.py")),
    (
        "test_app.py",
        include_str!("../../templates/python/test_app.py"),
    ),
    (
        "sandstep.py",
        include_str!("../../../sdk/python/sandstep.py"),
    ),
    (
        "README.md",
        include_str!("../../templates/python/README.md"),
    ),
    ("wit/handler.wit", include_str!("../../../wit/handler.wit")),
];

const JS: &[Template] = &[
    ("handler.js", include_str!("../../templates/js/handler.js")),
    (
        "handler.test.js",
        include_str!("../../templates/js/handler.test.js"),
    ),
    (
        "package.json",
        include_str!("../../templates/js/package.json"),
    ),
    ("sandstep.js", include_str!("../../../sdk/js/sandstep.js")),
    (
        "sandstep-testing.js",
        include_str!("../../../sdk/js/sandstep-testing.js"),
    ),
    (
        "sandstep-hooks.js",
        include_str!("../../../sdk/js/sandstep-hooks.js"),
    ),
    ("README.md", include_str!("../../templates/js/README.md")),
    (
        "wit/world.wit",
        include_str!("../../templates/js/wit/world.wit"),
    ),
    (
        "wit/deps/sandstep-handler/handler.wit",
        include_str!("../../../wit/handler.wit"),
    ),
    (
        "wit/deps/wasi-io/package.wit",
        include_str!("../../templates/js/wit/deps/wasi-io/package.wit"),
    ),
    (
        "wit/deps/wasi-clocks/package.wit",
        include_str!("../../templates/js/wit/deps/wasi-clocks/package.wit"),
    ),
    (
        "wit/deps/wasi-filesystem/package.wit",
        include_str!("../../templates/js/wit/deps/wasi-filesystem/package.wit"),
    ),
];

/// Every language's: the gateway's policy for the handler, and what git should not keep.
const COMMON: &[Template] = &[
    ("gateway.toml", include_str!("../../templates/gateway.toml")),
    (
        ".gitignore",
        "/target\n/device\n/.cargo/config.toml\n*.key\n*.wasm\n__pycache__/\n",
    ),
];

const SAMPLE_FILE: &str = "app.conf";

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

/// Fills a template's placeholders (`@CRATE_FILE@`: the file name cargo gives the crate's
/// component, underscores for dashes).
pub fn render(template: &str, names: &Names, id: &str) -> String {
    template
        .replace("@CRATE_FILE@", &names.krate.replace('-', "_"))
        .replace("@CRATE@", &names.krate)
        .replace("@STRUCT@", &names.type_name)
        .replace("@ID@", id)
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
    let templates = match lang {
        Lang::Rust => RUST,
        Lang::Python => PYTHON,
        Lang::Js => JS,
    };
    for (rel, template) in templates.iter().chain(COMMON) {
        let text = if rel.ends_with(".lock") || rel.ends_with(".wit") {
            (*template).to_owned()
        } else {
            render(template, &names, id)
        };
        write(dir, rel, &text)?;
    }
    if lang == Lang::Rust {
        write_cargo_config(dir)?;
    }
    write(dir, &format!("payload/{SAMPLE_FILE}"), "greeting=hello\n")?;
    let manifest = sample_manifest(&names, id, &dir.join("payload"))?;
    write(dir, "manifest.json", &manifest)?;
    println!(
        "wrote {} ({}, handler {id}); next: cd {} && sandstep handler test",
        dir.display(),
        names.krate,
        dir.display()
    );
    Ok(())
}

fn write(dir: &Path, rel: &str, text: &str) -> Result<()> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
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
    let created = super::manifest_authoring::chrono_now();
    Ok(authoring::new_manifest(
        &update,
        &[compat],
        &[step],
        &created,
        &|n| super::manifest_authoring::facts(&payload.join(n)),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn every_template_placeholder_is_filled() {
        let n = names("acme-config", "acme/config:2").unwrap();
        for (rel, t) in RUST.iter().chain(PYTHON).chain(JS).chain(COMMON) {
            if rel.ends_with(".lock") || rel.ends_with(".wit") {
                continue;
            }
            let text = render(t, &n, "acme/config:2");
            let unfilled = text.match_indices('@').find(|(i, _)| {
                let rest = &text[i + 1..];
                let word = rest
                    .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                    .unwrap_or(rest.len());
                word > 0 && rest[word..].starts_with('@')
            });
            assert!(
                unfilled.is_none(),
                "{rel}: unfilled placeholder at {unfilled:?}"
            );
        }
    }

    #[test]
    fn the_rust_readme_names_the_file_cargo_writes() {
        let n = names("modem-rs", "contoso/modem-config:1").unwrap();
        let readme = render(RUST[2].1, &n, "contoso/modem-config:1");
        assert!(
            readme.contains("target/wasm32-wasip2/guest/modem_rs.wasm --key"),
            "{readme}"
        );
        assert!(!readme.contains("guest/modem-rs.wasm"));
    }
}
