//! ADU update manifests (v4 and v5): parsed from JSON, then validated against every limit of the
//! SchemaStore schemas, with errors that name the field path and the rule.
//!
//! Parsing is two-level: the JSON is read into a value tree, then walked field by field, so an
//! error can say exactly where it is (`instructions.steps[3].handler: must look like
//! vendor/name:version`) and all errors are reported at once. Unknown top-level fields are
//! tolerated (returned as warnings); unknown step fields are errors.

use crate::context::UpdateId;
use base64::Engine as _;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// Largest manifest accepted, in bytes (the limits below keep real manifests far smaller).
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// Largest `sizeInBytes`: 1 TiB. ADU's service takes files of up to 2 GiB in an import, but its
/// agent keeps the size as a `size_t` (`ADUC_FileEntity::SizeInBytes`,
/// src/adu_types/inc/aduc/types/update_content.h) and so accepts larger ones; firmware images
/// streamed into a slot are often larger than 2 GiB.
pub const MAX_FILE_SIZE: u64 = 1 << 40;

/// One validation failure: where, and which rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, e.g. `instructions.steps[3].handler` (empty for the document itself).
    pub path: String,
    /// The rule that was broken.
    pub rule: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.rule)
        } else {
            write!(f, "{}: {}", self.path, self.rule)
        }
    }
}

/// Why a manifest was refused: every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    pub errors: Vec<FieldError>,
}

impl ManifestError {
    fn one(path: &str, rule: impl Into<String>) -> Self {
        ManifestError {
            errors: vec![FieldError {
                path: path.to_owned(),
                rule: rule.into(),
            }],
        }
    }

    /// Whether the only problem is an unsupported `manifestVersion` (ADU's erc 0x8030000A).
    pub fn is_unsupported_version(&self) -> bool {
        self.errors.iter().any(|e| e.path == "manifestVersion")
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// The manifest format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ManifestVersion {
    V4,
    V5,
}

/// A validated update manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub version: ManifestVersion,
    pub update_id: UpdateId,
    /// Each entry: property name -> value (1-5 properties).
    pub compatibility: Vec<BTreeMap<String, String>>,
    pub steps: Vec<Step>,
    /// File id -> file, sorted by id.
    pub files: Vec<(String, FileEntry)>,
    pub is_deployable: Option<bool>,
    pub created_date_time: Option<String>,
    /// `sandstep.allowDowngrade` is `true`: the update may install over a newer version (the
    /// flag is signed with the rest; anything but `true` is no).
    pub allow_downgrade: bool,
    /// When and how fast the deployment's files may come and its steps install
    /// (`sandstep.downloadWindows`, `installWindows`, `maxBytesPerSec`; signed with the rest).
    pub delivery: Delivery,
    /// Tolerated oddities (unknown top-level fields, ignored file features).
    pub warnings: Vec<String>,
}

/// The signed part's delivery controls; each narrows the gateway's own (`[windows]`,
/// `[download] max-bytes-per-sec`): where both have windows, both must be open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// When the deployment's files may download (none: whenever the gateway's allow).
    pub download_windows: crate::window::Schedule,
    /// When its steps may begin to install.
    pub install_windows: crate::window::Schedule,
    /// A bandwidth cap for its transfers, in bytes a second.
    pub max_bytes_per_sec: Option<u64>,
}

/// The members of the top-level `sandstep` object.
const SANDSTEP_KNOWN: &[&str] = &[
    "allowDowngrade",
    "downloadWindows",
    "installWindows",
    "maxBytesPerSec",
];

/// One step of `instructions.steps`.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Inline(InlineStep),
    Reference(ReferenceStep),
}

/// A step run by a handler.
#[derive(Debug, Clone, PartialEq)]
pub struct InlineStep {
    pub description: Option<String>,
    /// e.g. `microsoft/script:1`.
    pub handler: String,
    /// File ids (keys of [`Manifest::files`]).
    pub files: Vec<String>,
    pub handler_properties: Map<String, Value>,
}

/// A step that runs a child update, whose manifest is a file of the parent.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceStep {
    pub description: Option<String>,
    pub detached_manifest_file_id: String,
}

/// A payload file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// A plain file name (see [`check_plain_name`]).
    pub file_name: String,
    pub size_in_bytes: u64,
    /// The sha256 digest.
    pub sha256: [u8; 32],
    /// `downloadHandler.id` (ADU's `microsoft/delta:1`): a handler that would make the file
    /// from a smaller download. sandstep has none, and downloads the full file, as ADU's agent
    /// does when the handler is missing.
    pub download_handler: Option<String>,
}

impl FileEntry {
    /// The digest as lower-case hex.
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The digest as the manifest writes it (standard base64 with padding).
    pub fn sha256_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.sha256)
    }
}

impl Manifest {
    /// The entry for a file id.
    pub fn file(&self, id: &str) -> Option<&FileEntry> {
        self.files.iter().find(|(k, _)| k == id).map(|(_, f)| f)
    }

    /// A manifest whose content is detached: its top-level `detachedManifestFileId` and that
    /// file's entry. ADU's agent then downloads the file (hash-checked) and uses the manifest it
    /// holds as `{"updateManifest": "<json>"}` in place of this one (`workflow_utils.c`,
    /// `DownloadAndUseDetachedManifest`). `Ok(None)` when the manifest is not detached.
    pub fn detached_file(text: &str) -> Result<Option<(String, FileEntry)>, ManifestError> {
        Manifest::top_level(text).detached
    }

    /// Reads a deployment's manifest text once: the manifest it is, and whether its content is
    /// detached (see [`Manifest::detached_file`]; a detached manifest need not parse as a
    /// manifest itself).
    pub fn top_level(text: &str) -> TopLevel {
        match json_of(text) {
            Ok(value) => Manifest::top_level_of(&value),
            // Refused with its size or as not JSON by `manifest`.
            Err(e) => TopLevel {
                manifest: Err(e),
                detached: Ok(None),
            },
        }
    }

    /// [`Manifest::top_level`] of text already read as JSON.
    pub fn top_level_of(value: &Value) -> TopLevel {
        TopLevel {
            manifest: Manifest::from_value(value),
            detached: detached_in(value),
        }
    }

    /// The manifest a detached manifest file holds (`{"updateManifest": "<json>"}`), as text.
    pub fn detached_content(file: &str) -> Result<String, DetachedError> {
        let value: Value = serde_json::from_str(crate::json::strip_bom_str(file))
            .map_err(|e| DetachedError::NotJson(e.to_string()))?;
        match value.get("updateManifest") {
            Some(Value::String(inner)) => Ok(inner.clone()),
            _ => Err(DetachedError::NoUpdateManifest),
        }
    }

    /// Parses and validates manifest text.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::from_value(&json_of(text)?)
    }

    /// Parses a child (detached) manifest file: either the manifest itself, or ADU's wrapper
    /// `{"updateManifest": "<manifest as a JSON string>"}`. A child may not contain reference steps.
    pub fn parse_child(text: &str) -> Result<Manifest, ManifestError> {
        let value = json_of(text)?;
        let manifest = match value.get("updateManifest") {
            Some(Value::String(inner)) => Manifest::parse(inner).map_err(|e| ManifestError {
                errors: e
                    .errors
                    .into_iter()
                    .map(|f| FieldError {
                        path: if f.path.is_empty() {
                            "updateManifest".into()
                        } else {
                            format!("updateManifest.{}", f.path)
                        },
                        rule: f.rule,
                    })
                    .collect(),
            })?,
            Some(_) => {
                return Err(ManifestError::one(
                    "updateManifest",
                    "must be a string holding the manifest JSON",
                ))
            }
            None => Manifest::from_value(&value)?,
        };
        let nested: Vec<FieldError> = manifest
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Step::Reference(_)))
            .map(|(i, _)| FieldError {
                path: format!("instructions.steps[{i}]"),
                rule: "a child update may not contain reference steps".into(),
            })
            .collect();
        if !nested.is_empty() {
            return Err(ManifestError { errors: nested });
        }
        Ok(manifest)
    }

    /// Validates a JSON value.
    pub fn from_value(value: &Value) -> Result<Manifest, ManifestError> {
        let mut v = Validator::default();
        let manifest = v.manifest(value);
        match manifest {
            Some(m) if v.errors.is_empty() => Ok(m),
            _ => Err(ManifestError { errors: v.errors }),
        }
    }
}

/// Why a file name is not a plain name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("is {0} bytes; a file name has at most 255")]
    TooLong(usize),
    #[error("`{0}` is not a plain file name (it starts with `..` or is `.`)")]
    Dots(String),
    #[error("`{name}` is not a plain file name (it contains {what})")]
    Contains { name: String, what: String },
}

/// Checks that a file name from a manifest is a plain name: not empty, not `.`/`..`, no `/`, `\`,
/// NUL or control characters, not starting with `..`, at most 255 bytes.
pub fn check_plain_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > 255 {
        return Err(NameError::TooLong(name.len()));
    }
    if name == "." || name == ".." || name.starts_with("..") {
        return Err(NameError::Dots(escape(name)));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == '\\' || c.is_control())
    {
        let what = match c {
            '/' => "`/`".to_owned(),
            '\\' => "`\\`".to_owned(),
            '\0' => "NUL".to_owned(),
            c => format!("control character U+{:04X}", c as u32),
        };
        return Err(NameError::Contains {
            name: escape(name),
            what,
        });
    }
    Ok(())
}

fn escape(s: &str) -> String {
    s.escape_debug().to_string()
}

/// Why a detached manifest file was refused, with ADU's code for each
/// (`GetDetachedManifestJsonObjFromSandbox`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetachedError {
    /// `ADUC_ERC_UTILITIES_UPDATE_DATA_PARSER_BAD_DETACHED_UPDATE_MANIFEST_JSON_FILE`.
    #[error("the detached manifest file is not JSON: {0}")]
    NotJson(String),
    /// `..._DETACHED_UPDATE_MANIFEST_MISSING_UPDATEMANIFEST_PROPERTY`.
    #[error("the detached manifest file has no `updateManifest` string")]
    NoUpdateManifest,
}

/// A deployment's manifest text, read once ([`Manifest::top_level`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TopLevel {
    /// The manifest, or why it is not one.
    pub manifest: Result<Manifest, ManifestError>,
    /// Its detached content's file, when it has one (see [`Manifest::detached_file`]).
    pub detached: Result<Option<(String, FileEntry)>, ManifestError>,
}

/// Manifest text as JSON, within the size limit.
fn json_of(text: &str) -> Result<Value, ManifestError> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::one(
            "",
            format!(
                "manifest is {} bytes; the limit is {MAX_MANIFEST_BYTES}",
                text.len()
            ),
        ));
    }
    serde_json::from_str(crate::json::strip_bom_str(text))
        .map_err(|e| ManifestError::one("", format!("not valid JSON: {e}")))
}

/// The detached content's file of a manifest's JSON (`Ok(None)`: not detached).
fn detached_in(value: &Value) -> Result<Option<(String, FileEntry)>, ManifestError> {
    let Some(id) = value.get("detachedManifestFileId") else {
        return Ok(None);
    };
    let Some(id) = id.as_str().filter(|s| !s.is_empty()) else {
        return Err(ManifestError::one(
            "detachedManifestFileId",
            "must be a non-empty string",
        ));
    };
    let mut v = Validator::default();
    let files = value
        .get("files")
        .and_then(|f| v.files(f))
        .unwrap_or_default();
    if !v.errors.is_empty() {
        return Err(ManifestError { errors: v.errors });
    }
    files
        .into_iter()
        .find(|(k, _)| k == id)
        .map(Some)
        .ok_or_else(|| {
            ManifestError::one(
                "detachedManifestFileId",
                format!("`{}` is not an id of `files`", escape(id)),
            )
        })
}

const TOP_LEVEL_KNOWN: &[&str] = &[
    "detachedManifestFileId",
    "sandstep",
    "updateId",
    "compatibility",
    "instructions",
    "files",
    "manifestVersion",
    "createdDateTime",
    "isDeployable",
    "referencedBy",
    "etag",
    "importedDateTime",
    "description",
];
const FILE_FIELDS: &[&str] = &[
    "fileName",
    "filename",
    "sizeInBytes",
    "hashes",
    "properties",
    "mimeType",
    "relatedFiles",
    "downloadHandler",
];

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
    warnings: Vec<String>,
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '-'
}

/// `^\S+/\S+:\d{1,5}$`.
pub fn is_handler_id(s: &str) -> bool {
    let Some((front, version)) = s.rsplit_once(':') else {
        return false;
    };
    let Some((vendor, name)) = front.split_once('/') else {
        return false;
    };
    let non_space = |p: &str| !p.is_empty() && !p.chars().any(char::is_whitespace);
    non_space(vendor)
        && non_space(name)
        && (1..=5).contains(&version.len())
        && version.bytes().all(|b| b.is_ascii_digit())
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, rule: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            rule: rule.into(),
        });
    }

    fn object<'v>(&mut self, v: &'v Value, path: &str) -> Option<&'v Map<String, Value>> {
        match v {
            Value::Object(m) => Some(m),
            other => {
                self.err(path, format!("must be an object, not {}", kind(other)));
                None
            }
        }
    }

    fn string<'v>(&mut self, v: &'v Value, path: &str) -> Option<&'v str> {
        match v {
            Value::String(s) => Some(s),
            other => {
                self.err(path, format!("must be a string, not {}", kind(other)));
                None
            }
        }
    }

    fn required<'v>(
        &mut self,
        m: &'v Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Option<&'v Value> {
        let v = m.get(key);
        if v.is_none() {
            self.err(join(path, key), "is required");
        }
        v
    }

    fn manifest(&mut self, value: &Value) -> Option<Manifest> {
        let root = self.object(value, "")?;
        for key in root.keys() {
            if !TOP_LEVEL_KNOWN.contains(&key.as_str()) {
                self.warnings
                    .push(format!("unknown top-level field `{key}` ignored"));
            }
        }
        let version = self
            .required(root, "manifestVersion", "")
            .and_then(|v| self.version(v));
        let update_id = self
            .required(root, "updateId", "")
            .and_then(|v| self.update_id(v, "updateId"));
        let compatibility = self
            .required(root, "compatibility", "")
            .and_then(|v| self.compatibility(v))
            .unwrap_or_default();
        let files = match root.get("files") {
            Some(v) => self.files(v).unwrap_or_default(),
            None => Vec::new(),
        };
        // Steps may name any id of the `files` map; an invalid entry is reported once, there.
        let ids: Vec<String> = match root.get("files") {
            Some(Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let steps = self
            .required(root, "instructions", "")
            .and_then(|v| self.instructions(v, &ids))
            .unwrap_or_default();
        let is_deployable = match root.get("isDeployable") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                self.err(
                    "isDeployable",
                    format!("must be a boolean, not {}", kind(other)),
                );
                None
            }
        };
        let created_date_time = match root.get("createdDateTime") {
            None => None,
            Some(v) => self.string(v, "createdDateTime").map(str::to_owned),
        };
        let allow_downgrade = root
            .get("sandstep")
            .and_then(|v| v.get("allowDowngrade")?.as_bool())
            == Some(true);
        let delivery = match root.get("sandstep") {
            Some(Value::Object(own)) => self.delivery(own),
            _ => Delivery::default(),
        };
        Some(Manifest {
            version: version?,
            update_id: update_id?,
            compatibility,
            steps,
            files,
            is_deployable,
            created_date_time,
            allow_downgrade,
            delivery,
            warnings: std::mem::take(&mut self.warnings),
        })
    }

    /// The `sandstep` object's delivery controls. Strict where `allowDowngrade` is lenient: an
    /// unknown member or a window this agent cannot read is refused, never ignored, so a
    /// window the signer meant is not skipped.
    fn delivery(&mut self, own: &Map<String, Value>) -> Delivery {
        for key in own.keys() {
            if !SANDSTEP_KNOWN.contains(&key.as_str()) {
                self.err(
                    join("sandstep", key),
                    format!(
                        "unknown member; this agent knows {}",
                        SANDSTEP_KNOWN.join(", ")
                    ),
                );
            }
        }
        let max_bytes_per_sec = match own.get("maxBytesPerSec") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => Some(n),
                _ => {
                    self.err(
                        "sandstep.maxBytesPerSec",
                        format!("must be a whole number of bytes above 0, not {v}"),
                    );
                    None
                }
            },
        };
        Delivery {
            download_windows: self.windows(own, "downloadWindows"),
            install_windows: self.windows(own, "installWindows"),
            max_bytes_per_sec,
        }
    }

    fn windows(&mut self, own: &Map<String, Value>, key: &str) -> crate::window::Schedule {
        let path = join("sandstep", key);
        let Some(v) = own.get(key) else {
            return Default::default();
        };
        let Value::Array(items) = v else {
            self.err(
                &path,
                format!("must be an array of windows, not {}", kind(v)),
            );
            return Default::default();
        };
        if items.is_empty() {
            self.err(
                &path,
                "must name at least one window (leave it out for none)",
            );
        }
        let mut windows = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = format!("{path}[{i}]");
            match self.string(item, &at).map(crate::window::Window::parse) {
                Some(Ok(w)) => windows.push(w),
                Some(Err(e)) => self.err(at, e.to_string()),
                None => {}
            }
        }
        crate::window::Schedule { windows }
    }

    fn version(&mut self, v: &Value) -> Option<ManifestVersion> {
        let s = self.string(v, "manifestVersion")?;
        match adu_atoi(s) {
            4 => Some(ManifestVersion::V4),
            5 => Some(ManifestVersion::V5),
            _ => {
                self.err(
                    "manifestVersion",
                    format!("`{}` is not supported; expected 4 or 5", escape(s)),
                );
                None
            }
        }
    }

    fn update_id(&mut self, v: &Value, path: &str) -> Option<UpdateId> {
        let m = self.object(v, path)?;
        for key in m.keys() {
            if !["provider", "name", "version"].contains(&key.as_str()) {
                self.err(
                    join(path, key),
                    "unknown field (expected provider, name, version)",
                );
            }
        }
        let part = |this: &mut Self, key: &str| -> Option<String> {
            let p = join(path, key);
            let s = this
                .required(m, key, path)
                .and_then(|v| this.string(v, &p))?;
            Some(s.to_owned())
        };
        let provider = part(self, "provider");
        let name = part(self, "name");
        let version = part(self, "version");
        for (key, value) in [("provider", &provider), ("name", &name)] {
            if let Some(s) = value {
                let len = s.chars().count();
                if !(1..=64).contains(&len) || !s.chars().all(is_id_char) {
                    self.err(join(path, key), "must be 1-64 characters of [a-zA-Z0-9.-]");
                }
            }
        }
        if let Some(s) = &version {
            let parts: Vec<&str> = s.split('.').collect();
            let ok = (2..=4).contains(&parts.len())
                && parts.iter().all(|p| {
                    !p.is_empty() && p.len() <= 10 && p.bytes().all(|b| b.is_ascii_digit())
                });
            if !ok {
                self.err(
                    join(path, "version"),
                    "must be 2 to 4 dot-separated integers, like 1.2 or 1.0.0.1",
                );
            }
        }
        Some(UpdateId {
            provider: provider?,
            name: name?,
            version: version?,
        })
    }

    fn compatibility(&mut self, v: &Value) -> Option<Vec<BTreeMap<String, String>>> {
        let Value::Array(items) = v else {
            self.err(
                "compatibility",
                format!("must be an array, not {}", kind(v)),
            );
            return None;
        };
        if !(1..=10).contains(&items.len()) {
            self.err(
                "compatibility",
                format!("must have 1 to 10 entries, has {}", items.len()),
            );
        }
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("compatibility[{i}]");
            let Some(m) = self.object(item, &path) else {
                continue;
            };
            if !(1..=5).contains(&m.len()) {
                self.err(
                    &path,
                    format!("must have 1 to 5 properties, has {}", m.len()),
                );
            }
            let mut entry = BTreeMap::new();
            for (k, val) in m {
                let p = join(&path, k);
                if !(1..=32).contains(&k.chars().count()) {
                    self.err(&p, "property names are 1-32 characters");
                }
                if let Some(s) = self.string(val, &p) {
                    if !(1..=64).contains(&s.chars().count()) {
                        self.err(&p, "property values are 1-64 characters");
                    }
                    entry.insert(k.clone(), s.to_owned());
                }
            }
            out.push(entry);
        }
        Some(out)
    }

    fn files(&mut self, v: &Value) -> Option<Vec<(String, FileEntry)>> {
        let m = self.object(v, "files")?;
        if !(1..=20).contains(&m.len()) {
            self.err(
                "files",
                format!("must have 1 to 20 entries, has {}", m.len()),
            );
        }
        let mut out = Vec::new();
        for (id, entry) in m {
            let path = format!("files.{id}");
            if id.is_empty() {
                self.err("files", "file ids must not be empty");
            }
            if let Some(f) = self.file(entry, &path) {
                out.push((id.clone(), f));
            }
        }
        Some(out)
    }

    fn file(&mut self, v: &Value, path: &str) -> Option<FileEntry> {
        let m = self.object(v, path)?;
        for key in m.keys() {
            if !FILE_FIELDS.contains(&key.as_str()) {
                self.err(join(path, key), "unknown file field");
            }
        }
        if m.contains_key("downloadHandler") {
            self.warnings.push(format!(
                "{}: sandstep has no download handlers (delta updates); the full file is downloaded",
                join(path, "downloadHandler")
            ));
        }
        // ADU reads `downloadHandler.id` and nothing else (`workflow_utils.c`).
        let download_handler = m
            .get("downloadHandler")
            .and_then(|d| d.get("id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let name_value = match (m.get("fileName"), m.get("filename")) {
            (Some(_), Some(_)) => {
                self.err(path, "has both `fileName` and `filename`; give one");
                None
            }
            (Some(v), None) => Some((v, "fileName")),
            (None, Some(v)) => Some((v, "filename")),
            (None, None) => {
                self.err(join(path, "fileName"), "is required");
                None
            }
        };
        let file_name = name_value.and_then(|(v, key)| {
            let p = join(path, key);
            let s = self.string(v, &p)?;
            match check_plain_name(s) {
                Ok(()) => Some(s.to_owned()),
                Err(rule) => {
                    self.err(p, rule.to_string());
                    None
                }
            }
        });
        let size = self.required(m, "sizeInBytes", path).and_then(|v| {
            let p = join(path, "sizeInBytes");
            match v.as_u64() {
                Some(n) if (1..=MAX_FILE_SIZE).contains(&n) => Some(n),
                _ => {
                    self.err(p, format!("must be an integer from 1 to {MAX_FILE_SIZE}"));
                    None
                }
            }
        });
        let sha256 = self.required(m, "hashes", path).and_then(|v| {
            let p = join(path, "hashes");
            let hashes = self.object(v, &p)?;
            let sp = join(&p, "sha256");
            let s = self
                .required(hashes, "sha256", &p)
                .and_then(|v| self.string(v, &sp))?;
            match base64::engine::general_purpose::STANDARD.decode(s) {
                Ok(bytes) if bytes.len() == 32 => {
                    let mut d = [0u8; 32];
                    d.copy_from_slice(&bytes);
                    Some(d)
                }
                Ok(bytes) => {
                    self.err(
                        sp,
                        format!("must be a 32-byte digest, decodes to {} bytes", bytes.len()),
                    );
                    None
                }
                Err(_) => {
                    self.err(sp, "must be standard base64 with padding");
                    None
                }
            }
        });
        Some(FileEntry {
            file_name: file_name?,
            size_in_bytes: size?,
            sha256: sha256?,
            download_handler,
        })
    }

    fn instructions(&mut self, v: &Value, files: &[String]) -> Option<Vec<Step>> {
        let m = self.object(v, "instructions")?;
        for key in m.keys() {
            if key != "steps" {
                self.err(join("instructions", key), "unknown field");
            }
        }
        let steps = self.required(m, "steps", "instructions")?;
        let Value::Array(items) = steps else {
            self.err(
                "instructions.steps",
                format!("must be an array, not {}", kind(steps)),
            );
            return None;
        };
        if !(1..=10).contains(&items.len()) {
            self.err(
                "instructions.steps",
                format!("must have 1 to 10 steps, has {}", items.len()),
            );
        }
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if let Some(s) = self.step(item, &format!("instructions.steps[{i}]"), files) {
                out.push(s);
            }
        }
        Some(out)
    }

    fn file_id(&mut self, v: &Value, path: &str, files: &[String]) -> Option<String> {
        let id = self.string(v, path)?;
        if !files.iter().any(|k| k == id) {
            self.err(path, format!("file id `{}` is not in `files`", escape(id)));
            return None;
        }
        Some(id.to_owned())
    }

    fn step(&mut self, v: &Value, path: &str, files: &[String]) -> Option<Step> {
        let m = self.object(v, path)?;
        let kind_value = match m.get("type") {
            None => "inline",
            Some(Value::String(s)) if s == "inline" || s == "reference" => s.as_str(),
            Some(other) => {
                self.err(
                    join(path, "type"),
                    format!("must be \"inline\" or \"reference\", not {other}"),
                );
                return None;
            }
        };
        let description = match m.get("description") {
            None => None,
            Some(v) => self
                .string(v, &join(path, "description"))
                .map(str::to_owned),
        };
        if kind_value == "reference" {
            return self.reference_step(m, path, description, files);
        }
        self.inline_step(m, path, description, files)
    }

    fn reference_step(
        &mut self,
        m: &Map<String, Value>,
        path: &str,
        description: Option<String>,
        files: &[String],
    ) -> Option<Step> {
        for key in m.keys() {
            if !["type", "description", "detachedManifestFileId"].contains(&key.as_str()) {
                let rule = if key == "updateId" {
                    "unknown reference step field (`updateId` is the import manifest's form; a device manifest names the child with `detachedManifestFileId`)"
                } else {
                    "unknown reference step field"
                };
                self.err(join(path, key), rule);
            }
        }
        let p = join(path, "detachedManifestFileId");
        let id = self
            .required(m, "detachedManifestFileId", path)
            .and_then(|v| self.file_id(v, &p, files))?;
        Some(Step::Reference(ReferenceStep {
            description,
            detached_manifest_file_id: id,
        }))
    }

    fn inline_step(
        &mut self,
        m: &Map<String, Value>,
        path: &str,
        description: Option<String>,
        files: &[String],
    ) -> Option<Step> {
        for key in m.keys() {
            if ![
                "type",
                "description",
                "handler",
                "files",
                "handlerProperties",
            ]
            .contains(&key.as_str())
            {
                self.err(join(path, key), "unknown inline step field");
            }
        }
        let hp = join(path, "handler");
        let handler = self
            .required(m, "handler", path)
            .and_then(|v| self.string(v, &hp))
            .and_then(|h| {
                let len = h.chars().count();
                if !(5..=32).contains(&len) {
                    self.err(&hp, format!("must be 5-32 characters, is {len}"));
                    None
                } else if !is_handler_id(h) {
                    self.err(&hp, "must look like vendor/name:version");
                    None
                } else {
                    Some(h.to_owned())
                }
            });
        let step_files = self.step_files(m, path, files);
        let pp = join(path, "handlerProperties");
        let props = match m.get("handlerProperties") {
            None => {
                self.err(
                    &pp,
                    "is required for an inline step (ADU fails such a step with 0x8040000D)",
                );
                None
            }
            Some(v) => self.object(v, &pp).cloned(),
        };
        if let Some(Some(ic)) = props.as_ref().map(|p| p.get("installedCriteria")) {
            self.string(ic, &join(&pp, "installedCriteria"));
        }
        Some(Step::Inline(InlineStep {
            description,
            handler: handler?,
            files: step_files?,
            handler_properties: props?,
        }))
    }

    /// An inline step's `files`: 1 to 10 ids of the manifest's files, none twice.
    fn step_files(
        &mut self,
        m: &Map<String, Value>,
        path: &str,
        files: &[String],
    ) -> Option<Vec<String>> {
        let fp = join(path, "files");
        self.required(m, "files", path).and_then(|v| {
            let Value::Array(items) = v else {
                self.err(&fp, format!("must be an array, not {}", kind(v)));
                return None;
            };
            if !(1..=10).contains(&items.len()) {
                self.err(
                    &fp,
                    format!("must name 1 to 10 file ids, names {}", items.len()),
                );
            }
            let mut ids = Vec::new();
            for (i, item) in items.iter().enumerate() {
                if let Some(id) = self.file_id(item, &format!("{fp}[{i}]"), files) {
                    if ids.contains(&id) {
                        self.err(
                            format!("{fp}[{i}]"),
                            format!("file id `{id}` is listed twice"),
                        );
                    }
                    ids.push(id);
                }
            }
            Some(ids)
        })
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `manifestVersion` read as ADU's agent reads it: C's `atoi` of the string
/// (`src/utils/workflow_utils/src/workflow_utils.c`, `workflow_get_update_manifest_version`), so
/// "4", "4.0", "5.1" and " 4" are versions 4, 4, 5 and 4, and anything without leading digits is 0.
/// ADU accepts 4 to 5 (`SUPPORTED_UPDATE_MANIFEST_VERSION_MIN`/`MAX` in its CMakeLists.txt).
pub fn adu_atoi(text: &str) -> i64 {
    let t = text.trim_start_matches([' ', '\t', '\n', '\r', '\x0B', '\x0C']);
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let value = digits
        .bytes()
        .take_while(u8::is_ascii_digit)
        .fold(0i64, |n, d| {
            n.saturating_mul(10).saturating_add(i64::from(d - b'0'))
        });
    if negative {
        -value
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_version_is_read_with_atoi_as_adu_reads_it() {
        // ADU: workflow_get_update_manifest_version -> atoi.
        for (text, n) in [
            ("4", 4),
            ("4.0", 4),
            ("5.1", 5),
            (" 5", 5),
            ("+4", 4),
            ("04", 4),
        ] {
            assert_eq!(adu_atoi(text), n, "{text}");
        }
        for (text, n) in [("", 0), ("v4", 0), ("2.0", 2), ("-4", -4), ("6", 6)] {
            assert_eq!(adu_atoi(text), n, "{text}");
        }
    }

    #[test]
    fn handler_ids_follow_the_schema_pattern() {
        for ok in ["microsoft/apt:1", "a/b:12345", "contoso/fw-update:2"] {
            assert!(is_handler_id(ok), "{ok}");
        }
        for bad in [
            "microsoft/apt",
            "apt:1",
            "a/b:123456",
            "a b/c:1",
            "a/b:x",
            "/b:1",
            "a/:1",
        ] {
            assert!(!is_handler_id(bad), "{bad}");
        }
    }

    #[test]
    fn plain_names_refuse_every_escape() {
        assert!(check_plain_name("firmware-1.2.bin").is_ok());
        assert!(check_plain_name(".hidden").is_ok());
        assert_eq!(
            check_plain_name("../etc/passwd").unwrap_err().to_string(),
            "`../etc/passwd` is not a plain file name (it starts with `..` or is `.`)"
        );
        assert_eq!(
            check_plain_name("a/b").unwrap_err().to_string(),
            "`a/b` is not a plain file name (it contains `/`)"
        );
        assert_eq!(
            check_plain_name("/etc").unwrap_err().to_string(),
            "`/etc` is not a plain file name (it contains `/`)"
        );
        assert_eq!(
            check_plain_name("a\0b").unwrap_err().to_string(),
            "`a\\0b` is not a plain file name (it contains NUL)"
        );
        assert_eq!(
            check_plain_name("a\\b").unwrap_err().to_string(),
            "`a\\\\b` is not a plain file name (it contains `\\`)"
        );
        assert_eq!(
            check_plain_name("..").unwrap_err().to_string(),
            "`..` is not a plain file name (it starts with `..` or is `.`)"
        );
        assert_eq!(
            check_plain_name("").unwrap_err().to_string(),
            "must not be empty"
        );
        assert!(check_plain_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn oversized_manifests_are_refused_before_parsing() {
        let big = " ".repeat(MAX_MANIFEST_BYTES + 1);
        let err = Manifest::parse(&big).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "manifest is {} bytes; the limit is {MAX_MANIFEST_BYTES}",
                MAX_MANIFEST_BYTES + 1
            )
        );
    }

    fn minimal(extra: &str) -> String {
        format!(
            r#"{{"manifestVersion": "5", "updateId": {{"provider": "p", "name": "n", "version": "1.0"}},
                "compatibility": [{{"model": "m"}}],
                "instructions": {{"steps": [{{"handler": "a/b:1", "files": ["f"], "handlerProperties": {{}}}}]}},
                "files": {{"f": {{"fileName": "f.bin", "sizeInBytes": 1,
                    "hashes": {{"sha256": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}}}}}}{extra}}}"#
        )
    }

    #[test]
    fn only_a_literal_true_allows_a_downgrade() {
        for (extra, allowed) in [
            ("", false),
            (r#", "sandstep": {"allowDowngrade": true}"#, true),
            (r#", "sandstep": {"allowDowngrade": "yes"}"#, false),
            (r#", "sandstep": {"allowDowngrade": 1}"#, false),
            (r#", "sandstep": true"#, false),
        ] {
            let m = Manifest::parse(&minimal(extra)).expect("parses");
            assert_eq!(m.allow_downgrade, allowed, "{extra}");
        }
    }

    #[test]
    fn the_signed_delivery_controls_are_read_and_a_bad_one_names_its_field() {
        let m = Manifest::parse(&minimal(
            r#", "sandstep": {"downloadWindows": ["Mon-Fri 22:00-06:00"], "installWindows": ["Sun 02:00-04:00"], "maxBytesPerSec": 50000}"#,
        ))
        .expect("parses");
        assert_eq!(
            m.delivery.download_windows.to_string(),
            "Mon,Tue,Wed,Thu,Fri 22:00-06:00"
        );
        assert_eq!(m.delivery.install_windows.to_string(), "Sun 02:00-04:00");
        assert_eq!(m.delivery.max_bytes_per_sec, Some(50_000));
        for (extra, path, says) in [
            (
                r#"{"downloadWindows": ["Mon 25:00-26:00"]}"#,
                "sandstep.downloadWindows[0]",
                "hours 00-23",
            ),
            (
                r#"{"installWindows": "daily 01:00-02:00"}"#,
                "sandstep.installWindows",
                "must be an array",
            ),
            (
                r#"{"installWindows": []}"#,
                "sandstep.installWindows",
                "at least one window",
            ),
            (
                r#"{"downloadWindows": ["daily 01:00-02:00", 3]}"#,
                "sandstep.downloadWindows[1]",
                "must be a string",
            ),
            (
                r#"{"maxBytesPerSec": 0}"#,
                "sandstep.maxBytesPerSec",
                "above 0",
            ),
            (
                r#"{"maxBytesPerSec": -5}"#,
                "sandstep.maxBytesPerSec",
                "above 0",
            ),
            (
                r#"{"downloadWindow": ["daily 01:00-02:00"]}"#,
                "sandstep.downloadWindow",
                "unknown member",
            ),
        ] {
            let e = Manifest::parse(&minimal(&format!(r#", "sandstep": {extra}"#))).unwrap_err();
            assert!(
                e.errors
                    .iter()
                    .any(|f| f.path == path && f.rule.contains(says)),
                "{extra}: {e}"
            );
        }
    }

    #[test]
    fn the_top_level_read_gives_the_manifest_and_its_detached_file_from_one_text() {
        let plain = Manifest::top_level(&minimal(""));
        assert!(plain.manifest.is_ok());
        assert_eq!(plain.detached, Ok(None));
        let detached = Manifest::top_level(&minimal(r#", "detachedManifestFileId": "f""#));
        let (id, entry) = detached.detached.expect("valid").expect("detached");
        assert_eq!((id.as_str(), entry.file_name.as_str()), ("f", "f.bin"));
        let unknown = Manifest::top_level(&minimal(r#", "detachedManifestFileId": "g""#));
        assert!(unknown.detached.is_err());
        // Not JSON: the manifest says why; nothing is detached.
        let junk = Manifest::top_level("{");
        assert!(junk
            .manifest
            .unwrap_err()
            .to_string()
            .starts_with("not valid JSON"));
        assert_eq!(junk.detached, Ok(None));
    }

    #[test]
    fn deeply_nested_json_is_refused_not_overflowed() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = Manifest::parse(&deep).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("not valid JSON: recursion limit exceeded"),
            "{err}"
        );
    }
}
