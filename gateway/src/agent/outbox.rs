//! The outbox: what waits to be delivered, in order, across disconnections and restarts. Items
//! are source-neutral (a report's fields, a job status, the whole document again); only the
//! source gives them a wire form when it sends one. What they say is `sandstep_model::reported`.

use crate::datadir::write_atomic;
use cap_std::fs::Dir;
use sandstep_model::reported::JobStatus;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::VecDeque;

/// One item waiting to be delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Queued {
    /// Reported fields: a serialised `Patch`. Progress may be replaced by newer progress while
    /// it waits; nothing else is.
    Report {
        fields: Map<String, Value>,
        progress: bool,
    },
    /// A job's end (`{"jobId", "status"}`).
    Job(JobStatus),
    /// The whole reported document again (a shadow service missed reports).
    Whole { fields: Map<String, Value> },
    /// A message of the source's own, sent by it as is (IoT Hub's acknowledgements and start-up
    /// documents, and anything an agent before 0.2 left in its outbox).
    Wire { topic: String, payload: Value },
}

/// Two reports as one: what the service would hold after merging `old`, then `new` (objects
/// merged member by member, any other value, `null` too, replaced).
fn combined(mut old: Map<String, Value>, new: Map<String, Value>) -> Map<String, Value> {
    for (k, v) in new {
        match (old.get_mut(&k), v) {
            (Some(Value::Object(o)), Value::Object(n)) => {
                *o = combined(std::mem::take(o), n);
            }
            (_, v) => {
                old.insert(k, v);
            }
        }
    }
    old
}

impl Queued {
    fn is_progress(&self) -> bool {
        matches!(self, Queued::Report { progress: true, .. })
    }

    /// An entry as agents before 0.2 wrote it (`{"topic", "payload", "progress"}`), kept: a
    /// shadow report or job status becomes one again, anything else is sent as it was.
    fn legacy(v: Value) -> Option<Queued> {
        let topic = v.get("topic")?.as_str()?.to_owned();
        let payload = v.get("payload")?.clone();
        let progress = v.get("progress").and_then(Value::as_bool).unwrap_or(false);
        if let Some(fields) = payload
            .pointer("/state/reported")
            .and_then(Value::as_object)
        {
            return Some(Queued::Report {
                fields: fields.clone(),
                progress,
            });
        }
        if let Ok(job) = serde_json::from_value::<JobStatus>(payload.clone()) {
            return Some(Queued::Job(job));
        }
        Some(Queued::Wire { topic, payload })
    }
}

/// Items waiting for delivery, persisted in `<data-dir>/outbox/`, delivered oldest first. A
/// progress report still waiting is replaced by the next one (rate limiting); results,
/// acknowledgements and errors are never dropped.
pub struct Outbox {
    dir: Dir,
    queue: VecDeque<(u64, Queued)>,
    next: u64,
    /// Whether the front item was handed to the source and awaits its delivery.
    in_flight: bool,
}

impl Outbox {
    /// Opens the outbox, loading what a previous run left undelivered.
    pub fn open(dir: Dir) -> std::io::Result<Outbox> {
        let mut entries: Vec<(u64, Queued)> = Vec::new();
        for e in dir.entries()? {
            let name = e?.file_name().to_string_lossy().into_owned();
            let Some(seq) = name
                .strip_suffix(".json")
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let item = dir.read(&name).ok().and_then(|b| {
                let v: Value = serde_json::from_slice(&b).ok()?;
                serde_json::from_value(v.clone())
                    .ok()
                    .or_else(|| Queued::legacy(v))
            });
            match item {
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

    /// Queues an item (replacing a waiting progress report when this is progress too, its
    /// fields combined into the new one's, so what only the replaced one said, such as when a
    /// stage began, still goes out).
    pub fn push(&mut self, mut o: Queued) -> std::io::Result<()> {
        let replace = o.is_progress()
            && self
                .queue
                .back()
                .is_some_and(|(_, last)| last.is_progress())
            && !(self.in_flight && self.queue.len() == 1);
        let seq = if replace {
            let (seq, replaced) = self.queue.back().expect("checked");
            if let (Queued::Report { fields: old, .. }, Queued::Report { fields: new, .. }) =
                (replaced, &mut o)
            {
                *new = combined(old.clone(), std::mem::take(new));
            }
            *seq
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

    /// The item to send next, if none is in flight; it is in flight from now on.
    pub fn next_to_send(&mut self) -> Option<Queued> {
        if self.in_flight {
            return None;
        }
        let front = self.queue.front()?.1.clone();
        self.in_flight = true;
        Some(front)
    }

    /// The item in flight was delivered; returns it.
    pub fn delivered(&mut self) -> std::io::Result<Option<Queued>> {
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

    /// The item in flight is to be sent again (the connection broke, the source asked).
    pub fn resend(&mut self) {
        self.in_flight = false;
    }

    pub fn is_in_flight(&self) -> bool {
        self.in_flight
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
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

    fn msg(n: u32, progress: bool) -> Queued {
        let fields = json!({ "n": n }).as_object().unwrap().clone();
        Queued::Report { fields, progress }
    }

    fn n(q: &Queued) -> u64 {
        match q {
            Queued::Report { fields, .. } => fields["n"].as_u64().unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn items_go_out_in_order_and_survive_a_restart() {
        let (t, mut o) = outbox();
        o.push(msg(1, false)).unwrap();
        o.push(msg(2, false)).unwrap();
        assert_eq!(n(&o.next_to_send().unwrap()), 1);
        assert!(o.next_to_send().is_none(), "one in flight at a time");
        o.resend();
        assert_eq!(
            n(&o.next_to_send().unwrap()),
            1,
            "resent after reconnecting"
        );
        o.delivered().unwrap();
        drop(o);
        let d = Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        let mut o = Outbox::open(d).unwrap();
        assert_eq!(o.len(), 1);
        assert_eq!(n(&o.next_to_send().unwrap()), 2);
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
            sent.push(n(&m));
            o.delivered().unwrap();
        }
        assert_eq!(sent, [2, 3, 5]);
    }

    #[test]
    fn a_replaced_progress_report_still_says_what_only_it_said() {
        let (_t, mut o) = outbox();
        let report = |v: Value| Queued::Report {
            fields: v.as_object().unwrap().clone(),
            progress: true,
        };
        o.push(report(json!({"n": 0}))).unwrap();
        assert_eq!(n(&o.next_to_send().unwrap()), 0);
        // Waiting behind the one in flight: the install's start (a new stage, and when it
        // began), then the apply's start in the same stage.
        o.push(report(json!({"status": "applying", "applyingAt": 7,
            "progress": {"action": "install", "unit": "step_0"}, "lastError": "old"})))
            .unwrap();
        o.push(report(json!({"status": "applying",
            "progress": {"action": "apply", "percent": 0}, "lastError": null})))
            .unwrap();
        o.delivered().unwrap();
        let Queued::Report { fields, .. } = o.next_to_send().unwrap() else {
            panic!("a report")
        };
        assert_eq!(
            Value::Object(fields),
            json!({"status": "applying", "applyingAt": 7,
                "progress": {"action": "apply", "unit": "step_0", "percent": 0},
                "lastError": null})
        );
    }

    #[test]
    fn a_progress_report_in_flight_is_not_replaced() {
        let (_t, mut o) = outbox();
        o.push(msg(1, true)).unwrap();
        assert_eq!(n(&o.next_to_send().unwrap()), 1);
        o.push(msg(2, true)).unwrap();
        o.delivered().unwrap();
        assert_eq!(n(&o.next_to_send().unwrap()), 2);
    }

    /// An upgrade keeps what the previous version left: its shadow reports, job statuses and
    /// twin documents are delivered as they were.
    #[test]
    fn entries_of_an_agent_before_0_2_are_delivered() {
        let (t, _) = outbox();
        let old = [
            json!({"topic": "state/d/update", "payload": {"state": {"reported": {"status": "completed"}}, "clientToken": "d#1.1"}, "progress": false}),
            json!({"topic": "state/d/update", "payload": {"jobId": "w", "status": "SUCCESS"}, "progress": false}),
            json!({"topic": "$iothub/twin/PATCH/properties/reported/", "payload": {"deviceUpdate": {"__t": "c"}}, "progress": false}),
        ];
        for (i, e) in old.iter().enumerate() {
            std::fs::write(t.path().join(Outbox::name(i as u64 + 1)), e.to_string()).unwrap();
        }
        let d = Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        let mut o = Outbox::open(d).unwrap();
        let mut items = Vec::new();
        while let Some(q) = o.next_to_send() {
            items.push(q);
            o.delivered().unwrap();
        }
        assert!(
            matches!(&items[0], Queued::Report { fields, progress: false } if fields["status"] == "completed")
        );
        assert!(matches!(&items[1], Queued::Job(j) if j.job_id == "w"));
        assert!(
            matches!(&items[2], Queued::Wire { topic, .. } if topic.starts_with("$iothub/twin"))
        );
    }
}
