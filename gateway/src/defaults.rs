//! The default handlers sandstep ships: which component serves which ids. The one list: the
//! signing and packaging scripts read it (`sandstep handler defaults`); each component is the
//! crate `handlers/<component>`, and each id has a built-in policy (`default-policy.toml`).

/// A default handler: the component's name (`target/wasm/<name>.wasm`, signed) and the handler
/// ids it is registered under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultHandler {
    pub component: &'static str,
    pub ids: &'static [&'static str],
}

/// Every default handler.
pub const DEFAULT_HANDLERS: &[DefaultHandler] = &[
    DefaultHandler {
        component: "apt",
        ids: &["microsoft/apt:1", "sandstep/apt:1"],
    },
    DefaultHandler {
        component: "script",
        ids: &["microsoft/script:1", "microsoft/swupdate:2"],
    },
    DefaultHandler {
        component: "firmware",
        ids: &["sandstep/firmware:1"],
    },
    DefaultHandler {
        component: "swupdate",
        ids: &["microsoft/swupdate:1"],
    },
    DefaultHandler {
        component: "component",
        ids: &["sandstep/component:1"],
    },
    DefaultHandler {
        component: "files",
        ids: &["sandstep/files:1"],
    },
];

#[cfg(test)]
mod tests {
    use super::DEFAULT_HANDLERS;

    /// The list, the handler crates and the built-in policy agree: a new default handler is a
    /// row here, its crate, and its policy.
    #[test]
    fn every_default_handler_has_its_crate_and_every_id_its_policy() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../handlers");
        let mut crates: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .filter(|e| e.path().join("Cargo.toml").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        crates.sort();
        let mut listed: Vec<String> = DEFAULT_HANDLERS
            .iter()
            .map(|d| d.component.to_owned())
            .collect();
        listed.sort();
        assert_eq!(listed, crates);
        let policies = crate::policy::default_policies();
        for id in DEFAULT_HANDLERS.iter().flat_map(|d| d.ids) {
            assert!(policies.contains_key(*id), "{id} has no built-in policy");
        }
    }
}
