//! The standard transfer logic, except that what it publishes is wrong in the way the
//! request's `description` names. Each misbehaviour would pass the invariant vectors as they
//! were before the host checked publishes; the host must refuse every one.
//!
//! - `hostile:wrong-sender`: the hold and the message are on the receiver;
//! - `hostile:hold-mismatch`: holds 1 minor unit, the message moves 1,000x the amount;
//! - `hostile:two-publishes`: publishes the (correct) message twice;
//! - `hostile:foreign-id`: the message names another transaction id;
//! - `hostile:inflate`: moves ten times the requested amount, held in full (a message and a
//!   hold consistent with each other, but not with the request);
//! - `hostile:amount-text`: `amount_minor` and the hold are right, the `amount` consumers of
//!   the original message read is ten times it;
//! - `hostile:trap-after-publish`: publishes correctly, then panics;
//! - `hostile:remember`: keeps state in its memory, which a guest must not: counts its calls
//!   in a static and in a heap buffer it grows, and refuses the transfer (422, nothing looked
//!   up or published) naming both counts as `"<static> <heap>"`; an instance that starts
//!   from its image says `"1 1"`;
//! - `hostile:third-party`: also asks for the balance of an account outside the request
//!   ([`THIRD_ACCOUNT`]) and writes what it learns into the message's `description`, where
//!   both parties can read it;
//! - `hostile:spin`: loops until the host's deadline (or its fuel budget) ends the call,
//!   holding its guest slot for the whole guest timeout (a slow call, to fill the slots);
//! - `hostile:standard`: the standard logic, unchanged (a transfer beside the slow calls);
//! - `hostile:verbatim:TEXT`: decides the request as if its description were
//!   `hostile:verbatim` (so the rules pass), then publishes TEXT as the description: a guest
//!   that does not check what the rules check (TEXT with NUL or a line break);
//! - anything else: the issue's example, a hold of 1 minor unit on the sender and a message
//!   moving 1,000x the amount from the receiver to the sender.
#![cfg(target_arch = "wasm32")]

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;
use transferd_guest::component::{Guest, HostImports, handle_with, types};
use transferd_guest::logic::{Imports, Outgoing, PublishError};
use transferd_guest::rules::STANDARD;

/// An account no request of the tests names as a party.
const THIRD_ACCOUNT: i64 = 3;

/// A transaction id no request of the tests uses.
const FOREIGN_ID: &str = "01a20c00-0000-7000-8000-0000000000ff";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    WrongSender,
    HoldMismatch,
    TwoPublishes,
    ForeignId,
    Inflate,
    AmountText,
    TrapAfterPublish,
    Remember,
    ThirdParty,
    Spin,
    Standard,
    Verbatim,
    Reversed,
}

impl Mode {
    fn of(description: Option<&str>) -> Mode {
        match description {
            Some("hostile:wrong-sender") => Mode::WrongSender,
            Some("hostile:hold-mismatch") => Mode::HoldMismatch,
            Some("hostile:two-publishes") => Mode::TwoPublishes,
            Some("hostile:foreign-id") => Mode::ForeignId,
            Some("hostile:inflate") => Mode::Inflate,
            Some("hostile:amount-text") => Mode::AmountText,
            Some("hostile:trap-after-publish") => Mode::TrapAfterPublish,
            Some("hostile:remember") => Mode::Remember,
            Some("hostile:third-party") => Mode::ThirdParty,
            Some("hostile:spin") => Mode::Spin,
            Some("hostile:standard") => Mode::Standard,
            Some(VERBATIM) => Mode::Verbatim,
            _ => Mode::Reversed,
        }
    }
}

/// The host's imports with the message changed on its way out.
struct Hostile {
    mode: Mode,
    published: bool,
    /// What `hostile:third-party` learnt about [`THIRD_ACCOUNT`].
    peeked: Option<String>,
    /// `hostile:verbatim:`'s text, written into the message as its description.
    verbatim: Option<String>,
}

const VERBATIM: &str = "hostile:verbatim";

/// Changes fields of a JSON message.
fn rewrite(payload: &[u8], change: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Vec<u8> {
    let mut message: Value = serde_json::from_slice(payload).unwrap_or_default();
    if let Some(fields) = message.as_object_mut() {
        change(fields);
    }
    serde_json::to_vec(&message).unwrap_or_default()
}

fn field(fields: &serde_json::Map<String, Value>, name: &str) -> i64 {
    fields.get(name).and_then(Value::as_i64).unwrap_or_default()
}

impl Imports for Hostile {
    fn available(&mut self, account_id: i64, currency: &str) -> Result<Option<i64>, String> {
        if self.mode == Mode::ThirdParty && self.peeked.is_none() {
            let found = HostImports.available(THIRD_ACCOUNT, currency);
            self.peeked = Some(format!("account {THIRD_ACCOUNT} has {found:?}"));
        }
        HostImports.available(account_id, currency)
    }

    fn send(&mut self, mut message: Outgoing) -> Result<(), PublishError> {
        match self.mode {
            Mode::WrongSender => {
                let mut receiver = 0;
                message.payload = rewrite(&message.payload, |fields| {
                    let sender = field(fields, "sender_id");
                    receiver = field(fields, "receiver_id");
                    fields.insert("sender_id".into(), receiver.into());
                    fields.insert("receiver_id".into(), sender.into());
                });
                message.key = receiver.to_string();
                if let Some(hold) = &mut message.hold {
                    hold.account_id = receiver;
                }
            }
            Mode::HoldMismatch | Mode::Reversed => {
                let reversed = self.mode == Mode::Reversed;
                message.payload = rewrite(&message.payload, |fields| {
                    let amount_minor = field(fields, "amount_minor");
                    fields.insert("amount_minor".into(), (amount_minor * 1000).into());
                    if reversed {
                        let sender = field(fields, "sender_id");
                        let receiver = field(fields, "receiver_id");
                        fields.insert("sender_id".into(), receiver.into());
                        fields.insert("receiver_id".into(), sender.into());
                    }
                });
                if let Some(hold) = &mut message.hold {
                    hold.amount_minor = 1;
                }
            }
            Mode::Inflate => {
                message.payload = rewrite(&message.payload, |fields| {
                    let amount_minor = field(fields, "amount_minor");
                    fields.insert("amount_minor".into(), (amount_minor * 10).into());
                    let amount = fields
                        .get("amount")
                        .and_then(Value::as_f64)
                        .unwrap_or_default();
                    fields.insert("amount".into(), (amount * 10.0).into());
                });
                if let Some(hold) = &mut message.hold {
                    hold.amount_minor *= 10;
                }
            }
            Mode::AmountText => {
                message.payload = rewrite(&message.payload, |fields| {
                    let amount = fields
                        .get("amount")
                        .and_then(Value::as_f64)
                        .unwrap_or_default();
                    fields.insert("amount".into(), (amount * 10.0).into());
                });
            }
            Mode::TwoPublishes => HostImports.send(message.clone())?,
            Mode::ForeignId => {
                message.payload = rewrite(&message.payload, |fields| {
                    fields.insert("transaction_id".into(), FOREIGN_ID.into());
                });
            }
            Mode::ThirdParty => {
                // Replaced in the text, so every other field stays as the host expects it.
                let peeked = Value::from(self.peeked.clone().unwrap_or_default()).to_string();
                let text = String::from_utf8_lossy(&message.payload)
                    .replace(r#""hostile:third-party""#, &peeked);
                message.payload = text.into_bytes();
            }
            Mode::TrapAfterPublish
            | Mode::Remember
            | Mode::Spin
            | Mode::Standard
            | Mode::Verbatim => {}
        }
        if let Some(text) = &self.verbatim {
            message.payload = rewrite(&message.payload, |fields| {
                fields.insert("description".into(), text.as_str().into());
            });
        }
        HostImports.send(message)?;
        self.published = true;
        Ok(())
    }
}

/// Calls this instance served, in its static data (a zero page in a fresh instance).
static CALLS: AtomicU32 = AtomicU32::new(0);
/// One byte per call, on the heap: what a fresh instance's allocator has never handed out.
static SEEN: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// The counts of `hostile:remember`, as a refusal.
fn remembered() -> types::Rejection {
    let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
    let seen = match SEEN.lock() {
        Ok(mut seen) => {
            seen.push(1);
            seen.len()
        }
        Err(_) => 0,
    };
    types::Rejection::Invalid(vec![types::FieldError {
        field: "description".into(),
        message: format!("{calls} {seen}"),
        code: "remembered".into(),
    }])
}

struct HostileGuest;

impl Guest for HostileGuest {
    fn initiate_transfer(
        ctx: types::RequestContext,
        mut request: types::TransferRequest,
    ) -> Result<types::Accepted, types::Rejection> {
        let verbatim = request
            .description
            .as_deref()
            .and_then(|text| text.strip_prefix(VERBATIM)?.strip_prefix(':'))
            .map(str::to_string);
        if verbatim.is_some() {
            request.description = Some(VERBATIM.into());
        }
        let mode = Mode::of(request.description.as_deref());
        if mode == Mode::Remember {
            return Err(remembered());
        }
        if mode == Mode::Spin {
            loop {
                std::hint::spin_loop();
            }
        }
        let mut imports = Hostile {
            mode,
            published: false,
            peeked: None,
            verbatim,
        };
        let result = handle_with(&STANDARD, &mut imports, ctx, request);
        if imports.mode == Mode::TrapAfterPublish && imports.published {
            panic!("this guest traps after publishing, on purpose");
        }
        result
    }
}

transferd_guest::component::export_transfer_logic!(HostileGuest with_types_in transferd_guest::component);
