//! `sandstep firmware index IMAGE`: the block index that lets a device fetch only the blocks of
//! an image it does not have (see `sandstep::blockindex`).

use anyhow::{Context as _, Result};
use clap::Subcommand;
use sandstep::blockindex::{BlockIndex, DEFAULT_BLOCK_SIZE};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum FirmwareCommand {
    /// Write the block index of IMAGE (default IMAGE.blockindex). Ship it as a file of the same
    /// step, named `<image file name>.blockindex`, so the manifest's signature covers it.
    Index {
        image: PathBuf,
        /// Block size in bytes (a power of two from 4096 to 64 MiB).
        #[arg(long, default_value_t = DEFAULT_BLOCK_SIZE)]
        block_size: u64,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(cmd: FirmwareCommand) -> Result<ExitCode> {
    let FirmwareCommand::Index {
        image,
        block_size,
        out,
    } = cmd;
    if !block_size.is_power_of_two() || !(4096..=64 << 20).contains(&block_size) {
        anyhow::bail!("--block-size {block_size}: give a power of two from 4096 to 67108864");
    }
    let mut f =
        std::fs::File::open(&image).with_context(|| format!("cannot read {}", image.display()))?;
    let index = BlockIndex::of(
        &mut std::io::BufReader::with_capacity(1 << 20, &mut f),
        block_size,
    )
    .with_context(|| format!("cannot read {}", image.display()))?;
    let out = out.unwrap_or_else(|| {
        let mut name = image.clone().into_os_string();
        name.push(sandstep::blockindex::FILE_SUFFIX);
        PathBuf::from(name)
    });
    std::fs::write(&out, index.to_bytes())
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "{}: {} blocks of {} bytes for {} bytes (sha256 {})",
        out.display(),
        index.blocks.len(),
        block_size,
        index.image_size,
        hex::encode(index.image_sha256)
    );
    Ok(ExitCode::SUCCESS)
}
