//! JSON as ADU's agent reads it. ADU parses with parson, whose `json_parse_string` skips a UTF-8
//! byte order mark and whose whitespace rule takes CR as well as LF; serde_json already takes
//! CRLF line ends, so only the mark needs removing before parsing. Hashes and signatures are
//! always over the bytes as received, never over what this returns.

/// The UTF-8 byte order mark.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// `bytes` without a leading UTF-8 byte order mark.
pub fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(BOM).unwrap_or(bytes)
}

/// `text` without a leading byte order mark.
pub fn strip_bom_str(text: &str) -> &str {
    text.strip_prefix('\u{FEFF}').unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leading_bom_is_removed_and_nothing_else() {
        assert_eq!(strip_bom(b"\xEF\xBB\xBF{}"), b"{}");
        assert_eq!(strip_bom(b"{}\xEF\xBB\xBF"), b"{}\xEF\xBB\xBF");
        assert_eq!(strip_bom_str("\u{FEFF}{}"), "{}");
    }

    #[test]
    fn crlf_json_parses_once_the_bom_is_gone() {
        let text = b"\xEF\xBB\xBF{\r\n  \"a\": 1\r\n}\r\n";
        let v: serde_json::Value = serde_json::from_slice(strip_bom(text)).unwrap();
        assert_eq!(v["a"], 1);
    }
}
