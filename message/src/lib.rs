//! The transfer-log message: the record of an accepted transfer that the guest writes, the
//! host's guard checks before anything is held, and the settlement worker applies.
//!
//! One type and one parser for all three, so what the guard admits is by construction what
//! settlement can apply. [`TransferMessage::parse`] is settlement's reading: the fields it
//! applies, with the values the ledger can store. [`TransferMessage::parse_exact`] is the
//! guard's: the same reading, plus exactly this version's field set written as this version
//! writes it.
//!
//! The message keeps the original service's fields (`sender_id, receiver_id, amount,
//! currency, description, transaction_id`) and adds exact ones. `amount` is a JSON number
//! written with exactly the currency's decimals (`10.50`), so old consumers still read a number
//! and new ones can read it exactly; `amount_minor` is the integer to use.

pub mod time;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use uuid::Uuid;

/// Bumped when a field changes meaning or disappears; adding a field does not bump it.
pub const SCHEMA_VERSION: u32 = 1;

/// The topic accepted transfers are published to (the original service's name).
pub const TRANSFER_TOPIC: &str = "transfer_topic";

/// Every field a message of [`SCHEMA_VERSION`] has, in the order it is written.
pub const FIELDS: [&str; 11] = [
    "transaction_id",
    "sender_id",
    "receiver_id",
    "amount",
    "amount_minor",
    "currency",
    "description",
    "created_at",
    "created_at_ms",
    "guest_version",
    "schema_version",
];

/// Fields a message carries only when they say something, written after [`FIELDS`] in this
/// order: `metadata` when the transfer has any, `phase` and `expires_at_ms` for a pending
/// transfer. A plain transfer's message is exactly the original contract.
pub const OPTIONAL_FIELDS: [&str; 3] = ["metadata", "phase", "expires_at_ms"];

/// Bounds on a transfer's metadata: what the ledger stores and every reader can take. A guest's
/// rules may be stricter, never looser (the guard checks these).
pub const METADATA_MAX_ENTRIES: usize = 16;
pub const METADATA_KEY_MAX_BYTES: usize = 64;
pub const METADATA_VALUE_MAX_BYTES: usize = 512;
/// Keys and values together, in UTF-8 bytes.
pub const METADATA_MAX_BYTES: usize = 4096;

/// The longest a pending transfer may wait to be posted or voided before it expires.
pub const PENDING_MAX_EXPIRY_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// The last instant a message may carry: 9999-12-31T23:59:59.999Z, the end of what RFC 3339's
/// four-digit years can write (the ledger's timestamps reach further).
pub const MAX_CREATED_AT_MS: i64 = 253_402_300_799_999;

/// A transfer-log message.
///
/// The fields after `amount_minor` that settlement does not apply are optional on reading, so a
/// message of an older writer that left them out still settles; the guard requires them all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferMessage {
    pub transaction_id: Uuid,
    pub sender_id: i64,
    pub receiver_id: i64,
    /// `amount_minor` at the currency's decimals, as consumers of the original message read it.
    #[serde(default)]
    pub amount: Option<AmountText>,
    pub amount_minor: i64,
    pub currency: String,
    #[serde(default)]
    pub description: Option<String>,
    /// `created_at_ms` in RFC 3339 (`time::rfc3339_from_ms`).
    #[serde(default)]
    pub created_at: Option<String>,
    /// When the host received the request, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// The guest version that decided the transfer.
    #[serde(default)]
    pub guest_version: Option<String>,
    #[serde(default)]
    pub schema_version: Option<u32>,
    /// The client's key-value pairs, written in key order; absent when there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// `pending` for a transfer that reserves the money until it is posted, voided or expires;
    /// absent for a transfer that settles at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// When a pending transfer expires, in milliseconds since the Unix epoch; only with `phase`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
}

/// What settling a transfer does with its money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Moves the money at once (what a message without `phase` means).
    Immediate,
    /// Reserves the money on the ledger until it is posted, voided or expires.
    Pending,
}

impl TransferMessage {
    /// Whether settling this message reserves the money instead of moving it.
    pub fn is_pending(&self) -> bool {
        self.phase == Some(Phase::Pending)
    }
}

/// Why a payload is not a message settlement can apply (or, for `parse_exact`, not one this
/// version writes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// Not JSON, or not an object of the message's shape: a field missing, of the wrong type,
    /// out of its type's range, or given twice.
    Shape(String),
    /// Of the shape, but a field holds what the ledger cannot store or a reader cannot take.
    Field {
        field: &'static str,
        problem: String,
    },
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageError::Shape(why) => write!(f, "not a transfer message: {why}"),
            MessageError::Field { field, problem } => write!(f, "the message's {field} {problem}"),
        }
    }
}

impl std::error::Error for MessageError {}

impl TransferMessage {
    /// Settlement's reading: the shape (serde refuses a field given twice), then the values the
    /// ledger can store.
    pub fn parse(payload: &[u8]) -> Result<TransferMessage, MessageError> {
        let message: TransferMessage = serde_json::from_slice(payload)
            .map_err(|error| MessageError::Shape(error.to_string()))?;
        message.check_storable()?;
        Ok(message)
    }

    /// The guard's reading: [`parse`](Self::parse), and exactly the fields of
    /// [`SCHEMA_VERSION`], each present and written as this version writes it: the id in its
    /// hyphenated lower-case form, `created_at` equal to `created_at_ms`, and printable text.
    /// What `amount` must say depends on the currency's decimals: the guard checks it.
    pub fn parse_exact(payload: &[u8]) -> Result<TransferMessage, MessageError> {
        let message = TransferMessage::parse(payload)?;
        // The names and raw values only, borrowed from the payload: the guard runs on every
        // transfer, and the values were read above. A name written with escapes cannot be
        // borrowed and is refused: this version never writes one.
        let object: BTreeMap<&str, &RawValue> = serde_json::from_slice(payload)
            .map_err(|error| MessageError::Shape(error.to_string()))?;
        let found: BTreeSet<&str> = object.keys().copied().collect();
        let expected: BTreeSet<&str> = FIELDS
            .into_iter()
            .chain(message.metadata.is_some().then_some("metadata"))
            .chain(message.phase.is_some().then_some("phase"))
            .chain(message.expires_at_ms.is_some().then_some("expires_at_ms"))
            .collect();
        if let Some(unknown) = found.difference(&expected).next() {
            return Err(MessageError::Shape(format!("unknown field {unknown:?}")));
        }
        if let Some(missing) = expected.difference(&found).next() {
            return Err(MessageError::Shape(format!("missing field {missing:?}")));
        }
        let id_text = object["transaction_id"].get();
        if id_text != format!("\"{}\"", message.transaction_id.hyphenated()) {
            return Err(field(
                "transaction_id",
                "is not a lower-case hyphenated UUID",
            ));
        }
        if let Some(metadata) = &message.metadata {
            let canonical = serde_json::to_string(metadata).expect("strings always serialise");
            if object["metadata"].get() != canonical {
                return Err(field(
                    "metadata",
                    "is not written once per key, in key order",
                ));
            }
        }
        message.check_exact()?;
        Ok(message)
    }

    /// The message as JSON bytes. Deterministic: the same message gives the same bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a message of strings and integers always serialises")
    }

    fn check_storable(&self) -> Result<(), MessageError> {
        if !(0..=MAX_CREATED_AT_MS).contains(&self.created_at_ms) {
            return Err(field(
                "created_at_ms",
                &format!("is {}, outside 0..={MAX_CREATED_AT_MS}", self.created_at_ms),
            ));
        }
        if !storable(&self.currency) {
            return Err(field(
                "currency",
                "contains NUL, which the ledger cannot store",
            ));
        }
        if let Some(metadata) = &self.metadata {
            check_metadata(metadata)?;
        }
        self.check_phase()?;
        if let Some(description) = &self.description
            && !storable(description)
        {
            return Err(field(
                "description",
                "contains NUL, which the ledger cannot store",
            ));
        }
        Ok(())
    }

    fn check_exact(&self) -> Result<(), MessageError> {
        if self.schema_version != Some(SCHEMA_VERSION) {
            return Err(field(
                "schema_version",
                &format!("is {:?}, not {SCHEMA_VERSION}", self.schema_version),
            ));
        }
        if self.amount.is_none() {
            return Err(field("amount", "is null"));
        }
        let expected_created_at = time::rfc3339_from_ms(self.created_at_ms as u64);
        if self.created_at.as_deref() != Some(expected_created_at.as_str()) {
            return Err(field(
                "created_at",
                &format!("is {:?}, not {expected_created_at:?}", self.created_at),
            ));
        }
        match &self.guest_version {
            Some(version) if printable(version) => {}
            _ => return Err(field("guest_version", "is not printable text")),
        }
        if !printable(&self.currency) {
            return Err(field("currency", "contains a control character"));
        }
        if let Some(description) = &self.description
            && !printable(description)
        {
            return Err(field("description", "contains a control character"));
        }
        match &self.metadata {
            Some(metadata) if metadata.is_empty() => {
                return Err(field("metadata", "is empty; the writer leaves it out"));
            }
            Some(metadata) if !metadata.values().all(|value| printable(value)) => {
                return Err(field("metadata", "has a value with a control character"));
            }
            _ => {}
        }
        if self.phase == Some(Phase::Immediate) {
            return Err(field("phase", "is immediate; the writer leaves it out"));
        }
        Ok(())
    }

    /// A pending transfer expires after it was created and within [`PENDING_MAX_EXPIRY_MS`];
    /// any other transfer has no expiry.
    fn check_phase(&self) -> Result<(), MessageError> {
        match (self.is_pending(), self.expires_at_ms) {
            (false, None) => Ok(()),
            (false, Some(_)) => Err(field(
                "expires_at_ms",
                "is given for a transfer that is not pending",
            )),
            (true, None) => Err(field("expires_at_ms", "is missing for a pending transfer")),
            (true, Some(expires_at_ms)) => {
                let latest = self.created_at_ms.saturating_add(PENDING_MAX_EXPIRY_MS);
                if expires_at_ms <= self.created_at_ms || expires_at_ms > latest {
                    return Err(field(
                        "expires_at_ms",
                        &format!(
                            "is {expires_at_ms}, not after created_at_ms and within {PENDING_MAX_EXPIRY_MS} ms of it"
                        ),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// The bounds every reader relies on: entry count, key spelling and length, value length,
/// total size, and text the ledger can store.
pub fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), MessageError> {
    if metadata.len() > METADATA_MAX_ENTRIES {
        return Err(field(
            "metadata",
            &format!(
                "has {} entries, over {METADATA_MAX_ENTRIES}",
                metadata.len()
            ),
        ));
    }
    let mut total_bytes = 0;
    for (key, value) in metadata {
        if !metadata_key(key) {
            return Err(field(
                "metadata",
                &format!(
                    "has the key {key:?}: keys are 1 to {METADATA_KEY_MAX_BYTES} of A-Z a-z 0-9 _ . -"
                ),
            ));
        }
        if value.len() > METADATA_VALUE_MAX_BYTES || !storable(value) {
            return Err(field(
                "metadata",
                &format!(
                    "has a value under {key:?} over {METADATA_VALUE_MAX_BYTES} bytes or with NUL"
                ),
            ));
        }
        total_bytes += key.len() + value.len();
    }
    if total_bytes > METADATA_MAX_BYTES {
        return Err(field(
            "metadata",
            &format!("is {total_bytes} bytes of keys and values, over {METADATA_MAX_BYTES}"),
        ));
    }
    Ok(())
}

/// A metadata key: 1 to [`METADATA_KEY_MAX_BYTES`] ASCII letters, digits, `_`, `.` or `-`.
pub fn metadata_key(key: &str) -> bool {
    (1..=METADATA_KEY_MAX_BYTES).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn field(field: &'static str, problem: &str) -> MessageError {
    MessageError::Field {
        field,
        problem: problem.to_string(),
    }
}

/// Text PostgreSQL can store: no NUL (its text types cannot hold one).
pub fn storable(text: &str) -> bool {
    !text.contains('\0')
}

/// Text a reader can print as it is: no C0 control character (U+0000 to U+001F, which includes
/// tab and line breaks) and no DEL (U+007F). What the guest's rules and the guard require of
/// every text field of a transfer.
pub fn printable(text: &str) -> bool {
    !text.chars().any(|c| c <= '\u{1f}' || c == '\u{7f}')
}

/// A JSON number exactly as written (`10.50` stays `10.50`, where `f64` would write `10.5`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmountText(String);

impl AmountText {
    /// `text` when it is one JSON number.
    pub fn new(text: String) -> Option<AmountText> {
        let raw: Box<RawValue> = serde_json::from_str(&text).ok()?;
        is_number(raw.get()).then_some(AmountText(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_number(raw: &str) -> bool {
    raw.starts_with(|c: char| c == '-' || c.is_ascii_digit())
}

impl Serialize for AmountText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw = RawValue::from_string(self.0.clone()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for AmountText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<AmountText, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        if !is_number(raw.get()) {
            return Err(serde::de::Error::custom("amount must be a JSON number"));
        }
        Ok(AmountText(raw.get().to_string()))
    }
}

#[cfg(test)]
mod tests;

/// What an action does to a pending transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Moves the posted amount and releases the rest.
    Post,
    /// Releases the whole amount.
    Void,
    /// Releases the whole amount: the transfer was neither posted nor voided in time.
    Expire,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Post, Action::Void, Action::Expire];

    /// The action `as_str` names.
    pub fn named(name: &str) -> Option<Action> {
        Action::ALL
            .into_iter()
            .find(|action| action.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Post => "post",
            Action::Void => "void",
            Action::Expire => "expire",
        }
    }
}

/// A transfer-log message that resolves a pending transfer, written by the host (never by a
/// guest) on the transfer topic under the sender's key, so it follows the pending transfer's
/// own message. It names the transfer's parties and currency so settlement can lock their
/// accounts before it reads anything; settlement checks them against the ledger, and applies
/// only the one action the API recorded for the transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionMessage {
    pub action: Action,
    /// The action's own id: one per accepted action, so a message read twice applies once.
    pub action_id: Uuid,
    /// The pending transfer it resolves. Not named `transaction_id`: a reader that predates
    /// actions requires that field of a transfer, so it refuses an action instead of applying
    /// it as a transfer of `amount_minor`.
    pub pending_id: Uuid,
    pub sender_id: i64,
    pub receiver_id: i64,
    pub currency: String,
    /// `post`: the amount posted; `void` and `expire`: the amount released.
    pub amount_minor: i64,
    /// When the host accepted the action, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    pub schema_version: u32,
}

impl ActionMessage {
    /// Its JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a message of strings and integers always serialises")
    }
}

/// Most transfers one batch carries (`POST /transfers/batch`).
pub const BATCH_MAX_TRANSFERS: usize = 1_000;

/// Many transfers in one log record, written by the host for `POST /transfers/batch`: each
/// transfer's message exactly as the guest wrote it for a single transfer, in request order.
/// A reader that predates batches refuses it (it has no `transaction_id`), so it is set aside
/// rather than misapplied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchMessage {
    pub batch_id: Uuid,
    /// All or none: settlement applies every transfer of the batch, or rejects them all.
    pub atomic: bool,
    pub transfers: Vec<TransferMessage>,
}

/// The batch as written: the transfers' own bytes, not re-serialised.
#[derive(Serialize)]
struct BatchWritten<'a> {
    batch_id: Uuid,
    atomic: bool,
    transfers: Vec<&'a RawValue>,
    schema_version: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRead<'a> {
    batch_id: Uuid,
    atomic: bool,
    #[serde(borrow)]
    transfers: Vec<&'a RawValue>,
    #[allow(dead_code)] // Read so that it is known, not refused.
    schema_version: u32,
}

impl BatchMessage {
    /// A batch of transfer payloads (each the guest's message, already read by the guard), in
    /// order. `Err` when a payload is not JSON.
    pub fn write(
        batch_id: Uuid,
        atomic: bool,
        payloads: &[&[u8]],
    ) -> Result<Vec<u8>, MessageError> {
        let transfers = payloads
            .iter()
            .map(|payload| {
                let text = std::str::from_utf8(payload)
                    .map_err(|error| MessageError::Shape(error.to_string()))?;
                serde_json::from_str::<&RawValue>(text)
                    .map_err(|error| MessageError::Shape(error.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let written = BatchWritten {
            batch_id,
            atomic,
            transfers,
            schema_version: SCHEMA_VERSION,
        };
        Ok(serde_json::to_vec(&written).expect("raw JSON and plain fields serialise"))
    }

    /// Settlement's reading: the batch's shape, then each transfer as
    /// [`TransferMessage::parse`] reads a single one; at most [`BATCH_MAX_TRANSFERS`], no id
    /// twice.
    pub fn parse(payload: &[u8]) -> Result<BatchMessage, MessageError> {
        let read: BatchRead = serde_json::from_slice(payload)
            .map_err(|error| MessageError::Shape(error.to_string()))?;
        if read.transfers.is_empty() || read.transfers.len() > BATCH_MAX_TRANSFERS {
            return Err(field(
                "transfers",
                &format!(
                    "has {} transfers, not 1 to {BATCH_MAX_TRANSFERS}",
                    read.transfers.len()
                ),
            ));
        }
        let transfers = read
            .transfers
            .iter()
            .map(|raw| TransferMessage::parse(raw.get().as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let ids: BTreeSet<Uuid> = transfers.iter().map(|t| t.transaction_id).collect();
        if ids.len() != transfers.len() {
            return Err(field("transfers", "names one transaction id twice"));
        }
        Ok(BatchMessage {
            batch_id: read.batch_id,
            atomic: read.atomic,
            transfers,
        })
    }
}

/// A message on the transfer topic, as settlement reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogMessage {
    Transfer(TransferMessage),
    Action(ActionMessage),
    Batch(BatchMessage),
}

impl LogMessage {
    /// A message with a `batch_id` is a batch, one with an `action` field an action, anything
    /// else a transfer
    /// ([`TransferMessage::parse`]). A reader that predates actions refuses one (it has no
    /// `transaction_id`), so it is set aside rather than misapplied.
    pub fn parse(payload: &[u8]) -> Result<LogMessage, MessageError> {
        #[derive(Deserialize)]
        struct Probe<'a> {
            #[serde(borrow, default)]
            action: Option<&'a RawValue>,
            #[serde(borrow, default)]
            batch_id: Option<&'a RawValue>,
        }
        let probe: Probe = serde_json::from_slice(payload)
            .map_err(|error| MessageError::Shape(error.to_string()))?;
        if probe.batch_id.is_some() {
            return BatchMessage::parse(payload).map(LogMessage::Batch);
        }
        if probe.action.is_none() {
            return TransferMessage::parse(payload).map(LogMessage::Transfer);
        }
        let action: ActionMessage = serde_json::from_slice(payload)
            .map_err(|error| MessageError::Shape(error.to_string()))?;
        if action.amount_minor <= 0 {
            return Err(field("amount_minor", "is not positive"));
        }
        if !storable(&action.currency) {
            return Err(field(
                "currency",
                "contains NUL, which the ledger cannot store",
            ));
        }
        if !(0..=MAX_CREATED_AT_MS).contains(&action.created_at_ms) {
            return Err(field("created_at_ms", "is out of range"));
        }
        Ok(LogMessage::Action(action))
    }
}
