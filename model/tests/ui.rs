//! Snapshot tests of manifest parsing: every `tests/ui/manifests/<case>.json` has the expected
//! outcome in `<case>.out` (a summary of the parsed manifest, or the error text). Set
//! `UPDATE_SNAPSHOTS=1` to write missing or changed `.out` files, then review the diff.

use sandstep_model::manifest::{Manifest, Step};
use std::fmt::Write;
use std::path::Path;

fn summarize(m: &Manifest) -> String {
    let mut s = String::new();
    writeln!(s, "ok").unwrap();
    writeln!(s, "version: {:?}", m.version).unwrap();
    writeln!(s, "updateId: {}", m.update_id).unwrap();
    writeln!(s, "compatibility: {:?}", m.compatibility).unwrap();
    for (i, step) in m.steps.iter().enumerate() {
        match step {
            Step::Inline(x) => writeln!(
                s,
                "step {i}: inline {} files={:?} properties={}",
                x.handler,
                x.files,
                serde_json::Value::Object(x.handler_properties.clone())
            )
            .unwrap(),
            Step::Reference(r) => {
                writeln!(s, "step {i}: reference -> {}", r.detached_manifest_file_id).unwrap()
            }
        }
    }
    for (id, f) in &m.files {
        writeln!(
            s,
            "file {id}: {} {} bytes sha256={}",
            f.file_name,
            f.size_in_bytes,
            f.sha256_hex()
        )
        .unwrap();
    }
    for w in &m.warnings {
        writeln!(s, "warning: {w}").unwrap();
    }
    s
}

#[test]
fn manifests_parse_or_fail_as_recorded() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/manifests");
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 30, "the snapshot folder has its cases");
    let mut failures = Vec::new();
    for case in &cases {
        let text = std::fs::read_to_string(case).unwrap();
        let actual = match Manifest::parse(&text) {
            Ok(m) => summarize(&m),
            Err(e) => format!("error\n{e}\n"),
        };
        let out = case.with_extension("out");
        let expected = std::fs::read_to_string(&out).ok();
        if expected.as_deref() != Some(actual.as_str()) {
            if update {
                std::fs::write(&out, &actual).unwrap();
            } else {
                failures.push(format!(
                    "{}:\n--- expected\n{}--- actual\n{actual}",
                    case.display(),
                    expected.unwrap_or_else(|| "(no .out file)\n".into())
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
