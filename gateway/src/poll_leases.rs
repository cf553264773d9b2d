//! Replicas sharing the pollers through leases in the CQL store (`[polling] coordination = "cql"`).
//!
//! Every `[[pollers]]` entry belongs to a lease group: its (connector, account), or its
//! (connector, app) where the platform counts the quota per app, so that one replica owns a whole
//! quota. A lease is a row of `poll_leases`, taken and renewed with lightweight transactions (the
//! CQL store's Paxos; no consensus of our own): a holder, an expiry and an epoch that grows with
//! every change of holder. The group's cursors and token grants live in the same row and are
//! written only `IF holder = me AND epoch = mine`: a replica that lost its lease (paused, cut off)
//! can no longer move them, the epoch fences it.
//!
//! Each replica heartbeats into `poll_replicas` and holds at most its fair share of the groups
//! (groups / live replicas, rounded up). A lease over the share is drained: its pollers finish the
//! cycle they are in (the cursor then covers everything handed over), the lease is released, and
//! another replica takes it at its next tick. A replica that dies stops renewing: its leases
//! expire after `lease_ms` and the others take them over. A replica that cannot renew stops
//! polling after 60% of `lease_ms`, long before anyone else may start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use scylla::client::session::Session;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};
use sha2::{Digest, Sha256};
use tokio::sync::{watch, OnceCell};

use crate::config::CqlConfig;
use crate::retry::sleep_or_stop;
use crate::telemetry;

/// Share of the lease a holder keeps polling without a successful renewal.
const HOLD_FRACTION: f64 = 0.6;

/// What the pollers of a group may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Another replica holds the group, or nobody yet: wait.
    Idle,
    /// Held here under this epoch: poll.
    Held(i64),
    /// Held here under this epoch, but being handed on: finish the current cycle, then stop.
    Draining(i64),
}

/// A lease operation that failed (the CQL store unreachable, an unexpected answer).
#[derive(Debug, thiserror::Error)]
#[error("poll lease: {0}")]
pub struct LeaseError(String);

fn lease_error(err: impl std::fmt::Display) -> LeaseError {
    LeaseError(err.to_string())
}

/// One group's state, shared by the lease keeper and the group's pollers.
struct Slot {
    state: watch::Sender<LeaseState>,
    /// Pollers of the group polling right now.
    active: Arc<AtomicUsize>,
    /// Until when its pollers may call the platform without another successful renewal;
    /// they check it before every call.
    hold_until: std::sync::Mutex<Option<Instant>>,
    /// A poller of the group cannot run (unreadable config, invalid requests): the keeper lets
    /// the group go and does not take it again, so a replica where it works can.
    broken: std::sync::atomic::AtomicBool,
}

impl Slot {
    fn set_hold(&self, until: Option<Instant>) {
        *self.hold_until.lock().expect("hold lock") = until;
    }
}

/// A lease this replica holds (the keeper's own record).
struct Held {
    epoch: i64,
    /// Until when its pollers may poll without another successful renewal.
    hold_until: Instant,
    /// Since when it is being handed on to another replica.
    handing_on: Option<Instant>,
}

/// The prepared statements of a connected keeper.
struct Cql {
    session: Session,
    heartbeat: PreparedStatement,
    members: PreparedStatement,
    leave: PreparedStatement,
    read: PreparedStatement,
    create: PreparedStatement,
    take: PreparedStatement,
    renew: PreparedStatement,
    read_state: PreparedStatement,
    save_cursor: PreparedStatement,
    save_grant: PreparedStatement,
}

impl Cql {
    async fn prepare(session: Session, keyspace: &str) -> Result<Cql, LeaseError> {
        let prepare = |cql: String, serial_read: bool| {
            let session = &session;
            async move {
                let mut statement = session.prepare(cql).await.map_err(lease_error)?;
                // SERIAL, not LOCAL_SERIAL: replicas in several datacenters must agree on one
                // holder (a lease changes hands rarely; the cross-datacenter round trip is fine).
                statement.set_serial_consistency(Some(SerialConsistency::Serial));
                if serial_read {
                    // A plain read may miss a transaction in progress; a serial read completes it.
                    statement.set_consistency(Consistency::Serial);
                } else {
                    statement.set_consistency(Consistency::Quorum);
                }
                Ok::<_, LeaseError>(statement)
            }
        };
        let ks = keyspace;
        Ok(Cql {
            heartbeat: prepare(
                format!("INSERT INTO {ks}.poll_replicas (holder, seen_at) VALUES (?, ?) USING TTL ?"),
                false,
            )
            .await?,
            members: prepare(format!("SELECT holder FROM {ks}.poll_replicas"), false).await?,
            leave: prepare(format!("DELETE FROM {ks}.poll_replicas WHERE holder = ?"), false).await?,
            read: prepare(format!("SELECT holder, epoch, expires_at FROM {ks}.poll_leases WHERE lease = ?"), true)
                .await?,
            create: prepare(
                format!(
                    "INSERT INTO {ks}.poll_leases (lease, holder, epoch, expires_at) VALUES (?, ?, 1, ?) IF NOT EXISTS"
                ),
                false,
            )
            .await?,
            take: prepare(
                format!(
                    "UPDATE {ks}.poll_leases SET holder = ?, epoch = ?, expires_at = ? WHERE lease = ? IF epoch = ? AND expires_at = ?"
                ),
                false,
            )
            .await?,
            renew: prepare(
                format!("UPDATE {ks}.poll_leases SET expires_at = ? WHERE lease = ? IF holder = ? AND epoch = ?"),
                false,
            )
            .await?,
            read_state: prepare(format!("SELECT cursors, grants FROM {ks}.poll_leases WHERE lease = ?"), true).await?,
            save_cursor: prepare(
                format!("UPDATE {ks}.poll_leases SET cursors[?] = ? WHERE lease = ? IF holder = ? AND epoch = ?"),
                false,
            )
            .await?,
            save_grant: prepare(
                format!("UPDATE {ks}.poll_leases SET grants[?] = ? WHERE lease = ? IF grants[?] = ?"),
                false,
            )
            .await?,
            session,
        })
    }

    /// Runs a lightweight transaction: true if it applied.
    async fn applied(&self, statement: &PreparedStatement, values: impl SerializeRow) -> Result<bool, LeaseError> {
        let result = self.session.execute_unpaged(statement, values).await.map_err(lease_error)?;
        let rows = result.into_rows_result().map_err(lease_error)?;
        let first = rows.rows::<Row>().map_err(lease_error)?.next().transpose().map_err(lease_error)?;
        Ok(matches!(first.and_then(|row| row.columns.into_iter().next().flatten()), Some(CqlValue::Boolean(true))))
    }
}

/// The leases of this replica: one slot per group, and the connection the keeper opens.
pub struct Leases {
    holder: String,
    lease: Duration,
    config: CqlConfig,
    slots: HashMap<String, Slot>,
    cql: OnceCell<Cql>,
}

/// The group a poller belongs to: its account, or its app where the quota is per app.
pub fn group_of(connector: &str, scope: inquiry_connectors::poll::QuotaScope, account: &str, app: &str) -> String {
    match scope {
        inquiry_connectors::poll::QuotaScope::Account => format!("{connector}/{account}"),
        inquiry_connectors::poll::QuotaScope::App => format!("{connector}/app:{app}"),
    }
}

impl Leases {
    /// Leases for `groups`, held as `replica` (with a random suffix: a restarted process is a new
    /// holder and waits for its predecessor's leases to expire or be released).
    pub fn new(config: &CqlConfig, replica: &str, lease: Duration, groups: impl IntoIterator<Item = String>) -> Leases {
        let slots = groups
            .into_iter()
            .map(|group| {
                let slot = Slot {
                    state: watch::channel(LeaseState::Idle).0,
                    active: Arc::default(),
                    hold_until: Default::default(),
                    broken: Default::default(),
                };
                (group, slot)
            })
            .collect();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        Leases {
            holder: format!("{replica}/{}", &suffix[..8]),
            lease,
            config: config.clone(),
            slots,
            cql: OnceCell::new(),
        }
    }

    /// The holder name this replica writes into its leases.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The handle a poller of `group` waits on.
    pub fn handle(self: &Arc<Leases>, group: &str) -> LeaseHandle {
        let slot = self.slots.get(group).expect("every poller's group has a slot");
        LeaseHandle { leases: self.clone(), group: group.to_owned(), state: slot.state.subscribe() }
    }

    fn cql(&self) -> Result<&Cql, LeaseError> {
        self.cql.get().ok_or_else(|| LeaseError("not connected".to_owned()))
    }

    /// Keeps the leases until `stop`: heartbeats, renews, takes its share, hands on what is over
    /// it. On stop, waits for the pollers to stop and releases every lease it holds.
    pub async fn keep(self: Arc<Leases>, mut stop: watch::Receiver<()>) {
        let tick = (self.lease / 10).max(Duration::from_millis(100));
        let mut held: HashMap<String, Held> = HashMap::new();
        gauge!(telemetry::POLL_LEASE_GROUPS).set(self.slots.len() as f64);
        loop {
            if self.cql.get().is_none() {
                if let Err(err) = self.connect().await {
                    tracing::warn!(error = %err, "poll leases: cannot reach the cql store yet; retrying");
                }
            } else {
                // A round that hangs (the store unreachable) must not keep pollers polling past
                // their hold: it is cut short, and the holds are checked every tick.
                match tokio::time::timeout(self.lease / 4, self.round(&mut held)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => tracing::warn!(error = %err, "poll leases: round failed"),
                    Err(_) => tracing::warn!("poll leases: round timed out"),
                }
            }
            self.expire_unrenewed(&mut held);
            gauge!(telemetry::POLL_LEASES_HELD).set(held.len() as f64);
            if sleep_or_stop(tick, &mut stop).await {
                break;
            }
        }
        self.release_all(held).await;
    }

    async fn connect(&self) -> Result<(), LeaseError> {
        let session = crate::sinks::cql::connect(&self.config).await.map_err(lease_error)?;
        let cql = Cql::prepare(session, &self.config.keyspace).await?;
        let _ = self.cql.set(cql);
        tracing::info!(holder = %self.holder, groups = self.slots.len(), "poll leases connected");
        Ok(())
    }

    /// One tick: renew, heartbeat and count the live replicas, hand on or take.
    async fn round(&self, held: &mut HashMap<String, Held>) -> Result<(), LeaseError> {
        let cql = self.cql()?;
        // Renewals first, all at once: nothing else in the round may delay them.
        let renewals = held.iter().map(|(group, lease)| async move {
            let sent = Instant::now();
            let expires_at = now_ms() + self.lease.as_millis() as i64;
            (group.clone(), sent, cql.applied(&cql.renew, (expires_at, group, &self.holder, lease.epoch)).await)
        });
        for (group, sent, renewed) in futures_util::future::join_all(renewals).await {
            match renewed {
                Ok(true) => {
                    let until = sent + self.lease.mul_f64(HOLD_FRACTION);
                    held.get_mut(&group).expect("renewed from held").hold_until = until;
                    self.slots[&group].set_hold(Some(until));
                }
                Ok(false) => {
                    // Someone else holds it now (this replica was cut off past the expiry).
                    tracing::warn!(lease = %group, "poll lease lost to another replica");
                    held.remove(&group);
                    self.let_go(&group);
                }
                Err(err) => tracing::warn!(lease = %group, error = %err, "poll lease renewal failed"),
            }
        }

        let ttl = i32::try_from(self.lease.as_secs().max(1)).unwrap_or(i32::MAX);
        cql.session.execute_unpaged(&cql.heartbeat, (&self.holder, now_ms(), ttl)).await.map_err(lease_error)?;
        let members = cql.session.execute_unpaged(&cql.members, ()).await.map_err(lease_error)?;
        let live = members.into_rows_result().map_err(lease_error)?.rows_num().max(1);
        let share = self.slots.len().div_ceil(live);

        // Broken groups go; over the share: hand on the groups this replica ranks lowest.
        for (group, lease) in held.iter_mut() {
            if lease.handing_on.is_none() && self.slots[group].broken.load(Ordering::SeqCst) {
                lease.handing_on = Some(Instant::now());
                self.slots[group].state.send_replace(LeaseState::Idle);
            }
        }
        let keeping = held.values().filter(|l| l.handing_on.is_none()).count();
        if keeping > share {
            let mut ranked: Vec<&String> =
                held.iter().filter(|(_, l)| l.handing_on.is_none()).map(|(g, _)| g).collect();
            ranked.sort_by_key(|g| std::cmp::Reverse(self.rank(g)));
            let over: Vec<String> = ranked.into_iter().skip(share).cloned().collect();
            for group in over {
                let lease = held.get_mut(&group).expect("ranked from held");
                lease.handing_on = Some(Instant::now());
                self.slots[&group].state.send_replace(LeaseState::Draining(lease.epoch));
                tracing::info!(lease = %group, share, live, "handing the poll lease on");
            }
        }
        // Released once its pollers stopped: at the end of their cycle, or cut short when a
        // cycle runs longer than the lease (the next holder then fetches that cycle again, with
        // the same inquiry ids).
        let mut released = Vec::new();
        for (group, lease) in held.iter() {
            let Some(since) = lease.handing_on else { continue };
            let slot = &self.slots[group];
            if slot.active.load(Ordering::SeqCst) == 0 {
                released.push(group.clone());
            } else if since.elapsed() > self.lease && *slot.state.borrow() == LeaseState::Draining(lease.epoch) {
                tracing::info!(lease = %group, "the poll cycle runs long; stopping it to hand the lease on");
                slot.state.send_replace(LeaseState::Idle);
            }
        }
        for group in released {
            let lease = held.remove(&group).expect("listed from held");
            self.release(&group, lease.epoch).await;
        }

        // Under the share: take free groups, those this replica ranks highest first.
        if held.len() < share {
            let mut free: Vec<&String> = self
                .slots
                .iter()
                .filter(|(g, slot)| !held.contains_key(*g) && !slot.broken.load(Ordering::SeqCst))
                .map(|(g, _)| g)
                .collect();
            free.sort_by_key(|g| std::cmp::Reverse(self.rank(g)));
            for group in free {
                if held.len() >= share {
                    break;
                }
                let sent = Instant::now();
                match self.try_take(group).await {
                    Ok(Some(epoch)) => {
                        let hold_until = sent + self.lease.mul_f64(HOLD_FRACTION);
                        held.insert(group.clone(), Held { epoch, hold_until, handing_on: None });
                        self.slots[group].set_hold(Some(hold_until));
                        self.slots[group].state.send_replace(LeaseState::Held(epoch));
                        counter!(telemetry::POLL_LEASE_CHANGES, "change" => "acquired").increment(1);
                        tracing::info!(lease = %group, epoch, "poll lease acquired");
                    }
                    Ok(None) => {}
                    Err(err) => tracing::warn!(lease = %group, error = %err, "taking the poll lease failed"),
                }
            }
        }
        Ok(())
    }

    /// Stops the pollers of `group` at once (the lease is gone or going).
    fn let_go(&self, group: &str) {
        let slot = &self.slots[group];
        slot.set_hold(None);
        slot.state.send_replace(LeaseState::Idle);
        counter!(telemetry::POLL_LEASE_CHANGES, "change" => "lost").increment(1);
    }

    /// Takes `group` if nobody holds it or its lease expired: its new epoch, or `None`.
    async fn try_take(&self, group: &str) -> Result<Option<i64>, LeaseError> {
        let cql = self.cql()?;
        let now = now_ms();
        let expires_at = now + self.lease.as_millis() as i64;
        let current = cql.session.execute_unpaged(&cql.read, (group,)).await.map_err(lease_error)?;
        let current = current
            .into_rows_result()
            .map_err(lease_error)?
            .maybe_first_row::<(Option<String>, Option<i64>, Option<i64>)>()
            .map_err(lease_error)?;
        match current {
            None => Ok(cql.applied(&cql.create, (group, &self.holder, expires_at)).await?.then_some(1)),
            Some((_, Some(epoch), Some(expired_at))) if expired_at < now => {
                let taken =
                    cql.applied(&cql.take, (&self.holder, epoch + 1, expires_at, group, epoch, expired_at)).await?;
                Ok(taken.then_some(epoch + 1))
            }
            Some(_) => Ok(None),
        }
    }

    /// Gives `group` up (expired at once, so the next replica's tick takes it).
    async fn release(&self, group: &str, epoch: i64) {
        self.slots[group].set_hold(None);
        self.slots[group].state.send_replace(LeaseState::Idle);
        if let Ok(cql) = self.cql() {
            match cql.applied(&cql.renew, (0i64, group, &self.holder, epoch)).await {
                Ok(true) => tracing::info!(lease = %group, epoch, "poll lease released"),
                Ok(false) => tracing::info!(lease = %group, epoch, "poll lease was no longer held here"),
                Err(err) => tracing::warn!(lease = %group, error = %err, "poll lease release failed; it expires"),
            }
        }
        counter!(telemetry::POLL_LEASE_CHANGES, "change" => "released").increment(1);
    }

    /// Lets go of every lease not renewed in time: its pollers stop at once.
    fn expire_unrenewed(&self, held: &mut HashMap<String, Held>) {
        let now = Instant::now();
        held.retain(|group, lease| {
            if lease.hold_until > now {
                return true;
            }
            tracing::warn!(lease = %group, "poll lease not renewed in time; its pollers stop");
            self.let_go(group);
            false
        });
    }

    /// On shutdown: waits (up to 60% of the lease) for the pollers to stop, releases the leases
    /// of those stopped and leaves the replica list, so others take over at once rather than
    /// after the expiry.
    async fn release_all(&self, held: HashMap<String, Held>) {
        let deadline = Instant::now() + self.lease.mul_f64(HOLD_FRACTION);
        while self.slots.values().any(|s| s.active.load(Ordering::SeqCst) > 0) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (group, lease) in held {
            if self.slots[&group].active.load(Ordering::SeqCst) > 0 {
                // Its poller did not stop in time: the lease expires rather than letting
                // another replica in while it may still call.
                continue;
            }
            self.release(&group, lease.epoch).await;
        }
        if let Ok(cql) = self.cql() {
            let _ = cql.session.execute_unpaged(&cql.leave, (&self.holder,)).await;
        }
        gauge!(telemetry::POLL_LEASES_HELD).set(0.0);
    }

    /// This replica's rendezvous rank for `group`: every replica ranks the groups differently,
    /// so free groups are tried in a different order by each and spread without contention.
    fn rank(&self, group: &str) -> u64 {
        let digest =
            Sha256::new().chain_update(group.as_bytes()).chain_update([0]).chain_update(&self.holder).finalize();
        u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
    }
}

/// A poller's view of its group's lease, and the group's state kept with it.
pub struct LeaseHandle {
    leases: Arc<Leases>,
    group: String,
    state: watch::Receiver<LeaseState>,
}

/// Counts a poller as polling its group while alive (the keeper releases a drained lease only
/// once no poller of the group is polling).
pub struct Polling {
    active: Arc<AtomicUsize>,
}

impl Drop for Polling {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl LeaseHandle {
    /// Waits until the group is held here: its epoch and the guard to keep while polling, or
    /// `None` when `stop` fires first.
    pub async fn acquire(&mut self, stop: &mut watch::Receiver<()>) -> Option<(i64, Polling)> {
        let active = self.leases.slots[&self.group].active.clone();
        loop {
            if stop.has_changed().unwrap_or(true) {
                return None;
            }
            let current = *self.state.borrow_and_update();
            if let LeaseState::Held(epoch) = current {
                active.fetch_add(1, Ordering::SeqCst);
                let guard = Polling { active: active.clone() };
                // The keeper may have started draining in between: it then waits for this
                // poller (counted above) or this poller sees the drain (checked after counting).
                if *self.state.borrow() == LeaseState::Held(epoch) {
                    return Some((epoch, guard));
                }
                continue;
            }
            tokio::select! {
                changed = self.state.changed() => if changed.is_err() { return None },
                _ = stop.changed() => return None,
            }
        }
    }

    /// True while a poller of the group may call the platform: the group is held here under
    /// `epoch` (or being handed on, its cycle finishing) and the lease was renewed recently
    /// enough. Checked before every call, so a replica cut off from the CQL store stops calling
    /// after 60% of the lease, whatever its keeper is doing.
    pub fn may_call(&self, epoch: i64) -> bool {
        let held = matches!(*self.state.borrow(), LeaseState::Held(e) | LeaseState::Draining(e) if e == epoch);
        let slot = &self.leases.slots[&self.group];
        let hold = *slot.hold_until.lock().expect("hold lock");
        held && hold.is_some_and(|until| Instant::now() < until)
    }

    /// The lease turned out to be another replica's (a fenced write was refused): its pollers
    /// stop at once; the keeper drops it at its next renewal.
    pub fn lost(&self, epoch: i64) {
        let slot = &self.leases.slots[&self.group];
        if matches!(*self.state.borrow(), LeaseState::Held(e) | LeaseState::Draining(e) if e == epoch) {
            slot.set_hold(None);
            slot.state.send_replace(LeaseState::Idle);
        }
    }

    /// A poller of the group cannot run here: the keeper lets the group go for good.
    pub fn give_up(&self) {
        self.leases.slots[&self.group].broken.store(true, Ordering::SeqCst);
    }

    /// Resolves once the group is no longer held under `epoch` (lost, or draining if
    /// `drain_too`).
    pub async fn ended(&self, epoch: i64, drain_too: bool) {
        let mut state = self.state.clone();
        loop {
            let current = *state.borrow_and_update();
            match current {
                LeaseState::Held(e) if e == epoch => {}
                LeaseState::Draining(e) if e == epoch && !drain_too => {}
                _ => return,
            }
            if state.changed().await.is_err() {
                return;
            }
        }
    }

    /// The cursor of `account` and its sealed token grant, as the group's last holder left them.
    pub async fn state_of(&self, account: &str) -> Result<(Option<String>, Option<Vec<u8>>), LeaseError> {
        let cql = self.leases.cql()?;
        let result = cql.session.execute_unpaged(&cql.read_state, (&self.group,)).await.map_err(lease_error)?;
        type Maps = (Option<HashMap<String, String>>, Option<HashMap<String, Vec<u8>>>);
        let row = result.into_rows_result().map_err(lease_error)?.maybe_first_row::<Maps>().map_err(lease_error)?;
        let (cursors, grants) = row.unwrap_or_default();
        Ok((cursors.and_then(|mut c| c.remove(account)), grants.and_then(|mut g| g.remove(account))))
    }

    /// Stores the cursor of `account`, fenced by `epoch`: false if the lease is no longer this
    /// replica's (nothing written).
    pub async fn save_cursor(&self, epoch: i64, account: &str, cursor: &str) -> Result<bool, LeaseError> {
        let cql = self.leases.cql()?;
        cql.applied(&cql.save_cursor, (account, cursor, &self.group, &self.leases.holder, epoch)).await
    }

    /// Stores the sealed token grant of `account` if the stored one is still `previous` (the
    /// grant it was refreshed from; `None`: none stored). A rotated refresh token replaces the
    /// one it came from whoever holds the lease now, since the platform has retired the old one;
    /// false when another grant was stored meanwhile.
    pub async fn save_grant(&self, account: &str, sealed: &[u8], previous: Option<&[u8]>) -> Result<bool, LeaseError> {
        let cql = self.leases.cql()?;
        cql.applied(&cql.save_grant, (account, sealed, &self.group, account, previous)).await
    }
}

/// Wall-clock Unix milliseconds (lease expiries are compared across replicas).
fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
