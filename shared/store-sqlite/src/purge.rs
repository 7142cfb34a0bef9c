//! Deleting expired rows, as DynamoDB's TTL does.

use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{Row, TransactionBehavior};

use agentidp_core::store::StoreResult;

use crate::codec::{db, millis};
use crate::{CachedStatements, SqliteStore};

/// The tables whose rows expire, each with the key a row is deleted by.
const EXPIRING_TABLES: [(&str, &str); 4] = [
    ("audit_events", "rowid"),
    ("revoked_tokens", "jti"),
    ("tallies", "key"),
    ("used_assertions", "key"),
];
/// Expired rows deleted per writer transaction, so a purge holds the writer for milliseconds
/// at a time and commits in between go on.
const PURGE_BATCH: usize = 500;
/// Expired keys one find on a reader collects before their deletion, bounding the memory a purge
/// holds.
pub(crate) const PURGE_KEYS_PER_FIND: usize = 20 * PURGE_BATCH;

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
