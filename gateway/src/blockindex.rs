//! Block indexes of firmware images, for updates that fetch only what changed.
//!
//! An index is a file of the update (so the manifest's signature covers it), written by
//! `sandstep firmware index IMAGE`: a short text header, then the sha256 of each fixed-size
//! block of the image, 32 bytes each:
//!
//! ```text
//! sandstep-block-index 1
//! block-size 8192
//! image-size 104857600
//! image-sha256 <hex>
//!
//! <32-byte digest of block 0><32-byte digest of block 1>...
//! ```
//!
//! With the index, the slot capability keeps blocks the inactive slot already holds (an earlier
//! attempt), copies blocks the running slot has, and fetches the rest with HTTP Range requests;
//! the whole image is still verified against the manifest's sha256 at the end. The decisions
//! here are pure; the slot capability does the I/O.

use crate::digest::Sha256;
use std::collections::HashMap;
use std::io::Read;

const MAGIC: &str = "sandstep-block-index 1";

/// The default block size, the tuning result in BENCHMARKS.md (2026-11-30, side by side): with
/// 5% of an image changed in scattered runs, 8 KiB blocks fetch ~1.2x the changed bytes (16 KiB:
/// ~1.5x, 64 KiB: ~3.8x) and still install faster than 4 KiB ones; a 1 GiB image's index is 4 MiB.
pub const DEFAULT_BLOCK_SIZE: u64 = 8 << 10;

/// An image's index travels as the step file `<image file name>` + this suffix.
pub const FILE_SUFFIX: &str = ".blockindex";

/// Most blocks of unchanged data fetched to join two runs into one Range request.
pub const MAX_GAP_BLOCKS: u64 = 4;

/// An image's block index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockIndex {
    pub block_size: u64,
    pub image_size: u64,
    pub image_sha256: [u8; 32],
    pub blocks: Vec<[u8; 32]>,
}

/// Why bytes are not a block index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("not a sandstep block index (the first line must be `{MAGIC}`)")]
    NotAnIndex,
    #[error("header line `{0}` is not understood")]
    BadHeader(String),
    #[error("the header lacks `{0}`")]
    Missing(&'static str),
    #[error("block size {0} must be a power of two from 4 KiB to 64 MiB")]
    BadBlockSize(u64),
    #[error("{have} bytes of digests; {want} blocks need {}", want * 32)]
    WrongLength { have: usize, want: u64 },
}

impl BlockIndex {
    /// The index of everything `image` yields.
    pub fn of(image: &mut impl Read, block_size: u64) -> std::io::Result<BlockIndex> {
        let mut whole = Sha256::new();
        let mut blocks = Vec::new();
        let mut buf = vec![0u8; block_size as usize];
        let mut size = 0u64;
        loop {
            let mut n = 0;
            while n < buf.len() {
                match image.read(&mut buf[n..])? {
                    0 => break,
                    k => n += k,
                }
            }
            if n == 0 {
                break;
            }
            whole.update(&buf[..n]);
            blocks.push(Sha256::digest(&buf[..n]));
            size += n as u64;
            if n < buf.len() {
                break;
            }
        }
        Ok(BlockIndex {
            block_size,
            image_size: size,
            image_sha256: whole.finalize(),
            blocks,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "{MAGIC}\nblock-size {}\nimage-size {}\nimage-sha256 {}\n\n",
            self.block_size,
            self.image_size,
            hex::encode(self.image_sha256)
        )
        .into_bytes();
        for b in &self.blocks {
            out.extend_from_slice(b);
        }
        out
    }

    pub fn parse(bytes: &[u8]) -> Result<BlockIndex, IndexError> {
        let end = bytes
            .windows(2)
            .position(|w| w == b"\n\n")
            .ok_or(IndexError::NotAnIndex)?;
        let header = std::str::from_utf8(&bytes[..end]).map_err(|_| IndexError::NotAnIndex)?;
        let mut lines = header.lines();
        if lines.next() != Some(MAGIC) {
            return Err(IndexError::NotAnIndex);
        }
        let (mut block_size, mut image_size, mut sha) = (None, None, None);
        for line in lines {
            let bad = || IndexError::BadHeader(line.to_owned());
            let (k, v) = line.split_once(' ').ok_or_else(bad)?;
            match k {
                "block-size" => block_size = Some(v.parse::<u64>().map_err(|_| bad())?),
                "image-size" => image_size = Some(v.parse::<u64>().map_err(|_| bad())?),
                "image-sha256" => {
                    let d = hex::decode(v).map_err(|_| bad())?;
                    sha = Some(<[u8; 32]>::try_from(d).map_err(|_| bad())?);
                }
                _ => return Err(bad()),
            }
        }
        let block_size = block_size.ok_or(IndexError::Missing("block-size"))?;
        let image_size = image_size.ok_or(IndexError::Missing("image-size"))?;
        let image_sha256 = sha.ok_or(IndexError::Missing("image-sha256"))?;
        if !block_size.is_power_of_two() || !(4096..=64 << 20).contains(&block_size) {
            return Err(IndexError::BadBlockSize(block_size));
        }
        let want = image_size.div_ceil(block_size);
        let digests = &bytes[end + 2..];
        if digests.len() as u64 != want * 32 {
            return Err(IndexError::WrongLength {
                have: digests.len(),
                want,
            });
        }
        Ok(BlockIndex {
            block_size,
            image_size,
            image_sha256,
            blocks: digests
                .chunks_exact(32)
                .map(|c| c.try_into().expect("32 bytes"))
                .collect(),
        })
    }

    /// The byte range of block `i`.
    pub fn range(&self, i: u64) -> (u64, u64) {
        let start = i * self.block_size;
        (start, (start + self.block_size).min(self.image_size))
    }
}

/// Where one block of the new image comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// The inactive slot already holds it (an earlier attempt).
    Keep,
    /// The running slot holds it at this offset.
    Copy(u64),
    /// Over the network.
    Fetch,
}

/// The first 16 bytes of a block digest: what the running slot's blocks are looked up by.
/// Matching on 128 bits costs half the memory of whole digests; a false match (odds about
/// 2^-90 for a 4 GiB image at 8 KiB blocks) would only fail the whole-image check at the end.
fn key(digest: &[u8; 32]) -> u128 {
    let mut k = [0u8; 16];
    k.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(k)
}

/// The running slot's blocks by digest: the first block number holding each. About 30 bytes per
/// block, the index's 32 beside it: what a delta install holds in memory.
#[derive(Debug, Default)]
pub struct LocalBlocks(HashMap<u128, u32>);

impl LocalBlocks {
    /// Room for `blocks` blocks.
    pub fn with_capacity(blocks: usize) -> Self {
        LocalBlocks(HashMap::with_capacity(blocks))
    }

    /// Records that block `block` of the running slot has `digest` (the first such block wins).
    pub fn add(&mut self, block: u32, digest: &[u8; 32]) {
        self.0.entry(key(digest)).or_insert(block);
    }

    /// A block of the running slot with `digest`.
    pub fn find(&self, digest: &[u8; 32]) -> Option<u32> {
        self.0.get(&key(digest)).copied()
    }
}

/// Where block `i` of `index` comes from: kept when the inactive slot's block there already has
/// its digest (`target`, `None` past what that slot holds), copied from the running slot when it
/// has it, fetched otherwise.
pub fn decide(index: &BlockIndex, i: u64, target: Option<&[u8; 32]>, local: &LocalBlocks) -> Block {
    let want = &index.blocks[i as usize];
    if target == Some(want) {
        Block::Keep
    } else if let Some(at) = local.find(want) {
        Block::Copy(u64::from(at) * index.block_size)
    } else {
        Block::Fetch
    }
}

/// The blocks to fetch (block numbers, ascending) as runs `(first, last)` (inclusive), runs
/// closer than `max_gap` blocks joined into one request (the blocks between are fetched again,
/// which costs less than a request per run).
pub fn coalesce(fetch: &[u64], max_gap: u64) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &i in fetch {
        match runs.last_mut() {
            Some((_, last)) if i - *last <= max_gap + 1 => *last = i,
            _ => runs.push((i, i)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    #[test]
    fn an_index_round_trips_and_its_header_is_checked() {
        let img = image(10_000, 1);
        let idx = BlockIndex::of(&mut &img[..], 4096).unwrap();
        assert_eq!(idx.blocks.len(), 3);
        assert_eq!(idx.range(2), (8192, 10_000));
        assert_eq!(BlockIndex::parse(&idx.to_bytes()).unwrap(), idx);
        let mut short = idx.to_bytes();
        short.pop();
        assert!(matches!(
            BlockIndex::parse(&short),
            Err(IndexError::WrongLength { want: 3, .. })
        ));
        let odd = String::from_utf8_lossy(&idx.to_bytes()[..60]).replace("4096", "5000");
        assert!(BlockIndex::parse(odd.as_bytes()).is_err());
        assert_eq!(BlockIndex::parse(b"hello\n\n"), Err(IndexError::NotAnIndex));
    }

    #[test]
    fn blocks_already_in_place_are_kept_known_ones_copied_the_rest_fetched() {
        let idx = BlockIndex {
            block_size: 4096,
            image_size: 4 * 4096,
            image_sha256: [0; 32],
            blocks: vec![[1; 32], [2; 32], [3; 32], [4; 32]],
        };
        let target = [Some([1; 32]), Some([9; 32]), None, None];
        let mut local = LocalBlocks::with_capacity(4);
        for (block, digest) in [(2, [2; 32]), (0, [4; 32]), (3, [4; 32])] {
            local.add(block, &digest);
        }
        let plan: Vec<Block> = (0..4)
            .map(|i| decide(&idx, i, target[i as usize].as_ref(), &local))
            .collect();
        // Block 3 is copied from the first running block that has it.
        assert_eq!(
            plan,
            [Block::Keep, Block::Copy(8192), Block::Fetch, Block::Copy(0)]
        );
    }

    #[test]
    fn nearby_runs_are_fetched_in_one_request() {
        let fetch = [0, 1, 3, 10];
        assert_eq!(coalesce(&fetch, 1), [(0, 3), (10, 10)]);
        assert_eq!(coalesce(&fetch, 0), [(0, 1), (3, 3), (10, 10)]);
        assert_eq!(coalesce(&[], 4), []);
    }
}
