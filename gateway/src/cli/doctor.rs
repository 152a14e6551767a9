//! `sandstep doctor`: checks a gateway's set-up and says what to fix.
//!
//! Each check prints one line, `ok`, `warn` or `FAIL`, and for anything not ok the command that
//! fixes it. The exit status is non-zero when a check failed (warnings do not fail).

mod hub;

use super::common::Common;
use anyhow::Result;
use sandstep::config::Config;
use sandstep::defaults::DEFAULT_HANDLERS;
use sandstep::loader::Loader;
use sandstep::registry::Registry;
use sandstep::trust::TrustStore;
use sandstep_transport::mqtt::{probe, Mqtt, MqttEvent, ProbeError};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Default)]
struct Report {
    failed: usize,
    warned: usize,
}

impl Report {
    fn ok(&self, what: &str, detail: impl std::fmt::Display) {
        println!("ok    {what}: {detail}");
    }
    fn warn(&mut self, what: &str, detail: impl std::fmt::Display, fix: &str) {
        self.warned += 1;
        println!("warn  {what}: {detail}\n      fix: {fix}");
    }
    fn fail(&mut self, what: &str, detail: impl std::fmt::Display, fix: &str) {
        self.failed += 1;
        println!("FAIL  {what}: {detail}\n      fix: {fix}");
    }
}

/// `sandstep doctor`.
pub async fn run(broker_timeout: u64, common: &Common) -> Result<ExitCode> {
    let mut r = Report::default();
    let source = common.config_source();
    let config = match common.load_config() {
        Ok(c) => {
            r.ok("config", &source);
            c
        }
        Err(e) => {
            r.fail(
                "config",
                format!("{e:#}"),
                "correct the file (every key is documented in /etc/sandstep/config.toml as shipped)",
            );
            println!("\n1 check failed; the others need a readable config");
            return Ok(ExitCode::FAILURE);
        }
    };

    let data = match common.data_dir(&config) {
        Ok(d) => d,
        Err(e) => {
            r.fail(
                "data dir",
                format!("{e:#}"),
                "create it as root (`install -d -m 0700 /var/lib/sandstep`) or set data-dir",
            );
            return finish(r);
        }
    };
    check_data_dir(&mut r, data.path());
    check_proxy(&mut r, &config, broker_timeout).await;
    check_windows(&mut r, &config);

    let trust = match TrustStore::load(&data, &config.trust) {
        Ok(t) => t,
        Err(e) => {
            r.fail(
                "trust",
                e,
                "remove or replace the unreadable key file it names",
            );
            return finish(r);
        }
    };
    check_keys(&mut r, &trust, &config);

    let sandbox = match super::common::sandbox(&data) {
        Ok(s) => s,
        Err(e) => {
            r.fail(
                "wasm engine",
                format!("{e:#}"),
                "check that the data dir's cache is writable and the CPU is supported",
            );
            return finish(r);
        }
    };
    // An empty module compiles and instantiates only when the engine (and its code memory) works.
    let compiled = sandbox
        .engine()
        .map_err(wasmtime::Error::new)
        .and_then(|engine| wasmtime::Module::new(engine, b"\0asm\x01\0\0\0"));
    match compiled {
        Ok(_) => r.ok("wasm engine", "compiles and runs code"),
        Err(e) => r.fail(
            "wasm engine",
            format!("{e:#}"),
            "the engine cannot map executable memory: remove MemoryDenyWriteExecute from the unit",
        ),
    }

    check_handlers(&mut r, &data, &config, trust, sandbox).await?;
    check_landlock(&mut r, &config);
    check_program_groups(&mut r);
    check_slots(&mut r, &config);
    check_agent(&mut r, &config, &data, broker_timeout).await;
    finish(r)
}

/// Whether each host-program run gets its own control group (every descendant found and
/// stopped; the pids limit), and where.
/// The download proxy: which one applies (the config's, or the environment's), and whether
/// the configured one accepts a connection.
/// Each maintenance window: its schedule, and whether it is open now (until when) or when it
/// opens (the windows themselves were checked when the config was read).
fn check_windows(r: &mut Report, config: &Config) {
    use sandstep::window::Gate;
    let Ok((download, install)) = config.windows.schedules() else {
        return;
    };
    let clock = sandstep::window::Clock::system();
    for (what, schedule) in [("download window", download), ("install window", install)] {
        if schedule.is_always() {
            r.ok(what, "always (no [windows] set)");
            continue;
        }
        let now = match clock.gate(&[&schedule]) {
            Gate::Open { closes: Some(c) } => format!("open now, closes {}", c.shown),
            Gate::Open { closes: None } => "open now".to_owned(),
            Gate::Closed { opens } => format!("closed now, opens {}", opens.shown),
            Gate::Never => "never open".to_owned(),
        };
        r.ok(what, format!("{schedule} ({}): {now}", clock.zone_name()));
    }
}

async fn check_proxy(r: &mut Report, config: &Config, timeout_secs: u64) {
    let Some(shown) = config.download.proxy_shown() else {
        let env = [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
        ]
        .into_iter()
        .find(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
        match env {
            Some(v) => r.ok("download proxy", format!("from the environment ({v})")),
            None => r.ok("download proxy", "none (direct)"),
        }
        return;
    };
    let Some(addr) = config
        .download
        .proxy
        .as_deref()
        .and_then(|p| reqwest::Url::parse(p).ok())
        .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
    else {
        return; // refused when the config was read
    };
    let wait = Duration::from_secs(timeout_secs.max(1));
    match tokio::time::timeout(wait, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => r.ok("download proxy", format!("{shown} accepts connections")),
        Ok(Err(e)) => r.fail(
            "download proxy",
            format!("{shown}: {e}"),
            "check [download] proxy, or that the proxy runs",
        ),
        Err(_) => r.fail(
            "download proxy",
            format!("{shown}: no answer in {wait:?}"),
            "check [download] proxy, or that the proxy runs",
        ),
    }
}

fn check_program_groups(r: &mut Report) {
    let b = sandstep::capability::cgroup::bases();
    match (&b.unified, b.unified_pids, &b.pids_v1) {
        (Some(u), true, _) => r.ok(
            "program groups",
            format!("{} (membership, kill and pids limit)", u.display()),
        ),
        (Some(u), false, Some(p)) => r.ok(
            "program groups",
            format!(
                "{} (membership and kill), pids limit in {}",
                u.display(),
                p.display()
            ),
        ),
        (Some(u), false, None) => r.warn(
            "program groups",
            format!(
                "{}: no pids controller, so no pids limit for host programs",
                u.display()
            ),
            "enable the pids controller for the agent's control group (under systemd: \
             Delegate=yes in the unit, as the package's unit has)",
        ),
        (None, _, _) => r.warn(
            "program groups",
            "no writable cgroup v2 hierarchy: a program that leaves its process group and clears \
             its environment escapes the agent's tracking, and there is no pids limit",
            "mount cgroup2 and run the agent with a delegated control group (Delegate=yes)",
        ),
    }
}

/// Whether the kernel can hold host programs to their grants (Landlock), and, where it cannot,
/// which handlers' programs will be refused and which run with the argument grammar alone.
fn check_landlock(r: &mut Report, config: &Config) {
    use sandstep::capability::landlock;
    use sandstep::capability::process::WithoutLandlock;
    let policy = config.policy();
    let with_programs = || {
        policy
            .handlers
            .iter()
            .filter_map(|(id, h)| h.process.as_ref().map(|p| (id, p)))
            .filter(|(_, p)| !p.programs.is_empty())
    };
    match landlock::abi() {
        Ok(abi) => r.ok(
            "host programs",
            format!("Landlock ABI {abi}: the kernel holds each program to its handler's grant"),
        ),
        Err(e) => {
            let (refused, grammar): (Vec<_>, Vec<_>) =
                with_programs().partition(|(_, p)| p.without_landlock == WithoutLandlock::Refuse);
            let ids = |v: Vec<(&String, _)>| {
                v.into_iter()
                    .map(|(id, _)| id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            r.fail(
                "host programs",
                format!(
                    "this kernel has no Landlock ({e}): programs of {} are refused; programs of {} \
                     run with the argument grammar alone",
                    ids(refused),
                    ids(grammar)
                ),
                "boot a kernel with CONFIG_SECURITY_LANDLOCK and `landlock` in its lsm= list, \
                 or set process.without-landlock = \"grammar-only\" for the handlers that may \
                 run so",
            );
        }
    }
}

/// For each handler with A/B slots: both slots exist (a block device, or a file-backed slot's
/// directory), the boot control answers, the booted slot is known and is one of the two, and
/// what the boot loader will boot next.
fn check_slots(r: &mut Report, config: &Config) {
    use sandstep::capability::slot::{label, SlotPolicy};
    let policy = config.policy();
    let slotted: Vec<(&String, &SlotPolicy)> = policy
        .handlers
        .iter()
        .filter_map(|(id, p)| p.slot.as_ref().map(|s| (id, s)))
        .collect();
    for (id, slots) in slotted {
        let what = format!("slots of {id}");
        for (name, path) in [("A", &slots.a), ("B", &slots.b)] {
            let usable = path.exists() || path.parent().is_some_and(|d| d.is_dir());
            if !usable {
                r.fail(
                    &what,
                    format!("slot {name} {} does not exist", path.display()),
                    "correct the slot paths in the handler's [slot] table",
                );
                return;
            }
        }
        match slots.state() {
            Ok(s) => r.ok(
                &what,
                format!(
                    "booted {}, next boot {}{}{}",
                    label(s.booted),
                    label(s.next_boot),
                    if s.committed {
                        ""
                    } else {
                        ", not committed (a new slot is on trial)"
                    },
                    if s.bad.is_empty() {
                        String::new()
                    } else {
                        format!(", bad: {:?}", s.bad)
                    }
                ),
            ),
            Err(e) => r.fail(
                &what,
                e,
                "make the boot loader say which slot booted (booted_slot in its environment, or \
                 sandstep.slot=a|b on the kernel command line), and check the boot control \
                 commands or file (README: sandstep/firmware:1)",
            ),
        }
    }
}

/// Handler keys (none: nothing loads) and manifest root keys (none: every signed deployment is
/// refused).
fn check_keys(r: &mut Report, trust: &TrustStore, config: &Config) {
    if trust.handler_keys.is_empty() {
        r.fail(
            "handler keys",
            "none trusted: no handler can load",
            "sandstep trust add handler VENDOR.pub (or list a directory in [trust] handler-key-dirs)",
        );
    } else {
        let names: Vec<&str> = trust.handler_keys.iter().map(|k| k.name.as_str()).collect();
        r.ok("handler keys", names.join(", "));
    }
    if trust.roots.is_empty() {
        if config.trust.require_manifest_signature {
            r.warn(
                "manifest root keys",
                "none trusted: every deployment will be refused (signatures are required)",
                "sandstep trust add root ROOT.pub",
            );
        } else {
            r.warn(
                "manifest root keys",
                "none trusted, and unsigned manifests are allowed",
                "sandstep trust add root ROOT.pub, then set require-manifest-signature = true",
            );
        }
    } else {
        r.ok(
            "manifest root keys",
            format!("{} trusted", trust.roots.len()),
        );
    }
    match &trust.fetched {
        Some(Err(why)) => r.fail(
            "root key package from deployments",
            format!("{why}: every manifest is refused"),
            "deploy with a rootKeyPackageUrl naming a package the trusted roots signed",
        ),
        Some(Ok(a)) => r.ok(
            "root key package from deployments",
            format!("published {}", a.package.published.unwrap_or(0)),
        ),
        None => {}
    }
}

/// Every registered handler loads (digest, signature against today's keys, policy), and the
/// default handlers are registered.
async fn check_handlers(
    r: &mut Report,
    data: &sandstep::datadir::DataDir,
    config: &Config,
    trust: TrustStore,
    sandbox: std::sync::Arc<sandstep::sandbox::Sandbox>,
) -> Result<()> {
    let registry = Registry::open(data.handlers()?)?;
    let entries = registry.list()?;
    let loader = Loader::new(Registry::open(data.handlers()?)?, trust, sandbox);
    for e in &entries {
        match loader.load(&e.id, &config.policy()).await {
            Ok(_) => r.ok(
                &format!("handler {}", e.id),
                format!("verified (signed by {})", e.signers.join(", ")),
            ),
            Err(err) => r.fail(
                &format!("handler {}", e.id),
                err,
                "reinstall it from a correctly signed component, or trust its signer",
            ),
        }
    }
    let missing: Vec<&str> = DEFAULT_HANDLERS
        .iter()
        .flat_map(|d| d.ids.iter().copied())
        .filter(|id| !entries.iter().any(|e| e.id == *id))
        .collect();
    if !missing.is_empty() {
        r.warn(
            "default handlers",
            format!("not registered: {}", missing.join(", ")),
            "sandstep handler install-defaults /usr/lib/sandstep/handlers",
        );
    }

    Ok(())
}

fn check_data_dir(r: &mut Report, path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let probe = path.join(format!(".doctor-{}", std::process::id()));
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            let mode = std::fs::metadata(path)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            if mode & 0o022 != 0 {
                r.warn(
                    "data dir",
                    format!("{} is writable by others (mode {mode:o})", path.display()),
                    &format!("chmod 0700 {}", path.display()),
                );
            } else {
                r.ok("data dir", format!("{} writable", path.display()));
            }
        }
        Err(e) => r.fail(
            "data dir",
            format!("{}: {e}", path.display()),
            "run as the user that owns it (root for /var/lib/sandstep), or fix its owner",
        ),
    }
}

async fn check_agent(
    r: &mut Report,
    config: &Config,
    data: &sandstep::datadir::DataDir,
    timeout: u64,
) {
    use sandstep::agent::SourceKind;
    if config.agent.source == SourceKind::Iothub {
        return hub::check(r, config, data, timeout).await;
    }
    if config.agent.source == SourceKind::Hawkbit {
        return check_hawkbit(r, config, timeout).await;
    }
    let device = match config.agent.resolved_device_id() {
        Ok(d) => {
            r.ok("device id", &d);
            d
        }
        Err(e) => {
            r.fail("device id", e, "set [agent] device-id");
            return;
        }
    };
    if config.device.properties.is_empty() {
        r.warn(
            "device properties",
            "none: updates for any model are accepted",
            "set [device] properties, e.g. { manufacturer = \"...\", model = \"...\" }",
        );
    } else {
        r.ok(
            "device properties",
            serde_json::to_string(&config.device.properties).expect("a map serializes"),
        );
    }
    if config.agent.source == SourceKind::HttpPoll {
        r.ok("deployments", "HTTP polling (no broker)");
        return;
    }
    let url = &config.mqtt.url;
    let wait = Duration::from_secs(timeout);
    match probe(&config.mqtt, &format!("{device}-doctor"), wait).await {
        Ok(()) => r.ok("broker", format!("{url} reachable")),
        Err(e @ ProbeError::Silent(_)) => {
            return r.fail(
                "broker",
                format!("{url}: {e}"),
                "start the broker, or correct [mqtt] url (a firewall may drop the connection)",
            )
        }
        Err(e) => {
            return r.fail(
                "broker",
                format!("{url}: {e}"),
                "start the broker, or correct [mqtt] url and credentials",
            )
        }
    }
    check_who_may_publish(r, config, &device, wait).await;
}

/// With `source = "hawkbit"`: the server answers the controller resource with the token.
async fn check_hawkbit(r: &mut Report, config: &Config, timeout: u64) {
    use sandstep::agent::source::hawkbit::HawkbitSource;
    let Some(hb) = &config.hawkbit else {
        return r.fail("hawkbit", "no [hawkbit] table", "add one (README, hawkBit)");
    };
    let device = config.agent.resolved_device_id().unwrap_or_default();
    let scratch = match tempfile::tempdir().and_then(|t| {
        Ok((
            cap_std::fs::Dir::open_ambient_dir(t.path(), cap_std::ambient_authority())?,
            t,
        ))
    }) {
        Ok(s) => s,
        Err(e) => return r.fail("hawkbit", e, "check the temporary directory"),
    };
    let props = config.device.properties.clone();
    let source = match HawkbitSource::new(hb, &device, props, scratch.0) {
        Ok(s) => s,
        Err(e) => return r.fail("hawkbit", e, "correct the [hawkbit] setting it names"),
    };
    let wait = Duration::from_secs(timeout.max(1));
    match tokio::time::timeout(wait, source.probe()).await {
        Ok(Ok(url)) => r.ok("hawkbit", format!("{url} answers; the token is accepted")),
        Ok(Err(e)) => r.fail(
            "hawkbit",
            e,
            "check base-url, tenant, controller-id and the token (hawkBit's target security token)",
        ),
        Err(_) => r.fail(
            "hawkbit",
            format!("no answer within {timeout} s"),
            "check the network path to the server",
        ),
    }
}

/// Publishes `{}` to `topic` over MQTT 5 (whose PUBACK says whether the broker refused it);
/// Some(reason) when refused.
async fn try_publish(
    mqtt: &sandstep_transport::mqtt::MqttConfig,
    client_id: &str,
    topic: &str,
) -> Result<Option<String>> {
    let mut v5 = mqtt.clone();
    v5.protocol = sandstep_transport::mqtt::Protocol::V5;
    let mut conn = Mqtt::connect(&v5, client_id)?;
    loop {
        match conn.recv().await {
            Some(MqttEvent::Connected) => conn.publish(topic, b"{}".to_vec(), false).await?,
            Some(MqttEvent::PubAck { refused }) => return Ok(refused),
            Some(MqttEvent::Disconnected(e)) => {
                return Err(anyhow::anyhow!("no MQTT 5 connection: {e}"))
            }
            None => return Err(anyhow::anyhow!("the connection ended")),
            Some(_) => {}
        }
    }
}

/// Whoever may publish a gateway's delta decides what it installs (within what signatures and
/// `[device] properties` accept): warns when clients without credentials are let in, or when
/// this device's own account may publish another device's delta (no ACL).
async fn check_who_may_publish(r: &mut Report, config: &Config, device: &str, wait: Duration) {
    const FIX: &str = "in mosquitto.conf: allow_anonymous false, a password_file, and an acl_file \
        like /usr/share/doc/sandstep/examples/mosquitto.acl (only the replica and operators \
        write desired state)";
    let url = &config.mqtt.url;
    let mut anonymous = config.mqtt.clone();
    anonymous.username = None;
    anonymous.password = None;
    anonymous.client_cert = None;
    anonymous.client_key = None;
    let anon_id = format!("{device}-doctor-anon");
    match probe(&anonymous, &anon_id, wait).await {
        Ok(()) => r.warn(
            "anonymous clients",
            format!("{url} lets clients in without credentials: anyone who reaches it may publish desired state unless its ACL forbids it"),
            FIX,
        ),
        _ => r.ok("anonymous clients", "refused"),
    }
    // A device id no gateway has: the probe's `{}` reaches no agent.
    let probe = "sandstep-doctor-probe";
    let topics = config.agent.topics.topics();
    let topic = sandstep_model::shadow::Topics::for_device(&topics.delta, probe);
    let acl_id = format!("{device}-doctor-acl");
    match tokio::time::timeout(wait, try_publish(&config.mqtt, &acl_id, &topic)).await {
        Ok(Ok(Some(why))) => r.ok(
            "delta topics",
            format!("this device's account may not publish another device's delta ({why})"),
        ),
        Ok(Ok(None)) => r.warn(
            "delta topics",
            format!("this device's account may publish another device's delta ({topic}): without an ACL any account can tell any gateway what to install"),
            FIX,
        ),
        Ok(Err(e)) => r.warn(
            "delta topics",
            format!("cannot tell who may publish deltas: {e:#}"),
            "use a broker that speaks MQTT 5 (mosquitto 2) so refusals can be seen, and check its ACL by hand",
        ),
        Err(_) => r.warn(
            "delta topics",
            format!("cannot tell who may publish deltas: no answer within {} s", wait.as_secs()),
            "check the broker's ACL by hand",
        ),
    }
}

fn finish(r: Report) -> Result<ExitCode> {
    println!();
    if r.failed > 0 {
        println!("{} check(s) failed, {} warning(s)", r.failed, r.warned);
        Ok(ExitCode::FAILURE)
    } else {
        println!("all checks passed ({} warning(s))", r.warned);
        Ok(ExitCode::SUCCESS)
    }
}
