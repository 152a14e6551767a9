//! The guest bindings of the `all` world, generated once (the macro and the capability wrappers
//! use them); not part of the public API. A module of its own, below both `__private` (the
//! export glue) and the capability wrappers (`log`, `process`, `slot`), so neither imports the
//! other to reach them.

wit_bindgen::generate!({
    path: "../wit",
    world: "sandstep:handler/all",
    pub_export_macro: true,
    export_macro_name: "__export_all_world",
    default_bindings_module: "sandstep_sdk::__bindings",
    runtime_path: "sandstep_sdk::__bindings::rt",
});

/// The bindings' runtime support, where the generated code looks for it.
pub use wit_bindgen::rt;
