//! The database's tables, created on first open and migrated from an older version.

use std::sync::{Arc, Mutex};

use rusqlite::{Connection, TransactionBehavior};

use agentidp_core::store::{StoreError, StoreResult};

use crate::codec::db;
use crate::{STATEMENT_CACHE_CAPACITY, SqliteStore};

/// Bumped whenever the schema below changes; a database written by a newer build is refused
/// rather than misread. Version 3 adds resources, their identifier claims and their count: new
/// tables, which `SCHEMA` creates in an older file as in a new one, so that step needs no
/// statement of its own; the version keeps an older build from opening a file whose resources it
/// would not see. Version 4 adds credentials' public keys (a column, `MIGRATE_TO_4`) and the
/// used client assertions (a table). Version 5 adds trusted issuers and their count (new
/// tables), and lets the `public_keys` column hold any proof other than a secret: the keys, the
/// URL they are published at, or a federated identity (`CredentialProof::stored_document`).
/// Version 6 adds agents' delegation policy and kill switch (two columns, `MIGRATE_TO_6`).
/// Version 7 adds whether an agent's tokens must be DPoP-bound, and each credential's copy of it
/// (`MIGRATE_TO_7`); used DPoP proofs share the `used_assertions` table under their own keys.
pub(crate) const SCHEMA_VERSION: i64 = 7;

/// Version 7: an agent's `requireDpop`, and its copy on each credential.
const MIGRATE_TO_7: &str = "
ALTER TABLE agents ADD COLUMN require_dpop INTEGER NOT NULL DEFAULT 0;
ALTER TABLE credentials ADD COLUMN agent_requires_dpop INTEGER NOT NULL DEFAULT 0;
";

/// Version 6: who may act for an agent (JSON), and the instant its tokens stop.
const MIGRATE_TO_6: &str = "
ALTER TABLE agents ADD COLUMN delegation TEXT;
ALTER TABLE agents ADD COLUMN tokens_not_before_ms INTEGER;
ALTER TABLE credentials ADD COLUMN agent_may_act TEXT;
";

/// Version 4: a credential's public keys (private_key_jwt), null for a client secret.
const MIGRATE_TO_4: &str = "ALTER TABLE credentials ADD COLUMN public_keys TEXT;";

/// Version 2 keeps a copy of the agent's scopes on each credential; a version-1 file gets the
/// column, filled from its agents.
const MIGRATE_1_TO_2: &str = "
ALTER TABLE credentials ADD COLUMN agent_scopes TEXT NOT NULL DEFAULT '[]';
UPDATE credentials SET agent_scopes = (
    SELECT scopes FROM agents WHERE agents.org_id = credentials.org_id AND agents.agent_id = credentials.agent_id
) WHERE EXISTS (SELECT 1 FROM agents WHERE agents.org_id = credentials.org_id AND agents.agent_id = credentials.agent_id);
";

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
    delegation           TEXT,
    tokens_not_before_ms INTEGER,
    require_dpop         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, agent_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS agents_by_age ON agents (org_id, created_at_ms, agent_id);

CREATE TABLE IF NOT EXISTS agent_names (
    org_id   TEXT NOT NULL,
    name_key TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    PRIMARY KEY (org_id, name_key)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS resources (
    org_id        TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    identifier    TEXT NOT NULL,
    name          TEXT NOT NULL,
    description   TEXT,
    scopes        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    version       INTEGER NOT NULL,
    PRIMARY KEY (org_id, resource_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS resources_by_age ON resources (org_id, created_at_ms, resource_id);

-- The organization's claim of an identifier: its primary key makes identifiers unique per
-- organization, and it holds what a token request for the resource reads, as on DynamoDB.
CREATE TABLE IF NOT EXISTS resource_identifiers (
    org_id      TEXT NOT NULL,
    identifier  TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    PRIMARY KEY (org_id, identifier)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS resource_counts (
    org_id    TEXT PRIMARY KEY NOT NULL,
    resources INTEGER NOT NULL
) WITHOUT ROWID;

-- `issuer_id` derives from the organization and `issuer`, so the key makes an issuer trusted
-- at most once per organization.
CREATE TABLE IF NOT EXISTS trusted_issuers (
    org_id        TEXT NOT NULL,
    issuer_id     TEXT NOT NULL,
    issuer        TEXT NOT NULL,
    audience      TEXT NOT NULL,
    public_keys   TEXT NOT NULL,
    description   TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    version       INTEGER NOT NULL,
    PRIMARY KEY (org_id, issuer_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS trusted_issuers_by_age ON trusted_issuers (org_id, created_at_ms, issuer_id);

CREATE TABLE IF NOT EXISTS trusted_issuer_counts (
    org_id  TEXT PRIMARY KEY NOT NULL,
    issuers INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS credentials (
    credential_id TEXT PRIMARY KEY NOT NULL,
    client_id     TEXT NOT NULL UNIQUE,
    agent_id      TEXT NOT NULL,
    org_id        TEXT NOT NULL,
    -- '' for a credential proved otherwise: public_keys holds that proof (JSON: the keys, their
    -- URL, or a federated identity)
    secret_hash   TEXT NOT NULL,
    status        TEXT NOT NULL,
    agent_status  TEXT NOT NULL,
    agent_scopes  TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    revoked_at_ms INTEGER,
    rotated_at_ms INTEGER,
    version       INTEGER NOT NULL,
    public_keys   TEXT,
    -- JSON list of agent ids; null for none
    agent_may_act TEXT,
    agent_requires_dpop INTEGER NOT NULL DEFAULT 0
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

-- `key` is the client id and the assertion's jti: one use each, until the assertion expires.
CREATE TABLE IF NOT EXISTS used_assertions (
    key           TEXT PRIMARY KEY NOT NULL,
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

pub(crate) const AGENT_COLUMNS: &str = "org_id, agent_id, name, description, owner, capabilities, scopes, metadata, status, \
     created_at_ms, updated_at_ms, decommissioned_at_ms, active_credentials, version, delegation, tokens_not_before_ms, require_dpop";

pub(crate) const RESOURCE_COLUMNS: &str = "org_id, resource_id, identifier, name, description, scopes, created_at_ms, \
     updated_at_ms, version";

pub(crate) const TRUSTED_ISSUER_COLUMNS: &str = "org_id, issuer_id, issuer, audience, public_keys, description, \
     created_at_ms, updated_at_ms, version";

pub(crate) const CREDENTIAL_COLUMNS: &str = "credential_id, client_id, agent_id, org_id, secret_hash, status, agent_status, \
     created_at_ms, expires_at_ms, revoked_at_ms, rotated_at_ms, version, agent_scopes, public_keys, agent_may_act, agent_requires_dpop";

pub(crate) const AUDIT_COLUMNS: &str = "event_id, org_id, timestamp_ms, action, outcome, actor, subject_agent_id, resource, \
     request_id, source_ip, user_agent, details, expires_at_ms";

impl SqliteStore {
    pub(crate) fn with_schema(mut conn: Connection) -> StoreResult<Self> {
        // Immediate, so two processes opening a fresh file at once create the schema only once.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let found: i64 = tx
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(db)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::broken(format!(
                "database schema version {found} is newer than this build's {SCHEMA_VERSION}"
            )));
        }
        if found == 1 {
            tx.execute_batch(MIGRATE_1_TO_2).map_err(db)?;
        }
        if (1..4).contains(&found) {
            tx.execute_batch(MIGRATE_TO_4).map_err(db)?;
        }
        if (1..6).contains(&found) {
            tx.execute_batch(MIGRATE_TO_6).map_err(db)?;
        }
        if (1..7).contains(&found) {
            tx.execute_batch(MIGRATE_TO_7).map_err(db)?;
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
}
