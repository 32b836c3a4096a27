//! The one action (post, void, expire) accepted for each two-phase transfer
//! (`transfer_actions`). The API records an action here before it publishes it, only while the
//! transfer is pending and its expiry says the action may still (or, for expiry, may now) be
//! taken; the primary key lets exactly one action win. Settlement applies only the recorded
//! action, so the record is what makes "posted" a promise.

use chrono::{DateTime, Utc};
use transferd_message::{Action, ActionMessage, SCHEMA_VERSION};
use uuid::Uuid;

use crate::stores::postgres::{Ledger, LedgerError, again_if_lost};
use crate::stores::transfer_state::TransferStatus;

/// An action a caller (or the expiry pass) asks for.
#[derive(Debug, Clone)]
pub struct NewAction {
    pub transaction_id: Uuid,
    pub action_id: Uuid,
    pub action: Action,
    /// A post's amount when smaller than the transfer's; `None` for the whole amount.
    pub amount_minor: Option<i64>,
    /// The host's time of acceptance, in milliseconds since the Unix epoch.
    pub now_ms: i64,
}

/// Why an action was not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The ledger has no such transfer (yet).
    NotFound,
    /// Not a two-phase transfer.
    NotTwoPhase,
    /// Not pending any more: posted, voided or expired already.
    Resolved(TransferStatus),
    /// Another action was accepted for it first.
    Taken(Action),
    /// Its expiry has passed (a post or void), or has not come yet (an expiry).
    Expired,
    NotDueYet,
    /// A post of more than the transfer reserved.
    OverAmount {
        reserved_minor: i64,
    },
}

/// The transfer an action is asked for, as the ledger has it, with the action accepted for it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Target {
    pub transaction_id: Uuid,
    pub sender_id: i64,
    pub receiver_id: i64,
    pub currency: String,
    pub amount_minor: i64,
    pub status: TransferStatus,
    pub expires_at: Option<DateTime<Utc>>,
    pub action_id: Option<Uuid>,
    pub action: Option<String>,
    pub action_amount_minor: Option<i64>,
    pub action_created_at_ms: Option<i64>,
}

impl Target {
    /// The recorded action as its log message.
    fn message(&self) -> Option<ActionMessage> {
        let action = Action::named(self.action.as_deref()?)?;
        Some(ActionMessage {
            action,
            action_id: self.action_id?,
            pending_id: self.transaction_id,
            sender_id: self.sender_id,
            receiver_id: self.receiver_id,
            currency: self.currency.clone(),
            amount_minor: self.action_amount_minor?,
            created_at_ms: self.action_created_at_ms?,
            schema_version: SCHEMA_VERSION,
        })
    }

    /// Why `new` may not be recorded for this transfer, if it may not.
    fn refusal(&self, new: &NewAction) -> Option<Refusal> {
        let expires_at_ms = self.expires_at?.timestamp_millis();
        if let Some(taken) = self.message() {
            return Some(Refusal::Taken(taken.action));
        }
        if self.status != TransferStatus::Pending {
            return Some(Refusal::Resolved(self.status));
        }
        let due = expires_at_ms <= new.now_ms;
        match new.action {
            Action::Expire if !due => Some(Refusal::NotDueYet),
            Action::Post | Action::Void if due => Some(Refusal::Expired),
            _ => match new.amount_minor {
                Some(amount) if amount > self.amount_minor => Some(Refusal::OverAmount {
                    reserved_minor: self.amount_minor,
                }),
                _ => None,
            },
        }
    }
}

const TARGET: &str = "
    SELECT t.transaction_id, t.sender_id, t.receiver_id, t.currency, t.amount_minor, t.status,
           t.expires_at, a.action_id, a.action, a.amount_minor AS action_amount_minor,
           a.created_at_ms AS action_created_at_ms
    FROM transfers t LEFT JOIN transfer_actions a USING (transaction_id)
    WHERE t.transaction_id = $1";

impl Ledger {
    /// The transfer `transaction_id` with its accepted action, if the ledger has it.
    pub async fn action_target(&self, transaction_id: Uuid) -> Result<Option<Target>, LedgerError> {
        let pool = self.pool();
        Ok(again_if_lost(pool, || {
            sqlx::query_as(TARGET)
                .bind(transaction_id)
                .fetch_optional(pool)
        })
        .await?)
    }

    /// Records `new` as the transfer's action when it may be taken, and returns its message
    /// to publish. The same action id asked again (a retry) returns the recorded message.
    pub async fn accept_action(
        &self,
        new: &NewAction,
    ) -> Result<Result<ActionMessage, Refusal>, LedgerError> {
        let Some(target) = self.action_target(new.transaction_id).await? else {
            return Ok(Err(Refusal::NotFound));
        };
        if target.expires_at.is_none() {
            return Ok(Err(Refusal::NotTwoPhase));
        }
        if let Some(recorded) = target.message().filter(|m| m.action_id == new.action_id) {
            return Ok(Ok(recorded));
        }
        if let Some(refusal) = target.refusal(new) {
            return Ok(Err(refusal));
        }
        let amount_minor = new.amount_minor.unwrap_or(target.amount_minor);
        let inserted = sqlx::query(
            "INSERT INTO transfer_actions (transaction_id, action_id, action, amount_minor, created_at_ms)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (transaction_id) DO NOTHING",
        )
        .bind(new.transaction_id)
        .bind(new.action_id)
        .bind(new.action.as_str())
        .bind(amount_minor)
        .bind(new.now_ms)
        .execute(self.pool())
        .await?
        .rows_affected();
        if inserted == 0 {
            // Another action won between the read and the insert: answer as it stands now.
            return Box::pin(self.accept_action(new)).await;
        }
        Ok(Ok(ActionMessage {
            action: new.action,
            action_id: new.action_id,
            pending_id: target.transaction_id,
            sender_id: target.sender_id,
            receiver_id: target.receiver_id,
            currency: target.currency,
            amount_minor,
            created_at_ms: new.now_ms,
            schema_version: SCHEMA_VERSION,
        }))
    }

    /// Forgets an action whose message certainly never reached the log, while its transfer is
    /// still pending, so another may be taken.
    pub async fn withdraw_action(
        &self,
        transaction_id: Uuid,
        action_id: Uuid,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "DELETE FROM transfer_actions a USING transfers t
             WHERE a.transaction_id = $1 AND a.action_id = $2
               AND t.transaction_id = a.transaction_id AND t.status = 'pending'",
        )
        .bind(transaction_id)
        .bind(action_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Up to `limit` pending transfers whose expiry is at or before `now_ms` and which have no
    /// action yet, soonest first.
    pub async fn due_for_expiry(&self, now_ms: i64, limit: i64) -> Result<Vec<Uuid>, LedgerError> {
        Ok(sqlx::query_scalar(
            "SELECT t.transaction_id FROM transfers t
             WHERE t.status = 'pending' AND t.expires_at <= to_timestamp($1 / 1000.0)
               AND NOT EXISTS (SELECT 1 FROM transfer_actions a WHERE a.transaction_id = t.transaction_id)
             ORDER BY t.expires_at LIMIT $2",
        )
        .bind(now_ms)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// Up to `limit` recorded actions whose transfer is still pending: expiries whatever their
    /// age (only the expiry pass publishes them, so nothing else will), posts and voids accepted
    /// before `before_ms` (their request had that long to publish them). Their message may
    /// never have reached the log.
    pub async fn unapplied_actions(
        &self,
        before_ms: i64,
        limit: i64,
    ) -> Result<Vec<ActionMessage>, LedgerError> {
        let targets: Vec<Target> = sqlx::query_as(
            "SELECT t.transaction_id, t.sender_id, t.receiver_id, t.currency, t.amount_minor, t.status,
                    t.expires_at, a.action_id, a.action, a.amount_minor AS action_amount_minor,
                    a.created_at_ms AS action_created_at_ms
             FROM transfer_actions a JOIN transfers t USING (transaction_id)
             WHERE t.status = 'pending' AND (a.action = 'expire' OR a.created_at_ms < $1)
             ORDER BY a.created_at_ms LIMIT $2",
        )
        .bind(before_ms)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(targets.iter().filter_map(Target::message).collect())
    }
}
