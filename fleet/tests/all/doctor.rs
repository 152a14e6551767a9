//! `sandstep-fleet doctor` and its config.

use crate::fleet;
use sandstep_testkit::Postgres;

/// `sandstep-fleet doctor` where a replica runs: the configured store opens (schema, what it holds),
/// or the check fails naming the database.
#[test]
fn doctor_checks_the_replicas_store() {
    let Some(pg) = Postgres::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let doctor = |url: &str| {
        let config = dir.path().join("replica.toml");
        std::fs::write(
            &config,
            format!("[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\n[shadow]\ndatabase = \"{url}\"\n"),
        )
        .unwrap();
        let out = fleet()
            .args(["doctor", "--broker-timeout", "1", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = doctor(&pg.url);
    assert!(
        out.lines().any(|l| l.starts_with("ok    replica store:")
            && l.contains("(schema 2): 0 device(s), 0 rollout(s)")),
        "{out}"
    );
    let out = doctor("postgres://sandstep@127.0.0.1:1/none");
    assert!(
        out.lines().any(|l| l.starts_with(
            "FAIL  replica store: shadow database postgres://sandstep@127.0.0.1:1/none"
        )),
        "{out}"
    );
}
