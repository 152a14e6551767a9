//! `microsoft/swupdate:1` (one file, the image) and `microsoft/swupdate:2` (ADU's
//! `SWUpdateHandlerImpl`: a script and at least one more file; `swuFileName` a plain file name,
//! joined to the work folder; the script by [`crate::script`]).

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
}
