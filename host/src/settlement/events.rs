//! A settled batch's outcomes as event messages on the events topic: their shape, their
//! bound, and sending them. Its own file because the shape is a contract with the consumers.

use std::collections::BTreeMap;

use super::SettlementError;
use super::decide::Transfer;
use super::ledger::SettledBatch;
use crate::stores::Stores;
use crate::stores::kafka::EVENTS_TOPIC;
use crate::stores::transfer_state::Reason;

/// Most transfers one event message reports. A settled batch (up to 10,000 transfers,
/// `TRANSFERD_SETTLEMENT_BATCH`) goes out in messages of at most this many; an entry is at
/// most about 500 bytes, so a message stays far under the broker's default 1 MB limit.
pub const MAX_TRANSFERS_PER_EVENT: usize = 256;

/// One settled transfer's outcome, as an entry of an event message.
#[derive(Debug, serde::Serialize)]
struct TransferEvent<'a> {
    transaction_id: uuid::Uuid,
    status: &'static str,
    reason: Option<&'static str>,
    sender_id: i64,
    receiver_id: i64,
    amount_minor: i64,
    currency: &'a str,
    /// The accepting request's trace context (`traceparent`, and `request_id` when the caller
    /// chose its own), as the transfer's message carried it; absent for effects re-run from
    /// the ledger after a crash (the ledger keeps no trace).
    #[serde(flatten)]
    trace: BTreeMap<&'static str, String>,
}

/// One event message: `{"transfers":[…]}`.
#[derive(Debug, serde::Serialize)]
struct SettledEvent<'a> {
    transfers: &'a [TransferEvent<'a>],
}

/// A settled batch's outcomes as event messages, `(key, payload)` in message order: at most
/// `MAX_TRANSFERS_PER_EVENT` transfers each, `{"transfers":[…]}`, keyed by the first one's
/// transaction id. One message per batch rather than per transfer: the local broker's cost
/// is per record and per header it stores, not per byte.
fn event_messages(messages: &[Transfer], settled: &SettledBatch) -> Vec<(String, Vec<u8>)> {
    assert_eq!(
        messages.len(),
        settled.transfers.len(),
        "one outcome per message"
    );
    let entries: Vec<TransferEvent<'_>> = messages
        .iter()
        .zip(&settled.transfers)
        .map(|(message, outcome)| {
            assert_eq!(
                message.transaction_id, outcome.transaction_id,
                "outcomes follow message order"
            );
            TransferEvent {
                transaction_id: message.transaction_id,
                status: outcome.outcome.status().as_str(),
                reason: outcome.outcome.reason().map(Reason::as_str),
                sender_id: message.sender_id,
                receiver_id: message.receiver_id,
                amount_minor: message.amount_minor,
                currency: &message.currency,
                trace: message
                    .trace
                    .as_ref()
                    .map(|trace| trace.kafka_headers().into_iter().collect())
                    .unwrap_or_default(),
            }
        })
        .collect();
    entries
        .chunks(MAX_TRANSFERS_PER_EVENT)
        .map(|chunk| {
            let key = chunk[0].transaction_id.to_string();
            let payload = serde_json::to_vec(&SettledEvent { transfers: chunk })
                .expect("an event of strings and integers serialises");
            (key, payload)
        })
        .collect()
}

/// The batch's event messages (re-emitted on redelivery), all awaited before its effects are
/// forgotten.
pub(super) async fn emit_events(
    stores: &Stores,
    messages: &[Transfer],
    settled: &SettledBatch,
) -> Result<(), SettlementError> {
    let events = event_messages(messages, settled);
    let deliveries = events
        .iter()
        .map(|(key, payload)| stores.log.produce(EVENTS_TOPIC, key, payload, &[]));
    for delivery in futures::future::join_all(deliveries).await {
        delivery?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settlement::decide::Outcome;
    use crate::settlement::ledger::SettledTransfer;
    use crate::trace::{REQUEST_ID_KAFKA_HEADER, TRACEPARENT_HEADER, TraceContext};

    fn settled(count: usize, trace: Option<TraceContext>) -> (Vec<Transfer>, SettledBatch) {
        let messages: Vec<Transfer> = (0..count)
            .map(|index| Transfer {
                transaction_id: uuid::Uuid::now_v7(),
                sender_id: 1,
                receiver_id: 2 + index as i64,
                amount_minor: 100 + index as i64,
                currency: "USD".into(),
                description: None,
                created_at_ms: 0,
                trace: trace.clone(),
            })
            .collect();
        let transfers = messages
            .iter()
            .enumerate()
            .map(|(index, message)| SettledTransfer {
                transaction_id: message.transaction_id,
                outcome: if index % 2 == 0 {
                    Outcome::Completed
                } else {
                    Outcome::Rejected(Reason::InsufficientFunds)
                },
                newly_applied: true,
            })
            .collect();
        let batch = SettledBatch {
            transfers,
            accounts: BTreeMap::new(),
            effects: None,
        };
        (messages, batch)
    }

    fn entries(payload: &[u8]) -> Vec<serde_json::Value> {
        let event: serde_json::Value = serde_json::from_slice(payload).expect("event JSON");
        event["transfers"]
            .as_array()
            .expect("a transfers array")
            .clone()
    }

    #[test]
    fn a_batch_is_one_event_with_every_outcome_in_order() {
        let (messages, batch) = settled(3, None);
        let events = event_messages(&messages, &batch);
        assert_eq!(events.len(), 1);
        let (key, payload) = &events[0];
        assert_eq!(key, &messages[0].transaction_id.to_string());
        let entries = entries(payload);
        assert_eq!(entries.len(), 3);
        for (entry, message) in entries.iter().zip(&messages) {
            assert_eq!(entry["transaction_id"], message.transaction_id.to_string());
            assert_eq!(entry["amount_minor"], message.amount_minor);
            assert_eq!(entry["receiver_id"], message.receiver_id);
            assert_eq!(entry["currency"], "USD");
            assert!(entry.get("traceparent").is_none(), "no trace, no field");
        }
        assert_eq!(entries[0]["status"], "completed");
        assert_eq!(entries[0]["reason"], serde_json::Value::Null);
        assert_eq!(entries[1]["status"], "rejected");
        assert_eq!(entries[1]["reason"], "insufficient_funds");
    }

    #[test]
    fn a_large_batch_is_split_into_bounded_messages() {
        let count = 2 * MAX_TRANSFERS_PER_EVENT + 1;
        let (messages, batch) = settled(count, None);
        let events = event_messages(&messages, &batch);
        let sizes: Vec<usize> = events
            .iter()
            .map(|(_, payload)| entries(payload).len())
            .collect();
        assert_eq!(
            sizes,
            vec![MAX_TRANSFERS_PER_EVENT, MAX_TRANSFERS_PER_EVENT, 1]
        );
        let reported: Vec<String> = events
            .iter()
            .flat_map(|(_, payload)| entries(payload))
            .map(|entry| {
                entry["transaction_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        let sent: Vec<String> = messages
            .iter()
            .map(|m| m.transaction_id.to_string())
            .collect();
        assert_eq!(reported, sent, "every transfer once, in message order");
        for (index, (key, _)) in events.iter().enumerate() {
            assert_eq!(key, &sent[index * MAX_TRANSFERS_PER_EVENT]);
        }
    }

    #[test]
    fn entries_carry_the_accepting_requests_trace_and_stay_under_the_message_limit() {
        // The longest request id a caller may choose (128 characters).
        let mut headers = http::HeaderMap::new();
        let request_id = "r".repeat(128);
        headers.insert(
            "x-request-id",
            http::HeaderValue::from_str(&request_id).expect("header value"),
        );
        let trace = TraceContext::of_request(&headers);
        let (messages, batch) = settled(MAX_TRANSFERS_PER_EVENT, Some(trace.clone()));
        let events = event_messages(&messages, &batch);
        assert_eq!(events.len(), 1);
        let entry = &entries(&events[0].1)[0];
        assert_eq!(entry[REQUEST_ID_KAFKA_HEADER], request_id.as_str());
        assert_eq!(entry[TRACEPARENT_HEADER], trace.traceparent());
        assert!(
            events[0].1.len() < 1_000_000 / 4,
            "a full event message is {} bytes",
            events[0].1.len()
        );
    }
}
