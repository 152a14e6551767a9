//! `microsoft/script:1` (ADU's `ScriptHandlerImpl`) and the script of `microsoft/swupdate:2`:
//! `scriptFileName` names one of the step's files.

/// A broken rule of a script step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptRule {
    /// `scriptFileName` is missing or empty.
    NoScript,
    /// `scriptFileName` is not one of the step's files (these).
    NotAmongFiles { name: String, files: Vec<String> },
}

impl std::fmt::Display for ScriptRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScriptRule::NoScript => {
                f.write_str("handlerProperties.scriptFileName is missing or empty")
            }
            ScriptRule::NotAmongFiles { name, files } => {
                let names: Vec<&str> = files.iter().map(String::as_str).collect();
                write!(
                    f,
                    "scriptFileName `{name}` is not one of the step's files ({})",
                    super::listed(&names)
                )
            }
        }
    }
}

impl std::error::Error for ScriptRule {}

/// The step file `script_file_name` names.
pub fn script_file<'a>(
    script_file_name: Option<&str>,
    files: &[&'a str],
) -> Result<&'a str, ScriptRule> {
    let name = script_file_name
        .filter(|n| !n.is_empty())
        .ok_or(ScriptRule::NoScript)?;
    files
        .iter()
        .copied()
        .find(|f| *f == name)
        .ok_or_else(|| ScriptRule::NotAmongFiles {
            name: name.to_owned(),
            files: files.iter().map(|f| f.to_string()).collect(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_named_and_among_the_steps_files() {
        assert_eq!(script_file(Some("i.sh"), &["i.sh", "fw.json"]), Ok("i.sh"));
        assert_eq!(script_file(Some(""), &["i.sh"]), Err(ScriptRule::NoScript));
        assert_eq!(script_file(None, &["i.sh"]), Err(ScriptRule::NoScript));
        let e = script_file(Some("x.sh"), &["i.sh"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "scriptFileName `x.sh` is not one of the step's files (i.sh)"
        );
    }
}
