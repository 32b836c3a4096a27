//! Quarantined messages copied onto the dead-letter topic, each marked once the broker has it.
//! Its own file because it runs from two places: after a batch that set messages aside, and
//! for what a previous worker left.

use super::SettlementError;
use super::ledger::Settlements;
use super::quarantine;
use super::retry::retrying;
use crate::shutdown::Stop;
use crate::stores::Stores;
use crate::stores::kafka::DEAD_LETTER_TOPIC;

/// Copies every quarantined message not yet on the dead-letter topic there, marking each once
/// acknowledged. False when stopping was requested first (the rest goes at the next start).
pub(super) async fn dead_letter(
    stores: &Stores,
    settlements: &Settlements,
    stop: &mut Stop,
) -> bool {
    retrying(
        stop,
        "writing quarantined messages to the dead-letter topic",
        || dead_letter_once(stores, settlements),
    )
    .await
    .is_some()
}

async fn dead_letter_once(
    stores: &Stores,
    settlements: &Settlements,
) -> Result<(), SettlementError> {
    loop {
        let unsent = quarantine::not_dead_lettered(settlements.pool(), 100).await?;
        if unsent.is_empty() {
            return Ok(());
        }
        for entry in unsent {
            let key = format!("{}:{}", entry.partition, entry.log_offset);
            let source = format!(
                "{}/{}/{}/{}",
                entry.topic, entry.log_generation, entry.partition, entry.log_offset
            );
            let headers = [
                ("transferd-error", entry.error.as_str()),
                ("transferd-source", source.as_str()),
            ];
            stores
                .log
                .produce(DEAD_LETTER_TOPIC, &key, &entry.payload, &headers)
                .await?;
            quarantine::dead_lettered(settlements.pool(), entry.quarantine_id).await?;
        }
    }
}
