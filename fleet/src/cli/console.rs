//! `sandstep-fleet console`: the web console over the replica's store, and its accounts
//! (`console add-user`).

use super::common::Common;
use super::rollout::open_store;
use anyhow::{bail, Context as _, Result};
use clap::Subcommand;
use sandstep_fleet::console::accounts::{Accounts, Role};
use sandstep_fleet::console::{self, ConsoleFiles};
use std::io::BufRead;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum ConsoleCommand {
    /// Add an account, or replace its role and password; the password is read from the first
    /// line of standard input (at least 8 characters).
    AddUser {
        name: String,
        /// `viewer` (sees) or `operator` (also starts, pauses, resumes, aborts rollouts).
        #[arg(long)]
        role: String,
        /// No password: the account logs in with a client certificate whose subject common
        /// name is NAME, issued by the CA in `[console] client-ca`.
        #[arg(long)]
        certificate: bool,
    },
}

pub async fn run(cmd: Option<ConsoleCommand>, common: &Common) -> Result<ExitCode> {
    let config = common.load_config()?;
    let data_dir = common.data_dir(&config);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("data dir {}", data_dir.display()))?;
    let files = ConsoleFiles::of(&config.console, &data_dir);
    match cmd {
        Some(ConsoleCommand::AddUser {
            name,
            role,
            certificate,
        }) => add_user(&files, &name, &role, certificate),
        None => {
            let store = open_store(common).await?;
            console::serve(&config.console, &files, store, |addr| {
                println!(
                    "console at https://{addr}/ (accounts: {})",
                    files.accounts.display()
                );
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn add_user(files: &ConsoleFiles, name: &str, role: &str, certificate: bool) -> Result<ExitCode> {
    let Some(role) = Role::parse(role) else {
        bail!("--role `{role}`: viewer or operator");
    };
    let mut password = String::new();
    if !certificate {
        std::io::stdin()
            .lock()
            .read_line(&mut password)
            .context("reading the password from standard input")?;
    }
    let password = password.trim_end_matches(['\n', '\r']);
    Accounts::add(
        &files.accounts,
        name,
        role,
        (!certificate).then_some(password),
    )?;
    println!(
        "{name} ({}) can log in{}; accounts in {}",
        role.name(),
        if certificate {
            " with a client certificate for its name (the console's client-ca)"
        } else {
            ""
        },
        files.accounts.display()
    );
    Ok(ExitCode::SUCCESS)
}
