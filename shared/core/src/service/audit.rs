//! Reading the audit trail: filtered, newest first, with opaque cursors, never past retention.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Caller, Idp, ServiceError, ServiceResult};
use crate::domain::{AuditAction, AuditEvent, Outcome, Scope};
use crate::store::{AuditPosition, AuditQuery};
use crate::store::{AuditReader, OrgReader};
use crate::validation::FieldError;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilters {
    pub agent_id: Option<Uuid>,
    pub actor_agent_id: Option<Uuid>,
    pub action: Option<AuditAction>,
    pub outcome: Option<Outcome>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

impl AuditFilters {
    /// Binds a cursor to the filters it was made for, so it cannot be replayed under others.
    fn fingerprint(&self) -> String {
        let text = format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            self.agent_id,
            self.actor_agent_id,
            self.action.map(AuditAction::as_str),
            self.outcome.map(Outcome::as_str),
            self.from.map(|t| t.timestamp_millis()),
            self.to.map(|t| t.timestamp_millis())
        );
        hex::encode(
            &aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes()).as_ref()[..8],
        )
    }
}

/// The cursor's content. It is opaque to clients: base64url of this JSON.
#[derive(Debug, Serialize, Deserialize)]
struct CursorBody {
    o: Uuid,
    t: i64,
    e: Uuid,
    f: String,
}

pub fn encode_cursor(org_id: Uuid, filters: &AuditFilters, position: &AuditPosition) -> String {
    let body = CursorBody {
        o: org_id,
        t: position.timestamp.timestamp_millis(),
        e: position.event_id,
        f: filters.fingerprint(),
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&body).unwrap_or_default())
}

fn decode_cursor(
    text: &str,
    org_id: Uuid,
    filters: &AuditFilters,
) -> Result<AuditPosition, FieldError> {
    let invalid = || FieldError::new("cursor", "is not a cursor this query returned");
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
    let body: CursorBody = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if body.o != org_id || body.f != filters.fingerprint() {
        return Err(invalid());
    }
    let timestamp = DateTime::from_timestamp_millis(body.t).ok_or_else(invalid)?;
    Ok(AuditPosition {
        timestamp,
        event_id: body.e,
    })
}

#[derive(Debug)]
pub struct AuditEventPage {
    pub events: Vec<AuditEvent>,
    pub next_cursor: Option<String>,
}

impl<S: OrgReader + AuditReader + ?Sized> Idp<S> {
    async fn retention_start(&self, org_id: Uuid) -> ServiceResult<(DateTime<Utc>, DateTime<Utc>)> {
        let limits = self.limits(org_id).await?;
        let now = self.now();
        Ok((
            now - chrono::Duration::days(i64::from(limits.audit_retention_days)),
            now,
        ))
    }

    pub async fn query_audit(
        &self,
        caller: &Caller,
        filters: AuditFilters,
        limit: usize,
        cursor: Option<&str>,
    ) -> ServiceResult<AuditEventPage> {
        caller.require(Scope::AuditRead)?;
        let after = cursor
            .map(|c| decode_cursor(c, caller.org_id, &filters))
            .transpose()
            .map_err(|e| ServiceError::Validation(vec![e]))?;
        if let (Some(from), Some(to)) = (filters.from, filters.to)
            && from > to
        {
            return Err(ServiceError::Validation(vec![FieldError::new(
                "from",
                "must not be later than `to`",
            )]));
        }
        let (retention_start, now) = self.retention_start(caller.org_id).await?;
        let query = AuditQuery {
            org_id: caller.org_id,
            agent_id: filters.agent_id,
            actor_agent_id: filters.actor_agent_id,
            action: filters.action,
            outcome: filters.outcome,
            not_before: filters
                .from
                .map_or(retention_start, |from| from.max(retention_start)),
            until: filters.to,
            now,
            limit,
            after,
        };
        let page = self.store.query_audit(&query).await?;
        let next_cursor = page
            .next
            .map(|position| encode_cursor(caller.org_id, &filters, &position));
        Ok(AuditEventPage {
            events: page.events,
            next_cursor,
        })
    }

    pub async fn get_audit_event(
        &self,
        caller: &Caller,
        event_id: Uuid,
    ) -> ServiceResult<AuditEvent> {
        caller.require(Scope::AuditRead)?;
        let (retention_start, now) = self.retention_start(caller.org_id).await?;
        self.store
            .get_audit_event(caller.org_id, event_id, retention_start, now)
            .await?
            .ok_or(ServiceError::AuditEventNotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position() -> AuditPosition {
        AuditPosition {
            timestamp: Utc::now(),
            event_id: Uuid::new_v4(),
        }
    }

    #[test]
    fn a_cursor_decodes_to_the_position_it_encodes() {
        let org = Uuid::new_v4();
        let filters = AuditFilters::default();
        let p = position();
        let decoded = decode_cursor(&encode_cursor(org, &filters, &p), org, &filters).unwrap();
        assert_eq!(decoded.event_id, p.event_id);
        assert_eq!(
            decoded.timestamp.timestamp_millis(),
            p.timestamp.timestamp_millis()
        );
    }

    #[test]
    fn another_organizations_cursor_is_refused() {
        let filters = AuditFilters::default();
        let cursor = encode_cursor(Uuid::new_v4(), &filters, &position());
        assert!(decode_cursor(&cursor, Uuid::new_v4(), &filters).is_err());
    }

    #[test]
    fn a_cursor_made_under_other_filters_is_refused() {
        let org = Uuid::new_v4();
        let cursor = encode_cursor(org, &AuditFilters::default(), &position());
        let other = AuditFilters {
            outcome: Some(Outcome::Failure),
            ..Default::default()
        };
        assert!(decode_cursor(&cursor, org, &other).is_err());
    }

    #[test]
    fn garbage_is_not_a_cursor() {
        let org = Uuid::new_v4();
        for bad in ["", "!!!", "e30", "bm90IGpzb24"] {
            assert!(
                decode_cursor(bad, org, &AuditFilters::default()).is_err(),
                "{bad}"
            );
        }
    }
}
