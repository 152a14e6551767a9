//! The default handlers sandstep ships: which component serves which ids.

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
        ids: &["microsoft/script:1"],
    },
    DefaultHandler {
        component: "firmware",
        ids: &["sandstep/firmware:1"],
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
