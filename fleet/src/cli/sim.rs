//! `sandstep-fleet fleet-sim`: N simulated agents against the broker and real replica
//! processes, a phased rollout to them, and how long until every result is stored (the fleet
//! figures of BENCHMARKS.md come from it, through scripts/bench.sh).

use super::common::Common;
use anyhow::Result;
use clap::Args;
use sandstep_fleet::fleet_sim::{self, SimOptions, SimReport};
use sandstep_fleet::rollout::{parse_percent, parse_phases};
use sandstep_fleet::store::Database;
use std::process::ExitCode;
use std::time::Duration;

/// `sandstep-fleet fleet-sim` options.
#[derive(Debug, Args)]
pub struct FleetSimArgs {
    /// Numbers of devices to simulate, one run each (e.g. 1000,10000).
    #[arg(long, value_delimiter = ',', default_value = "100")]
    devices: Vec<usize>,
    /// The replicas' store: a PostgreSQL URL, or (default) a fresh SQLite file per run.
    #[arg(long)]
    database: Option<String>,
    /// Replica processes.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Kill one replica once half the results are stored (needs --replicas 2 or more).
    #[arg(long)]
    kill_one: bool,
    /// The rollout's phases.
    #[arg(long, default_value = "1%,10%,50%,100%")]
    phases: String,
    /// The rollout's failure limit.
    #[arg(long, default_value = "5%")]
    max_failure_rate: String,
    /// Share of the simulated devices whose install fails.
    #[arg(long, default_value = "1%")]
    failing: String,
    /// Give up after this many seconds per run.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// `sandstep-fleet fleet-sim`.
pub async fn fleet_sim(args: FleetSimArgs, common: &Common) -> Result<ExitCode> {
    let config = common.load_config()?;
    let dir = tempfile::tempdir()?;
    println!("{}", SimReport::HEADER);
    for n in args.devices.iter().copied() {
        let opts = SimOptions {
            devices: n,
            database: match &args.database {
                Some(d) => Database::parse(d, config.shadow.tls())?,
                None => Database::Sqlite(dir.path().join(format!("fleet-{n}.sqlite"))),
            },
            replicas: args.replicas,
            replica_exe: std::env::current_exe()?,
            phases: parse_phases(&args.phases)?,
            max_failure_rate: Some(parse_percent("--max-failure-rate", &args.max_failure_rate)?),
            failing: parse_percent("--failing", &args.failing)?,
            kill_one: args.kill_one,
            timeout: Duration::from_secs(args.timeout),
            work_dir: dir.path().join(format!("run-{n}")),
        };
        let r = fleet_sim::run(&config.mqtt, &opts)
            .await
            .map_err(|e| anyhow::anyhow!("fleet-sim with {n} devices: {e}"))?;
        println!("{}", r.row());
    }
    Ok(ExitCode::SUCCESS)
}

/// `sandstep-fleet bench` options: group 7 of BENCHMARKS.md.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Fleet sizes to simulate.
    #[arg(long, value_delimiter = ',', default_value = "1000,2000,5000,10000")]
    fleet: Vec<usize>,
    /// A PostgreSQL for the runs with two replicas (scripts/bench.sh starts one).
    #[arg(long)]
    postgres: Option<String>,
    /// One small fleet only (a quick look).
    #[arg(long)]
    quick: bool,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// `sandstep-fleet bench`: at each size, one replica on SQLite, and with `--postgres` two
/// replicas on it (and at the largest size, two with one killed half-way); a 4-phase rollout
/// with a failure limit each time.
pub async fn bench(args: BenchArgs, common: &Common) -> Result<ExitCode> {
    let config = common.load_config()?;
    let dir = tempfile::tempdir()?;
    let sizes = if args.quick {
        vec![200]
    } else {
        args.fleet.clone()
    };
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let mut runs = Vec::new();
    for &n in &sizes {
        let sqlite = Database::Sqlite(dir.path().join(format!("f{n}.sqlite")));
        runs.push((n, sqlite, 1, false));
        if let Some(pg) = &args.postgres {
            let db = Database::parse(pg, Default::default())?;
            runs.push((n, db.clone(), 2, false));
            if n == largest {
                runs.push((n, db, 2, true));
            }
        }
    }
    println!(
        "7. fleet (rollout 1%,10%,50%,100%, 1% of devices fail, limit 5%):\n{}",
        SimReport::HEADER
    );
    let mut all = serde_json::Map::new();
    for (i, (n, database, replicas, kill_one)) in runs.into_iter().enumerate() {
        let opts = SimOptions {
            devices: n,
            database,
            replicas,
            replica_exe: std::env::current_exe()?,
            phases: vec![100, 1000, 5000, 10_000],
            max_failure_rate: Some(500),
            failing: 100,
            kill_one,
            timeout: Duration::from_secs(600),
            work_dir: dir.path().join(format!("run-{i}")),
        };
        let r = fleet_sim::run(&config.mqtt, &opts)
            .await
            .map_err(|e| anyhow::anyhow!("fleet-sim {n}: {e}"))?;
        println!("{}", r.row());
        let killed = if kill_one { "_killed" } else { "" };
        let key = format!("fleet_{n}_{}_{replicas}{killed}", r.backend);
        all.insert(key, serde_json::to_value(&r)?);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&all)?)?;
    }
    Ok(ExitCode::SUCCESS)
}
