//! `microsoft/swupdate:1` (one file, the image) and `microsoft/swupdate:2` (ADU's
//! `SWUpdateHandlerImpl`: a script and at least one more file; `swuFileName` a plain file name,
//! joined to the work folder; the script by [`crate::script`]), and how a run of Debian's
//! `swupdate -i` ended ([`read_run`]).

/// A broken rule of an SWUpdate step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwuRule {
    /// v1: not exactly one file.
    OneImage(usize),
    /// v2: fewer than the script and one more file.
    ScriptAndImage(usize),
    /// v2: `swuFileName` is missing or empty.
    NoSwuFileName,
    /// v2: `swuFileName` is not a plain file name (it would leave the work folder).
    NotAFileName(String),
}

impl std::fmt::Display for SwuRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SwuRule::OneImage(n) => write!(
                f,
                "a microsoft/swupdate:1 step has one file (the .swu); this one has {n}"
            ),
            SwuRule::ScriptAndImage(n) => write!(
                f,
                "a microsoft/swupdate:2 step needs its script and at least one more file; it has {n}"
            ),
            SwuRule::NoSwuFileName => f.write_str("Missing 'handlerProperties.swuFileName' property"),
            SwuRule::NotAFileName(n) => write!(
                f,
                "handlerProperties.swuFileName `{n}` is not a file name in the work folder"
            ),
        }
    }
}

impl std::error::Error for SwuRule {}

/// v1: the step's one file, the image.
pub fn v1_image<'a>(files: &[&'a str]) -> Result<&'a str, SwuRule> {
    match files {
        [only] => Ok(only),
        _ => Err(SwuRule::OneImage(files.len())),
    }
}

/// v2: the script and at least one more file.
pub fn v2_file_count(files: usize) -> Result<(), SwuRule> {
    if files <= 1 {
        return Err(SwuRule::ScriptAndImage(files));
    }
    Ok(())
}

/// v2: `swuFileName`, a plain file name.
pub fn swu_file_name(name: Option<&str>) -> Result<&str, SwuRule> {
    let name = name
        .filter(|n| !n.is_empty())
        .ok_or(SwuRule::NoSwuFileName)?;
    if name.contains('/') || name == ".." || name == "." {
        return Err(SwuRule::NotAFileName(name.to_owned()));
    }
    Ok(name)
}

/// How many times `microsoft/swupdate:1` runs SWUpdate for one install when runs end
/// [`SwuRun::Interrupted`].
pub const ATTEMPTS: u32 = 3;

/// How one run of `swupdate -i` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwuRun {
    /// SWUpdate installed the image.
    Installed,
    /// SWUpdate refused or failed the image (signature, compatibility, a handler's error), or the
    /// run timed out: running it again would not change the verdict.
    Failed,
    /// The run ended before SWUpdate judged the image: running it again is the remedy.
    Interrupted,
}

/// Reads a finished `swupdate -i` run from its exit (`exited_zero`), whether it was stopped for
/// its time limit, and its output (stdout and stderr).
///
/// SWUpdate's install result line (`SWUPDATE successful !` or `SWUPDATE failed ...`) is the one
/// to trust. Debian 12's SWUpdate (2022.12) ends about one run in twenty wrongly, one at a time
/// and without load (measured: 7 of 120 runs of one signed image): it exits 1 after an install
/// it reports successful; or exits 1 before any result line; or reads its own
/// `sw-description.sig` before it is whole ("cannot be opened", "cannot be parsed as DER-encoded
/// CMS signature blob") and calls a good image invalid. The last two are interrupted runs.
pub fn read_run(exited_zero: bool, timed_out: bool, output: &str) -> SwuRun {
    let said = |line: &str| output.contains(line);
    let failed = said("SWUPDATE failed");
    if timed_out {
        SwuRun::Failed
    } else if !failed && (exited_zero || said("SWUPDATE successful !")) {
        SwuRun::Installed
    } else if !failed || said("sw-description.sig cannot be") {
        SwuRun::Interrupted
    } else {
        SwuRun::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swupdate_steps_have_their_files_and_a_plain_swu_file_name() {
        assert_eq!(v1_image(&["a.swu"]), Ok("a.swu"));
        assert_eq!(v1_image(&["a.swu", "b"]), Err(SwuRule::OneImage(2)));
        assert_eq!(v2_file_count(1), Err(SwuRule::ScriptAndImage(1)));
        assert_eq!(v2_file_count(2), Ok(()));
        assert_eq!(swu_file_name(Some("a.swu")), Ok("a.swu"));
        assert_eq!(swu_file_name(Some("")), Err(SwuRule::NoSwuFileName));
        assert_eq!(
            swu_file_name(Some("../a.swu")),
            Err(SwuRule::NotAFileName("../a.swu".into()))
        );
    }

    const SIG_RACE: &str = "[ERROR] : SWUPDATE failed [0] ERROR : /tmp/sw-description.sig cannot be parsed as DER-encoded CMS signature blob\n[ERROR] : SWUPDATE failed [1] Image invalid or corrupted. Not installing ...";
    const FORGED: &str = "[ERROR] : SWUPDATE failed [0] ERROR : Authentication of all signatures failed\n[ERROR] : SWUPDATE failed [1] Image invalid or corrupted. Not installing ...";
    const INSTALLED: &str = "[INFO ] : SWUPDATE successful ! SWUPDATE successful !\n";
    const CUT_SHORT: &str = "[TRACE] : SWUPDATE running :  [network_thread] : Incoming network request: processing...\n[INFO ] : SWUPDATE running :  [endupdate] : SWUpdate was successful !";

    #[test]
    fn swupdates_result_line_decides_and_runs_cut_short_by_its_own_races_are_interrupted() {
        assert_eq!(read_run(true, false, INSTALLED), SwuRun::Installed);
        // Exit 1 after the install's own success line.
        assert_eq!(read_run(false, false, INSTALLED), SwuRun::Installed);
        // Exit 0 but a failure line: the line wins.
        assert_eq!(read_run(true, false, FORGED), SwuRun::Failed);
        assert_eq!(read_run(false, false, FORGED), SwuRun::Failed);
        // Its end-of-update line is no verdict; no result line at all is an interrupted run.
        assert_eq!(read_run(false, false, CUT_SHORT), SwuRun::Interrupted);
        assert_eq!(read_run(false, false, SIG_RACE), SwuRun::Interrupted);
        assert_eq!(read_run(false, true, CUT_SHORT), SwuRun::Failed);
        assert_eq!(read_run(true, true, INSTALLED), SwuRun::Failed);
    }
}
