//! How reports travel: the outbox that delivers them in order, across disconnections and
//! restarts, and the shadow service's confirmations. What they say is [`super::reported`].

use crate::datadir::write_atomic;
use cap_std::fs::Dir;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::VecDeque;

/// One message waiting to be delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Value,
    /// Progress messages may be replaced by newer ones while they wait; others never are.
    pub progress: bool,
}

/// Reports waiting for the broker's acknowledgement, persisted in `<data-dir>/outbox/`, delivered
/// oldest first. A progress report still waiting is replaced by the next one (rate limiting);
/// results, acknowledgements and errors are never dropped.
pub struct Outbox {
    dir: Dir,
    queue: VecDeque<(u64, Outgoing)>,
    next: u64,
    /// Whether the front entry is published and awaits its PUBACK.
    pub in_flight: bool,
}

impl Outbox {
    /// Opens the outbox, loading what a previous run left undelivered.
    pub fn open(dir: Dir) -> std::io::Result<Outbox> {
        let mut entries: Vec<(u64, Outgoing)> = Vec::new();
        for e in dir.entries()? {
            let name = e?.file_name().to_string_lossy().into_owned();
            let Some(seq) = name
                .strip_suffix(".json")
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            match dir
                .read(&name)
                .ok()
                .and_then(|b| serde_json::from_slice::<Outgoing>(&b).ok())
            {
                Some(o) => entries.push((seq, o)),
                None => {
                    tracing::error!(entry = %name, "unreadable outbox entry dropped");
                    let _ = dir.remove_file(&name);
                }
            }
        }
        entries.sort_by_key(|(s, _)| *s);
        let next = entries.last().map_or(1, |(s, _)| s + 1);
        Ok(Outbox {
            dir,
            queue: entries.into(),
            next,
            in_flight: false,
        })
    }

    fn name(seq: u64) -> String {
        format!("{seq:016}.json")
    }

    /// Queues a message (replacing a waiting progress message when this is progress too).
    pub fn push(&mut self, o: Outgoing) -> std::io::Result<()> {
        let replace = o.progress
            && self.queue.back().is_some_and(|(_, last)| last.progress)
            && !(self.in_flight && self.queue.len() == 1);
        let seq = if replace {
            self.queue.back().expect("checked").0
        } else {
            let s = self.next;
            self.next += 1;
            s
        };
        write_atomic(
            &self.dir,
            &Self::name(seq),
            &serde_json::to_vec(&o).expect("serializes"),
            0o600,
        )?;
        if replace {
            self.queue.back_mut().expect("checked").1 = o;
        } else {
            self.queue.push_back((seq, o));
        }
        Ok(())
    }

    /// The message to publish next, if none is in flight.
    pub fn next_to_send(&mut self) -> Option<Outgoing> {
        if self.in_flight {
            return None;
        }
        let front = self.queue.front()?.1.clone();
        self.in_flight = true;
        Some(front)
    }

    /// The broker acknowledged the message in flight; returns it.
    pub fn acked(&mut self) -> std::io::Result<Option<Outgoing>> {
        if !self.in_flight {
            return Ok(None);
        }
        self.in_flight = false;
        let Some((seq, o)) = self.queue.pop_front() else {
            return Ok(None);
        };
        match self.dir.remove_file(Self::name(seq)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(Some(o)),
        }
    }

    /// The connection broke: the message in flight is sent again after reconnecting.
    pub fn disconnected(&mut self) {
        self.in_flight = false;
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Whether the shadow service has the reports the broker took.
///
/// The broker acknowledges a publish even when nobody subscribes, so a report sent while the
/// shadow service was away (it started after the agent, or restarted) is gone. The service
/// confirms each report on `.../accepted`, echoing its `clientToken`; confirmations arrive in the
/// order reports were sent. So: a confirmation that skips an earlier token, or a token left
/// unconfirmed past the timeout, means something was lost, and the agent sends its whole
/// reported document again (merging is idempotent on the service side). Retries back off
/// (doubling, to `MAX_BACKOFF`) while no service answers.
pub struct Confirmations {
    full: Map<String, Value>,
    waiting: VecDeque<String>,
    since: Option<std::time::Instant>,
    timeout: std::time::Duration,
    backoff: std::time::Duration,
    lost: bool,
}

/// The longest wait between two resends while no shadow service answers.
pub const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(600);
/// Tokens remembered; older ones count as lost.
const MAX_WAITING: usize = 256;

impl Confirmations {
    /// `timeout` zero turns confirmation off (a broker with no shadow service behind it).
    pub fn new(timeout: std::time::Duration) -> Confirmations {
        Confirmations {
            full: Map::new(),
            waiting: VecDeque::new(),
            since: None,
            timeout,
            backoff: timeout,
            lost: false,
        }
    }

    /// A report went to the broker.
    pub fn sent(&mut self, payload: &Value) {
        if let Some(r) = payload
            .pointer("/state/reported")
            .and_then(Value::as_object)
        {
            sandstep_model::shadow::merge(&mut self.full, r);
        } else if payload.get("jobId").is_some() {
            // The replica keeps the `{"jobId","status"}` acknowledgement as reported `ack`.
            self.full.insert("ack".into(), payload.clone());
        }
        if self.timeout.is_zero() {
            return;
        }
        if let Some(t) = payload.get("clientToken").and_then(Value::as_str) {
            if self.waiting.len() == MAX_WAITING {
                self.waiting.pop_front();
                self.lost = true;
            }
            self.waiting.push_back(t.to_owned());
            self.since.get_or_insert_with(std::time::Instant::now);
        }
    }

    /// A message on the device's `.../accepted` topic.
    pub fn accepted(&mut self, payload: &[u8]) {
        let Some(token) = serde_json::from_slice::<Value>(payload)
            .ok()
            .and_then(|v| v.get("clientToken")?.as_str().map(str::to_owned))
        else {
            return;
        };
        let Some(i) = self.waiting.iter().position(|t| *t == token) else {
            return;
        };
        if i > 0 {
            self.lost = true;
        }
        self.waiting.drain(..=i);
        self.backoff = self.timeout;
        self.since = (!self.waiting.is_empty()).then(std::time::Instant::now);
    }

    /// When to resend if nothing else happens.
    pub fn deadline(&self) -> Option<std::time::Instant> {
        if self.lost {
            return Some(std::time::Instant::now());
        }
        self.since.map(|s| s + self.backoff)
    }

    /// The whole reported document to send again, when a report was lost or the deadline
    /// passed; `None` otherwise.
    pub fn resend(&mut self) -> Option<Map<String, Value>> {
        let due = self.lost
            || self
                .deadline()
                .is_some_and(|d| d <= std::time::Instant::now());
        if !due {
            return None;
        }
        if !self.lost {
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
        self.lost = false;
        self.waiting.clear();
        self.since = None;
        (!self.full.is_empty()).then(|| self.full.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn outbox() -> (tempfile::TempDir, Outbox) {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        (t, Outbox::open(d).unwrap())
    }

    fn msg(n: u32, progress: bool) -> Outgoing {
        Outgoing {
            topic: "t".into(),
            payload: json!({"n": n}),
            progress,
        }
    }

    #[test]
    fn messages_go_out_in_order_and_survive_a_restart() {
        let (t, mut o) = outbox();
        o.push(msg(1, false)).unwrap();
        o.push(msg(2, false)).unwrap();
        assert_eq!(o.next_to_send().unwrap().payload["n"], 1);
        assert!(o.next_to_send().is_none(), "one in flight at a time");
        o.disconnected();
        assert_eq!(
            o.next_to_send().unwrap().payload["n"],
            1,
            "resent after reconnecting"
        );
        o.acked().unwrap();
        drop(o);
        let d = Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        let mut o = Outbox::open(d).unwrap();
        assert_eq!(o.len(), 1);
        assert_eq!(o.next_to_send().unwrap().payload["n"], 2);
    }

    #[test]
    fn waiting_progress_is_replaced_but_results_are_kept() {
        let (_t, mut o) = outbox();
        o.push(msg(1, true)).unwrap();
        o.push(msg(2, true)).unwrap();
        o.push(msg(3, false)).unwrap();
        o.push(msg(4, true)).unwrap();
        o.push(msg(5, true)).unwrap();
        let mut sent = Vec::new();
        while let Some(m) = o.next_to_send() {
            sent.push(m.payload["n"].as_u64().unwrap());
            o.acked().unwrap();
        }
        assert_eq!(sent, [2, 3, 5]);
    }

    fn report(token: &str, field: &str) -> Value {
        json!({"state": {"reported": {field: token}}, "clientToken": token})
    }

    #[test]
    fn confirmed_reports_are_not_sent_again() {
        let mut c = Confirmations::new(std::time::Duration::from_secs(60));
        c.sent(&report("a", "x"));
        c.sent(&report("b", "y"));
        assert!(c.deadline().is_some());
        c.accepted(br#"{"clientToken":"a"}"#);
        c.accepted(br#"{"clientToken":"b"}"#);
        assert_eq!(c.deadline(), None);
        assert_eq!(c.resend(), None);
    }

    #[test]
    fn a_confirmation_that_skips_a_report_resends_the_whole_document() {
        let mut c = Confirmations::new(std::time::Duration::from_secs(60));
        c.sent(&report("a", "x"));
        c.sent(&json!({"jobId": "w", "status": "SUCCESS"}));
        c.sent(&report("b", "y"));
        c.accepted(br#"{"clientToken":"b"}"#);
        let full = c.resend().expect("report a was lost");
        assert_eq!(
            Value::Object(full),
            json!({"x": "a", "y": "b", "ack": {"jobId": "w", "status": "SUCCESS"}})
        );
        assert_eq!(c.resend(), None, "once");
    }

    #[test]
    fn an_unconfirmed_report_is_resent_after_the_timeout_with_backoff() {
        let mut c = Confirmations::new(std::time::Duration::from_millis(1));
        c.sent(&report("a", "x"));
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(c.resend().map(Value::Object), Some(json!({"x": "a"})));
        assert_eq!(c.backoff, std::time::Duration::from_millis(2));
        c.sent(&report("a2", "x"));
        c.accepted(br#"{"clientToken":"a2"}"#);
        assert_eq!(c.backoff, std::time::Duration::from_millis(1), "reset");
    }

    #[test]
    fn a_zero_timeout_never_resends() {
        let mut c = Confirmations::new(std::time::Duration::ZERO);
        c.sent(&report("a", "x"));
        assert_eq!(c.deadline(), None);
        assert_eq!(c.resend(), None);
    }

    #[test]
    fn a_progress_message_in_flight_is_not_replaced() {
        let (_t, mut o) = outbox();
        o.push(msg(1, true)).unwrap();
        assert_eq!(o.next_to_send().unwrap().payload["n"], 1);
        o.push(msg(2, true)).unwrap();
        o.acked().unwrap();
        assert_eq!(o.next_to_send().unwrap().payload["n"], 2);
    }
}
