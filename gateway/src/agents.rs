//! The agent directory's run-time state: load, capacity and presence set through
//! `PUT /v1/agents/{id}`, kept where the next start and every replica see it.
//!
//! - `[routing] agent_state = "local"` (the default): in the embedded store; a restart keeps
//!   every update.
//! - `agent_state = "cql"`: in the CQL store's `agent_states` table. An update is written there
//!   (at the configured consistency) before it is answered, and every replica reads the table
//!   every `agent_refresh_ms`, so a plugin on any replica sees an agent go offline within that
//!   time.
//!
//! Which agents exist and which team each is in stays in the configuration (`[[routing.agents]]`);
//! an update for an agent the configuration does not name is refused, and a stored state of an
//! agent removed from it is ignored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, OnceCell};

use crate::config::{CqlConfig, StatePlace};
use crate::plugins::host::AgentDirectory;
use crate::store::{Store, StoreError};

/// A change of one agent's state; absent fields keep their value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentUpdate {
    /// Inquiries the agent has open now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<u32>,
    /// Most inquiries the agent may have open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// Whether the agent takes inquiries now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
}

impl AgentUpdate {
    /// `self` with the fields `later` sets replaced.
    fn then(self, later: AgentUpdate) -> AgentUpdate {
        AgentUpdate {
            load: later.load.or(self.load),
            capacity: later.capacity.or(self.capacity),
            online: later.online.or(self.online),
        }
    }
}

/// Why an update was not kept.
#[derive(Debug, thiserror::Error)]
pub enum AgentStateError {
    /// The configuration names no agent with this id.
    #[error("no agent with that id")]
    Unknown,
    /// The embedded store refused the write.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The CQL store is not reachable (yet) or refused the write.
    #[error("cql store: {0}")]
    Cql(String),
}

/// The prepared statements of the shared table.
struct Cql {
    session: Session,
    select: PreparedStatement,
}

/// Where the states are kept.
enum Keeper {
    /// The embedded store; its read-modify-writes one at a time.
    Local { store: Store, writes: Arc<std::sync::Mutex<()>> },
    /// The CQL store's `agent_states` table.
    Shared(Box<SharedTable>),
}

/// The CQL store's `agent_states` table, as one replica uses it.
struct SharedTable {
    config: CqlConfig,
    cql: OnceCell<Cql>,
    /// Serializes this replica's writes with applying what a refresh read.
    writing: tokio::sync::Mutex<()>,
    /// Writes made here so far: a refresh that overlapped one is not applied.
    writes: AtomicU64,
}

/// The agent directory and where its run-time state is kept.
pub struct AgentStates {
    directory: Arc<AgentDirectory>,
    keeper: Keeper,
}

impl AgentStates {
    /// The states of `directory`'s agents, kept in `place`: the embedded store `store`, or with
    /// [`StatePlace::Cql`] the CQL store of `cql_config` (a validated config has one).
    pub fn new(
        directory: Arc<AgentDirectory>,
        store: Store,
        place: StatePlace,
        cql_config: Option<CqlConfig>,
    ) -> AgentStates {
        let keeper = match (place, cql_config) {
            (StatePlace::Cql, Some(config)) => Keeper::Shared(Box::new(SharedTable {
                config,
                cql: OnceCell::new(),
                writing: tokio::sync::Mutex::new(()),
                writes: AtomicU64::new(0),
            })),
            _ => Keeper::Local { store, writes: Arc::default() },
        };
        AgentStates { directory, keeper }
    }

    /// Applies the states the embedded store kept (before the gateway takes traffic; blocking).
    /// With the CQL store, [`AgentStates::refresh`] brings them in once connected.
    pub fn restore_local(&self) -> Result<usize, StoreError> {
        let Keeper::Local { store, .. } = &self.keeper else { return Ok(0) };
        let mut applied = 0;
        for (id, bytes) in store.agent_states()? {
            let Ok(update) = serde_json::from_slice::<AgentUpdate>(&bytes) else { continue };
            applied += usize::from(self.directory.apply(&id, update));
        }
        Ok(applied)
    }

    /// Keeps `update` of agent `id` and applies it: written to the embedded store or the CQL
    /// store first, so an answered update survives a restart and reaches every replica.
    pub async fn update(&self, id: &str, update: AgentUpdate) -> Result<(), AgentStateError> {
        if !self.directory.contains(id) {
            return Err(AgentStateError::Unknown);
        }
        match &self.keeper {
            Keeper::Local { store, writes } => {
                let (store, lock, id) = (store.clone(), writes.clone(), id.to_owned());
                let directory = self.directory.clone();
                crate::store::off_the_workers(move || {
                    // One update at a time, kept then applied: two updates of one agent both keep
                    // their fields, and the directory ends as the store does.
                    let _one_at_a_time = lock.lock().expect("agent state lock");
                    let kept = store.agent_state(&id)?.and_then(|b| serde_json::from_slice::<AgentUpdate>(&b).ok());
                    let merged = kept.unwrap_or_default().then(update);
                    let mut batch = store.batch();
                    batch.put_agent_state(&id, &serde_json::to_vec(&merged).expect("updates serialize"));
                    batch.commit()?;
                    directory.apply(&id, update);
                    Ok(())
                })
                .await?;
            }
            Keeper::Shared(table) => {
                let _one_at_a_time = table.writing.lock().await;
                table.write(id, update).await?;
                // A refresh that read the table before this write must not undo it.
                table.writes.fetch_add(1, Ordering::SeqCst);
                self.directory.apply(id, update);
            }
        }
        Ok(())
    }

    /// With the CQL store: reads the shared states every `interval` until `stop` (a failed read
    /// is logged and tried again at the next tick). Returns at once otherwise.
    pub async fn refresh(self: Arc<Self>, interval: Duration, stop: watch::Receiver<()>) {
        let Keeper::Shared(table) = &self.keeper else { return };
        crate::retry::every(interval, stop, "reading agent states from the cql store", || async {
            if self.directory.is_empty() {
                return Ok(()); // no agents (yet: a reload may add them): nothing to read for
            }
            table.read_into(&self.directory).await.map_err(|err| err.to_string())
        })
        .await;
    }
}

impl AgentDirectory {
    /// Applies one update; false when the configuration has no such agent.
    fn apply(&self, id: &str, update: AgentUpdate) -> bool {
        self.update(id, update.load, update.capacity, update.online)
    }
}

fn cql_error(err: impl std::fmt::Display) -> AgentStateError {
    AgentStateError::Cql(err.to_string())
}

impl SharedTable {
    /// The CQL connection, opened on first use.
    async fn cql(&self) -> Result<&Cql, AgentStateError> {
        self.cql
            .get_or_try_init(|| async {
                let session = crate::sinks::cql::connect(&self.config).await.map_err(cql_error)?;
                let ks = &self.config.keyspace;
                let mut select = session
                    .prepare(format!("SELECT agent, load, capacity, online FROM {ks}.agent_states"))
                    .await
                    .map_err(cql_error)?;
                select.set_consistency(crate::sinks::cql::consistency_of(&self.config));
                Ok(Cql { session, select })
            })
            .await
    }

    /// Writes the fields `update` sets (the others keep their stored value).
    async fn write(&self, id: &str, update: AgentUpdate) -> Result<(), AgentStateError> {
        let cql = self.cql().await?;
        let mut sets = Vec::new();
        let mut values = Vec::new();
        let to_int = |n: u32| CqlValue::Int(i32::try_from(n).unwrap_or(i32::MAX));
        if let Some(load) = update.load {
            sets.push("load = ?");
            values.push(to_int(load));
        }
        if let Some(capacity) = update.capacity {
            sets.push("capacity = ?");
            values.push(to_int(capacity));
        }
        if let Some(online) = update.online {
            sets.push("online = ?");
            values.push(CqlValue::Boolean(online));
        }
        if sets.is_empty() {
            return Ok(());
        }
        values.push(CqlValue::Text(id.to_owned()));
        let text = format!("UPDATE {}.agent_states SET {} WHERE agent = ?", self.config.keyspace, sets.join(", "));
        let mut statement = scylla::statement::unprepared::Statement::new(text);
        statement.set_consistency(crate::sinks::cql::consistency_of(&self.config));
        cql.session.query_unpaged(statement, values).await.map_err(cql_error)?;
        Ok(())
    }

    /// Reads every agent's shared state and applies it to `directory`.
    async fn read_into(&self, directory: &AgentDirectory) -> Result<(), AgentStateError> {
        let cql = self.cql().await?;
        let writes_before = self.writes.load(Ordering::SeqCst);
        let result = cql.session.execute_unpaged(&cql.select, ()).await.map_err(cql_error)?;
        let rows = result.into_rows_result().map_err(cql_error)?;
        let _no_write_meanwhile = self.writing.lock().await;
        if self.writes.load(Ordering::SeqCst) != writes_before {
            return Ok(()); // an update was written meanwhile: the next read has it
        }
        for row in rows.rows::<(String, Option<i32>, Option<i32>, Option<bool>)>().map_err(cql_error)? {
            let (id, load, capacity, online) = row.map_err(cql_error)?;
            let to_u32 = |n: Option<i32>| n.map(|n| u32::try_from(n).unwrap_or(0));
            let update = AgentUpdate { load: to_u32(load), capacity: to_u32(capacity), online };
            directory.apply(&id, update); // false for an agent the config no longer names
        }
        Ok(())
    }
}
