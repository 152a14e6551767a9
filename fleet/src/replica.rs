//! The device-state replica (`sandstep-fleet shadow`): the software-update pattern's cloud side,
//! and the phased rollouts it drives.
//!
//! It subscribes to every device's update topic, keeps each device's desired and reported
//! documents in a [`crate::store`] (SQLite, or PostgreSQL for fleets), confirms each stored update on
//! `.../accepted` (or answers `.../rejected` with the reason), publishes the delta (desired fields
//! that differ from reported) on `.../delta`, and keeps the whole document retained on
//! `.../shadow` for `sandstep status`. A device that reports (as the agent does when it starts)
//! gets the pending delta again, so a desired change made while it was offline reaches it.
//!
//! Several replicas can serve one fleet: they subscribe through an MQTT shared subscription
//! (`$share/<group>/...`), so the broker hands each report to one of them, and they share one
//! PostgreSQL database, where every write checks the version it read ([`crate::store`]). A replica that
//! dies with reports in hand loses them before they are stored, never after; the agent sends its
//! whole reported state again when a report's `accepted` does not come
//! (gateway/src/agent/report.rs, `Confirmations`), and the other replica stores it.
//!
//! The pure rules are [`crate::record`] (one device) and [`crate::rollout`] (phased rollouts);
//! [`crate::store`] keeps them; here is the loop that ties them to MQTT.

use crate::record::{self, read_update, Answer, Record};
use crate::rollout;
use crate::store::{Database, Store, StoreError};
use sandstep_model::shadow::{valid_device_id, Document, Topics};
use sandstep_transport::mqtt::{Mqtt, MqttConfig, MqttError, MqttEvent};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Why the replica stopped.
#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mqtt(#[from] MqttError),
}

/// Most updates stored in one transaction.
const MAX_BATCH: usize = 512;

/// How the replica runs.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    pub database: Database,
    /// The shared-subscription group (`$share/<group>/...`); `None`: a plain subscription.
    pub share_group: Option<String>,
    /// How often rollouts are looked at.
    pub rollout_interval: Duration,
}

/// The topic filter the replica subscribes to.
pub fn subscription(topics: &Topics, share_group: Option<&str>) -> String {
    shared(&topics.update, share_group)
}

/// A device topic as a filter for every device, shared by the group's replicas.
fn shared(template: &str, share_group: Option<&str>) -> String {
    let filter = Topics::filter(template);
    match share_group {
        Some(g) => format!("$share/{g}/{filter}"),
        None => filter,
    }
}

/// The filters the replica subscribes to: every device's updates, and its requests for the
/// whole document when the layout has them.
fn subscriptions(topics: &Topics, share_group: Option<&str>) -> Vec<String> {
    let mut out = vec![subscription(topics, share_group)];
    out.extend(topics.get.as_deref().map(|g| shared(g, share_group)));
    out
}

/// Runs the replica until `shutdown`.
pub async fn run(
    mqtt: &MqttConfig,
    topics: &Topics,
    opts: &ReplicaOptions,
    shutdown: CancellationToken,
) -> Result<(), ShadowError> {
    let mut store = Store::open(&opts.database).await?;
    let client_id = mqtt
        .client_id
        .clone()
        .unwrap_or_else(|| format!("sandstep-shadow-{:08x}", fastrand::u32(..)));
    let mut conn = Mqtt::connect(mqtt, &client_id)?;
    let filter = subscriptions(topics, opts.share_group.as_deref());
    let mut next_tick = Instant::now();
    let mut rollouts = Rollouts::default();
    loop {
        let ev = tokio::select! {
            ev = conn.recv() => ev,
            _ = tokio::time::sleep_until(next_tick.into()) => {
                next_tick = Instant::now() + opts.rollout_interval;
                rollouts.drive(&mut store, &conn, topics).await?;
                continue;
            }
            _ = shutdown.cancelled() => return Ok(()),
        };
        match ev {
            None => return Ok(()),
            Some(MqttEvent::Message { topic, payload, .. }) => {
                let mut batch = vec![(topic, payload)];
                while batch.len() < MAX_BATCH {
                    match conn.try_recv() {
                        Some(MqttEvent::Message { topic, payload, .. }) => {
                            batch.push((topic, payload))
                        }
                        Some(other) => {
                            handle_other(&conn, &filter, other).await?;
                        }
                        None => break,
                    }
                }
                store_batch(&mut store, &conn, topics, batch).await?;
            }
            Some(other) => handle_other(&conn, &filter, other).await?,
        }
    }
}

async fn handle_other(conn: &Mqtt, filters: &[String], ev: MqttEvent) -> Result<(), ShadowError> {
    match ev {
        MqttEvent::Connected => {
            tracing::info!(?filters, "replica connected");
            for f in filters {
                conn.subscribe(f).await?;
            }
        }
        MqttEvent::Disconnected(e) => tracing::warn!("replica disconnected: {e}"),
        MqttEvent::PubAck { refused: Some(why) } => {
            tracing::error!("the broker refused an answer of the replica ({why}): check its ACL for the replica's account");
        }
        _ => {}
    }
    Ok(())
}

/// Stores a batch of update messages in one transaction, then answers each.
async fn store_batch(
    store: &mut Store,
    conn: &Mqtt,
    topics: &Topics,
    batch: Vec<(String, Vec<u8>)>,
) -> Result<(), ShadowError> {
    let now = sandstep_transport::clock::now_ms();
    let mut docs: Vec<(String, Document)> = Vec::with_capacity(batch.len());
    let mut answers: Vec<Answer> = Vec::new();
    let mut asking: Vec<String> = Vec::new();
    for (topic, payload) in batch {
        if let Some(device) = topics
            .get
            .as_deref()
            .and_then(|g| Topics::device_of(g, &topic))
            .filter(|d| valid_device_id(d))
        {
            asking.push(device);
            continue;
        }
        let Some(device) = Topics::device_of(&topics.update, &topic).filter(|d| valid_device_id(d))
        else {
            continue;
        };
        match read_update(topics, &device, &payload, now) {
            Ok(doc) => docs.push((device, doc)),
            Err(refusal) => answers.push(refusal),
        }
    }
    let (docs, stored, unreadable) = merge_readable(store, docs, now).await?;
    for ((device, doc), rec) in docs.iter().zip(&stored) {
        answers.extend(record::answers(topics, device, doc, rec, now));
    }
    for (device, why) in unreadable {
        let message = format!(
            "not stored: the replica cannot read this device's stored state ({why}); repair or \
             delete the device's row"
        );
        tracing::error!(%device, "{message}");
        answers.push(record::rejection(topics, &device, 500, &message, now));
    }
    answers.extend(whole_documents(store, topics, asking, now).await?);
    publish(conn, answers).await
}

/// The whole documents devices asked for (after the batch's updates are stored, so an answer
/// is never older than what the device just sent). A device unknown to the store gets none.
async fn whole_documents(
    store: &mut Store,
    topics: &Topics,
    mut devices: Vec<String>,
    now: u64,
) -> Result<Vec<Answer>, ShadowError> {
    devices.sort();
    devices.dedup();
    let mut out = Vec::with_capacity(devices.len());
    for device in devices {
        match store.get(&device).await {
            Ok(Some(rec)) => out.push(rec.whole_document(topics, &device, now)),
            Ok(None) => {}
            Err(e @ StoreError::Data { .. }) => {
                tracing::error!(%device, "cannot answer its request for the whole document: {e}")
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// The devices of `docs`, and updates of them, stored records, and the devices refused.
type Merged = (Vec<(String, Document)>, Vec<Record>, Vec<(String, String)>);

/// Merges `docs` in one transaction. A device whose stored row is unreadable (changed outside
/// sandstep) fails the whole transaction; then each device is read alone, those unreadable
/// are set aside (refused, with why), and the rest are stored.
async fn merge_readable(
    store: &mut Store,
    docs: Vec<(String, Document)>,
    now: u64,
) -> Result<Merged, ShadowError> {
    match store.merge_batch(&docs, now).await {
        Ok(stored) => return Ok((docs, stored, Vec::new())),
        Err(StoreError::Data { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let (readable, unreadable) = set_aside_unreadable(store, docs).await?;
    let stored = store.merge_batch(&readable, now).await?;
    Ok((readable, stored, unreadable))
}

/// Splits `(device, item)` pairs into those whose stored row reads and those whose row does
/// not (with why): what a batch that failed on an unreadable row is retried with.
async fn set_aside_unreadable<T>(
    store: &mut Store,
    items: Vec<(String, T)>,
) -> Result<(Vec<(String, T)>, Vec<(String, String)>), StoreError> {
    let (mut readable, mut unreadable) = (Vec::new(), Vec::new());
    for (device, item) in items {
        match store.get(&device).await {
            Err(e @ StoreError::Data { .. }) => unreadable.push((device, e.to_string())),
            Err(e) => return Err(e),
            Ok(_) => readable.push((device, item)),
        }
    }
    Ok((readable, unreadable))
}

async fn publish(conn: &Mqtt, answers: Vec<Answer>) -> Result<(), ShadowError> {
    for a in answers {
        conn.publish(&a.topic, a.payload.to_string().into_bytes(), a.retain)
            .await?;
    }
    Ok(())
}

/// How long a deployed device may stay silent before its delta is published again, and how
/// often after that.
const NUDGE_AFTER_MS: u64 = 5_000;
const NUDGE_EVERY_MS: u64 = 30_000;

/// What the replica remembers between looks at the rollouts: when it last nudged each device
/// (only a cadence; losing it on a restart costs one extra message per device).
#[derive(Debug, Default)]
struct Rollouts {
    nudged: HashMap<String, u64>,
    /// Devices whose stored row could not be read, and when: not deployed to, and tried again
    /// (and said again) every `NUDGE_EVERY_MS`, so a repaired row is picked up.
    unreadable: HashMap<String, u64>,
}

impl Rollouts {
    /// Deploys to `targets` in one transaction; when a device's stored row is unreadable, that
    /// device is left out (and remembered) and the others deployed.
    async fn deploy_readable(
        &mut self,
        store: &mut Store,
        r: &rollout::Rollout,
        targets: &[(String, usize)],
        now: u64,
    ) -> Result<Vec<(String, Record)>, ShadowError> {
        match store.deploy_batch(&r.id, targets, &r.desired, now).await {
            Err(StoreError::Data { .. }) => {}
            other => return Ok(other?),
        }
        let (readable, unreadable) = set_aside_unreadable(store, targets.to_vec()).await?;
        for (device, why) in unreadable {
            tracing::error!(rollout = %r.id, %device, "not deployed: the replica cannot read this device's stored state ({why}); repair or delete the device's row");
            self.unreadable.insert(device, now);
        }
        Ok(store
            .deploy_batch(&r.id, &readable, &r.desired, now)
            .await?)
    }

    /// One look at every running rollout: deploy to the devices whose phase has started, nudge
    /// those that have not acknowledged, then save where the rollout stands. Another replica
    /// doing the same at the same moment deploys nothing twice (the store records who got it)
    /// and one of the two saves wins; the other looks again at the next tick.
    async fn drive(
        &mut self,
        store: &mut Store,
        conn: &Mqtt,
        topics: &Topics,
    ) -> Result<(), ShadowError> {
        let now = sandstep_transport::clock::now_ms();
        let mut pending = std::collections::HashSet::new();
        for (mut r, version) in store.rollouts().await? {
            if r.progress.state != rollout::State::Running {
                continue;
            }
            let members = store.members(&r).await?;
            pending.extend(
                members
                    .iter()
                    .filter(|m| m.deployed.is_some() && m.outcome.is_none())
                    .map(|m| m.id.clone()),
            );
            let mut t = rollout::tick(&r, &members, now);
            self.unreadable
                .retain(|_, at| now.saturating_sub(*at) < NUDGE_EVERY_MS);
            t.deploy.retain(|(d, _)| !self.unreadable.contains_key(d));
            let mut answers = Vec::new();
            if !t.deploy.is_empty() {
                let changed = self.deploy_readable(store, &r, &t.deploy, now).await?;
                tracing::info!(rollout = %r.id, phase = t.progress.phase, devices = changed.len(), "deployed");
                for (d, rec) in &changed {
                    answers.extend(rec.publications(topics, d, now));
                }
            }
            let due: Vec<String> =
                rollout::overdue(&members, &self.nudged, now, NUDGE_AFTER_MS, NUDGE_EVERY_MS)
                    .map(str::to_owned)
                    .collect();
            for d in due {
                if let Some(rec) = store.get(&d).await? {
                    answers.extend(rec.publications(topics, &d, now));
                }
                self.nudged.insert(d, now);
            }
            publish(conn, answers).await?;
            if t.progress != r.progress {
                if t.progress.state == rollout::State::Paused {
                    tracing::warn!(rollout = %r.id, reason = ?t.progress.reason, "rollout paused itself");
                }
                r.progress = t.progress;
                store.save_rollout(&r, version).await?;
            }
        }
        self.nudged.retain(|d, _| pending.contains(d));
        Ok(())
    }
}
