//! The API's wire types: what the handlers send and what `/openapi.json` documents.
//!
//! Every JSON body the server writes is one of these types, serialized; the document is
//! generated from the same types (utoipa), so the two cannot drift apart. Request bodies are
//! read field by field (`body::Fields`, exact decimals, every problem reported at once); their
//! types here describe that reading, and a test checks the two name the same fields.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub use crate::stores::transfer_state::{Reason, TransferKind, TransferStatus};

/// `"success"`: the one status of an accepted request.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Success {
    Success,
}

/// `POST /transfers`' body.
#[derive(ToSchema)]
#[schema(example = json!({"sender_id": 1, "receiver_id": 2, "amount": "10.50", "currency": "USD", "description": "rent"}))]
#[allow(dead_code)] // Documents the reading in `transfers::parse_request`.
#[serde(deny_unknown_fields)] // `additionalProperties: false`: the reader refuses other keys.
pub struct CreateTransfer {
    /// The paying user: the caller's own id (a token's `sub`).
    #[schema(minimum = 1)]
    sender_id: i64,
    /// The receiving user, who must hold an account in `currency`.
    #[schema(minimum = 1)]
    receiver_id: i64,
    /// A positive decimal with at most the currency's number of decimals, as a JSON string
    /// (recommended: kept exactly) or a JSON number (its digits are read, never a float).
    #[schema(schema_with = decimal_schema)]
    amount: String,
    /// An ISO 4217 code in capitals.
    #[schema(example = "USD", pattern = "^[A-Z]{3}$")]
    currency: String,
    #[schema(max_length = 255)]
    description: Option<String>,
    /// `pending` reserves the money until the transfer is posted, voided or expires;
    /// `immediate` (the default) moves it at once.
    phase: Option<TransferPhase>,
    /// How long a pending transfer waits before it expires, in seconds (default 86400, one
    /// day); only with `"phase": "pending"`.
    #[schema(minimum = 1, maximum = 604_800)]
    expires_in_s: Option<i64>,
    /// The client's own key-value pairs, stored and returned with the transfer: at most 16,
    /// keys of 1 to 64 of `A-Z a-z 0-9 _ . -`, values of at most 512 bytes without control
    /// characters, 4096 bytes in all.
    #[schema(schema_with = metadata_schema)]
    metadata: Option<std::collections::BTreeMap<String, String>>,
}

/// `POST /transfers/batch`' body.
#[derive(ToSchema)]
#[allow(dead_code)] // Documents the reading in `batches::create`.
#[serde(deny_unknown_fields)] // `additionalProperties: false`: the reader refuses other keys.
pub struct CreateBatch {
    /// 1 to 1000 transfers, each exactly a `POST /transfers` body; decided, held, published
    /// and settled in this order.
    #[schema(min_items = 1, max_items = 1000)]
    transfers: Vec<BatchTransfer>,
    /// All or none (default `false`): one refused transfer refuses them all (`batch_failed`),
    /// and settlement applies every one or none. In an atomic batch a transfer may spend what
    /// an earlier one of the batch credits.
    atomic: Option<bool>,
}

/// One transfer of a batch: the fields of a `POST /transfers` body with their JSON types. A
/// wrong type or an unknown field refuses the whole batch (422); the rules on values are the
/// guest's, and a value that breaks one refuses only its transfer, in the 200 answer's
/// results.
#[derive(ToSchema)]
#[allow(dead_code)] // Documents the reading in `batches::create`.
#[serde(deny_unknown_fields)] // `additionalProperties: false`: the reader refuses other keys.
pub struct BatchTransfer {
    sender_id: i64,
    receiver_id: i64,
    /// Decimal text, or a JSON number whose digits are read.
    #[schema(schema_with = any_decimal_schema)]
    amount: String,
    currency: String,
    description: Option<String>,
    phase: Option<String>,
    expires_in_s: Option<i64>,
    #[schema(schema_with = any_metadata_schema)]
    metadata: Option<std::collections::BTreeMap<String, String>>,
}

/// A JSON string or number, with no rule on its value.
fn any_decimal_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let one_of = OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(ObjectBuilder::new().schema_type(Type::Number))
        .build();
    Schema::OneOf(one_of)
}

/// An object of strings, or `null`, with no rule on its keys or sizes.
fn any_metadata_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
    let value = ObjectBuilder::new().schema_type(Type::String);
    let object = ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .additional_properties(Some(value))
        .build();
    Schema::Object(object)
}

/// `POST /transfers/batch` answered: one result per transfer, in the request's order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAnswer {
    pub batch_id: Uuid,
    pub atomic: bool,
    pub results: Vec<BatchResult>,
}

/// One transfer of a batch: accepted (it will settle exactly once), or rejected with what a
/// `POST /transfers` of it alone would have answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResult {
    pub index: usize,
    pub transaction_id: Uuid,
    pub status: BatchItemStatus,
    /// A rejected transfer's HTTP status, had it been sent alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// A rejected transfer's `detail`, as `POST /transfers` writes it: a sentence, or the
    /// list of problems of a 422.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Detail>)]
    pub detail: Option<serde_json::Value>,
    /// A rejected transfer's `code` (absent on validation problems, as in FastAPI).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub code: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BatchItemStatus {
    Accepted,
    Rejected,
}

/// `POST /transfers/batch` answered 503 when its record may or may not be in the log: retry
/// with the same `Idempotency-Key`, or ask `GET /transfers/{id}` of its transfers.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchOutcomeUnknown {
    pub detail: String,
    pub status: Unknown,
    pub batch_id: Uuid,
    pub transaction_ids: Vec<Uuid>,
}

/// What settling a transfer does with its money.
#[derive(ToSchema)]
#[allow(dead_code)] // Documents the reading in `transfers::parse_request`.
#[serde(rename_all = "snake_case")]
pub enum TransferPhase {
    Immediate,
    Pending,
}

fn metadata_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
    let value = ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(512));
    let key = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[A-Za-z0-9_.-]{1,64}$"));
    // `null` is read as no metadata, as leaving it out is.
    let object = ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .property_names(Some(key))
        .additional_properties(Some(value))
        .max_properties(Some(16))
        .build();
    Schema::Object(object)
}

/// `POST /transfers/{transaction_id}/post`'s body.
#[derive(ToSchema)]
#[schema(example = json!({"amount": "5.00"}))]
#[allow(dead_code)] // Documents the reading in `two_phase::read_body`.
#[serde(deny_unknown_fields)] // `additionalProperties: false`: the reader refuses other keys.
pub struct PostTransfer {
    /// What to move, at most the transfer's amount; the whole amount when absent.
    #[schema(schema_with = decimal_schema)]
    amount: Option<String>,
}

/// `POST /transfers/{transaction_id}/void`'s body: an empty object.
#[derive(ToSchema)]
#[allow(dead_code)] // Documents the reading in `two_phase::read_body`.
#[serde(deny_unknown_fields)] // `additionalProperties: false`: the reader refuses any key.
pub struct VoidTransfer {}

/// A post or void answered 200: it is in the transfer log and settles exactly once.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActionAccepted {
    pub status: Success,
    /// The pending transfer acted on.
    pub transaction_id: Uuid,
    /// The action's own id (the `Idempotency-Key`'s id when one was sent).
    pub action_id: Uuid,
}

/// `POST /admin/deposits`' body.
#[derive(ToSchema)]
#[schema(example = json!({"user_id": 1, "currency": "USD", "amount": "100.00"}))]
#[allow(dead_code)] // Documents the reading in `admin::read_deposit`.
#[serde(deny_unknown_fields)] // `additionalProperties: false`: the reader refuses other keys.
pub struct CreateDeposit {
    #[schema(minimum = 1)]
    user_id: i64,
    #[schema(example = "USD", pattern = "^[A-Z]{3}$")]
    currency: String,
    #[schema(schema_with = decimal_schema)]
    amount: String,
    /// Makes the deposit idempotent without an `Idempotency-Key`: a repeat answers the first
    /// deposit (`replayed: true`).
    deposit_id: Option<Uuid>,
}

/// `POST /admin/guest/{version}/canary`'s body.
#[derive(ToSchema)]
#[allow(dead_code)] // Documents the reading in `admin_guest::canary`.
#[serde(deny_unknown_fields)] // `additionalProperties: false`: the reader refuses other keys.
pub struct CanaryShare {
    /// The share of transfers the candidate decides, in percent.
    #[schema(minimum = 0, maximum = 100)]
    percent: i64,
    /// How the share is drawn: by `transaction` (each transfer on its own, the default) or by
    /// `sender` (an account sees one version for as long as the canary runs).
    #[schema(nullable = false)]
    assign: Option<CanaryAssign>,
    /// Limits that end the canary on every replica when one replica sees one crossed. Left
    /// out: the defaults; `null`: none.
    #[schema(nullable = true)]
    guardrails: Option<GuardrailLimits>,
}

/// How a canary's share of transfers is drawn.
#[derive(ToSchema)]
#[allow(dead_code)] // Documents the reading in `admin_guest::canary`.
#[serde(rename_all = "lowercase")]
pub enum CanaryAssign {
    Transaction,
    Sender,
}

/// `POST /admin/guest/{version}/shadow`'s optional body.
#[derive(ToSchema)]
#[allow(dead_code)] // Documents the reading in `admin_guest::shadow`.
#[serde(deny_unknown_fields)]
pub struct ShadowStart {
    /// Limits that end the shadow on every replica when one replica sees one crossed. Left
    /// out: the defaults; `null`: none.
    #[schema(nullable = true)]
    guardrails: Option<GuardrailLimits>,
}

/// A canary's or shadow's guardrails. A field left out takes its default; `null` turns that
/// guardrail off. Rates and the p99 are judged over each replica's last `window_calls` calls,
/// once it holds `min_calls`; violations count from the candidate's start on a replica.
#[derive(ToSchema)]
#[allow(dead_code)] // Documents `guest::guardrails::Guardrails::from_json`.
#[serde(deny_unknown_fields)]
pub struct GuardrailLimits {
    /// Most traps (timeouts, fuel exhaustion) per call. Default 0.01.
    #[schema(minimum = 0, maximum = 1, nullable = true)]
    max_trap_rate: Option<f64>,
    /// Most host-check violations. Default 0.
    #[schema(minimum = 0, maximum = 1_000_000, nullable = true)]
    max_violations: Option<u64>,
    /// Most decisions differing from the active version's per compared call. Default: off.
    #[schema(minimum = 0, maximum = 1, nullable = true)]
    max_difference_rate: Option<f64>,
    /// Longest 99th-percentile guest time, in milliseconds. Default: off.
    #[schema(minimum = 1, maximum = 600_000, nullable = true)]
    max_p99_guest_ms: Option<u64>,
    /// Calls a window must hold before rates are judged. Default 50.
    #[schema(minimum = 1, maximum = 10_000, nullable = false)]
    min_calls: Option<u32>,
    /// The window, in calls. Default 500; at least `min_calls`.
    #[schema(minimum = 1, maximum = 10_000, nullable = false)]
    window_calls: Option<u32>,
}

/// A decimal amount: a string of digits with an optional fraction, or a JSON number.
fn decimal_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let one_of = OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^[0-9]+(\.[0-9]+)?$"))
                .examples(["10.50"]),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .exclusive_minimum(Some(0.0)),
        )
        .build();
    Schema::OneOf(one_of)
}

/// A decimal amount as [`decimal_schema`], or `null`.
fn nullable_decimal_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let one_of = OneOfBuilder::new()
        .item(decimal_schema())
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .build();
    Schema::OneOf(one_of)
}

/// A zero amount ("0", "0.00" or 0), or `null`: the only overdraft the ledger takes.
fn zero_amount_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let one_of = OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^0+(\.0+)?$")),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .minimum(Some(0.0))
                .maximum(Some(0.0)),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .build();
    Schema::OneOf(one_of)
}

/// `POST /transfers` answered 200: the transfer is in the log and will settle exactly once.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferAccepted {
    pub status: Success,
    pub transaction_id: Uuid,
}

/// `GET /transfers/{transaction_id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferView {
    pub transaction_id: Uuid,
    pub kind: TransferKind,
    pub status: TransferStatus,
    pub reason: Option<Reason>,
    pub sender_id: i64,
    pub receiver_id: i64,
    /// Decimal text with exactly the currency's decimals.
    #[schema(example = "10.50")]
    pub amount: String,
    pub amount_minor: i64,
    #[schema(example = "USD")]
    pub currency: String,
    pub description: Option<String>,
    /// RFC 3339, milliseconds, UTC.
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub settled_at: Option<String>,
    /// The client's key-value pairs, if it sent any.
    pub metadata: Option<BTreeMap<String, String>>,
    /// `pending` for a two-phase transfer (reserved until posted, voided or expired),
    /// `immediate` for any other.
    pub phase: Phase,
    /// When a two-phase transfer expires unless posted or voided first; `null` for any other.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// What a posted transfer moved (at most `amount`; the rest was released).
    #[schema(example = "5.00")]
    pub posted_amount: Option<String>,
    pub posted_amount_minor: Option<i64>,
    /// When a two-phase transfer was posted, voided or expired.
    #[schema(format = DateTime)]
    pub resolved_at: Option<String>,
}

/// How a transfer settles: at once, or in two phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Immediate,
    Pending,
}

/// `GET /accounts/{user_id}/balances`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)] // `additionalProperties: false`: told apart from `BalancesAt`.
pub struct AccountBalances {
    pub user_id: i64,
    pub balances: Vec<Balance>,
}

/// One account: settled, and available (settled minus the holds of transfers not yet settled).
#[derive(Debug, Serialize, ToSchema)]
pub struct Balance {
    #[schema(example = "USD")]
    pub currency: String,
    #[schema(example = "100.00")]
    pub balance: String,
    pub balance_minor: i64,
    #[schema(example = "89.50")]
    pub available: String,
    pub available_minor: i64,
    /// What this account's pending (two-phase) transfers reserve until they are posted,
    /// voided or expire; already taken out of `available`.
    #[schema(example = "10.00")]
    pub pending_debits: String,
    pub pending_debits_minor: i64,
    /// What pending transfers to this account will bring if posted; not in `balance` yet.
    #[schema(example = "0.00")]
    pub pending_credits: String,
    pub pending_credits_minor: i64,
    /// Grows with every settled change of the account.
    pub version: i64,
    /// The account's limits (`PUT /admin/accounts/{user_id}/limits`), which the transfer
    /// rules enforce.
    pub limits: LimitsShown,
    /// What the account sent today (UTC), as the rules see it; `null` while Redis, which
    /// keeps the counters, cannot say.
    pub today: Option<TodayShown>,
}

/// An account's limits in one currency; a `null` limit is no limit.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LimitsShown {
    /// The most one transfer may move.
    #[schema(example = "500.00")]
    pub single_max: Option<String>,
    pub single_max_minor: Option<i64>,
    /// The most the account may send in one UTC day.
    #[schema(example = "2000.00")]
    pub daily_max: Option<String>,
    pub daily_max_minor: Option<i64>,
    /// How far below zero the account may go: always 0 (the ledger allows no overdraft).
    #[schema(example = "0.00")]
    pub overdraft: String,
    pub overdraft_minor: i64,
}

/// What an account sent in the current UTC day: accepted transfers, counted when their money
/// was held; one whose hold was released without it happening does not count.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TodayShown {
    #[schema(example = "120.00")]
    pub outgoing: String,
    pub outgoing_minor: i64,
    pub outgoing_count: u32,
    /// Transfers accepted in the last 60 seconds.
    pub last_minute_count: u32,
}

/// `PUT /admin/accounts/{user_id}/limits`'s body: the account's limits in one currency, each
/// replacing the one set before; a limit left out or `null` is no limit.
#[derive(ToSchema)]
#[schema(example = json!({"currency": "USD", "single_max": "500.00", "daily_max": "2000.00"}))]
#[allow(dead_code)] // Documents the reading in `admin_limits::read_limits`.
#[serde(deny_unknown_fields)] // `additionalProperties: false`: the reader refuses other keys.
pub struct SetLimits {
    #[schema(example = "USD", pattern = "^[A-Z]{3}$")]
    currency: String,
    #[schema(schema_with = nullable_decimal_schema)]
    single_max: Option<String>,
    #[schema(schema_with = nullable_decimal_schema)]
    daily_max: Option<String>,
    /// Only 0: the ledger lets no balance go below zero.
    #[schema(schema_with = zero_amount_schema)]
    overdraft: Option<String>,
}

/// `PUT /admin/accounts/{user_id}/limits` answered: the limits now set.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitsSet {
    pub status: Success,
    pub user_id: i64,
    pub currency: String,
    pub limits: LimitsShown,
}

/// `GET /accounts/{user_id}/balances?at=…`: the user's accounts as they were at a moment,
/// from the journal (no holds then: money only).
#[derive(Debug, Serialize, ToSchema)]
pub struct BalancesAt {
    pub user_id: i64,
    /// The moment asked about, RFC 3339 in UTC.
    #[schema(format = DateTime)]
    pub at: String,
    /// The accounts that existed then, by currency.
    pub balances: Vec<BalanceThen>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BalanceThen {
    #[schema(example = "USD")]
    pub currency: String,
    #[schema(example = "100.00")]
    pub balance: String,
    pub balance_minor: i64,
}

/// What `GET /accounts/{user_id}/balances` answers: now, or at the moment `at` names.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Documents the two answers; each is sent as itself.
pub enum BalancesAnswer {
    Now(AccountBalances),
    Then(BalancesAt),
}

/// `GET /accounts/{user_id}/balances`' query.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the reading in `accounts::balances`.
pub struct BalancesQuery {
    /// Balances as of this moment (RFC 3339), from the journal; without it, now.
    #[param(format = DateTime)]
    at: Option<String>,
}

/// `GET /transfers`' query.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the reading in `history::list_transfers`.
pub struct TransferListQuery {
    /// The user whose transfers (sent or received) to list; the caller's own by default.
    #[param(minimum = 0)]
    account: Option<i64>,
    status: Option<TransferStatus>,
    #[param(pattern = "^[A-Z]{3}$")]
    currency: Option<String>,
    /// `metadata[key]=value`: only transfers whose metadata holds every pair given.
    #[param(style = DeepObject, explode, value_type = Option<Object>)]
    metadata: Option<BTreeMap<String, String>>,
    /// The `next_cursor` of the page before.
    after: Option<String>,
    /// Rows per page.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// `GET /accounts/{user_id}/entries`' query.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the reading in `history::entries`.
pub struct EntryListQuery {
    #[param(pattern = "^[A-Z]{3}$")]
    currency: Option<String>,
    /// The `next_cursor` of the page before.
    after: Option<String>,
    /// Rows per page.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// `GET /transfers`: a page of a user's settled transfers (sent and received), newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferPage {
    pub transfers: Vec<TransferView>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /accounts/{user_id}/entries`: a page of a user's journal entries, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntryPage {
    pub entries: Vec<EntryView>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// One journal entry: money into (positive) or out of (negative) one account.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntryView {
    pub entry_id: i64,
    pub transaction_id: Uuid,
    #[schema(example = "USD")]
    pub currency: String,
    #[schema(example = "-10.50")]
    pub amount: String,
    pub amount_minor: i64,
    /// The account's balance just after this entry.
    #[schema(example = "89.50")]
    pub balance_after: String,
    pub balance_after_minor: i64,
    /// When the ledger wrote it, RFC 3339, microseconds, UTC.
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// `POST /admin/deposits` answered 200.
#[derive(Debug, Serialize, ToSchema)]
pub struct DepositMade {
    pub status: Success,
    pub deposit_id: Uuid,
    /// True when this deposit id was applied before: nothing moved this time.
    pub replayed: bool,
    pub user_id: i64,
    pub currency: String,
    pub balance: String,
    pub balance_minor: i64,
    pub version: i64,
}

/// `GET /healthz`: the process is alive.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
}

/// `PUT /admin/guest` answered 201: the version is stored, not yet serving.
#[derive(Debug, Serialize, ToSchema)]
pub struct GuestUploaded {
    pub version: String,
    pub size_bytes: u64,
    pub invariant_cases_passed: u64,
    /// The most fuel one invariant case used.
    pub max_vector_fuel: u64,
    /// The fuel one call may use on this replica (`max_vector_fuel` is within it).
    pub fuel_budget: u64,
    /// The backtest's report, when the upload asked for one (`backtest_last`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub backtest: Option<serde_json::Value>,
}

/// `POST /admin/guest/{version}/backtest`'s body: exactly one of `last` and `since`.
#[derive(ToSchema)]
#[allow(dead_code)] // Documents the reading in `admin_guest::backtest`.
#[serde(deny_unknown_fields)] // `additionalProperties: false`: the reader refuses other keys.
pub struct BacktestWindow {
    /// The newest recorded decisions, this many.
    #[schema(minimum = 1, maximum = 100_000)]
    last: Option<i64>,
    /// The recorded decisions made at or after this moment (RFC 3339), oldest first, at most
    /// 100,000.
    #[schema(format = DateTime)]
    since: Option<String>,
}

/// `POST /admin/guest/{version}/backtest` answered: how the version decides the recorded
/// transfers compared with the decisions made then.
#[derive(Debug, Serialize, ToSchema)]
pub struct GuestBacktest {
    pub version: String,
    /// `cases`, `identical`, `different`, `different_by_kind`, `message_fields`, `failures`,
    /// `failures_by_kind`, `unreadable`, `fuel_used` (when metered) and `samples`.
    #[schema(value_type = Object)]
    pub report: serde_json::Value,
}

/// The version serving after an activation or a rollback.
#[derive(Debug, Serialize, ToSchema)]
pub struct GuestActivated {
    pub active: String,
}

/// `GET /admin/quarantine`: transfer-log messages settlement set aside, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuarantineList {
    /// How many wait for an operator (not re-driven), of all there are.
    pub open: i64,
    /// The newest, at most 100.
    pub messages: Vec<QuarantinedMessage>,
}

/// One quarantined message.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuarantinedMessage {
    pub partition: i32,
    pub offset: i64,
    /// The topic's log generation it was read in (a topic created again starts a new one).
    pub log_generation: i64,
    /// Why settlement could not apply it.
    pub error: String,
    /// Its transaction id, when one could be read.
    pub transaction_id: Option<Uuid>,
    /// The message as the log holds it, as UTF-8 (bytes that are not are replaced), cut at
    /// 4,096 characters.
    pub payload: String,
    #[schema(format = DateTime)]
    pub quarantined_at: String,
    /// Whether it is on the dead-letter topic (`transfer_quarantine`) yet.
    pub dead_lettered: bool,
    /// When an operator re-drove it and the ledger applied it.
    #[schema(format = DateTime)]
    pub retried_at: Option<String>,
}

/// `POST /admin/quarantine/{partition}/{offset}/retry`: the re-driven message's outcome.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuarantineRetried {
    pub status: Success,
    pub transaction_id: Uuid,
    /// `completed` or `rejected`.
    pub outcome: TransferStatus,
    pub reason: Option<Reason>,
}

/// How a candidate version runs beside the active one.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CandidateModeName {
    /// Decides `percent` of the transfers.
    Canary,
    /// Runs on every transfer, decides none; differences are counted.
    Shadow,
}

/// The candidate after `canary`, `shadow` or `DELETE /admin/guest/candidate` (then `null`).
#[derive(Debug, Serialize, ToSchema)]
pub struct CandidateSet {
    pub candidate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<CandidateModeName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    /// A canary's draw: `transaction` or `sender`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assign: Option<&'static str>,
    /// The limits it is judged by; `null`: none.
    #[schema(value_type = Option<Object>)]
    pub guardrails: serde_json::Value,
}

/// `GET /admin/guest`: the registry and what this replica serves.
#[derive(Debug, Serialize, ToSchema)]
pub struct GuestStatus {
    /// The registry's active version; `null` before the first activation.
    pub active: Option<String>,
    /// The version this replica serves now.
    pub serving: String,
    /// The `transferd:transfer` package it implements ("0.2.0", "0.1.0"); each of `versions`
    /// names its own as `wit_package`.
    pub serving_wit_package: String,
    /// The canary or shadow candidate, if any, with its guardrails.
    #[schema(value_type = Option<Object>)]
    pub candidate: serde_json::Value,
    /// The candidate this replica serves, if any: its guardrails, what this replica has seen
    /// of it (`observed`), and whether this replica saw a guardrail crossed (`tripped`).
    #[schema(value_type = Option<Object>)]
    pub serving_candidate: serde_json::Value,
    /// Every stored version.
    #[schema(value_type = Vec<Object>)]
    pub versions: serde_json::Value,
    /// The latest registry actions, newest first.
    #[schema(value_type = Vec<Object>)]
    pub history: serde_json::Value,
    /// Host checks each version broke on this replica.
    #[schema(value_type = Object)]
    pub replica_guard_violations: serde_json::Value,
}

/// `GET /admin/guest/{version}/shadow`: this replica's shadow runs of a version.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShadowReport {
    pub version: String,
    #[schema(value_type = Object)]
    pub replica_stats: serde_json::Value,
}

/// Every refusal: `detail` is a message, or the list of validation problems (FastAPI's shapes).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"detail": "Недостаточно средств", "code": "insufficient_funds"}))]
pub struct ErrorBody {
    pub detail: Detail,
    /// Absent on validation errors, as in FastAPI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Detail {
    Message(String),
    Problems(Vec<Problem>),
}

/// One validation problem.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"loc": ["body", "amount"], "msg": "amount must be greater than 0", "type": "greater_than"}))]
pub struct Problem {
    /// Where: `["body", "amount"]`, `["path", "transaction_id"]`, `["header", "idempotency-key"]`.
    pub loc: Vec<String>,
    pub msg: String,
    /// Machine-readable, pydantic's names where one fits: `missing`, `greater_than`, …
    #[serde(rename = "type")]
    pub kind: String,
}

/// Machine-readable refusals, beside the human `detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InsufficientFunds,
    UnsupportedMediaType,
    PayloadTooLarge,
    BadRequest,
    Unauthorized,
    Forbidden,
    Unprocessable,
    Conflict,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    TooManyRequests,
    Unavailable,
    Internal,
    /// An atomic batch's transfer refused because another of the batch was.
    BatchFailed,
}

/// `POST /transfers` answered 503 when the transfer may or may not be in the log: ask
/// `GET /transfers/{transaction_id}`, or retry with the same `Idempotency-Key`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutcomeUnknown {
    pub detail: String,
    pub status: Unknown,
    pub transaction_id: String,
}

/// `"unknown"`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Unknown {
    Unknown,
}

/// A 503 from `POST /transfers`: unavailable before anything was published, or in doubt.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Documents the two bodies `ApiError` writes for 503.
pub enum TransferUnavailable {
    Unavailable(ErrorBody),
    InDoubt(OutcomeUnknown),
}

/// `GET /readyz`: whether this replica should take traffic, and why not.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub status: ReadyStatus,
    pub checks: ReadinessChecks,
}

/// How well a replica serves: `degraded` is ready with a dependency down that it serves
/// around (transfers refused with 503, reads from PostgreSQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadyStatus {
    Ok,
    Degraded,
    Unready,
}

impl ReadyStatus {
    pub fn of(ready: bool, degraded: bool) -> ReadyStatus {
        match (ready, degraded) {
            (false, _) => ReadyStatus::Unready,
            (true, true) => ReadyStatus::Degraded,
            (true, false) => ReadyStatus::Ok,
        }
    }
}

/// One entry per dependency. An entry is a field here; which ones gate readiness is said once,
/// in `health::Dependencies::serviceable` (the rest inform, or mark the replica degraded).
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadinessChecks {
    /// Reachable, with every migration of this binary applied.
    pub postgres: Check,
    pub redis: Check,
    /// Reachable, with the transfer topic.
    pub broker: Check,
    /// A guest is loaded and serving.
    pub guest: Check,
    /// Transfer-log messages settlement set aside and an operator has not re-driven: always
    /// ready (informs only).
    pub quarantine: Check,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Check {
    pub ready: bool,
    /// What was found: a version, or why it is not ready.
    pub detail: String,
}

/// The `Idempotency-Key` header of the two money-moving POSTs.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Documents the header `idempotency::start` reads.
pub struct IdempotencyKey {
    /// Up to 255 visible ASCII characters, scoped to the caller; kept at least 24 hours.
    #[param(rename = "Idempotency-Key", max_length = 255)]
    idempotency_key: Option<String>,
}
