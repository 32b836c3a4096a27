//! A polled batch as settlement reads it: each message parsed with the contract's parser into
//! a transfer, or set aside for the quarantine, with the holds of what will never settle. Its
//! own file because what is applied and what is quarantined must be decided in one place.

use rdkafka::message::{Headers, Message, OwnedMessage};
use transferd_message::LogMessage;

use super::decide::Transfer;
use super::quarantine::Quarantined;
use crate::stores::Stores;
use crate::stores::redis::SettledHold;
use crate::trace::{REQUEST_ID_KAFKA_HEADER, TRACEPARENT_HEADER, TraceContext};

/// A polled batch as settlement reads it: the transfers to apply, each with the index of the
/// log message it came from, and the messages set aside.
pub(super) struct Read<'a> {
    log: &'a [OwnedMessage],
    pub(super) transfers: Vec<Transfer>,
    sources: Vec<usize>,
    pub(super) quarantined: Vec<Quarantined>,
    /// How many of `quarantined` the ledger refused (the others are not transfers at all).
    pub(super) refused: usize,
}

impl<'a> Read<'a> {
    /// Reads every message with the contract's parser; what it refuses is quarantined, not
    /// skipped: holding the partition back for it would stop every transfer behind it.
    pub(super) fn of(log: &'a [OwnedMessage]) -> Read<'a> {
        let mut read = Read {
            log,
            transfers: Vec::with_capacity(log.len()),
            sources: Vec::with_capacity(log.len()),
            quarantined: Vec::new(),
            refused: 0,
        };
        for (index, message) in log.iter().enumerate() {
            let payload = message.payload().unwrap_or_default();
            let trace = trace_of(message);
            let parsed = match LogMessage::parse(payload) {
                Ok(LogMessage::Transfer(parsed)) => Ok(vec![Transfer::of(parsed, trace)]),
                Ok(LogMessage::Action(parsed)) => Ok(vec![Transfer::of_action(parsed, trace)]),
                Ok(LogMessage::Batch(parsed)) => Ok(Transfer::of_batch(parsed, trace)),
                Err(error) => Err(error),
            };
            match parsed {
                Ok(transfers) => {
                    read.sources
                        .extend(std::iter::repeat_n(index, transfers.len()));
                    read.transfers.extend(transfers);
                }
                Err(error) => read.set_aside(index, &error.to_string()),
            }
        }
        read
    }

    fn set_aside(&mut self, index: usize, error: &str) {
        let message = &self.log[index];
        tracing::error!(
            error,
            partition = message.partition(),
            offset = message.offset(),
            "quarantining a message settlement cannot apply"
        );
        self.quarantined.push(Quarantined::new(
            message.partition(),
            message.offset(),
            message.payload().unwrap_or_default(),
            error,
        ));
    }

    /// Moves the transfers at `refused` (indices into `transfers`, ascending, with the
    /// ledger's words) to the quarantine: the log message each came from, once (a batch's
    /// message is set aside once however many of its transfers the ledger refuses).
    pub(super) fn quarantine(&mut self, refused: Vec<(usize, String)>) {
        let mut set_aside = std::collections::HashSet::new();
        for (index, error) in refused.into_iter().rev() {
            self.transfers.remove(index);
            let source = self.sources.remove(index);
            if set_aside.insert(source) {
                self.set_aside(source, &format!("the ledger refuses it: {error}"));
                self.refused += 1;
            }
        }
    }

    /// The holds of quarantined messages that will never settle, to give back now: those whose
    /// pending record (written with the hold) is this very message. A message that only names
    /// another transfer's id (another producer's) releases nothing; the reconciler releases a
    /// hold whose transfer never reaches the ledger. A cache that cannot say releases nothing.
    pub(super) async fn quarantined_holds(&self, stores: &Stores) -> Vec<SettledHold> {
        let mut holds = Vec::new();
        for message in &self.quarantined {
            let found = &message.found;
            let (Some(id), Some(sender_id), Some(currency)) =
                (found.transaction_id, found.sender_id, &found.currency)
            else {
                continue;
            };
            let id = id.to_string();
            match stores.cache.pending(&id).await {
                Ok(Some(record)) if record == message.payload => holds.push(SettledHold {
                    transaction_id: id,
                    user_id: sender_id,
                    currency: currency.clone(),
                }),
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, transaction_id = id, "cannot read a quarantined transfer's pending record; the reconciler will release its hold");
                }
            }
        }
        holds
    }
}

/// The request id and trace context a message's headers carry, if any.
fn trace_of(message: &OwnedMessage) -> Option<TraceContext> {
    let headers = message.headers()?;
    let text = |name: &str| {
        headers
            .iter()
            .find(|header| header.key == name)
            .and_then(|header| header.value)
            .and_then(|value| std::str::from_utf8(value).ok())
    };
    TraceContext::of_message(text(REQUEST_ID_KAFKA_HEADER), text(TRACEPARENT_HEADER))
}
