//! What a lifecycle call sees: the step's identity, properties, files and selected component.

use crate::__private::WitContext;
use crate::failure::Failure;
use sandstep_model::codes::erc;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// The sandbox directory holding the step's verified files (read-only).
pub const PAYLOAD_DIR: &str = "/payload";
/// The sandbox directory for this workflow and step's scratch files (read-write).
pub const WORK_DIR: &str = "/work";
/// The sandbox directory that persists across deployments, one per handler id (read-write).
pub const STATE_DIR: &str = "/state";

/// An update's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateId {
    /// The provider, e.g. `contoso`.
    pub provider: String,
    /// The name, e.g. `virtual-camera`.
    pub name: String,
    /// The version, e.g. `1.2`.
    pub version: String,
}

impl std::fmt::Display for UpdateId {
    /// `provider/name:version`.
    ///
    /// ```
    /// let id = sandstep_sdk::UpdateId { provider: "contoso".into(), name: "cam".into(), version: "1.2".into() };
    /// assert_eq!(id.to_string(), "contoso/cam:1.2");
    /// ```
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.provider, self.name, self.version)
    }
}

/// One of the step's files, already verified by the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFile {
    /// The file id (key of the manifest's `files` map).
    pub id: String,
    /// The file name, a plain name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256, lower-case hex.
    pub sha256: String,
    path: PathBuf,
}

impl StepFile {
    /// Where to read the file inside the sandbox (`/payload/<name>`).
    ///
    /// ```no_run
    /// # fn f(ctx: &sandstep_sdk::Context) -> std::io::Result<()> {
    /// for file in ctx.files() {
    ///     let bytes = std::fs::read(file.path())?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A component from the gateway's inventory, selected for a child update's step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// Unique id, e.g. a serial number.
    pub id: String,
    /// Name, e.g. `left-motor`.
    pub name: String,
    /// Group, e.g. `motors`.
    pub group: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Model.
    pub model: String,
    /// Current version.
    pub version: String,
    /// Inventory properties, in inventory order.
    pub properties: Vec<(String, String)>,
}

impl sandstep_model::script_protocol::ComponentFields for Component {
    fn top_field(&self, name: &str) -> Option<&str> {
        Some(match name {
            "id" => &self.id,
            "name" => &self.name,
            "group" => &self.group,
            "manufacturer" => &self.manufacturer,
            "model" => &self.model,
            "version" => &self.version,
            _ => return None,
        })
    }

    fn property_at(&self, path: &str) -> Option<String> {
        let (first, rest) = path
            .split_once('.')
            .map_or((path, None), |(a, b)| (a, Some(b)));
        let text = self.property(first)?;
        let Some(rest) = rest else {
            return Some(text.to_owned());
        };
        // A nested object arrives as JSON text.
        let mut value: serde_json::Value = serde_json::from_str(text).ok()?;
        for part in rest.split('.') {
            value = value.as_object_mut()?.remove(part)?;
        }
        value.as_str().map(str::to_owned)
    }
}

impl Component {
    /// The value of an inventory property.
    ///
    /// ```
    /// let c = sandstep_sdk::Component {
    ///     id: "m-1".into(), name: "left-motor".into(), group: "motors".into(),
    ///     manufacturer: "contoso".into(), model: "m".into(), version: "1.0".into(),
    ///     properties: vec![("path".into(), "/dev/motor0".into())],
    /// };
    /// assert_eq!(c.property("path"), Some("/dev/motor0"));
    /// assert_eq!(c.property("speed"), None);
    /// ```
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Everything a lifecycle call learns about its step.
#[derive(Debug, Clone)]
pub struct Context {
    workflow_id: String,
    update_id: UpdateId,
    handler_id: String,
    step_index: u32,
    level: u32,
    handler_properties: String,
    installed_criteria: Option<String>,
    files: Vec<StepFile>,
    component: Option<Component>,
    /// Where `/payload`, `/work` and `/state` are in a native test ([`Context::with_dirs`]).
    dirs: Option<PathBuf>,
    /// Granted directories' stand-ins in a native test ([`Context::with_granted`]).
    granted: Vec<(String, PathBuf)>,
}

impl Context {
    pub(crate) fn from_wit(ctx: WitContext) -> Self {
        Context {
            workflow_id: ctx.workflow_id,
            update_id: UpdateId {
                provider: ctx.update_id.provider,
                name: ctx.update_id.name,
                version: ctx.update_id.version,
            },
            handler_id: ctx.handler_id,
            step_index: ctx.step_index,
            level: ctx.level,
            handler_properties: ctx.handler_properties,
            installed_criteria: ctx.installed_criteria,
            files: ctx
                .files
                .into_iter()
                .map(|f| StepFile {
                    id: f.id,
                    name: f.name,
                    size: f.size,
                    sha256: f.sha256,
                    path: PathBuf::from(f.path),
                })
                .collect(),
            component: ctx.selected_component.map(|c| Component {
                id: c.id,
                name: c.name,
                group: c.group,
                manufacturer: c.manufacturer,
                model: c.model,
                version: c.version,
                properties: c.properties,
            }),
            dirs: None,
            granted: Vec::new(),
        }
    }

    /// A context for unit tests of a handler's logic, outside a component.
    ///
    /// ```
    /// let ctx = sandstep_sdk::Context::for_test("microsoft/script:1", r#"{"installedCriteria":"v1"}"#);
    /// assert_eq!(ctx.installed_criteria(), Some("v1"));
    /// assert_eq!(ctx.handler_id(), "microsoft/script:1");
    /// ```
    pub fn for_test(handler_id: &str, handler_properties: &str) -> Self {
        let installed_criteria = serde_json::from_str::<serde_json::Value>(handler_properties)
            .ok()
            .and_then(|v| v.get("installedCriteria")?.as_str().map(str::to_owned));
        Context {
            workflow_id: "test-workflow".into(),
            update_id: UpdateId {
                provider: "test".into(),
                name: "update".into(),
                version: "1.0".into(),
            },
            handler_id: handler_id.into(),
            step_index: 0,
            level: 0,
            handler_properties: handler_properties.into(),
            installed_criteria,
            files: Vec::new(),
            component: None,
            dirs: None,
            granted: Vec::new(),
        }
    }

    /// A test context whose `/payload`, `/work` and `/state` are `dir/payload`, `dir/work` and
    /// `dir/state` (created), so a native test can run the handler's calls one after another and
    /// look at what they left.
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("sdk-dirs-{}", std::process::id()));
    /// let ctx = sandstep_sdk::Context::for_test("contoso/config:1", "{}").with_dirs(&dir);
    /// std::fs::write(ctx.state_path("installed"), b"v2").unwrap();
    /// assert_eq!(std::fs::read(dir.join("state/installed")).unwrap(), b"v2");
    /// assert_eq!(ctx.work_path("x"), dir.join("work/x"));
    /// ```
    pub fn with_dirs(mut self, dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        for sub in ["payload", "work", "state"] {
            std::fs::create_dir_all(dir.join(sub)).expect("a test directory can be created");
        }
        self.dirs = Some(dir);
        self
    }

    /// A test context in which the granted directory `guest` (as a gateway's policy maps one
    /// in with `dirs`, e.g. `/config`) is the test's directory `host`.
    ///
    /// ```
    /// let ctx = sandstep_sdk::Context::for_test("contoso/config:1", "{}")
    ///     .with_granted("/config", "/tmp/test-config");
    /// assert_eq!(ctx.granted_path("/config", "app.conf"), std::path::Path::new("/tmp/test-config/app.conf"));
    /// ```
    pub fn with_granted(mut self, guest: &str, host: impl Into<PathBuf>) -> Self {
        self.granted.push((guest.to_owned(), host.into()));
        self
    }

    /// A path in a directory the gateway's policy grants this handler (`dirs` in its config:
    /// `{ host = "/etc/contoso", guest = "/config", writable = true }`), by its guest path. In a
    /// native test, the directory [`Context::with_granted`] named.
    ///
    /// ```
    /// let ctx = sandstep_sdk::Context::for_test("contoso/config:1", "{}");
    /// assert_eq!(ctx.granted_path("/config", "app.conf"), std::path::Path::new("/config/app.conf"));
    /// ```
    pub fn granted_path(&self, guest: &str, relative: impl AsRef<Path>) -> PathBuf {
        match self.granted.iter().find(|(g, _)| g == guest) {
            Some((_, host)) => host.join(relative),
            None => Path::new(guest).join(relative),
        }
    }

    /// `fixed` (a sandbox directory) joined with `relative`, or its stand-in in a native test.
    fn under(&self, fixed: &str, relative: &Path) -> PathBuf {
        match &self.dirs {
            Some(dir) => dir.join(fixed.trim_start_matches('/')).join(relative),
            None => Path::new(fixed).join(relative),
        }
    }

    /// A test context with a step file `name` read from `path` (a native test's own file, in
    /// place of `/payload/<name>`); its size and sha256 are computed.
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("sdk-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// std::fs::write(dir.join("app.conf"), b"x=1\n").unwrap();
    /// let ctx = sandstep_sdk::Context::for_test("contoso/config:1", "{}")
    ///     .with_file("app.conf", dir.join("app.conf"));
    /// let f = ctx.file("app.conf").unwrap();
    /// assert_eq!(std::fs::read(f.path()).unwrap(), b"x=1\n");
    /// assert_eq!(f.size, 4);
    /// ```
    pub fn with_file(mut self, name: &str, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let bytes = std::fs::read(&path).unwrap_or_default();
        let sha256 = <sha2::Sha256 as sha2::Digest>::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.files.push(StepFile {
            id: name.to_owned(),
            name: name.to_owned(),
            size: bytes.len() as u64,
            sha256,
            path,
        });
        self
    }

    /// The deployment's workflow id.
    ///
    /// ```
    /// assert_eq!(sandstep_sdk::Context::for_test("a/b:1", "{}").workflow_id(), "test-workflow");
    /// ```
    pub fn workflow_id(&self) -> &str {
        &self.workflow_id
    }

    /// The update this step belongs to.
    ///
    /// ```
    /// assert_eq!(sandstep_sdk::Context::for_test("a/b:1", "{}").update_id().version, "1.0");
    /// ```
    pub fn update_id(&self) -> &UpdateId {
        &self.update_id
    }

    /// The handler id named by the step, e.g. `microsoft/script:1`.
    ///
    /// ```
    /// assert_eq!(sandstep_sdk::Context::for_test("a/b:1", "{}").handler_id(), "a/b:1");
    /// ```
    pub fn handler_id(&self) -> &str {
        &self.handler_id
    }

    /// Zero-based index of the step in its update.
    ///
    /// ```
    /// assert_eq!(sandstep_sdk::Context::for_test("a/b:1", "{}").step_index(), 0);
    /// ```
    pub fn step_index(&self) -> u32 {
        self.step_index
    }

    /// 0 for the deployed update's own steps, 1 for a child update's steps.
    ///
    /// ```
    /// assert_eq!(sandstep_sdk::Context::for_test("a/b:1", "{}").level(), 0);
    /// ```
    pub fn level(&self) -> u32 {
        self.level
    }

    /// `handlerProperties.installedCriteria`, when present.
    ///
    /// ```
    /// assert_eq!(sandstep_sdk::Context::for_test("a/b:1", "{}").installed_criteria(), None);
    /// ```
    pub fn installed_criteria(&self) -> Option<&str> {
        self.installed_criteria.as_deref()
    }

    /// `handlerProperties` as JSON text.
    ///
    /// ```
    /// assert_eq!(sandstep_sdk::Context::for_test("a/b:1", "{}").raw_properties(), "{}");
    /// ```
    pub fn raw_properties(&self) -> &str {
        &self.handler_properties
    }

    /// `handlerProperties` parsed into your type. A mismatch becomes a failure whose details name
    /// the problem (`handlerProperties: missing field ...`), so `?` is all a handler needs.
    ///
    /// ```
    /// #[derive(serde::Deserialize)]
    /// #[serde(rename_all = "camelCase")]
    /// struct Props { script_file_name: String }
    ///
    /// let ctx = sandstep_sdk::Context::for_test("a/b:1", r#"{"scriptFileName":"go.sh"}"#);
    /// let props: Props = ctx.properties().map_err(|e| e.to_string()).unwrap();
    /// assert_eq!(props.script_file_name, "go.sh");
    ///
    /// let bad = sandstep_sdk::Context::for_test("a/b:1", r#"{}"#);
    /// let err = bad.properties::<Props>().err().unwrap();
    /// assert!(err.details().contains("missing field `scriptFileName`"));
    /// ```
    pub fn properties<T: DeserializeOwned>(&self) -> Result<T, Failure> {
        serde_json::from_str(&self.handler_properties).map_err(Failure::invalid_properties)
    }

    /// The step's files, in manifest order.
    ///
    /// ```
    /// assert!(sandstep_sdk::Context::for_test("a/b:1", "{}").files().is_empty());
    /// ```
    pub fn files(&self) -> &[StepFile] {
        &self.files
    }

    /// The step file with this file name, or a failure naming it (extended code `SDK_MISSING_FILE`).
    ///
    /// ```
    /// let ctx = sandstep_sdk::Context::for_test("a/b:1", "{}");
    /// let err = ctx.file("image.bin").unwrap_err();
    /// assert_eq!(err.details(), "step has no file named `image.bin`");
    /// ```
    pub fn file(&self, name: &str) -> Result<&StepFile, Failure> {
        self.files.iter().find(|f| f.name == name).ok_or_else(|| {
            Failure::new(
                erc::SDK_MISSING_FILE,
                format!("step has no file named `{name}`"),
            )
        })
    }

    /// The selected component, for a child update's step.
    ///
    /// ```
    /// assert!(sandstep_sdk::Context::for_test("a/b:1", "{}").component().is_none());
    /// ```
    pub fn component(&self) -> Option<&Component> {
        self.component.as_ref()
    }

    /// A path under `/payload`.
    ///
    /// ```
    /// let ctx = sandstep_sdk::Context::for_test("a/b:1", "{}");
    /// assert_eq!(ctx.payload_path("fw.bin"), std::path::Path::new("/payload/fw.bin"));
    /// ```
    pub fn payload_path(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.under(PAYLOAD_DIR, relative.as_ref())
    }

    /// A path under `/work`, this step's scratch directory.
    ///
    /// ```
    /// let ctx = sandstep_sdk::Context::for_test("a/b:1", "{}");
    /// assert_eq!(ctx.work_path("out.txt"), std::path::Path::new("/work/out.txt"));
    /// ```
    pub fn work_path(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.under(WORK_DIR, relative.as_ref())
    }

    /// A path under `/state`, which persists across deployments.
    ///
    /// ```
    /// let ctx = sandstep_sdk::Context::for_test("a/b:1", "{}");
    /// assert_eq!(ctx.state_path("installed.json"), std::path::Path::new("/state/installed.json"));
    /// ```
    pub fn state_path(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.under(STATE_DIR, relative.as_ref())
    }
}
