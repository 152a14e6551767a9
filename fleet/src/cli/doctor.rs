//! `sandstep-fleet doctor`: checks the fleet side's set-up (config, the replica's store, the
//! broker) and says what to fix; fails when a check fails.

use super::common::Common;
use anyhow::Result;
use sandstep_fleet::store::Store;
use sandstep_transport::mqtt::probe;
use std::process::ExitCode;
use std::time::Duration;

/// One line of the report.
enum Check {
    Ok(&'static str, String),
    Fail {
        what: &'static str,
        detail: String,
        fix: &'static str,
    },
}

/// `sandstep-fleet doctor`.
pub async fn run(broker_timeout: u64, common: &Common) -> Result<ExitCode> {
    let mut checks = Vec::new();
    match common.load_config() {
        Ok(config) => {
            let source = common
                .config_path()
                .map_or("none: the embedded defaults".into(), |p| {
                    format!("{} parses", p.display())
                });
            checks.push(Check::Ok("config", source));
            checks.push(store(common).await);
            let wait = Duration::from_secs(broker_timeout);
            let id = format!("sandstep-fleet-doctor-{:04x}", fastrand::u16(..));
            checks.push(match probe(&config.mqtt, &id, wait).await {
                Ok(()) => Check::Ok("broker", format!("{} reachable", config.mqtt.url)),
                Err(e) => Check::Fail {
                    what: "broker",
                    detail: format!("{}: {e}", config.mqtt.url),
                    fix: "start the broker, or correct [mqtt] url and credentials",
                },
            });
        }
        Err(e) => checks.push(Check::Fail {
            what: "config",
            detail: format!("{e:#}"),
            fix:
                "correct the file (every key is documented in /etc/sandstep/fleet.toml as shipped)",
        }),
    }
    let mut failed = 0;
    for c in &checks {
        match c {
            Check::Ok(what, detail) => println!("ok    {what}: {detail}"),
            Check::Fail { what, detail, fix } => {
                failed += 1;
                println!("FAIL  {what}: {detail}\n      fix: {fix}");
            }
        }
    }
    println!();
    if failed > 0 {
        println!("{failed} check(s) failed");
        return Ok(ExitCode::FAILURE);
    }
    println!("all checks passed");
    Ok(ExitCode::SUCCESS)
}

/// The replica's store opens (reachable, migrations applied), and what it holds.
async fn store(common: &Common) -> Check {
    let db = match common.database() {
        Ok(db) => db,
        Err(e) => {
            return Check::Fail {
                what: "replica store",
                detail: format!("{e:#}"),
                fix: "correct [shadow] database, or make the data dir writable",
            }
        }
    };
    let opened = async {
        let mut s = Store::open(&db).await?;
        Ok::<_, sandstep_fleet::store::StoreError>((
            s.schema_version().await?,
            s.devices().await?.len(),
            s.rollouts().await?.len(),
        ))
    };
    match tokio::time::timeout(Duration::from_secs(10), opened).await {
        Ok(Ok((v, devices, rollouts))) => Check::Ok(
            "replica store",
            format!("{} (schema {v}): {devices} device(s), {rollouts} rollout(s)", db.display()),
        ),
        Ok(Err(e)) => Check::Fail {
            what: "replica store",
            detail: e.to_string(),
            fix: "check [shadow] database: the server runs, the URL's user, host, port and database exist",
        },
        Err(_) => Check::Fail {
            what: "replica store",
            detail: format!("{}: no answer within 10s", db.display()),
            fix: "check that the database server is reachable from here",
        },
    }
}
