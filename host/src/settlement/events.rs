//! A settled batch's outcomes as event messages on the events topic: their shape, their
//! bound, and sending them. Its own file because the shape is a contract with the consumers.

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::SettlementError;
use super::decide::{Step, Transfer};
use super::ledger::SettledBatch;
use crate::stores::Stores;
use crate::stores::kafka::EVENTS_TOPIC;
use crate::stores::transfer_state::{Reason, TransferStatus};
use crate::trace::TraceContext;

/// Bumped when a field of an event changes meaning or disappears; adding one does not bump it.
pub const EVENTS_SCHEMA_VERSION: u32 = 1;

/// Most transfers one event message reports. A settled batch (up to 10,000 transfers,
/// `TRANSFERD_SETTLEMENT_BATCH`) goes out in messages of at most this many.
pub const MAX_TRANSFERS_PER_EVENT: usize = 256;

/// Most bytes of entries one event message carries, so it stays under the broker's default
/// 1 MB message limit even when every transfer carries the largest metadata.
pub const MAX_EVENT_ENTRY_BYTES: usize = 512 * 1024;

/// One transfer's change of state: completed or rejected; for a two-phase transfer, pending
/// (reserved), then posted, voided or expired.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TransferEvent {
    pub transaction_id: Uuid,
    /// The state the transfer is in now.
    pub status: TransferStatus,
    /// Why it was rejected; `null` unless rejected.
    pub reason: Option<Reason>,
    pub sender_id: i64,
    pub receiver_id: i64,
    /// What the change moved or reserved: the amount; for `posted`, the amount posted; for
    /// `voided` and `expired`, the amount released.
    pub amount_minor: i64,
    #[schema(example = "USD")]
    pub currency: String,
    /// The post, void or expiry that made this change (absent for other changes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_id: Option<Uuid>,
    /// The client's metadata, on the transfer's first event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<std::collections::BTreeMap<String, String>>,
    /// The accepting request's W3C trace context, when the transfer's message carried one
    /// (absent for effects re-run from the ledger after a crash: the ledger keeps no trace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The caller's own `X-Request-Id`, when it sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// One message on `transfer_events`: the state changes of up to
/// [`MAX_TRANSFERS_PER_EVENT`] transfers, in the order they happened. A message may be sent
/// twice after a crash: consumers deduplicate by `transaction_id` and `status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferEvents<'a> {
    /// [`EVENTS_SCHEMA_VERSION`].
    pub schema_version: u32,
    pub transfers: &'a [TransferEvent],
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
    // A refused action changed no transfer: no event.
    let entries: Vec<TransferEvent> = messages
        .iter()
        .zip(&settled.transfers)
        .filter_map(|(message, outcome)| {
            assert_eq!(
                message.step_id(),
                outcome.step_id,
                "outcomes follow message order"
            );
            let status = outcome.outcome.status()?;
            let trace = message.trace.as_ref();
            let action_id = match message.step {
                Step::Resolve { action_id, .. } => Some(action_id),
                _ => None,
            };
            Some(TransferEvent {
                transaction_id: message.transaction_id,
                status,
                reason: outcome.outcome.reason(),
                sender_id: message.sender_id,
                receiver_id: message.receiver_id,
                amount_minor: message.amount_minor,
                currency: message.currency.clone(),
                action_id,
                metadata: message.metadata.clone(),
                traceparent: trace.map(TraceContext::traceparent),
                request_id: trace
                    .and_then(TraceContext::callers_request_id)
                    .map(str::to_string),
            })
        })
        .collect();
    bounded_chunks(&entries)
        .into_iter()
        .map(|chunk| {
            let key = chunk[0].transaction_id.to_string();
            let event = TransferEvents {
                schema_version: EVENTS_SCHEMA_VERSION,
                transfers: chunk,
            };
            let payload =
                serde_json::to_vec(&event).expect("an event of strings and integers serialises");
            (key, payload)
        })
        .collect()
}

/// `entries` in order, cut into runs of at most [`MAX_TRANSFERS_PER_EVENT`] entries and
/// [`MAX_EVENT_ENTRY_BYTES`] bytes (a single larger entry still goes, alone).
fn bounded_chunks(entries: &[TransferEvent]) -> Vec<&[TransferEvent]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (index, entry) in entries.iter().enumerate() {
        let size = serde_json::to_vec(entry).map_or(0, |json| json.len());
        let full = index - start == MAX_TRANSFERS_PER_EVENT || bytes + size > MAX_EVENT_ENTRY_BYTES;
        if full && index > start {
            chunks.push(&entries[start..index]);
            (start, bytes) = (index, 0);
        }
        bytes += size;
    }
    if start < entries.len() {
        chunks.push(&entries[start..]);
    }
    chunks
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
    use std::collections::BTreeMap;

    use crate::settlement::decide::Outcome;
    use crate::settlement::ledger::SettledTransfer;
    use crate::trace::{REQUEST_ID_KAFKA_HEADER, TRACEPARENT_HEADER};

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
                metadata: None,
                step: Step::Immediate,
                atomic_batch: None,
                trace: trace.clone(),
            })
            .collect();
        let transfers = messages
            .iter()
            .enumerate()
            .map(|(index, message)| SettledTransfer {
                transaction_id: message.transaction_id,
                step_id: message.transaction_id,
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
        let event: serde_json::Value = serde_json::from_slice(payload).expect("event JSON");
        assert_eq!(event["schema_version"], EVENTS_SCHEMA_VERSION);
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
    fn events_with_large_metadata_stay_under_the_message_limit() {
        let (mut messages, batch) = settled(MAX_TRANSFERS_PER_EVENT, None);
        let largest: std::collections::BTreeMap<String, String> = (0..8)
            .map(|i| {
                (
                    format!("k{i}"),
                    "\u{1}".repeat(transferd_message::METADATA_VALUE_MAX_BYTES),
                )
            })
            .collect();
        for message in &mut messages {
            message.metadata = Some(largest.clone());
        }
        let events = event_messages(&messages, &batch);
        assert!(events.len() > 1);
        assert!(events.iter().all(|(_, payload)| payload.len() < 1_000_000));
        let count: usize = events
            .iter()
            .map(|(_, payload)| entries(payload).len())
            .sum();
        assert_eq!(count, messages.len(), "every transfer once");
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

    #[test]
    fn the_documented_schema_names_every_field_an_event_carries() {
        use std::collections::BTreeSet;
        use utoipa::PartialSchema;
        let properties = |schema: serde_json::Value| -> BTreeSet<String> {
            schema["properties"]
                .as_object()
                .map(|fields| fields.keys().cloned().collect())
                .unwrap_or_default()
        };
        let json = |value| serde_json::to_value(value).expect("a schema serialises");
        let mut headers = http::HeaderMap::new();
        headers.insert("x-request-id", http::HeaderValue::from_static("order-7"));
        let (mut messages, mut batch) = settled(1, Some(TraceContext::of_request(&headers)));
        // Every optional field present: a post of a transfer that carried metadata.
        let action_id = uuid::Uuid::now_v7();
        messages[0].step = Step::Resolve {
            action_id,
            action: transferd_message::Action::Post,
        };
        messages[0].metadata = Some(BTreeMap::from([("order_id".into(), "A-1".into())]));
        batch.transfers[0].step_id = action_id;
        let events = event_messages(&messages, &batch);
        let event: serde_json::Value = serde_json::from_slice(&events[0].1).expect("event JSON");
        let carried = |value: &serde_json::Value| -> BTreeSet<String> {
            value
                .as_object()
                .map(|fields| fields.keys().cloned().collect())
                .unwrap_or_default()
        };
        assert_eq!(properties(json(TransferEvents::schema())), carried(&event));
        assert_eq!(
            properties(json(TransferEvent::schema())),
            carried(&event["transfers"][0])
        );
    }
}
