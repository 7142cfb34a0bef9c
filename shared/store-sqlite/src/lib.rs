//! The embedded store: SQLite, durable on local disk, or in memory for tests.
//!
//! A file-backed store has one writer connection, fed by a group-commit queue (SQLite runs one
//! writer at a time anyway), and a few reader connections: under write-ahead logging, reads go on
//! while a commit waits for its fsync, so a request's read never queues behind another's write.
//! An in-memory store (tests) has the one connection for both. Writes, lists and audit queries
//! run on tokio's blocking pool, so a slow disk or a long scan never stalls the async runtime;
//! point reads (a record or a counter by its key) run on the async worker when a reader is free,
//! see [`SqliteStore::read_point`].

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior, named_params};
use uuid::Uuid;

use agentidp_core::domain::{
    Actor, Agent, AgentStatus, AuditAction, AuditEvent, Credential, CredentialStatus, Organization,
    Outcome, Plan,
};
use agentidp_core::store::{
    AgentReader, AuditPage, AuditPosition, AuditQuery, AuditReader, Commit, CredentialReader,
    OrgReader, RevocationReader, StoreError, StoreResult, ThrottleReader, Usage, Write,
};

/// Bumped whenever the schema below changes; a database written by a newer build is refused
/// rather than misread.
const SCHEMA_VERSION: i64 = 2;

/// Version 2 keeps a copy of the agent's scopes on each credential; a version-1 file gets the
/// column, filled from its agents.
const MIGRATE_1_TO_2: &str = "
ALTER TABLE credentials ADD COLUMN agent_scopes TEXT NOT NULL DEFAULT '[]';
UPDATE credentials SET agent_scopes = (
    SELECT scopes FROM agents WHERE agents.org_id = credentials.org_id AND agents.agent_id = credentials.agent_id
) WHERE EXISTS (SELECT 1 FROM agents WHERE agents.org_id = credentials.org_id AND agents.agent_id = credentials.agent_id);
";

/// Long enough for the operator CLI's short transactions to finish while the server holds the
/// write lock, short enough that a stuck writer surfaces as `Unavailable` instead of a hang.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Enough for every statement the store runs, each audit filter combination included, so the
/// hot ones are never evicted.
const STATEMENT_CACHE_CAPACITY: usize = 64;

/// Uuids are stored as hyphenated lowercase text: readable with the `sqlite3` shell, and its byte
/// order equals `Uuid`'s order, which the audit tie-break relies on.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS organizations (
    org_id        TEXT PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL,
    plan          TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS agents (
    org_id               TEXT NOT NULL,
    agent_id             TEXT NOT NULL,
    name                 TEXT NOT NULL,
    description          TEXT,
    owner                TEXT,
    capabilities         TEXT NOT NULL,
    scopes               TEXT NOT NULL,
    metadata             TEXT NOT NULL,
    status               TEXT NOT NULL,
    created_at_ms        INTEGER NOT NULL,
    updated_at_ms        INTEGER NOT NULL,
    decommissioned_at_ms INTEGER,
    active_credentials   INTEGER NOT NULL,
    version              INTEGER NOT NULL,
    PRIMARY KEY (org_id, agent_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS agents_by_age ON agents (org_id, created_at_ms, agent_id);

CREATE TABLE IF NOT EXISTS agent_names (
    org_id   TEXT NOT NULL,
    name_key TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    PRIMARY KEY (org_id, name_key)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS credentials (
    credential_id TEXT PRIMARY KEY NOT NULL,
    client_id     TEXT NOT NULL UNIQUE,
    agent_id      TEXT NOT NULL,
    org_id        TEXT NOT NULL,
    secret_hash   TEXT NOT NULL,
    status        TEXT NOT NULL,
    agent_status  TEXT NOT NULL,
    agent_scopes  TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    revoked_at_ms INTEGER,
    rotated_at_ms INTEGER,
    version       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS credentials_by_agent ON credentials (org_id, agent_id, created_at_ms, credential_id);

CREATE TABLE IF NOT EXISTS agent_counts (
    org_id TEXT PRIMARY KEY NOT NULL,
    agents INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS token_request_counts (
    org_id   TEXT NOT NULL,
    month    TEXT NOT NULL,
    requests INTEGER NOT NULL,
    PRIMARY KEY (org_id, month)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS revoked_tokens (
    jti           TEXT PRIMARY KEY NOT NULL,
    org_id        TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS tallies (
    key           TEXT PRIMARY KEY NOT NULL,
    count         INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS audit_events (
    event_id         TEXT PRIMARY KEY NOT NULL,
    org_id           TEXT NOT NULL,
    timestamp_ms     INTEGER NOT NULL,
    action           TEXT NOT NULL,
    outcome          TEXT NOT NULL,
    actor            TEXT NOT NULL,
    subject_agent_id TEXT,
    resource         TEXT NOT NULL,
    request_id       TEXT NOT NULL,
    source_ip        TEXT,
    user_agent       TEXT,
    details          TEXT NOT NULL,
    expires_at_ms    INTEGER NOT NULL
);
-- One index per filter that narrows by equality, each ending in the page order, so a page costs
-- its own size whichever filter is set. The outcome filter alone is coarse (two values) and
-- rides on the first index.
CREATE INDEX IF NOT EXISTS audit_by_time ON audit_events (org_id, timestamp_ms, event_id);
CREATE INDEX IF NOT EXISTS audit_by_agent ON audit_events (org_id, subject_agent_id, timestamp_ms, event_id);
CREATE INDEX IF NOT EXISTS audit_by_action ON audit_events (org_id, action, timestamp_ms, event_id);
";

const AGENT_COLUMNS: &str = "org_id, agent_id, name, description, owner, capabilities, scopes, metadata, status, \
     created_at_ms, updated_at_ms, decommissioned_at_ms, active_credentials, version";

const CREDENTIAL_COLUMNS: &str = "credential_id, client_id, agent_id, org_id, secret_hash, status, agent_status, \
     created_at_ms, expires_at_ms, revoked_at_ms, rotated_at_ms, version, agent_scopes";

const AUDIT_COLUMNS: &str = "event_id, org_id, timestamp_ms, action, outcome, actor, subject_agent_id, resource, \
     request_id, source_ip, user_agent, details, expires_at_ms";

pub struct SqliteStore {
    /// Every write goes through this connection.
    conn: Arc<Mutex<Connection>>,
    /// Connections that only read; empty for an in-memory database, whose data no second
    /// connection could see, and then reads use `conn`.
    readers: Arc<[Mutex<Connection>]>,
    next_reader: Arc<AtomicUsize>,
    commits: Arc<Mutex<CommitQueue>>,
}

/// Reader connections of a file-backed store: one per core, as reads are CPU work once the pages
/// are cached, within bounds.
fn reader_count() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8))
}

/// Group commit: batches that arrive while a transaction is being written wait, and the next
/// transaction carries all of them, each in its own savepoint, so one fsync serves many callers
/// and a batch whose condition fails rolls back alone.
#[derive(Default)]
struct CommitQueue {
    waiting: Vec<(Vec<Write>, tokio::sync::oneshot::Sender<StoreResult<()>>)>,
    /// A writer task is running; new batches only need to join the queue.
    writing: bool,
}

/// The path of SQLite's `-wal` or `-shm` file beside the database at `path`.
fn sidecar(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

impl SqliteStore {
    /// Opens (creating if needed) a durable database file that the server and the operator CLI
    /// may have open at the same time.
    pub fn open(path: &Path) -> StoreResult<Self> {
        // SQLite gives its -wal and -shm files the database file's permissions, so a private
        // database file keeps them all private (bcrypt hashes, the audit log). A file an older
        // version created with the umask's permissions is tightened too.
        for file in [
            path.to_owned(),
            sidecar(path, "-wal"),
            sidecar(path, "-shm"),
        ] {
            if file == path || file.exists() {
                agentidp_core::files::make_private(&file).map_err(|e| {
                    StoreError::Internal(format!("making {} private: {e}", file.display()))
                })?;
            }
        }
        let conn = Connection::open(path).map_err(db)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
        // WAL lets readers proceed while the other process writes.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))
            .map_err(db)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Internal(format!(
                "{} cannot use write-ahead logging (journal mode stayed {mode})",
                path.display()
            )));
        }
        // FULL, not NORMAL: under WAL, NORMAL can lose the last commits on power loss, and a lost
        // commit here may be a credential revocation that silently comes undone. One fsync per
        // commit is cheap at the local server's rates.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        let mut store = Self::with_schema(conn)?;
        let readers = (0..reader_count())
            .map(|_| {
                let reader = Connection::open(path).map_err(db)?;
                reader.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
                reader.pragma_update(None, "query_only", true).map_err(db)?;
                reader.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
                Ok(Mutex::new(reader))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        store.readers = readers.into();
        Ok(store)
    }

    /// A private database that vanishes with the value; for tests.
    pub fn in_memory() -> StoreResult<Self> {
        Self::with_schema(Connection::open_in_memory().map_err(db)?)
    }

    fn with_schema(mut conn: Connection) -> StoreResult<Self> {
        // Immediate, so two processes opening a fresh file at once create the schema only once.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let found: i64 = tx
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(db)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::Internal(format!(
                "database schema version {found} is newer than this build's {SCHEMA_VERSION}"
            )));
        }
        if found == 1 {
            tx.execute_batch(MIGRATE_1_TO_2).map_err(db)?;
        }
        tx.execute_batch(SCHEMA).map_err(db)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(db)?;
        tx.commit().map_err(db)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            readers: Arc::new([]),
            next_reader: Arc::default(),
            commits: Arc::default(),
        })
    }

    /// A point read: a record or counter by its key, a few index lookups in pages the OS has
    /// cached, tens of microseconds. On a free reader it runs right here, on the async worker,
    /// which costs less than handing it to the blocking pool and back (at the token endpoint's
    /// rate that hand-off was a visible share of the CPU, in the kernel). When every reader is
    /// busy it waits for one on the blocking pool, never on the worker.
    async fn read_point<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        if let Some(mut conn) = free_reader(&self.readers, 0) {
            return op(&mut conn);
        }
        self.read(op).await
    }

    /// Any read, on the blocking pool: a free reader connection, else the next in turn.
    async fn read<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        if self.readers.is_empty() {
            return self.run_on_writer(op).await;
        }
        let readers = Arc::clone(&self.readers);
        let turn = self.next_reader.fetch_add(1, Ordering::Relaxed);
        blocking(move || {
            let mut conn = free_reader(&readers, turn).unwrap_or_else(|| {
                readers[turn % readers.len()]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
            });
            op(&mut conn)
        })
        .await
    }

    /// Runs a write that is not a batch (a lockout tally) on the writer connection.
    async fn run_on_writer<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        blocking(move || op(&mut *conn.lock().map_err(|_| poisoned())?)).await
    }
}

/// The tables whose rows expire, each with the key a row is deleted by.
const EXPIRING_TABLES: [(&str, &str); 3] = [
    ("audit_events", "rowid"),
    ("revoked_tokens", "jti"),
    ("tallies", "key"),
];
/// Expired rows deleted per writer transaction, so a purge holds the writer for milliseconds
/// at a time and commits in between go on.
const PURGE_BATCH: usize = 500;
/// Expired keys one find on a reader collects before their deletion, bounding the memory a purge
/// holds.
const PURGE_KEYS_PER_FIND: usize = 20 * PURGE_BATCH;

impl SqliteStore {
    /// Deletes the rows that expired at or before `now`: audit events past retention, revocations
    /// of tokens that have expired, lapsed tallies. Reads already treat them as gone (audit
    /// events and tallies by their expiry; a revoked token by its own `exp`), as with DynamoDB's
    /// TTL; this does what TTL's deletion does, so the file does not grow for ever. The expired
    /// keys are found on a reader connection (audit events have no index on their expiry, so
    /// that is a scan, once per purge: each find goes on in key order from where the last one
    /// stopped) and deleted in small transactions on the writer, each row only if it is still
    /// expired. Returns how many rows went.
    pub async fn purge_expired(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        let now_ms = millis(&now);
        let mut purged = 0;
        for (table, key) in EXPIRING_TABLES {
            let first_find = format!(
                "SELECT {key} FROM {table} WHERE expires_at_ms <= ?1 \
                 ORDER BY {key} LIMIT {PURGE_KEYS_PER_FIND}"
            );
            let next_find = format!(
                "SELECT {key} FROM {table} WHERE expires_at_ms <= ?1 AND {key} > ?2 \
                 ORDER BY {key} LIMIT {PURGE_KEYS_PER_FIND}"
            );
            let delete = format!("DELETE FROM {table} WHERE {key} = ?1 AND expires_at_ms <= ?2");
            let mut last_found: Option<Value> = None;
            loop {
                let (first_find, next_find) = (first_find.clone(), next_find.clone());
                let after = last_found.take();
                let expired: Vec<Value> = self
                    .read(move |conn| {
                        let key_of = |row: &Row<'_>| row.get::<_, Value>(0);
                        let keys = match after {
                            None => conn
                                .prepare(&first_find)
                                .map_err(db)?
                                .query_map([now_ms], key_of)
                                .map_err(db)?
                                .collect::<rusqlite::Result<_>>()
                                .map_err(db)?,
                            Some(after) => conn
                                .prepare(&next_find)
                                .map_err(db)?
                                .query_map((now_ms, after), key_of)
                                .map_err(db)?
                                .collect::<rusqlite::Result<_>>()
                                .map_err(db)?,
                        };
                        Ok(keys)
                    })
                    .await?;
                for batch in expired.chunks(PURGE_BATCH) {
                    let (batch, delete) = (batch.to_vec(), delete.clone());
                    purged += self
                        .run_on_writer(move |conn| {
                            let tx = conn
                                .transaction_with_behavior(TransactionBehavior::Immediate)
                                .map_err(db)?;
                            let mut deleted = 0;
                            for key in batch {
                                // A key names one row: 0 or 1 deleted.
                                deleted += u64::from(
                                    tx.cached_execute(&delete, (key, now_ms)).map_err(db)? > 0,
                                );
                            }
                            tx.commit().map_err(db)?;
                            Ok(deleted)
                        })
                        .await?;
                }
                if expired.len() < PURGE_KEYS_PER_FIND {
                    break;
                }
                last_found = expired.last().cloned();
            }
        }
        Ok(purged)
    }
}

/// A reader connection nobody holds, trying them from `turn` on. A reader left poisoned by a
/// panic is still sound (its statements reset when dropped) and is used again.
fn free_reader(readers: &[Mutex<Connection>], turn: usize) -> Option<MutexGuard<'_, Connection>> {
    (0..readers.len()).find_map(|i| match readers[(turn + i) % readers.len()].try_lock() {
        Ok(conn) => Some(conn),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    })
}

fn poisoned() -> StoreError {
    StoreError::Internal("sqlite connection lock poisoned by an earlier panic".into())
}

async fn blocking<T: Send + 'static>(
    op: impl FnOnce() -> StoreResult<T> + Send + 'static,
) -> StoreResult<T> {
    tokio::task::spawn_blocking(op)
        .await
        .map_err(|e| StoreError::Internal(format!("sqlite task did not complete: {e}")))?
}

/// Queries and writes through the connection's statement cache: the hot paths (a token request
/// reads a credential and counters, then writes a counter and an audit event) run the same few
/// statements over and over, and parsing SQL each time was a visible share of their CPU.
trait CachedStatements {
    fn cached_row<T, P, F>(&self, sql: &str, params: P, map: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>;
    fn cached_execute<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
}

impl CachedStatements for Connection {
    fn cached_row<T, P, F>(&self, sql: &str, params: P, map: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, map)
    }

    fn cached_execute<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }
}

/// SQLite's error as the store's: busy or locked is worth a retry later, the rest is not.
fn db(e: rusqlite::Error) -> StoreError {
    {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Internal(e.to_string()),
        }
    }
}

#[async_trait]
impl Commit for SqliteStore {
    async fn commit(&self, writes: Vec<Write>) -> StoreResult<()> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let lead = {
            let mut queue = self.commits.lock().map_err(|_| {
                StoreError::Internal("sqlite commit queue poisoned by an earlier panic".into())
            })?;
            queue.waiting.push((writes, reply));
            !std::mem::replace(&mut queue.writing, true)
        };
        if lead {
            let (conn, commits) = (Arc::clone(&self.conn), Arc::clone(&self.commits));
            tokio::task::spawn_blocking(move || write_queued(&conn, &commits));
        }
        answer.await.map_err(|_| {
            StoreError::Internal("the sqlite writer stopped before answering".into())
        })?
    }
}

/// Writes queued batches, a group per transaction, until the queue is empty.
fn write_queued(conn: &Mutex<Connection>, commits: &Mutex<CommitQueue>) {
    loop {
        let group = match commits.lock() {
            Ok(mut queue) if queue.waiting.is_empty() => {
                queue.writing = false;
                return;
            }
            Ok(mut queue) => std::mem::take(&mut queue.waiting),
            // Dropping the senders answers every waiter with an error.
            Err(_) => return,
        };
        let (batches, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        let results = match conn.lock() {
            Ok(mut conn) => write_group(&mut conn, &batches),
            Err(_) => Err(poisoned()),
        };
        match results {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                let message = e.to_string();
                let unavailable = matches!(e, StoreError::Unavailable(_));
                for reply in replies {
                    let _ = reply.send(Err(if unavailable {
                        StoreError::Unavailable(message.clone())
                    } else {
                        StoreError::Internal(message.clone())
                    }));
                }
            }
        }
    }
}

/// One transaction for the group; each batch in a savepoint, so its failed condition undoes
/// only its own writes. `Err` when the transaction itself fails: then nothing was written.
fn write_group(conn: &mut Connection, batches: &[Vec<Write>]) -> StoreResult<Vec<StoreResult<()>>> {
    let mut tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    let mut results = Vec::with_capacity(batches.len());
    for writes in batches {
        let savepoint = tx.savepoint().map_err(db)?;
        let mut outcome = Ok(());
        for (index, write) in writes.iter().enumerate() {
            match apply(&savepoint, write) {
                Ok(true) => {}
                Ok(false) => {
                    outcome = Err(write.condition_failed(index));
                    break;
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        if outcome.is_ok() {
            savepoint.commit().map_err(db)?;
        }
        // A savepoint dropped without commit rolls back to where it began.
        results.push(outcome);
    }
    tx.commit().map_err(db)?;
    Ok(results)
}

/// Performs one write inside the batch's transaction; `false` when its condition does not hold.
fn apply(tx: &Connection, write: &Write) -> StoreResult<bool> {
    let changed = match write {
        Write::CreateOrg(org) => tx.cached_execute(
            "INSERT INTO organizations (org_id, name, plan, created_at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
            (org.org_id.to_string(), &org.name, org.plan.as_str(), millis(&org.created_at)),
        ).map_err(db)?,
        Write::SetPlan { org_id, plan } => tx.cached_execute(
            "UPDATE organizations SET plan = ?2 WHERE org_id = ?1",
            (org_id.to_string(), plan.as_str()),
        ).map_err(db)?,
        Write::PutAgent { agent, expected_version } => put_agent(tx, agent, *expected_version)?,
        Write::ClaimAgentName { org_id, name_key, agent_id } => tx.cached_execute(
            "INSERT INTO agent_names (org_id, name_key, agent_id) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            (org_id.to_string(), name_key, agent_id.to_string()),
        ).map_err(db)?,
        Write::ReleaseAgentName { org_id, name_key } => {
            tx.cached_execute("DELETE FROM agent_names WHERE org_id = ?1 AND name_key = ?2", (org_id.to_string(), name_key)).map_err(db)?;
            return Ok(true);
        }
        Write::PutCredential { credential, expected_version } => put_credential(tx, credential, *expected_version)?,
        Write::CountAgents { org_id, delta, limit } => {
            let org_id = org_id.to_string();
            let before: i64 = tx
                .cached_row("SELECT agents FROM agent_counts WHERE org_id = ?1", [&org_id], |row| row.get(0))
                .optional().map_err(db)?
                .unwrap_or(0);
            if *delta > 0 && !below(before, *limit) {
                return Ok(false);
            }
            tx.cached_execute(
                "INSERT INTO agent_counts (org_id, agents) VALUES (?1, ?2)
                 ON CONFLICT (org_id) DO UPDATE SET agents = excluded.agents",
                (&org_id, before.saturating_add(*delta).max(0)),
            ).map_err(db)?
        }
        Write::CountTokenRequest { org_id, month, limit } => {
            let org_id = org_id.to_string();
            let before: i64 = tx
                .cached_row(
                    "SELECT requests FROM token_request_counts WHERE org_id = ?1 AND month = ?2",
                    (&org_id, month),
                    |row| row.get(0),
                )
                .optional().map_err(db)?
                .unwrap_or(0);
            if !below(before, *limit) {
                return Ok(false);
            }
            tx.cached_execute(
                "INSERT INTO token_request_counts (org_id, month, requests) VALUES (?1, ?2, ?3)
                 ON CONFLICT (org_id, month) DO UPDATE SET requests = excluded.requests",
                (&org_id, month, before.saturating_add(1)),
            ).map_err(db)?
        }
        Write::RevokeToken { jti, org_id, expires_at } => {
            tx.cached_execute(
                "INSERT INTO revoked_tokens (jti, org_id, expires_at_ms) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                (jti, org_id.to_string(), millis(expires_at)),
            ).map_err(db)?;
            return Ok(true);
        }
        Write::Audit(event) => insert_audit(tx, event)?,
        // Keys name their window, so a counter never outlives the window it counts.
        Write::Tally { key, expires_at } => tx.cached_execute(
            "INSERT INTO tallies (key, count, expires_at_ms) VALUES (?1, 1, ?2) \
             ON CONFLICT (key) DO UPDATE SET count = count + 1, expires_at_ms = excluded.expires_at_ms",
            (key, millis(expires_at)),
        ).map_err(db)?,
    };
    Ok(changed == 1)
}

fn below(count: i64, limit: u64) -> bool {
    !u64::try_from(count).is_ok_and(|count| count >= limit)
}

fn put_agent(tx: &Connection, agent: &Agent, expected_version: Option<u64>) -> StoreResult<usize> {
    let org_id = agent.org_id.to_string();
    let agent_id = agent.agent_id.to_string();
    let capabilities = to_json(&agent.capabilities)?;
    let scopes = to_json(&agent.scopes)?;
    let metadata = to_json(&agent.metadata)?;
    let active_credentials = to_i64(agent.active_credentials)?;
    let version = to_i64(agent.version)?;
    let values = named_params! {
        ":org_id": org_id,
        ":agent_id": agent_id,
        ":name": agent.name,
        ":description": agent.description,
        ":owner": agent.owner,
        ":capabilities": capabilities,
        ":scopes": scopes,
        ":metadata": metadata,
        ":status": agent.status.as_str(),
        ":created_at_ms": millis(&agent.created_at),
        ":updated_at_ms": millis(&agent.updated_at),
        ":decommissioned_at_ms": agent.decommissioned_at.as_ref().map(millis),
        ":active_credentials": active_credentials,
        ":version": version,
    };
    let Some(expected) = expected_version else {
        return tx.cached_execute(
            &format!(
                "INSERT INTO agents ({AGENT_COLUMNS}) VALUES (:org_id, :agent_id, :name, :description, :owner, \
                 :capabilities, :scopes, :metadata, :status, :created_at_ms, :updated_at_ms, :decommissioned_at_ms, \
                 :active_credentials, :version) ON CONFLICT DO NOTHING"
            ),
            values,
        ).map_err(db);
    };
    let expected = to_i64(expected)?;
    let mut with_expected = values.to_vec();
    with_expected.push((":expected_version", &expected));
    tx.cached_execute(
        "UPDATE agents SET name = :name, description = :description, owner = :owner, \
         capabilities = :capabilities, scopes = :scopes, metadata = :metadata, status = :status, \
         created_at_ms = :created_at_ms, updated_at_ms = :updated_at_ms, \
         decommissioned_at_ms = :decommissioned_at_ms, active_credentials = :active_credentials, version = :version \
         WHERE org_id = :org_id AND agent_id = :agent_id AND version = :expected_version",
        with_expected.as_slice(),
    ).map_err(db)
}

fn put_credential(
    tx: &Connection,
    credential: &Credential,
    expected_version: Option<u64>,
) -> StoreResult<usize> {
    let credential_id = credential.credential_id.to_string();
    let client_id = credential.client_id.to_string();
    let agent_id = credential.agent_id.to_string();
    let org_id = credential.org_id.to_string();
    let version = to_i64(credential.version)?;
    let agent_scopes = to_json(&credential.agent_scopes)?;
    let values = named_params! {
        ":credential_id": credential_id,
        ":client_id": client_id,
        ":agent_id": agent_id,
        ":org_id": org_id,
        ":secret_hash": credential.secret_hash,
        ":status": credential.status.as_str(),
        ":agent_status": credential.agent_status.as_str(),
        ":created_at_ms": millis(&credential.created_at),
        ":expires_at_ms": credential.expires_at.as_ref().map(millis),
        ":revoked_at_ms": credential.revoked_at.as_ref().map(millis),
        ":rotated_at_ms": credential.rotated_at.as_ref().map(millis),
        ":version": version,
        ":agent_scopes": agent_scopes,
    };
    let Some(expected) = expected_version else {
        // A client id already taken by another credential also leaves nothing inserted: the
        // token endpoint's lookup must find exactly one credential.
        return tx.cached_execute(
            &format!(
                "INSERT INTO credentials ({CREDENTIAL_COLUMNS}) VALUES (:credential_id, :client_id, :agent_id, \
                 :org_id, :secret_hash, :status, :agent_status, :created_at_ms, :expires_at_ms, :revoked_at_ms, \
                 :rotated_at_ms, :version, :agent_scopes) ON CONFLICT DO NOTHING"
            ),
            values,
        ).map_err(db);
    };
    let expected = to_i64(expected)?;
    let mut with_expected = values.to_vec();
    with_expected.push((":expected_version", &expected));
    // UPDATE has no ON CONFLICT DO NOTHING; OR IGNORE turns a client id taken by another
    // credential into "no row changed", i.e. a failed condition, instead of an error.
    tx.cached_execute(
        "UPDATE OR IGNORE credentials SET client_id = :client_id, agent_id = :agent_id, org_id = :org_id, \
         secret_hash = :secret_hash, status = :status, agent_status = :agent_status, \
         created_at_ms = :created_at_ms, expires_at_ms = :expires_at_ms, revoked_at_ms = :revoked_at_ms, \
         rotated_at_ms = :rotated_at_ms, version = :version, agent_scopes = :agent_scopes \
         WHERE credential_id = :credential_id AND version = :expected_version",
        with_expected.as_slice(),
    ).map_err(db)
}

fn insert_audit(tx: &Connection, event: &AuditEvent) -> StoreResult<usize> {
    let actor = to_json(&event.actor)?;
    let details = to_json(&event.details)?;
    tx.cached_execute(
        &format!(
            "INSERT INTO audit_events ({AUDIT_COLUMNS}) VALUES (:event_id, :org_id, :timestamp_ms, :action, \
             :outcome, :actor, :subject_agent_id, :resource, :request_id, :source_ip, :user_agent, :details, \
             :expires_at_ms)"
        ),
        named_params! {
            ":event_id": event.event_id.to_string(),
            ":org_id": event.org_id.to_string(),
            ":timestamp_ms": millis(&event.timestamp),
            ":action": event.action.as_str(),
            ":outcome": event.outcome.as_str(),
            ":actor": actor,
            ":subject_agent_id": event.subject_agent_id.map(|id| id.to_string()),
            ":resource": event.resource,
            ":request_id": event.request_id,
            ":source_ip": event.source_ip,
            ":user_agent": event.user_agent,
            ":details": details,
            ":expires_at_ms": millis(&event.expires_at),
        },
    ).map_err(db)
}

#[async_trait]
impl OrgReader for SqliteStore {
    async fn get_org(&self, org_id: Uuid) -> StoreResult<Option<Organization>> {
        self.read_point(move |conn| {
            conn.cached_row(
                "SELECT org_id, name, plan, created_at_ms FROM organizations WHERE org_id = ?1",
                [org_id.to_string()],
                raw_org,
            )
            .optional()
            .map_err(db)?
            .map(RawOrg::decode)
            .transpose()
        })
        .await
    }

    async fn list_orgs(&self) -> StoreResult<Vec<Organization>> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT org_id, name, plan, created_at_ms FROM organizations ORDER BY created_at_ms, org_id").map_err(db)?;
            let rows = stmt.query_map([], raw_org).map_err(db)?;
            rows.map(|row| row.map_err(db)?.decode()).collect()
        })
        .await
    }

    async fn usage(&self, org_id: Uuid, month: &str) -> StoreResult<Usage> {
        let month = month.to_owned();
        self.read_point(move |conn| {
            let org_id = org_id.to_string();
            let agents: i64 = conn
                .cached_row(
                    "SELECT agents FROM agent_counts WHERE org_id = ?1",
                    [&org_id],
                    |row| row.get(0),
                )
                .optional()
                .map_err(db)?
                .unwrap_or(0);
            let token_requests: i64 = conn
                .cached_row(
                    "SELECT requests FROM token_request_counts WHERE org_id = ?1 AND month = ?2",
                    (&org_id, &month),
                    |row| row.get(0),
                )
                .optional()
                .map_err(db)?
                .unwrap_or(0);
            Ok(Usage {
                agents: to_u64(agents)?,
                token_requests: to_u64(token_requests)?,
            })
        })
        .await
    }
}

#[async_trait]
impl AgentReader for SqliteStore {
    async fn get_agent(&self, org_id: Uuid, agent_id: Uuid) -> StoreResult<Option<Agent>> {
        self.read_point(move |conn| {
            conn.cached_row(
                &format!("SELECT {AGENT_COLUMNS} FROM agents WHERE org_id = ?1 AND agent_id = ?2"),
                (org_id.to_string(), agent_id.to_string()),
                raw_agent,
            )
            .optional()
            .map_err(db)?
            .map(RawAgent::decode)
            .transpose()
        })
        .await
    }

    async fn list_agents(&self, org_id: Uuid) -> StoreResult<Vec<Agent>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {AGENT_COLUMNS} FROM agents WHERE org_id = ?1 ORDER BY created_at_ms, agent_id"
            )).map_err(db)?;
            let rows = stmt.query_map([org_id.to_string()], raw_agent).map_err(db)?;
            rows.map(|row| row.map_err(db)?.decode()).collect()
        })
        .await
    }
}

#[async_trait]
impl CredentialReader for SqliteStore {
    async fn credential_by_client_id(&self, client_id: Uuid) -> StoreResult<Option<Credential>> {
        self.read_point(move |conn| read_credential_by_client_id(conn, client_id))
            .await
    }

    async fn get_credential(
        &self,
        org_id: Uuid,
        agent_id: Uuid,
        credential_id: Uuid,
    ) -> StoreResult<Option<Credential>> {
        self.read_point(move |conn| {
            conn.cached_row(
                &format!(
                    "SELECT {CREDENTIAL_COLUMNS} FROM credentials
                     WHERE credential_id = ?1 AND org_id = ?2 AND agent_id = ?3"
                ),
                (
                    credential_id.to_string(),
                    org_id.to_string(),
                    agent_id.to_string(),
                ),
                raw_credential,
            )
            .optional()
            .map_err(db)?
            .map(RawCredential::decode)
            .transpose()
        })
        .await
    }

    async fn list_credentials(&self, org_id: Uuid, agent_id: Uuid) -> StoreResult<Vec<Credential>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE org_id = ?1 AND agent_id = ?2
                 ORDER BY created_at_ms, credential_id"
            ))
                .map_err(db)?;
            let rows = stmt
                .query_map((org_id.to_string(), agent_id.to_string()), raw_credential)
                .map_err(db)?;
            rows.map(|row| row.map_err(db)?.decode()).collect()
        })
        .await
    }
}

#[async_trait]
impl RevocationReader for SqliteStore {
    async fn token_standing(
        &self,
        jti: &str,
        org_id: Uuid,
        agent_id: Uuid,
    ) -> StoreResult<(bool, Option<Agent>)> {
        Ok((
            self.is_token_revoked(jti).await?,
            self.get_agent(org_id, agent_id).await?,
        ))
    }

    async fn is_token_revoked(&self, jti: &str) -> StoreResult<bool> {
        let jti = jti.to_owned();
        self.read_point(move |conn| {
            conn.cached_row(
                "SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = ?1)",
                [&jti],
                |row| row.get(0),
            )
            .map_err(db)
        })
        .await
    }
}

#[async_trait]
impl ThrottleReader for SqliteStore {
    async fn client_standing(
        &self,
        client_id: Option<Uuid>,
        keys: &[String],
        now: DateTime<Utc>,
    ) -> StoreResult<(Option<Credential>, Vec<u64>)> {
        let keys = keys.to_vec();
        // One trip to the blocking pool for both, as a token request makes this read first.
        self.read_point(move |conn| {
            let credential = match client_id {
                Some(id) => read_credential_by_client_id(conn, id)?,
                None => None,
            };
            Ok((credential, read_tallies(conn, &keys, now)?))
        })
        .await
    }

    async fn add_tally(&self, key: &str, expires_at: DateTime<Utc>) -> StoreResult<u64> {
        let key = key.to_owned();
        self.run_on_writer(move |conn| {
            let count: i64 = conn.cached_row(
                "INSERT INTO tallies (key, count, expires_at_ms) VALUES (?1, 1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET count = count + 1, expires_at_ms = excluded.expires_at_ms \
                 RETURNING count",
                (&key, millis(&expires_at)),
                |row| row.get(0),
            ).map_err(db)?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
        .await
    }

    async fn tallies(&self, keys: &[String], now: DateTime<Utc>) -> StoreResult<Vec<u64>> {
        let keys = keys.to_vec();
        self.read_point(move |conn| read_tallies(conn, &keys, now))
            .await
    }
}

fn read_credential_by_client_id(
    conn: &Connection,
    client_id: Uuid,
) -> StoreResult<Option<Credential>> {
    conn.cached_row(
        &format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE client_id = ?1"),
        [client_id.to_string()],
        raw_credential,
    )
    .optional()
    .map_err(db)?
    .map(RawCredential::decode)
    .transpose()
}

fn read_tallies(conn: &Connection, keys: &[String], now: DateTime<Utc>) -> StoreResult<Vec<u64>> {
    let mut stmt = conn
        .prepare_cached("SELECT count FROM tallies WHERE key = ?1 AND expires_at_ms > ?2")
        .map_err(db)?;
    keys.iter()
        .map(|key| {
            let count: Option<i64> = stmt
                .query_row((key, millis(&now)), |row| row.get(0))
                .optional()
                .map_err(db)?;
            Ok(count.map_or(0, |c| u64::try_from(c).unwrap_or(0)))
        })
        .collect()
}

#[async_trait]
impl AuditReader for SqliteStore {
    async fn query_audit(&self, query: &AuditQuery) -> StoreResult<AuditPage> {
        let query = query.clone();
        self.read(move |conn| {
            let (sql, values) = audit_page_sql(&query)?;
            let mut stmt = conn.prepare_cached(&sql).map_err(db)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(values), raw_audit)
                .map_err(db)?;
            let mut events = rows
                .map(|row| row.map_err(db)?.decode())
                .collect::<StoreResult<Vec<_>>>()?;
            let more = events.len() > query.limit;
            events.truncate(query.limit);
            let next = if more {
                events.last().map(|last| AuditPosition {
                    timestamp: last.timestamp,
                    event_id: last.event_id,
                })
            } else {
                None
            };
            Ok(AuditPage { events, next })
        })
        .await
    }

    async fn get_audit_event(
        &self,
        org_id: Uuid,
        event_id: Uuid,
        not_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<AuditEvent>> {
        self.read_point(move |conn| {
            conn.cached_row(
                &format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_events
                     WHERE event_id = ?1 AND org_id = ?2 AND timestamp_ms >= ?3 AND expires_at_ms > ?4"
                ),
                (event_id.to_string(), org_id.to_string(), millis(&not_before), millis(&now)),
                raw_audit,
            )
            .optional().map_err(db)?
            .map(RawAuditEvent::decode)
            .transpose()
        })
        .await
    }
}

/// The SQL for one page of `query`, fetching one row beyond the page, which tells exactly whether
/// another page exists.
fn audit_page_sql(query: &AuditQuery) -> StoreResult<(String, Vec<Value>)> {
    // Without statistics the planner prefers the plain time index even when a filter narrows far
    // more, scanning the whole organization's history for a rare agent; so the index is named.
    // `INDEXED BY` also turns an unusable index into an error rather than a silent scan.
    let index = if query.agent_id.is_some() {
        "audit_by_agent"
    } else if query.action.is_some() {
        "audit_by_action"
    } else {
        "audit_by_time"
    };
    // Only the filters that are set become SQL; `(? IS NULL OR col = ?)` would defeat the index.
    let mut sql = format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_events INDEXED BY {index}
         WHERE org_id = ? AND timestamp_ms >= ? AND expires_at_ms > ?"
    );
    let mut values = vec![
        Value::Text(query.org_id.to_string()),
        Value::Integer(millis(&query.not_before)),
        Value::Integer(millis(&query.now)),
    ];
    let until = match (&query.until, &query.after) {
        // A later page is bounded by its position, which lies inside the window already; two
        // upper bounds would let the planner pick the looser one and rescan earlier pages.
        (Some(until), Some(after)) if after.timestamp <= *until => None,
        (until, _) => until.as_ref(),
    };
    if let Some(until) = until {
        sql.push_str(" AND timestamp_ms <= ?");
        values.push(Value::Integer(millis(until)));
    }
    if let Some(agent_id) = query.agent_id {
        sql.push_str(" AND subject_agent_id = ?");
        values.push(Value::Text(agent_id.to_string()));
    }
    if let Some(action) = query.action {
        sql.push_str(" AND action = ?");
        values.push(Value::Text(action.as_str().to_owned()));
    }
    if let Some(outcome) = query.outcome {
        sql.push_str(" AND outcome = ?");
        values.push(Value::Text(outcome.as_str().to_owned()));
    }
    if let Some(after) = &query.after {
        sql.push_str(" AND (timestamp_ms, event_id) < (?, ?)");
        values.push(Value::Integer(millis(&after.timestamp)));
        values.push(Value::Text(after.event_id.to_string()));
    }
    sql.push_str(" ORDER BY timestamp_ms DESC, event_id DESC LIMIT ?");
    values.push(Value::Integer(to_i64(query.limit.saturating_add(1))?));
    Ok((sql, values))
}

// Rows are read in two steps: rusqlite's row closure can only fail with its own error type, so it
// copies the columns out, and decoding into domain values (which can fail on corrupt text) runs
// after, reporting `StoreError::Internal`.

struct RawOrg {
    org_id: String,
    name: String,
    plan: String,
    created_at_ms: i64,
}

fn raw_org(row: &Row<'_>) -> rusqlite::Result<RawOrg> {
    Ok(RawOrg {
        org_id: row.get(0)?,
        name: row.get(1)?,
        plan: row.get(2)?,
        created_at_ms: row.get(3)?,
    })
}

impl RawOrg {
    fn decode(self) -> StoreResult<Organization> {
        Ok(Organization {
            org_id: uuid(&self.org_id)?,
            name: self.name,
            plan: Plan::parse(&self.plan).ok_or_else(|| corrupt("plan", &self.plan))?,
            created_at: time(self.created_at_ms)?,
        })
    }
}

struct RawAgent {
    org_id: String,
    agent_id: String,
    name: String,
    description: Option<String>,
    owner: Option<String>,
    capabilities: String,
    scopes: String,
    metadata: String,
    status: String,
    created_at_ms: i64,
    updated_at_ms: i64,
    decommissioned_at_ms: Option<i64>,
    active_credentials: i64,
    version: i64,
}

fn raw_agent(row: &Row<'_>) -> rusqlite::Result<RawAgent> {
    Ok(RawAgent {
        org_id: row.get(0)?,
        agent_id: row.get(1)?,
        name: row.get(2)?,
        description: row.get(3)?,
        owner: row.get(4)?,
        capabilities: row.get(5)?,
        scopes: row.get(6)?,
        metadata: row.get(7)?,
        status: row.get(8)?,
        created_at_ms: row.get(9)?,
        updated_at_ms: row.get(10)?,
        decommissioned_at_ms: row.get(11)?,
        active_credentials: row.get(12)?,
        version: row.get(13)?,
    })
}

impl RawAgent {
    fn decode(self) -> StoreResult<Agent> {
        Ok(Agent {
            agent_id: uuid(&self.agent_id)?,
            org_id: uuid(&self.org_id)?,
            name: self.name,
            description: self.description,
            owner: self.owner,
            capabilities: from_json(&self.capabilities)?,
            scopes: from_json(&self.scopes)?,
            metadata: from_json(&self.metadata)?,
            status: AgentStatus::parse(&self.status)
                .ok_or_else(|| corrupt("agent status", &self.status))?,
            created_at: time(self.created_at_ms)?,
            updated_at: time(self.updated_at_ms)?,
            decommissioned_at: self.decommissioned_at_ms.map(time).transpose()?,
            active_credentials: to_u64(self.active_credentials)?,
            version: to_u64(self.version)?,
        })
    }
}

struct RawCredential {
    credential_id: String,
    client_id: String,
    agent_id: String,
    org_id: String,
    secret_hash: String,
    status: String,
    agent_status: String,
    created_at_ms: i64,
    expires_at_ms: Option<i64>,
    revoked_at_ms: Option<i64>,
    rotated_at_ms: Option<i64>,
    version: i64,
    agent_scopes: String,
}

fn raw_credential(row: &Row<'_>) -> rusqlite::Result<RawCredential> {
    Ok(RawCredential {
        credential_id: row.get(0)?,
        client_id: row.get(1)?,
        agent_id: row.get(2)?,
        org_id: row.get(3)?,
        secret_hash: row.get(4)?,
        status: row.get(5)?,
        agent_status: row.get(6)?,
        created_at_ms: row.get(7)?,
        expires_at_ms: row.get(8)?,
        revoked_at_ms: row.get(9)?,
        rotated_at_ms: row.get(10)?,
        version: row.get(11)?,
        agent_scopes: row.get(12)?,
    })
}

impl RawCredential {
    fn decode(self) -> StoreResult<Credential> {
        Ok(Credential {
            credential_id: uuid(&self.credential_id)?,
            client_id: uuid(&self.client_id)?,
            agent_id: uuid(&self.agent_id)?,
            org_id: uuid(&self.org_id)?,
            secret_hash: self.secret_hash,
            status: CredentialStatus::parse(&self.status)
                .ok_or_else(|| corrupt("credential status", &self.status))?,
            agent_status: AgentStatus::parse(&self.agent_status)
                .ok_or_else(|| corrupt("agent status", &self.agent_status))?,
            created_at: time(self.created_at_ms)?,
            expires_at: self.expires_at_ms.map(time).transpose()?,
            revoked_at: self.revoked_at_ms.map(time).transpose()?,
            rotated_at: self.rotated_at_ms.map(time).transpose()?,
            version: to_u64(self.version)?,
            agent_scopes: from_json(&self.agent_scopes)?,
        })
    }
}

struct RawAuditEvent {
    event_id: String,
    org_id: String,
    timestamp_ms: i64,
    action: String,
    outcome: String,
    actor: String,
    subject_agent_id: Option<String>,
    resource: String,
    request_id: String,
    source_ip: Option<String>,
    user_agent: Option<String>,
    details: String,
    expires_at_ms: i64,
}

fn raw_audit(row: &Row<'_>) -> rusqlite::Result<RawAuditEvent> {
    Ok(RawAuditEvent {
        event_id: row.get(0)?,
        org_id: row.get(1)?,
        timestamp_ms: row.get(2)?,
        action: row.get(3)?,
        outcome: row.get(4)?,
        actor: row.get(5)?,
        subject_agent_id: row.get(6)?,
        resource: row.get(7)?,
        request_id: row.get(8)?,
        source_ip: row.get(9)?,
        user_agent: row.get(10)?,
        details: row.get(11)?,
        expires_at_ms: row.get(12)?,
    })
}

impl RawAuditEvent {
    fn decode(self) -> StoreResult<AuditEvent> {
        let actor: Actor = from_json(&self.actor)?;
        Ok(AuditEvent {
            event_id: uuid(&self.event_id)?,
            org_id: uuid(&self.org_id)?,
            timestamp: time(self.timestamp_ms)?,
            action: AuditAction::parse(&self.action)
                .ok_or_else(|| corrupt("audit action", &self.action))?,
            outcome: Outcome::parse(&self.outcome)
                .ok_or_else(|| corrupt("outcome", &self.outcome))?,
            actor,
            subject_agent_id: self.subject_agent_id.as_deref().map(uuid).transpose()?,
            resource: self.resource,
            request_id: self.request_id,
            source_ip: self.source_ip,
            user_agent: self.user_agent,
            details: from_json(&self.details)?,
            expires_at: time(self.expires_at_ms)?,
        })
    }
}

fn millis(at: &DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn time(ms: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt("timestamp", &ms.to_string()))
}

fn uuid(text: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(text).map_err(|_| corrupt("uuid", text))
}

fn to_i64<N: TryInto<i64> + Copy + std::fmt::Display>(n: N) -> StoreResult<i64> {
    n.try_into()
        .map_err(|_| StoreError::Internal(format!("{n} does not fit a sqlite integer")))
}

fn to_u64(n: i64) -> StoreResult<u64> {
    u64::try_from(n).map_err(|_| corrupt("count", &n.to_string()))
}

fn to_json<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Internal(format!("cannot encode a stored value: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> StoreResult<T> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Internal(format!("stored JSON does not decode: {e}")))
}

fn corrupt(what: &str, found: &str) -> StoreError {
    StoreError::Internal(format!("stored {what} is not valid: {found:?}"))
}

#[cfg(test)]
mod tests {

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_batches_share_transactions_and_a_failed_one_undoes_only_itself() {
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let org_id = Uuid::new_v4();
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    // Every odd batch claims a name that an even one claims too.
                    let name_key = format!("name-{}", i / 2);
                    store
                        .commit(vec![
                            Write::Tally {
                                key: format!("k-{i}"),
                                expires_at: at(4_000_000_000_000),
                            },
                            Write::ClaimAgentName {
                                org_id,
                                name_key,
                                agent_id: Uuid::new_v4(),
                            },
                        ])
                        .await
                })
            })
            .collect();
        let mut won = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(()) => won += 1,
                Err(StoreError::ConditionFailed {
                    guard: agentidp_core::store::Guard::NameTaken,
                    ..
                }) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(won, 20);
        let keys: Vec<String> = (0..40).map(|i| format!("k-{i}")).collect();
        let counts = store.tallies(&keys, at(1_000)).await.unwrap();
        assert_eq!(
            counts.iter().sum::<u64>(),
            20,
            "a lost batch's first write was undone with it"
        );
    }
    use std::collections::BTreeMap;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    fn full_agent(org_id: Uuid) -> Agent {
        Agent {
            agent_id: Uuid::new_v4(),
            org_id,
            name: "Billing Bot ✓".into(),
            description: Some("pays \"invoices\"; DROP TABLE agents".into()),
            owner: Some("ops@example.com".into()),
            capabilities: vec!["pay".into(), "read".into()],
            scopes: vec!["invoices:write".into()],
            metadata: BTreeMap::from([
                ("team".into(), "finance".into()),
                ("empty".into(), String::new()),
            ]),
            status: AgentStatus::Decommissioned,
            created_at: at(1_700_000_000_123),
            updated_at: at(1_700_000_100_456),
            decommissioned_at: Some(at(1_700_000_100_456)),
            active_credentials: 3,
            version: u64::try_from(i64::MAX).unwrap(),
        }
    }

    fn bare_agent(org_id: Uuid) -> Agent {
        Agent {
            agent_id: Uuid::new_v4(),
            org_id,
            name: "x".into(),
            description: None,
            owner: None,
            capabilities: vec![],
            scopes: vec![],
            metadata: BTreeMap::new(),
            status: AgentStatus::Active,
            created_at: at(-1),
            updated_at: at(0),
            decommissioned_at: None,
            active_credentials: 0,
            version: 0,
        }
    }

    fn credential(org_id: Uuid, agent_id: Uuid, full: bool) -> Credential {
        Credential {
            credential_id: Uuid::new_v4(),
            client_id: Uuid::new_v4(),
            agent_id,
            org_id,
            secret_hash: "$2b$04$abcdefghijklmnopqrstuv".into(),
            status: if full {
                CredentialStatus::Revoked
            } else {
                CredentialStatus::Active
            },
            agent_status: if full {
                AgentStatus::Suspended
            } else {
                AgentStatus::Active
            },
            agent_scopes: if full {
                vec!["a:b".into(), "c".into()]
            } else {
                Vec::new()
            },
            created_at: at(1_700_000_000_001),
            expires_at: full.then(|| at(1_800_000_000_002)),
            revoked_at: full.then(|| at(1_700_000_000_003)),
            rotated_at: full.then(|| at(1_700_000_000_004)),
            version: 7,
        }
    }

    fn event(org_id: Uuid, full: bool) -> AuditEvent {
        let mut details = serde_json::Map::new();
        if full {
            details.insert("scopes".into(), serde_json::json!(["a", "b"]));
            details.insert(
                "nested".into(),
                serde_json::json!({"n": 1.5, "none": null, "yes": true}),
            );
        }
        AuditEvent {
            event_id: Uuid::new_v4(),
            org_id,
            timestamp: at(1_700_000_000_999),
            action: if full {
                AuditAction::TokenDenied
            } else {
                AuditAction::OrganizationCreated
            },
            outcome: if full {
                Outcome::Failure
            } else {
                Outcome::Success
            },
            actor: if full {
                Actor::agent(Uuid::new_v4(), Some(Uuid::new_v4()))
            } else {
                Actor::operator()
            },
            subject_agent_id: full.then(Uuid::new_v4),
            resource: "token/abc".into(),
            request_id: "req-1".into(),
            source_ip: full.then(|| "203.0.113.7".into()),
            user_agent: full.then(|| "curl/8".into()),
            details,
            expires_at: at(1_900_000_000_000),
        }
    }

    #[tokio::test]
    async fn a_purge_deletes_only_what_has_expired_in_every_expiring_table() {
        // File-backed, as the local server runs it: the expired keys are found on a reader.
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("idp.sqlite")).unwrap();
        let org_id = Uuid::new_v4();
        let now = at(1_800_000_000_000);
        // Expiring exactly now counts as expired, as every read already treats it.
        let expiring_at = |expired: bool| {
            if expired {
                now
            } else {
                at(1_800_000_000_000 + 1)
            }
        };
        // More expired audit events than one find collects, so the second find starts where
        // the first stopped, with kept ones among them; some expire a millisecond before now.
        let audit: Vec<AuditEvent> = (0..PURGE_KEYS_PER_FIND + 407)
            .map(|i| AuditEvent {
                expires_at: match i % 50 {
                    0 => expiring_at(false),
                    n if n % 2 == 0 => expiring_at(true),
                    _ => at(1_800_000_000_000 - 1),
                },
                ..event(org_id, false)
            })
            .collect();
        for batch in audit.chunks(100) {
            store
                .commit(batch.iter().cloned().map(Write::Audit).collect())
                .await
                .unwrap();
        }
        let kept_events: Vec<&AuditEvent> = audit.iter().filter(|e| e.expires_at > now).collect();
        assert!(audit.len() - kept_events.len() > PURGE_KEYS_PER_FIND);
        let mut writes = Vec::new();
        for expired in [true, false] {
            writes.push(Write::RevokeToken {
                jti: format!("jti-{expired}"),
                org_id,
                expires_at: expiring_at(expired),
            });
            writes.push(Write::Tally {
                key: format!("tally-{expired}"),
                expires_at: expiring_at(expired),
            });
        }
        store.commit(writes).await.unwrap();
        let expired_count = audit.len() - kept_events.len() + 2;

        assert_eq!(
            store.purge_expired(now).await.unwrap(),
            expired_count as u64
        );
        assert_eq!(
            store.purge_expired(now).await.unwrap(),
            0,
            "nothing is left to purge"
        );

        let rows = |table: &str| {
            let conn = store.conn.lock().unwrap();
            conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
                row.get::<_, i64>(0)
            })
            .unwrap()
        };
        assert_eq!(rows("audit_events"), kept_events.len() as i64);
        assert_eq!((rows("revoked_tokens"), rows("tallies")), (1, 1));
        for kept in kept_events {
            assert!(
                store
                    .get_audit_event(org_id, kept.event_id, at(0), at(1))
                    .await
                    .unwrap()
                    .is_some()
            );
        }
        assert!(store.is_token_revoked("jti-false").await.unwrap());
        assert_eq!(
            store.tallies(&["tally-false".into()], at(0)).await.unwrap(),
            [1]
        );
    }

    #[tokio::test]
    async fn every_record_reads_back_equal_to_what_was_written() {
        let store = SqliteStore::in_memory().unwrap();
        let org = Organization {
            org_id: Uuid::new_v4(),
            name: "Acme".into(),
            plan: Plan::Enterprise,
            created_at: at(5),
        };
        let agents = [full_agent(org.org_id), bare_agent(org.org_id)];
        let credentials = [
            credential(org.org_id, agents[0].agent_id, true),
            credential(org.org_id, agents[0].agent_id, false),
        ];
        let events = [event(org.org_id, true), event(org.org_id, false)];
        let mut writes = vec![Write::CreateOrg(org.clone())];
        writes.extend(agents.iter().map(|a| Write::PutAgent {
            agent: a.clone(),
            expected_version: None,
        }));
        writes.extend(credentials.iter().map(|c| Write::PutCredential {
            credential: c.clone(),
            expected_version: None,
        }));
        writes.extend(events.iter().cloned().map(Write::Audit));
        store.commit(writes).await.unwrap();

        assert_eq!(store.get_org(org.org_id).await.unwrap(), Some(org.clone()));
        for agent in &agents {
            assert_eq!(
                store
                    .get_agent(org.org_id, agent.agent_id)
                    .await
                    .unwrap()
                    .as_ref(),
                Some(agent)
            );
        }
        for c in &credentials {
            assert_eq!(
                store
                    .credential_by_client_id(c.client_id)
                    .await
                    .unwrap()
                    .as_ref(),
                Some(c)
            );
            assert_eq!(
                store
                    .get_credential(org.org_id, c.agent_id, c.credential_id)
                    .await
                    .unwrap()
                    .as_ref(),
                Some(c)
            );
        }
        for e in &events {
            assert_eq!(
                store
                    .get_audit_event(org.org_id, e.event_id, at(0), at(1))
                    .await
                    .unwrap()
                    .as_ref(),
                Some(e)
            );
        }
    }

    #[test]
    fn every_combination_of_audit_filters_reads_one_index_in_page_order() {
        let store = SqliteStore::in_memory().unwrap();
        let conn = store.conn.lock().unwrap();
        let now = at(1_700_000_000_000);
        for combination in 0..32 {
            let set = |bit: u32| combination & (1 << bit) != 0;
            let query = AuditQuery {
                org_id: Uuid::new_v4(),
                agent_id: set(0).then(Uuid::new_v4),
                action: set(1).then_some(AuditAction::TokenIssued),
                outcome: set(2).then_some(Outcome::Failure),
                not_before: at(0),
                until: set(3).then_some(now),
                now,
                limit: 10,
                after: set(4).then(|| AuditPosition {
                    timestamp: now,
                    event_id: Uuid::new_v4(),
                }),
            };
            let (sql, values) = audit_page_sql(&query).unwrap();
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let plan: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(values), |row| row.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            // One index search and no sort: the rows come out in page order and stop at the limit.
            assert_eq!(plan.len(), 1, "{query:?}: {plan:?}");
            assert!(
                plan[0].starts_with("SEARCH audit_events USING INDEX audit_by_"),
                "{query:?}: {plan:?}"
            );
            if query.after.is_some() {
                assert!(
                    plan[0].contains("(timestamp_ms,event_id)<(?,?)"),
                    "{query:?}: {plan:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn reopening_keeps_the_schema_and_refuses_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idp.sqlite");
        drop(SqliteStore::open(&path).unwrap());
        drop(SqliteStore::open(&path).unwrap());

        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);

        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::Internal(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[expect(
        clippy::await_holding_lock,
        reason = "the test holds the writer's lock on purpose, as a long commit does"
    )]
    async fn reads_go_on_while_the_writer_connection_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("idp.sqlite")).unwrap();
        let org = Organization {
            org_id: Uuid::new_v4(),
            name: "Acme".into(),
            plan: Plan::Free,
            created_at: at(5),
        };
        store
            .commit(vec![Write::CreateOrg(org.clone())])
            .await
            .unwrap();
        // As when a group commit waits for its fsync.
        let writing = store.conn.lock().unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            (
                store.get_org(org.org_id).await.unwrap(),
                store.usage(org.org_id, "2026-11").await.unwrap(),
            )
        })
        .await
        .expect("reads do not wait for the writer");
        assert_eq!(read.0, Some(org));
        drop(writing);
    }

    #[tokio::test]
    async fn reader_connections_refuse_to_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("idp.sqlite")).unwrap();
        let refused = store
            .read(|conn| conn.execute("DELETE FROM organizations", []).map_err(db))
            .await;
        assert!(
            matches!(refused, Err(StoreError::Internal(_))),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_write_blocked_by_another_connection_reports_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idp.sqlite");
        let store = SqliteStore::open(&path).unwrap();
        store
            .conn
            .lock()
            .unwrap()
            .busy_timeout(Duration::from_millis(10))
            .unwrap();

        let mut other = Connection::open(&path).unwrap();
        let held = other
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        let org = Organization {
            org_id: Uuid::new_v4(),
            name: "Acme".into(),
            plan: Plan::Free,
            created_at: at(5),
        };
        let result = store.commit(vec![Write::CreateOrg(org.clone())]).await;
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{result:?}"
        );
        held.rollback().unwrap();

        store
            .commit(vec![Write::CreateOrg(org.clone())])
            .await
            .unwrap();
        assert_eq!(store.get_org(org.org_id).await.unwrap(), Some(org));
    }
}
