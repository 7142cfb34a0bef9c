//! The embedded store: SQLite, durable on local disk, or in memory for tests.
//!
//! A file-backed store has one writer connection, fed by a group-commit queue (SQLite runs one
//! writer at a time anyway), and a few reader connections: under write-ahead logging, reads go on
//! while a commit waits for its fsync, so a request's read never queues behind another's write.
//! An in-memory store (tests) has the one connection for both. Writes, lists and audit queries
//! run on tokio's blocking pool, so a slow disk or a long scan never stalls the async runtime;
//! point reads (a record or a counter by its key) run on the async worker when a reader is free,
//! see [`SqliteStore::read_point`].

mod codec;
mod commit;
mod purge;
mod reads;
mod schema;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use rusqlite::{Connection, Row};

use agentidp_core::store::{StoreError, StoreResult};

use crate::codec::db;
use crate::commit::CommitQueue;

/// Long enough for the operator CLI's short transactions to finish while the server holds the
/// write lock, short enough that a stuck writer surfaces as `Unavailable` instead of a hang.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Enough for every statement the store runs, each audit filter combination included, so the
/// hot ones are never evicted.
const STATEMENT_CACHE_CAPACITY: usize = 96;

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
                    StoreError::internal(format!("making {} private", file.display()), e)
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
            return Err(StoreError::broken(format!(
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
    StoreError::broken("sqlite connection lock poisoned by an earlier panic")
}

async fn blocking<T: Send + 'static>(
    op: impl FnOnce() -> StoreResult<T> + Send + 'static,
) -> StoreResult<T> {
    tokio::task::spawn_blocking(op)
        .await
        .map_err(|e| StoreError::internal("the sqlite task did not complete", e))?
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
