//! The result file a script writes under ADU's script protocol
//! (`{"resultCode", "extendedResultCode", "resultDetails"}`), parsed strictly.

use serde::Deserialize;

/// Largest result file read, in bytes; details beyond the host's 1024-byte clamp are useless.
pub const MAX_SCRIPT_RESULT: usize = 64 << 10;

/// What the script reported.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScriptResult {
    pub result_code: i32,
    #[serde(default)]
    pub extended_result_code: i32,
    #[serde(default)]
    pub result_details: Option<String>,
}

/// Why a result file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptResultError {
    #[error("is {0} bytes, more than the {MAX_SCRIPT_RESULT} allowed")]
    TooLarge(usize),
    #[error("does not parse: {0}")]
    Invalid(String),
}

impl ScriptResult {
    /// Parses a result file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<ScriptResult, ScriptResultError> {
        if bytes.len() > MAX_SCRIPT_RESULT {
            return Err(ScriptResultError::TooLarge(bytes.len()));
        }
        serde_json::from_slice(crate::json::strip_bom(bytes))
            .map_err(|e| ScriptResultError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_file_with_a_bom_and_crlf_parses_as_adus_parson_reads_it() {
        let r = ScriptResult::parse(
            b"\xEF\xBB\xBF{\r\n \"resultCode\": 600,\r\n \"extendedResultCode\": 0\r\n}\r\n",
        )
        .unwrap();
        assert_eq!(r.result_code, 600);
    }

    #[test]
    fn the_adu_fields_parse_and_missing_optional_ones_default() {
        let r = ScriptResult::parse(br#"{"resultCode":700}"#).unwrap();
        assert_eq!((r.result_code, r.extended_result_code), (700, 0));
        assert_eq!(r.result_details, None);
    }

    #[test]
    fn a_code_outside_i32_or_a_missing_code_is_invalid() {
        for text in [
            &br#"{"resultCode":4294967296}"#[..],
            br#"{"extendedResultCode":1}"#,
            b"700",
            b"",
        ] {
            assert!(matches!(
                ScriptResult::parse(text),
                Err(ScriptResultError::Invalid(_))
            ));
        }
    }
}
