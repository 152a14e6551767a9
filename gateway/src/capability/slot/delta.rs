//! Writing a streamed image with its block index: blocks the inactive slot already holds stay,
//! blocks the running slot has are copied, the rest are fetched with coalesced HTTP Range
//! requests; then the whole slot is hashed against the signed manifest's sha256. What to do with
//! each block is decided in [`crate::blockindex`]; this is the I/O.

use super::{io, name, SlotCtx, WitError, Written};
use crate::bindings::slot::SlotName;
use crate::blockindex::{coalesce, decide, Block, BlockIndex, LocalBlocks, MAX_GAP_BLOCKS};
use crate::digest::Sha256;
use crate::download::{OwnedSource, Wanted};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

/// Reads block `i` of `f` (`block_size` bytes, fewer for the image's last) into `buf`; its digest,
/// or `None` when `f` does not hold it whole.
fn block_digest(f: &std::fs::File, index: &BlockIndex, i: u64, buf: &mut [u8]) -> Option<[u8; 32]> {
    let (start, end) = index.range(i);
    let buf = &mut buf[..(end - start) as usize];
    f.read_exact_at(buf, start).ok()?;
    Some(Sha256::digest(buf))
}

impl SlotCtx {
    /// Writes `wanted` into `target` using `index`; the bytes fetched over the network. Memory:
    /// the index and the running slot's block map, about 60 bytes per block.
    pub(super) fn delta_image(
        &self,
        target: SlotName,
        booted: SlotName,
        wanted: &Wanted,
        source: &OwnedSource,
        index: &BlockIndex,
    ) -> Result<Written, WitError> {
        if index.image_size != wanted.size || index.image_sha256 != wanted.sha256 {
            return Err(WitError::InvalidImage(format!(
                "the block index of `{}` describes another image",
                wanted.file_name
            )));
        }
        let (dst, is_block) = self.open_slot(target, wanted.size)?;
        let running = std::fs::File::open(self.slot_path(booted)?).map_err(io("running slot"))?;
        let blocks = index.blocks.len() as u64;
        let mut buf = vec![0u8; index.block_size as usize];
        let mut local = LocalBlocks::with_capacity(index.blocks.len());
        for i in 0..blocks {
            if let Some(d) = block_digest(&running, index, i, &mut buf) {
                local.add(i as u32, &d);
            }
        }
        let mut fetch = Vec::new();
        for i in 0..blocks {
            let have = block_digest(&dst, index, i, &mut buf);
            match decide(index, i, have.as_ref(), &local) {
                Block::Keep => {}
                Block::Copy(at) => {
                    let (start, end) = index.range(i);
                    let buf = &mut buf[..(end - start) as usize];
                    running.read_exact_at(buf, at).map_err(io("running slot"))?;
                    dst.write_all_at(buf, start).map_err(io("slot"))?;
                }
                Block::Fetch => fetch.push(i),
            }
        }
        let fetched = self.fetch_runs(&dst, target, wanted, source, index, &fetch)?;
        self.finish_delta(dst, is_block, target, wanted, fetched)
    }

    /// Fetches blocks `fetch` (ascending block numbers) in coalesced ranges; the bytes fetched.
    /// A server that ignores Range gets the whole image streamed instead, said once.
    fn fetch_runs(
        &self,
        dst: &std::fs::File,
        target: SlotName,
        wanted: &Wanted,
        source: &OwnedSource,
        index: &BlockIndex,
        fetch: &[u64],
    ) -> Result<u64, WitError> {
        let runs = coalesce(fetch, MAX_GAP_BLOCKS);
        let total: u64 = runs
            .iter()
            .map(|(a, b)| index.range(*b).1 - index.range(*a).0)
            .sum();
        let label = name(target).to_uppercase();
        let streams = self.streams.as_ref().expect("a streamed file");
        let mut fetched = 0u64;
        let mut shown = None;
        for (first, last) in runs {
            let range = (index.range(first).0, index.range(last).1);
            let mut sink = |at: u64, bytes: &[u8]| dst.write_all_at(bytes, at);
            let ranged = match source {
                OwnedSource::Url(url) if url.starts_with("http") => {
                    tokio::runtime::Handle::current().block_on(
                        streams
                            .downloader
                            .fetch_range(wanted, url, range, &mut sink),
                    )
                }
                _ => local_range(source, wanted, range, &mut sink).map(|()| true),
            }
            .map_err(|e| WitError::Io(format!("{e}; slot {label} stays marked bad")))?;
            if !ranged {
                tracing::warn!(file = %wanted.file_name, "the server ignores Range requests: streaming the whole image instead of the changed blocks");
                return self.stream_image(target, wanted, source).map(|w| w.fetched);
            }
            fetched += range.1 - range.0;
            // One report per percent, not one per request (thousands for scattered changes).
            let percent = (fetched * 100 / total.max(1)) as u8;
            if shown != Some(percent) {
                shown = Some(percent);
                self.progress(
                    percent,
                    format!(
                        "applying: fetched {fetched} of {total} changed bytes ({} in the image) into slot {label}",
                        wanted.size
                    ),
                );
            }
        }
        Ok(fetched)
    }

    /// Syncs the slot and checks the whole image against the signed manifest.
    fn finish_delta(
        &self,
        dst: std::fs::File,
        is_block: bool,
        target: SlotName,
        wanted: &Wanted,
        fetched: u64,
    ) -> Result<Written, WitError> {
        if !is_block {
            dst.set_len(wanted.size).map_err(io("slot"))?;
        }
        dst.sync_all().map_err(io("slot"))?;
        let mut f = dst;
        f.seek(SeekFrom::Start(0)).map_err(io("slot"))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut left = wanted.size;
        while left > 0 {
            let n = f
                .read(&mut buf[..left.min(1 << 20) as usize])
                .map_err(io("slot"))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            left -= n as u64;
        }
        let actual = hex::encode(h.finalize());
        let label = name(target).to_uppercase();
        if actual != wanted.key() {
            return Err(WitError::InvalidImage(format!(
                "slot {label} was written with sha256 {actual}, but the signed manifest says {}; slot {label} stays marked bad",
                wanted.key()
            )));
        }
        tracing::info!(file = %wanted.file_name, slot = %label, fetched, size = wanted.size, "image written from its block index");
        Ok(Written {
            bytes: wanted.size,
            sha256: actual,
            fetched,
        })
    }
}

/// Bytes `start..end` of a local source into `sink`.
fn local_range(
    source: &OwnedSource,
    wanted: &Wanted,
    (start, end): (u64, u64),
    sink: &mut dyn FnMut(u64, &[u8]) -> std::io::Result<()>,
) -> Result<(), crate::download::DownloadError> {
    let err = |e: std::io::Error| crate::download::DownloadError::Source {
        file: wanted.file_name.clone(),
        reason: e.to_string(),
    };
    let mut f = crate::download::open_local(source.as_source(), &wanted.file_name).map_err(err)?;
    f.seek(SeekFrom::Start(start)).map_err(err)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = start;
    while at < end {
        let want = (end - at).min(buf.len() as u64) as usize;
        f.read_exact(&mut buf[..want]).map_err(err)?;
        sink(at, &buf[..want]).map_err(err)?;
        at += want as u64;
    }
    Ok(())
}
