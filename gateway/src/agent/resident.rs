//! What the idle agent keeps resident. Its own heap is under 1 MiB; most of its resident set
//! is its executable's code, mapped from the file: start-up (the command line, the config,
//! TLS, the first connection) and a deployment (the engine, the loader) run code the idle loop
//! never runs again, and the kernel maps code in large folios around each page that runs.
//! Once the agent is idle it asks the kernel to page its code out (`MADV_PAGEOUT`); the pages
//! are clean and come back from the file (or the page cache) when they run again, so what stays
//! resident is the code the idle loop runs. It is what the kernel does under memory pressure,
//! done once, early, for a daemon that idles for days.

use std::time::Duration;

/// How long the agent is idle (started, or past a deployment) before it pages its code out.
pub const IDLE_BEFORE_TRIM: Duration = Duration::from_secs(3);

/// The address ranges of `path` in a `/proc/self/maps` text.
pub fn mappings_of(maps: &str, path: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            // perms, offset, device, inode, then the path.
            let mapped = fields.nth(4)?;
            (mapped == path).then_some(())?;
            let (start, end) = range.split_once('-')?;
            Some((
                usize::from_str_radix(start, 16).ok()?,
                usize::from_str_radix(end, 16).ok()?,
            ))
        })
        .collect()
}

/// Pages this process's executable's mappings out; how many bytes they span.
pub fn page_out_code() -> std::io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut covered = 0;
    for (start, end) in mappings_of(&maps, &exe.to_string_lossy()) {
        // SAFETY: the range is one of this process's own file mappings as the kernel lists it;
        // MADV_PAGEOUT only reclaims its pages, which read back unchanged from the file (the
        // writable data pages the kernel skips: they are anonymous once written).
        let r =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        covered += end - start;
    }
    Ok(covered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executables_mappings_are_found_by_path_and_nothing_else() {
        let maps = "\
55a0c0000000-55a0c0200000 r--p 00000000 fe:00 42   /usr/bin/sandstep
55a0c0200000-55a0c0a00000 r-xp 00200000 fe:00 42   /usr/bin/sandstep
55a0c0a00000-55a0c0a10000 rw-p 00000000 00:00 0    [heap]
7f0000000000-7f0000100000 r-xp 00000000 fe:00 7    /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000200000-7f0000201000 rw-p 00000000 00:00 0
";
        assert_eq!(
            mappings_of(maps, "/usr/bin/sandstep"),
            [
                (0x55a0_c000_0000, 0x55a0_c020_0000),
                (0x55a0_c020_0000, 0x55a0_c0a0_0000)
            ]
        );
        assert!(mappings_of(maps, "/usr/bin/sandstep-fleet").is_empty());
    }

    /// The code paged out runs again: this test goes on after its own code was paged out.
    #[test]
    fn a_process_pages_its_code_out_and_goes_on_running() {
        assert!(page_out_code().unwrap() > 0);
        assert_eq!(mappings_of("", "x"), []);
    }
}
