//! The device twin over MQTT, as IoT Hub's public documentation describes it ("Communicate with
//! an IoT hub using the MQTT protocol": retrieving a device twin's properties, updating reported
//! properties, receiving desired properties update notifications). Topics and their parsing
//! only; pure functions.
//!
//! - The device subscribes to `$iothub/twin/res/#` (answers) and
//!   `$iothub/twin/PATCH/properties/desired/#` (desired patches).
//! - It asks for the whole twin on `$iothub/twin/GET/?$rid=<rid>` (empty body); the answer comes
//!   on `$iothub/twin/res/<status>/?$rid=<rid>` with `{"desired": ..., "reported": ...}`.
//! - It sends reported patches on `$iothub/twin/PATCH/properties/reported/?$rid=<rid>`; the
//!   answer is `$iothub/twin/res/204/?$rid=<rid>&$version=<new reported version>`.
//! - Desired patches arrive on `$iothub/twin/PATCH/properties/desired/?$version=<version>`.

/// What the device subscribes to.
pub const SUBSCRIPTIONS: [&str; 2] = [
    "$iothub/twin/res/#",
    "$iothub/twin/PATCH/properties/desired/#",
];

/// The topic asking for the whole twin.
pub fn get_topic(rid: u64) -> String {
    format!("$iothub/twin/GET/?$rid={rid}")
}

/// The topic of a reported-properties patch.
pub fn reported_topic(rid: u64) -> String {
    format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}")
}

/// A message the hub sends on the twin topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwinMessage {
    /// The answer to a GET or a reported patch: its HTTP-like status (200 twin, 204 patch
    /// stored, 400 malformed, 429 throttled, 5xx server error), the request id it answers, and
    /// the twin's new reported version when given.
    Response {
        status: u16,
        rid: u64,
        version: Option<u64>,
    },
    /// A desired-properties patch and the desired version it brings.
    DesiredPatch { version: Option<u64> },
}

/// Reads `$iothub/twin/...` topics; `None` for anything else.
pub fn parse_topic(topic: &str) -> Option<TwinMessage> {
    if let Some(rest) = topic.strip_prefix("$iothub/twin/res/") {
        let (status, query) = rest.split_once('/')?;
        let q = query_pairs(query);
        return Some(TwinMessage::Response {
            status: status.parse().ok()?,
            rid: q.get("$rid")?.parse().ok()?,
            version: q.get("$version").and_then(|v| v.parse().ok()),
        });
    }
    let rest = topic.strip_prefix("$iothub/twin/PATCH/properties/desired/")?;
    let q = query_pairs(rest);
    Some(TwinMessage::DesiredPatch {
        version: q.get("$version").and_then(|v| v.parse().ok()),
    })
}

/// `?a=1&b=2` as pairs.
pub(crate) fn query_pairs(query: &str) -> std::collections::HashMap<&str, &str> {
    query
        .trim_start_matches('?')
        .split('&')
        .filter_map(|p| p.split_once('='))
        .collect()
}

/// What to do about a response status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Ok,
    /// Throttled or a server error: send again later.
    Retry,
    /// The hub refused the request itself (malformed, too large): sending it again won't help.
    Refused,
}

pub fn classify(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Ok,
        429 | 500..=599 => StatusClass::Retry,
        _ => StatusClass::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twin_topics_are_written_and_read_as_documented() {
        assert_eq!(get_topic(7), "$iothub/twin/GET/?$rid=7");
        assert_eq!(
            reported_topic(8),
            "$iothub/twin/PATCH/properties/reported/?$rid=8"
        );
        assert_eq!(
            parse_topic("$iothub/twin/res/200/?$rid=7"),
            Some(TwinMessage::Response {
                status: 200,
                rid: 7,
                version: None
            })
        );
        assert_eq!(
            parse_topic("$iothub/twin/res/204/?$rid=8&$version=42"),
            Some(TwinMessage::Response {
                status: 204,
                rid: 8,
                version: Some(42)
            })
        );
        assert_eq!(
            parse_topic("$iothub/twin/PATCH/properties/desired/?$version=5"),
            Some(TwinMessage::DesiredPatch { version: Some(5) })
        );
        assert_eq!(parse_topic("$iothub/twin/res/abc/?$rid=1"), None);
        assert_eq!(parse_topic("$iothub/methods/POST/x/?$rid=1"), None);
        assert_eq!(
            (classify(204), classify(429), classify(503), classify(400)),
            (
                StatusClass::Ok,
                StatusClass::Retry,
                StatusClass::Retry,
                StatusClass::Refused
            )
        );
    }
}
