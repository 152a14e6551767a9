use super::*;
use serde_json::json;
use std::path::Path;

fn props(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn config(text: &str) -> HealthConfig {
    toml::from_str(text).unwrap()
}

#[test]
fn each_bad_health_setting_is_named_by_its_field() {
    let cases = [
        ("programs = [[]]", "health.programs[0]: an empty program"),
        (
            "programs = [[\"true\"]]",
            "health.programs[0]: `true` must be an absolute path",
        ),
        (
            "units = [\"ok.service\", \"--all\"]",
            "health.units[1]: `--all` is not a systemd unit name",
        ),
        (
            "urls = [\"ftp://x/\"]",
            "health.urls[0]: `ftp://x/` is not http or https",
        ),
        (
            "urls = [\"not a url\"]",
            "health.urls[0]: `not a url` is not a URL",
        ),
        ("tries = 0", "health.tries: 0; between 1 and 100"),
        (
            "time-limit-secs = 0",
            "health.time-limit: 0 seconds; between 1 and 86400",
        ),
        (
            "systemctl = \"systemctl\"",
            "health.systemctl: `systemctl` must be an absolute path",
        ),
    ];
    for (text, want) in cases {
        let err = config(text).validate().unwrap_err().to_string();
        assert!(err.starts_with(want), "{text}: {err}");
    }
    assert!(
        config("programs = [[\"/bin/true\"]]\nurls = [\"http://10.0.0.1/h\"]")
            .validate()
            .is_ok()
    );
}

#[test]
fn a_deployment_may_add_only_allowed_programs_loopback_urls_and_unit_names() {
    let gateway = config(
        "[process]\nprograms = [{ path = \"/usr/bin/curl\", forms = [{ prefix = [\"-fsS\", \"http://127.0.0.1/\"] }] }]",
    );
    let ok = props(
        json!({"health": {"programs": [["/usr/bin/curl", "-fsS", "http://127.0.0.1/"]],
        "units": ["app.service"], "urls": ["http://[::1]:8080/h", "http://localhost/"], "tries": 5}}),
    );
    let h = deployment_health(&ok, &gateway, Path::new("/tmp"))
        .unwrap()
        .unwrap();
    assert_eq!(h.tries, Some(5));
    let refused = [
        (json!({"programs": [["/bin/sh", "-c", "reboot"]]}), "handlerProperties.health.programs[0]: not allowed by the gateway's [health.process]"),
        (json!({"urls": ["http://192.0.2.1/"]}), "handlerProperties.health.urls[0]: `http://192.0.2.1/`: a deployment's health URLs must be on this device"),
        (json!({"units": ["-H"]}), "handlerProperties.health.units[0]: `-H` is not a systemd unit name"),
        (json!({"tries": 1000}), "handlerProperties.health.tries: 1000; between 1 and 100"),
        (json!({"command": "x"}), "handlerProperties.health: unknown field `command`"),
    ];
    for (h, want) in refused {
        let err = deployment_health(&props(json!({ "health": h })), &gateway, Path::new("/tmp"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(want), "{err}");
    }
    assert_eq!(
        deployment_health(&props(json!({})), &gateway, Path::new("/tmp")),
        Ok(None)
    );
}

#[test]
fn the_plan_joins_the_gateways_and_the_deployments_checks_once_each() {
    let gateway = config(
        "programs = [[\"/bin/true\"]]\nunits = [\"a.service\"]\ntime-limit-secs = 30\ntries = 2",
    );
    let step = DeploymentHealth {
        units: vec!["a.service".into(), "b.service".into()],
        urls: vec!["http://127.0.0.1/".into()],
        time_limit_secs: Some(90),
        tries: Some(1),
        ..Default::default()
    };
    let p = plan(&gateway, &[step]);
    assert_eq!(
        p.checks,
        [
            Check::Program(vec!["/bin/true".into()]),
            Check::Unit("a.service".into()),
            Check::Unit("b.service".into()),
            Check::Url("http://127.0.0.1/".into()),
        ]
    );
    assert_eq!((p.time_limit.as_secs(), p.tries), (90, 2));
    // Each check's program is allowed exactly as written, and nothing else.
    let ctx = run::process_ctx(p.process, Path::new("/tmp"), None);
    let cmd = |argv: &[&str]| crate::bindings::process::Command {
        program: argv[0].into(),
        args: argv[1..].iter().map(|s| s.to_string()).collect(),
        cwd: None,
        timeout_ms: None,
    };
    ctx.check(&cmd(&["/bin/true"])).unwrap();
    assert!(ctx
        .check(&cmd(&[
            "/usr/bin/systemctl",
            "is-active",
            "--",
            "b.service"
        ]))
        .is_ok());
    assert!(ctx.check(&cmd(&["/bin/true", "x"])).is_err());
    assert!(ctx
        .check(&cmd(&["/usr/bin/systemctl", "stop", "--", "b.service"]))
        .is_err());
    assert!(plan(&HealthConfig::default(), &[]).is_empty());
}
