//! Writing update manifests in the form devices read, so nobody types a `files` section: from a
//! step list and local files (`sandstep manifest new`), by adding files to an existing manifest
//! (`manifest add-file`), and from ADU import manifests (`manifest from-import`), the form ADU's
//! documentation and tooling produce (tools/AduCmdlets/AduUpdate.psm1, New-AduImportManifest).
//!
//! Pure: the caller supplies the facts of each file (size and sha256) through a closure, and
//! writes the results. File ids are the file names (plain names, unique within a manifest).
//!
//! The two forms, side by side (ADU's update-manifest and import-manifest documentation):
//! - import `files` is an array of `{filename, sizeInBytes, hashes}`; the device form is an
//!   object keyed by file id, `{fileName, sizeInBytes, hashes}`;
//! - an import reference step names the child update by `updateId`; on the device it names the
//!   child's manifest file: `{"type": "reference", "detachedManifestFileId": <file id>}`, the
//!   child manifest being one of the parent's files;
//! - `manifestVersion` "4.0"/"5.0" becomes "4"/"5"; `isDeployable` and `description` are the
//!   service's and stay behind; an import of the older single-step form (`updateType`,
//!   `installedCriteria`, manifestVersion 2.0/3.0) becomes one inline step.

use crate::manifest::{check_plain_name, Manifest};
use crate::UpdateId;
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// What the caller knows of a local file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    pub size: u64,
    pub sha256: [u8; 32],
}

/// Why a manifest cannot be written. Each names the document and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{doc}: {field}: {rule}")]
pub struct AuthoringError {
    pub doc: String,
    pub field: String,
    pub rule: String,
}

fn fail<T>(
    doc: &str,
    field: impl Into<String>,
    rule: impl Into<String>,
) -> Result<T, AuthoringError> {
    Err(AuthoringError {
        doc: doc.to_owned(),
        field: field.into(),
        rule: rule.into(),
    })
}

/// Why a file's facts could not be had (reading it failed): the path and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {cause}")]
pub struct FactsError {
    pub path: String,
    pub cause: std::io::Error,
}

/// The facts of a file by name: `Ok(None)` when it is not there.
pub type Facts<'a> = dyn Fn(&str) -> Result<Option<FileFacts>, FactsError> + 'a;

/// A device manifest's `files` table being filled in.
struct Files<'a> {
    doc: &'a str,
    table: Map<String, Value>,
    facts: &'a Facts<'a>,
    /// A local file that differs from what the import declares wins (else it is an error).
    prefer_local: bool,
    /// The facts of each file added, by name.
    known: std::collections::BTreeMap<String, FileFacts>,
}

impl<'a> Files<'a> {
    fn new(doc: &'a str, facts: &'a Facts<'a>) -> Self {
        Files {
            doc,
            table: Map::new(),
            facts,
            prefer_local: false,
            known: Default::default(),
        }
    }

    /// Adds `name` (from local facts, else from `declared`, the import's own size and hash);
    /// returns its id.
    fn add(
        &mut self,
        field: &str,
        name: &str,
        declared: Option<FileFacts>,
    ) -> Result<String, AuthoringError> {
        let facts = self.facts_of(field, name, declared)?;
        self.table.insert(name.to_owned(), entry(name, &facts));
        self.known.insert(name.to_owned(), facts);
        Ok(name.to_owned())
    }

    /// The size and hash `name` gets: the local file's, else `declared`.
    fn facts_of(
        &self,
        field: &str,
        name: &str,
        declared: Option<FileFacts>,
    ) -> Result<FileFacts, AuthoringError> {
        if let Err(rule) = check_plain_name(name) {
            return fail(self.doc, field, format!("file name `{name}` {rule}"));
        }
        let local = (self.facts)(name).or_else(|e| fail(self.doc, field, e.to_string()))?;
        let facts = match (local, declared) {
            (Some(l), Some(d)) if l != d && !self.prefer_local => {
                return fail(self.doc, field, format!(
                    "`{name}` on disk ({} bytes, sha256 {}) is not the file the import manifest describes ({} bytes, sha256 {})",
                    l.size, b64(&l.sha256), d.size, b64(&d.sha256)))
            }
            (Some(f), _) | (None, Some(f)) => f,
            (None, None) => return fail(self.doc, field, format!("`{name}` not found, and no size and hash given for it")),
        };
        Ok(facts)
    }
}

fn b64(d: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}

fn entry(name: &str, f: &FileFacts) -> Value {
    json!({"fileName": name, "sizeInBytes": f.size, "hashes": {"sha256": b64(&f.sha256)}})
}

/// A new device manifest (version 5) of `steps`: inline steps name their files by file name
/// (`{"handler", "files": [names], "handlerProperties"}`), reference steps name a local child
/// manifest file (`{"type": "reference", "detachedManifestFileId": name}`).
pub fn new_manifest(
    update_id: &UpdateId,
    compatibility: &[Map<String, Value>],
    steps: &[Value],
    created: &str,
    facts: &Facts<'_>,
) -> Result<String, AuthoringError> {
    let doc = "the new manifest";
    let mut files = Files::new(doc, facts);
    let mut out_steps = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let field = format!("instructions.steps[{i}]");
        let Some(s) = step.as_object() else {
            return fail(doc, field, "must be a JSON object");
        };
        let mut s = s.clone();
        if s.get("type").and_then(Value::as_str) == Some("reference") {
            let Some(name) = s.get("detachedManifestFileId").and_then(Value::as_str) else {
                return fail(doc, field, "a reference step needs `detachedManifestFileId`: the child manifest's file name");
            };
            files.add(&field, name, None)?;
        } else {
            s.entry("type").or_insert(json!("inline"));
            let step_files = names(doc, &field, s.get("files"))?;
            for (j, name) in step_files.iter().enumerate() {
                files.add(&format!("{field}.files[{j}]"), name, None)?;
            }
            handler_rules(doc, &field, &mut s, &step_files, &files.known)?;
        }
        out_steps.push(Value::Object(s));
    }
    let m = json!({
        "updateId": update_id,
        "compatibility": compatibility,
        "instructions": {"steps": out_steps},
        "files": files.table,
        "createdDateTime": created,
        "manifestVersion": "5",
    });
    checked(doc, m)
}

/// `manifest` (from [`new_manifest`]) marked as a rollback the signer allows:
/// `"sandstep": {"allowDowngrade": true}`, so a device with a newer version installs it.
pub fn allow_downgrade(manifest: &str) -> Result<String, AuthoringError> {
    with_sandstep(manifest, "allowDowngrade", Value::Bool(true))
}

/// `manifest` with the signed delivery controls: the download and install windows
/// (`sandstep.downloadWindows`, `installWindows`; each checked as the device reads it) and a
/// bandwidth cap (`sandstep.maxBytesPerSec`). Empty lists and `None` leave a member out.
pub fn with_delivery(
    manifest: &str,
    download_windows: &[String],
    install_windows: &[String],
    max_bytes_per_sec: Option<u64>,
) -> Result<String, AuthoringError> {
    let mut text = manifest.to_owned();
    for (key, windows) in [
        ("downloadWindows", download_windows),
        ("installWindows", install_windows),
    ] {
        if !windows.is_empty() {
            text = with_sandstep(&text, key, json!(windows))?;
        }
    }
    if let Some(n) = max_bytes_per_sec {
        text = with_sandstep(&text, "maxBytesPerSec", json!(n))?;
    }
    Ok(text)
}

/// `manifest` with `sandstep.<key>` set to `value`, checked as the device reads it.
fn with_sandstep(manifest: &str, key: &str, value: Value) -> Result<String, AuthoringError> {
    let doc = "the new manifest";
    let mut m: Value = serde_json::from_str(manifest)
        .or_else(|e| fail(doc, "result", format!("not JSON: {e}")))?;
    let Some(root) = m.as_object_mut() else {
        return fail(doc, "result", "not a JSON object");
    };
    let own = root.entry("sandstep").or_insert_with(|| json!({}));
    let Some(own) = own.as_object_mut() else {
        return fail(doc, "sandstep", "must be an object");
    };
    own.insert(key.into(), value);
    checked(doc, m)
}

/// The default handlers whose step rules `manifest new` applies: the `step-rules` crate each
/// of them runs on the device.
const APT_HANDLERS: [&str; 2] = ["microsoft/apt:1", "sandstep/apt:1"];

/// Step `s`'s properties and files against its handler's rules, as the device applies them
/// (a handler not among the defaults is the vendor's to check).
fn handler_rules(
    doc: &str,
    field: &str,
    s: &mut Map<String, Value>,
    step_files: &[String],
    known: &std::collections::BTreeMap<String, FileFacts>,
) -> Result<(), AuthoringError> {
    let handler = s
        .get("handler")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if handler == "sandstep/files:1" {
        return files_rules(doc, field, s, step_files, known);
    }
    let prop = |k: &str| {
        s.get("handlerProperties")
            .and_then(|p| p.get(k))
            .and_then(Value::as_str)
    };
    let names: Vec<&str> = step_files.iter().map(String::as_str).collect();
    let broken = |rule: String| AuthoringError {
        doc: doc.to_owned(),
        field: field.to_owned(),
        rule: format!("{rule} ({handler} refuses it)"),
    };
    let err = |e: &dyn std::fmt::Display| broken(e.to_string());
    match handler.as_str() {
        h if APT_HANDLERS.contains(&h) => {
            step_rules::apt::manifest_file(prop("installedCriteria"), &names)
                .map_err(|e| err(&e))?;
        }
        "microsoft/script:1" => {
            step_rules::script::script_file(prop("scriptFileName"), &names).map_err(|e| err(&e))?;
        }
        "microsoft/swupdate:1" => {
            step_rules::swupdate::v1_image(&names).map_err(|e| err(&e))?;
            step_rules::version::criteria(prop("installedCriteria")).map_err(|e| err(&e))?;
        }
        "sandstep/firmware:1" => {
            step_rules::version::criteria(prop("installedCriteria")).map_err(|e| err(&e))?;
            step_rules::version::image_file(prop("imageFileName"), &names).map_err(|e| err(&e))?;
        }
        "sandstep/component:1" => {
            step_rules::version::criteria(prop("installedCriteria")).map_err(|e| err(&e))?;
        }
        "microsoft/swupdate:2" => {
            step_rules::swupdate::v2_file_count(names.len()).map_err(|e| err(&e))?;
            step_rules::script::script_file(prop("scriptFileName"), &names).map_err(|e| err(&e))?;
            step_rules::swupdate::swu_file_name(prop("swuFileName")).map_err(|e| err(&e))?;
        }
        _ => {}
    }
    Ok(())
}

/// The apt manifest file of each apt step of `manifest` (`instructions.steps[i]`, file name),
/// for the caller to parse as the device will.
pub fn apt_manifest_files(manifest: &Value) -> Vec<(String, String)> {
    let steps = manifest
        .pointer("/instructions/steps")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut out = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let handler = s.get("handler").and_then(Value::as_str).unwrap_or("");
        if !APT_HANDLERS.contains(&handler) {
            continue;
        }
        let names: Vec<&str> = s
            .get("files")
            .and_then(Value::as_array)
            .map(|f| f.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let criteria = s
            .pointer("/handlerProperties/installedCriteria")
            .and_then(Value::as_str);
        if let Ok(m) = step_rules::apt::manifest_file(criteria, &names) {
            out.push((format!("instructions.steps[{i}]"), m.to_owned()));
        }
    }
    out
}

/// `sandstep/files:1`'s rules on step `s` (whose files are `step_files`), as the device applies
/// them; a missing `installedCriteria` becomes the placed file's `sha256:<hex>`.
fn files_rules(
    doc: &str,
    field: &str,
    s: &mut Map<String, Value>,
    step_files: &[String],
    known: &std::collections::BTreeMap<String, FileFacts>,
) -> Result<(), AuthoringError> {
    let props_field = format!("{field}.handlerProperties");
    let props = s.entry("handlerProperties").or_insert_with(|| json!({}));
    let Some(props) = props.as_object_mut() else {
        return fail(doc, props_field, "must be an object");
    };
    let text = |k: &str| match props.get(k) {
        None => Ok(None),
        Some(Value::String(v)) => Ok(Some(v.clone())),
        Some(_) => fail(doc, format!("{props_field}.{k}"), "must be a string"),
    };
    let broken = |e: step_rules::files::RuleError| AuthoringError {
        doc: doc.to_owned(),
        field: field.to_owned(),
        rule: e.to_string(),
    };
    let Some(destination) = text("destination")? else {
        return fail(
            doc,
            format!("{props_field}.destination"),
            "is required: where the file goes (e.g. /dest/app/main.py)",
        );
    };
    step_rules::files::check_destination(&destination).map_err(broken)?;
    let names: Vec<&str> = step_files.iter().map(String::as_str).collect();
    let file =
        step_rules::files::which_file(text("fileName")?.as_deref(), &names).map_err(broken)?;
    match text("installedCriteria")? {
        Some(c) => {
            step_rules::files::parse_criteria(&c).map_err(broken)?;
        }
        None => {
            let sha: String = known[file]
                .sha256
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            props.insert("installedCriteria".into(), json!(format!("sha256:{sha}")));
        }
    }
    Ok(())
}

fn names(doc: &str, field: &str, v: Option<&Value>) -> Result<Vec<String>, AuthoringError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let Some(list) = v.as_array() else {
        return fail(
            doc,
            format!("{field}.files"),
            "must be an array of file names",
        );
    };
    list.iter()
        .map(|n| match n.as_str() {
            Some(s) => Ok(s.to_owned()),
            None => fail(
                doc,
                format!("{field}.files"),
                "must be an array of file names",
            ),
        })
        .collect()
}

/// Pretty JSON, checked by the parser devices use (the child parser for a child update).
fn checked(doc: &str, m: Value) -> Result<String, AuthoringError> {
    let text = serde_json::to_string_pretty(&m).expect("serializes");
    let parsed = if m.get("isDeployable") == Some(&Value::Bool(false)) {
        Manifest::parse_child(&text)
    } else {
        Manifest::parse(&text)
    };
    if let Err(e) = parsed {
        return fail(doc, "result", format!("would not be a valid manifest: {e}"));
    }
    Ok(text)
}

/// Adds (or refreshes) `names` in an existing device manifest's `files`, keeping the id a file
/// already has; with `step`, also lists them in that inline step's `files`.
pub fn add_files(
    doc: &str,
    manifest: &str,
    names_to_add: &[String],
    step: Option<usize>,
    facts: &Facts<'_>,
) -> Result<String, AuthoringError> {
    let mut m: Value = serde_json::from_str(manifest)
        .or_else(|e| fail(doc, "(whole)", format!("not JSON: {e}")))?;
    let Some(table) = m.get("files").and_then(Value::as_object).cloned() else {
        return fail(doc, "files", "missing, or not an object keyed by file id");
    };
    let mut ids = Vec::new();
    let mut table = table;
    let files = Files::new(doc, facts);
    for name in names_to_add {
        let fresh = entry(
            name,
            &files.facts_of(&format!("files (adding `{name}`)"), name, None)?,
        );
        let id = table
            .iter()
            .find(|(_, e)| e.get("fileName").or_else(|| e.get("filename")) == Some(&json!(name)))
            .map(|(id, _)| id.clone())
            .unwrap_or_else(|| name.clone());
        table.insert(id.clone(), fresh);
        ids.push(id);
    }
    m["files"] = Value::Object(table);
    if let Some(i) = step {
        let field = format!("instructions.steps[{i}]");
        let Some(s) = m
            .pointer_mut(&format!("/instructions/steps/{i}"))
            .and_then(Value::as_object_mut)
        else {
            return fail(doc, field, "no such step");
        };
        if s.get("type").and_then(Value::as_str) == Some("reference") {
            return fail(
                doc,
                field,
                "is a reference step: its one file is its child manifest",
            );
        }
        let list = s.entry("files").or_insert(json!([]));
        let Some(list) = list.as_array_mut() else {
            return fail(
                doc,
                format!("{field}.files"),
                "must be an array of file ids",
            );
        };
        for id in ids {
            if !list.contains(&json!(id)) {
                list.push(json!(id));
            }
        }
    }
    checked(doc, m)
}

/// An import manifest converted: the parent device manifest and each child manifest's file
/// (name, text), which must be served beside the parent's other files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    pub manifest: String,
    pub children: Vec<(String, String)>,
}

/// How an import manifest is read.
pub struct Import<'a> {
    /// Finds the import manifest of a referenced update by its id: (its name, its JSON).
    pub child: &'a dyn Fn(&UpdateId) -> Option<(String, Value)>,
    pub facts: &'a Facts<'a>,
    /// A local file that differs from the size and hash the import declares is taken as it is
    /// (else that is an error naming both).
    pub prefer_local: bool,
}

/// Converts the import manifest `import` (named `doc` in errors).
pub fn from_import(
    doc: &str,
    import: &Value,
    how: &Import<'_>,
) -> Result<Converted, AuthoringError> {
    let mut children = Vec::new();
    let manifest = convert(doc, import, Some(&mut children), how)?;
    Ok(Converted { manifest, children })
}

fn convert(
    doc: &str,
    import: &Value,
    mut children: Option<&mut Vec<(String, String)>>,
    how: &Import<'_>,
) -> Result<String, AuthoringError> {
    let Some(root) = import.as_object() else {
        return fail(doc, "(whole)", "an import manifest is a JSON object");
    };
    let update_id = update_id(doc, "updateId", root.get("updateId"))?;
    let mut files = Files::new(doc, how.facts);
    files.prefer_local = how.prefer_local;
    let declared = declared_files(doc, root.get("files"))?;
    let mut declared_facts = |name: &str| {
        declared
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, f)| f.clone())
    };
    let steps: Vec<Value> = match (root.get("instructions"), root.get("updateType")) {
        (Some(ins), _) => {
            let Some(list) = ins.get("steps").and_then(Value::as_array) else {
                return fail(doc, "instructions.steps", "must be an array");
            };
            let mut out = Vec::new();
            for (i, s) in list.iter().enumerate() {
                let field = format!("instructions.steps[{i}]");
                out.push(import_step(
                    doc,
                    &field,
                    s,
                    &mut files,
                    &mut declared_facts,
                    &mut children,
                    how,
                )?);
            }
            out
        }
        (None, Some(kind)) => {
            // The single-step form (manifestVersion 2.0/3.0): every file to the one step.
            let Some(handler) = kind.as_str() else {
                return fail(doc, "updateType", "must be a string like microsoft/apt:1");
            };
            let mut ids = Vec::new();
            for (name, d) in &declared {
                ids.push(files.add(&format!("files (`{name}`)"), name, d.clone())?);
            }
            let mut props = Map::new();
            if let Some(ic) = root.get("installedCriteria") {
                props.insert("installedCriteria".into(), ic.clone());
            }
            vec![
                json!({"type": "inline", "handler": handler, "files": ids, "handlerProperties": props}),
            ]
        }
        (None, None) => {
            return fail(
                doc,
                "instructions",
                "missing (and no `updateType` either): not an import manifest",
            )
        }
    };
    let version = match root.get("manifestVersion").and_then(Value::as_str) {
        Some("4.0" | "4") => "4",
        _ => "5",
    };
    let mut m = json!({
        "updateId": update_id,
        "compatibility": root.get("compatibility").cloned().unwrap_or(json!([])),
        "instructions": {"steps": steps},
        "files": files.table,
        "manifestVersion": version,
    });
    if let Some(c) = root.get("createdDateTime") {
        m["createdDateTime"] = c.clone();
    }
    if children.is_none() {
        // A child update is not deployable on its own (ADU's import rule for referenced updates).
        m["isDeployable"] = json!(false);
    }
    checked(doc, m)
}

fn import_step(
    doc: &str,
    field: &str,
    s: &Value,
    files: &mut Files<'_>,
    declared: &mut dyn FnMut(&str) -> Option<FileFacts>,
    children: &mut Option<&mut Vec<(String, String)>>,
    how: &Import<'_>,
) -> Result<Value, AuthoringError> {
    let Some(obj) = s.as_object() else {
        return fail(doc, field, "must be a JSON object");
    };
    if obj.get("type").and_then(Value::as_str) != Some("reference") {
        let mut ids = Vec::new();
        for (j, name) in names(doc, field, obj.get("files"))?.iter().enumerate() {
            ids.push(files.add(&format!("{field}.files[{j}]"), name, declared(name))?);
        }
        let mut out = json!({"type": "inline", "handler": obj.get("handler").cloned().unwrap_or(Value::Null), "files": ids});
        if let Some(p) = obj.get("handlerProperties") {
            out["handlerProperties"] = p.clone();
        }
        return Ok(out);
    }
    let id = update_id(doc, &format!("{field}.updateId"), obj.get("updateId"))?;
    let Some(written) = children.as_mut() else {
        return fail(
            doc,
            field,
            "a child update cannot have reference steps (ADU allows one level)",
        );
    };
    let Some((child_doc, child_import)) = (how.child)(&id) else {
        return fail(
            doc,
            field,
            format!(
                "no import manifest for the referenced update {}/{}/{} was found: put it beside this one, or name it with --child FILE",
                id.provider, id.name, id.version
            ),
        );
    };
    let text = convert(&child_doc, &child_import, None, how)?;
    let name = child_file_name(&id);
    let digest = <sha2::Sha256 as sha2::Digest>::digest(text.as_bytes());
    let child_facts = FileFacts {
        size: text.len() as u64,
        sha256: digest.into(),
    };
    // The child manifest is written beside the payloads; these are its facts.
    files.table.insert(name.clone(), entry(&name, &child_facts));
    written.push((name.clone(), text));
    Ok(json!({"type": "reference", "detachedManifestFileId": name}))
}

/// The file a child manifest is written to: its update id, as a plain file name.
pub fn child_file_name(id: &UpdateId) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!(
        "{}.{}.{}.manifest.json",
        clean(&id.provider),
        clean(&id.name),
        clean(&id.version)
    )
}

fn update_id(doc: &str, field: &str, v: Option<&Value>) -> Result<UpdateId, AuthoringError> {
    match v.map(|v| serde_json::from_value::<UpdateId>(v.clone())) {
        Some(Ok(id)) => Ok(id),
        _ => fail(doc, field, "must be {\"provider\", \"name\", \"version\"}"),
    }
}

/// The import's `files`: (name, declared size and hash when both are given).
fn declared_files(
    doc: &str,
    v: Option<&Value>,
) -> Result<Vec<(String, Option<FileFacts>)>, AuthoringError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let Some(list) = v.as_array() else {
        return fail(
            doc,
            "files",
            "must be an array of {filename, sizeInBytes, hashes}",
        );
    };
    let mut out = Vec::new();
    for (i, f) in list.iter().enumerate() {
        let field = format!("files[{i}]");
        let Some(name) = f
            .get("filename")
            .or_else(|| f.get("fileName"))
            .and_then(Value::as_str)
        else {
            return fail(doc, field, "needs `filename`");
        };
        for unsupported in ["relatedFiles", "downloadHandler"] {
            if f.get(unsupported).is_some() {
                return fail(
                    doc,
                    format!("{field}.{unsupported}"),
                    "delta updates are not supported: import the full file",
                );
            }
        }
        let size = f.get("sizeInBytes").and_then(Value::as_u64);
        let hash = f
            .pointer("/hashes/sha256")
            .and_then(Value::as_str)
            .and_then(|h| base64::engine::general_purpose::STANDARD.decode(h).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok());
        let declared = match (size, hash) {
            (Some(size), Some(sha256)) => Some(FileFacts { size, sha256 }),
            _ => None,
        };
        out.push((name.to_owned(), declared));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    fn adu() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/adu")
    }

    fn facts_of(
        files: BTreeMap<&'static str, Vec<u8>>,
    ) -> impl Fn(&str) -> Result<Option<FileFacts>, FactsError> {
        move |name| {
            Ok(files.get(name).map(|b| FileFacts {
                size: b.len() as u64,
                sha256: sha2::Sha256::digest(b).into(),
            }))
        }
    }

    fn read_json(p: &Path) -> Value {
        serde_json::from_slice(crate::json::strip_bom(&std::fs::read(p).unwrap())).unwrap()
    }

    fn id(p: &str, n: &str, v: &str) -> UpdateId {
        UpdateId {
            provider: p.into(),
            name: n.into(),
            version: v.into(),
        }
    }

    fn one_step_manifest() -> String {
        let facts = facts_of(BTreeMap::from([("install.sh", b"#!/bin/sh\n".to_vec())]));
        let compat: Vec<Map<String, Value>> =
            serde_json::from_value(json!([{"model": "gw"}])).unwrap();
        let steps = [
            json!({"handler": "microsoft/script:1", "files": ["install.sh"], "handlerProperties": {"scriptFileName": "install.sh", "installedCriteria": "1.0"}}),
        ];
        new_manifest(
            &id("c", "gw", "1.0"),
            &compat,
            &steps,
            "2026-12-06T00:00:00Z",
            &facts,
        )
        .unwrap()
    }

    #[test]
    fn delivery_controls_are_written_into_the_signed_part_and_checked_as_devices_read_them() {
        let text = with_delivery(
            &allow_downgrade(&one_step_manifest()).unwrap(),
            &["Mon-Fri 22:00-06:00".into()],
            &[],
            Some(50_000),
        )
        .unwrap();
        let m = Manifest::parse(&text).unwrap();
        assert!(m.allow_downgrade, "members set before are kept");
        assert_eq!(m.delivery.download_windows.windows.len(), 1);
        assert!(m.delivery.install_windows.is_always());
        assert_eq!(m.delivery.max_bytes_per_sec, Some(50_000));
        let e = with_delivery(&one_step_manifest(), &[], &["Mon 24:00-02:00".into()], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sandstep.installWindows[0]"), "{e}");
        assert!(e.contains("cannot open at 24:00"), "{e}");
    }

    #[test]
    fn a_new_manifest_gets_each_files_size_and_hash_and_parses_as_devices_parse_it() {
        let facts = facts_of(BTreeMap::from([
            ("install.sh", b"#!/bin/sh\n".to_vec()),
            ("child.json", b"{}".to_vec()),
        ]));
        let compat: Vec<Map<String, Value>> =
            serde_json::from_value(json!([{"manufacturer": "contoso", "model": "toaster"}]))
                .unwrap();
        let steps = [
            json!({"handler": "microsoft/script:1", "files": ["install.sh"], "handlerProperties": {"scriptFileName": "install.sh", "installedCriteria": "1.0"}}),
            json!({"type": "reference", "detachedManifestFileId": "child.json"}),
        ];
        let text = new_manifest(
            &id("contoso", "toaster", "1.0"),
            &compat,
            &steps,
            "2026-11-30T00:00:00Z",
            &facts,
        )
        .unwrap();
        let m = Manifest::parse(&text).unwrap();
        let f = m.file("install.sh").unwrap();
        assert_eq!(
            (f.size_in_bytes, f.sha256),
            (10, sha2::Sha256::digest(b"#!/bin/sh\n").into())
        );
        assert_eq!(m.file("child.json").unwrap().size_in_bytes, 2);
        let e = new_manifest(
            &id("c", "t", "1.0"),
            &compat,
            &[json!({"handler": "a/b:1", "files": ["gone.bin"]})],
            "x",
            &facts,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "the new manifest: instructions.steps[0].files[0]: `gone.bin` not found, and no size and hash given for it");
    }

    /// `sandstep/files:1` steps are held to the rules the handler applies on the device (the
    /// `step-rules` crate): a criteria that names a digest must be one, a destination is
    /// required and plain, the file must be clear; a missing criteria is computed.
    #[test]
    fn a_files_step_is_checked_by_the_handlers_rules_and_its_criteria_computed() {
        let facts = facts_of(BTreeMap::from([
            ("main.py", b"print(1)\n".to_vec()),
            ("boot.py", b"".to_vec()),
        ]));
        let compat: Vec<Map<String, Value>> =
            serde_json::from_value(json!([{"model": "m"}])).unwrap();
        let new = |props: Value, files: Value| {
            new_manifest(
                &id("c", "app", "1.0"),
                &compat,
                &[
                    json!({"handler": "sandstep/files:1", "files": files, "handlerProperties": props}),
                ],
                "x",
                &facts,
            )
        };
        let text = new(
            json!({"destination": "/dest/app/main.py"}),
            json!(["main.py"]),
        )
        .unwrap();
        let m: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            m["instructions"]["steps"][0]["handlerProperties"]["installedCriteria"],
            format!("sha256:{}", hex(&sha2::Sha256::digest(b"print(1)\n")))
        );
        for (props, files, want) in [
            (json!({"destination": "/dest/app/main.py", "installedCriteria": "sha256:x"}), json!(["main.py"]),
             "instructions.steps[0]: handlerProperties.installedCriteria `sha256:x` is not a sha256 digest (64 hex digits after `sha256:`)"),
            (json!({}), json!(["main.py"]),
             "instructions.steps[0].handlerProperties.destination: is required: where the file goes (e.g. /dest/app/main.py)"),
            (json!({"destination": "/dest/../etc/passwd"}), json!(["main.py"]),
             "instructions.steps[0]: handlerProperties.destination `/dest/../etc/passwd` must be an absolute file path in a directory the policy maps in"),
            (json!({"destination": "/dest/app/x"}), json!(["main.py", "boot.py"]),
             "instructions.steps[0]: step has 2 files; say which with handlerProperties.fileName"),
            (json!({"destination": "/dest/app/x", "installedCriteria": 7}), json!(["main.py"]),
             "instructions.steps[0].handlerProperties.installedCriteria: must be a string"),
        ] {
            let e = new(props, files).unwrap_err().to_string();
            assert_eq!(e, format!("the new manifest: {want}"));
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn adus_sample_import_manifest_converts_and_its_stale_file_facts_are_reported() {
        // ADU's docs/sample-artifacts: the import manifest declares 154 bytes; the apt manifest
        // beside it in ADU's repository has 147.
        let import =
            read_json(&adu().join("import/sample-package-update-1.0.1-importManifest.json"));
        let apt = std::fs::read(adu().join("apt/libcurl4-doc-apt-manifest.json")).unwrap();
        let facts = facts_of(BTreeMap::from([(
            "libcurl4-doc-apt-manifest.json",
            apt.clone(),
        )]));
        let none = |_: &UpdateId| None;
        let mut how = Import {
            child: &none,
            facts: &facts,
            prefer_local: false,
        };
        let e = from_import("sample.json", &import, &how).unwrap_err();
        assert_eq!(e.field, "files (`libcurl4-doc-apt-manifest.json`)");
        assert!(
            e.rule.contains("on disk (147 bytes") && e.rule.contains("(154 bytes"),
            "{e}"
        );
        how.prefer_local = true;
        let out = from_import("sample.json", &import, &how).unwrap();
        let m = Manifest::parse(&out.manifest).unwrap();
        assert_eq!(m.update_id, id("Contoso", "SampleUpdate1", "1.0.1"));
        let v: Value = serde_json::from_str(&out.manifest).unwrap();
        assert_eq!(v["instructions"]["steps"][0]["handler"], "microsoft/apt:1");
        assert_eq!(
            v["instructions"]["steps"][0]["handlerProperties"]["installedCriteria"],
            "Sample package update-1.0.1"
        );
        assert_eq!(
            m.file("libcurl4-doc-apt-manifest.json")
                .unwrap()
                .size_in_bytes,
            147
        );
        // Without the file, the declared facts are used.
        let nothing = facts_of(BTreeMap::new());
        let how = Import {
            child: &none,
            facts: &nothing,
            prefer_local: false,
        };
        let out = from_import("sample.json", &import, &how).unwrap();
        assert_eq!(
            Manifest::parse(&out.manifest).unwrap().files[0]
                .1
                .size_in_bytes,
            154
        );
    }

    /// A multi-step import as New-AduImportManifest writes it (AduUpdate.psm1): an inline step
    /// and a reference to a child update imported beside it.
    #[test]
    fn reference_steps_become_child_manifest_files_of_the_parent() {
        let child = json!({
            "updateId": {"provider": "contoso", "name": "motors", "version": "3.0"},
            "isDeployable": false,
            "compatibility": [{"group": "motors"}],
            "instructions": {"steps": [{"type": "inline", "handler": "microsoft/script:1", "files": ["motor.sh"],
                "handlerProperties": {"scriptFileName": "motor.sh", "installedCriteria": "1.2"}}]},
            "files": [{"filename": "motor.sh", "sizeInBytes": 3, "hashes": {"sha256": b64(&sha2::Sha256::digest(b"x\n\n").into())}}],
            "createdDateTime": "2022-01-01T00:00:00Z",
            "manifestVersion": "5.0"
        });
        let parent = json!({
            "updateId": {"provider": "contoso", "name": "vacuum", "version": "5.0"},
            "isDeployable": true,
            "compatibility": [{"manufacturer": "contoso", "model": "vacuum"}],
            "instructions": {"steps": [
                {"type": "inline", "handler": "microsoft/script:1", "files": ["pre.sh"], "handlerProperties": {"scriptFileName": "pre.sh", "installedCriteria": "5.0"}},
                {"type": "reference", "updateId": {"provider": "contoso", "name": "motors", "version": "3.0"}}
            ]},
            "files": [{"filename": "pre.sh", "sizeInBytes": 2, "hashes": {"sha256": b64(&sha2::Sha256::digest(b"y\n").into())}}],
            "createdDateTime": "2022-01-01T00:00:00Z",
            "manifestVersion": "5.0"
        });
        let facts = facts_of(BTreeMap::from([
            ("pre.sh", b"y\n".to_vec()),
            ("motor.sh", b"x\n\n".to_vec()),
        ]));
        let find = |want: &UpdateId| {
            (want.name == "motors")
                .then(|| ("motors.importmanifest.json".to_owned(), child.clone()))
        };
        let out = from_import(
            "parent.json",
            &parent,
            &Import {
                child: &find,
                facts: &facts,
                prefer_local: false,
            },
        )
        .unwrap();
        let m = Manifest::parse(&out.manifest).unwrap();
        let (name, text) = &out.children[0];
        assert_eq!(name, "contoso.motors.3.0.manifest.json");
        let f = m.file(name).unwrap();
        assert_eq!(
            f.sha256,
            <[u8; 32]>::from(sha2::Sha256::digest(text.as_bytes()))
        );
        let c = Manifest::parse_child(text).unwrap();
        assert_eq!(c.file("motor.sh").unwrap().size_in_bytes, 3);
        let v: Value = serde_json::from_str(&out.manifest).unwrap();
        assert_eq!(
            v["instructions"]["steps"][1],
            json!({"type": "reference", "detachedManifestFileId": name})
        );

        let nobody = |_: &UpdateId| None;
        let e = from_import(
            "parent.json",
            &parent,
            &Import {
                child: &nobody,
                facts: &facts,
                prefer_local: false,
            },
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "parent.json: instructions.steps[1]: no import manifest for the referenced update contoso/motors/3.0 was found: put it beside this one, or name it with --child FILE");
        let mut delta = parent.clone();
        delta["files"][0]["relatedFiles"] = json!([]);
        let e = from_import(
            "parent.json",
            &delta,
            &Import {
                child: &find,
                facts: &facts,
                prefer_local: false,
            },
        )
        .unwrap_err();
        assert_eq!(e.field, "files[0].relatedFiles");
    }

    #[test]
    fn adding_a_file_refreshes_its_entry_under_its_id_and_lists_it_in_a_step() {
        let facts = facts_of(BTreeMap::from([
            ("a.bin", b"new".to_vec()),
            ("b.bin", b"bee".to_vec()),
        ]));
        let m = json!({
            "updateId": {"provider": "p", "name": "n", "version": "1.0"},
            "compatibility": [{"model": "m"}],
            "instructions": {"steps": [{"handler": "a/b:1", "files": ["f1"], "handlerProperties": {}}]},
            "files": {"f1": {"fileName": "a.bin", "sizeInBytes": 1, "hashes": {"sha256": b64(&[0; 32])}}},
            "manifestVersion": "5"
        })
        .to_string();
        let out = add_files(
            "m.json",
            &m,
            &["a.bin".into(), "b.bin".into()],
            Some(0),
            &facts,
        )
        .unwrap();
        let p = Manifest::parse(&out).unwrap();
        assert_eq!(
            p.file("f1").unwrap().size_in_bytes,
            3,
            "refreshed under its id"
        );
        assert!(p.file("b.bin").is_some());
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["instructions"]["steps"][0]["files"],
            json!(["f1", "b.bin"])
        );
        let e = add_files("m.json", &m, &["b.bin".into()], Some(3), &facts).unwrap_err();
        assert_eq!(e.to_string(), "m.json: instructions.steps[3]: no such step");
    }
}
