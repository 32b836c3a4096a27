//! The imports' policy against an in-memory backend: which store answers a lookup, what a
//! publish holds, and what it gives back for each way the broker can answer. Redis, the
//! ledger and the broker can each be taken down; the real stores are tested end to end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use transferd_guest::logic::{Hold, Outgoing};
use uuid::Uuid;

use super::backend::Backend;
use super::balance_lookup::lookup;
use super::hold_ahead::{HoldAhead, Taken};
use super::publish::deliver;
use super::{Publication, PublicationCell};
use crate::bindings::transferd::transfer::publish::PublishError;
use crate::stores::kafka::{Acknowledged, LogError};
use crate::stores::postgres::{Balance, LedgerError};
use crate::stores::redis::{CacheError, HoldOutcome, HoldRequest};

/// How the fake broker answers a produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broker {
    Acknowledges,
    Refuses,
    TimesOut,
}

type Account = (i64, String);

/// The transaction of the cases that need one fixed id.
const TX: Uuid = Uuid::from_u128(0x01a2_0c00_0000_7000_8000_0000_0000_0001);

/// Another transaction, holding on the same accounts.
const OTHER: Uuid = Uuid::from_u128(0x01a2_0c00_0000_7000_8000_0000_0000_0002);

#[derive(Default)]
struct State {
    /// Redis: cached balance per account.
    cached: HashMap<Account, i64>,
    /// Redis: holds by transaction id.
    holds: HashMap<Uuid, (Account, i64)>,
    /// PostgreSQL: settled balances.
    settled: HashMap<Account, i64>,
    produced: Vec<String>,
    /// The headers of each message produced, in order.
    produced_headers: Vec<Vec<(String, String)>>,
    /// Round trips to Redis for available balances.
    cache_reads: u32,
    /// Round trips to Redis to reserve a hold.
    reserves: u32,
    /// Redis: pending records by transaction id.
    records: HashMap<Uuid, Vec<u8>>,
}

struct Fake {
    state: Mutex<State>,
    redis_down: AtomicBool,
    /// Redis lost its data and the holds are not trusted yet: nothing is held.
    holds_untrusted: AtomicBool,
    ledger_down: AtomicBool,
    broker: Mutex<Broker>,
}

impl Fake {
    fn new() -> Arc<Fake> {
        Arc::new(Fake {
            state: Mutex::default(),
            redis_down: AtomicBool::new(false),
            holds_untrusted: AtomicBool::new(false),
            ledger_down: AtomicBool::new(false),
            broker: Mutex::new(Broker::Acknowledges),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("the fake's lock")
    }

    fn redis(&self) -> Result<(), CacheError> {
        if self.redis_down.load(Ordering::SeqCst) {
            return Err(CacheError::Unavailable("down".into()));
        }
        Ok(())
    }

    fn ledger(&self) -> Result<(), LedgerError> {
        if self.ledger_down.load(Ordering::SeqCst) {
            return Err(LedgerError::Unavailable(sqlx::Error::PoolTimedOut));
        }
        Ok(())
    }

    fn held_on(state: &State, account: &Account) -> i64 {
        state
            .holds
            .values()
            .filter(|(on, _)| on == account)
            .map(|(_, amount)| amount)
            .sum()
    }
}

fn account(id: i64) -> Account {
    (id, "USD".to_string())
}

impl Backend for Fake {
    async fn cached_available(
        &self,
        ids: &[i64],
        currency: &str,
        transaction_id: Uuid,
    ) -> Result<Vec<Option<i64>>, CacheError> {
        self.redis()?;
        let mut state = self.state();
        state.cache_reads += 1;
        let own = |state: &State, key: &Account| {
            state
                .holds
                .get(&transaction_id)
                .filter(|(on, _)| on == key)
                .map_or(0, |(_, amount)| *amount)
        };
        Ok(ids
            .iter()
            .map(|id| {
                let key = (*id, currency.to_string());
                state
                    .cached
                    .get(&key)
                    .map(|balance| balance - Fake::held_on(&state, &key) + own(&state, &key))
            })
            .collect())
    }

    async fn cached_available_holding(
        &self,
        ids: &[i64],
        currency: &str,
        transaction_id: Uuid,
        ahead: HoldRequest<'_>,
    ) -> Result<(Vec<Option<i64>>, bool), CacheError> {
        let found = self.cached_available(ids, currency, transaction_id).await?;
        let mut state = self.state();
        let key = (ids[ahead.hold_on], currency.to_string());
        let already = state.holds.contains_key(&transaction_id);
        let covered = found[ahead.hold_on].is_some_and(|available| available >= ahead.amount_minor);
        let trusted = !self.holds_untrusted.load(Ordering::SeqCst);
        let held = trusted && found.iter().all(Option::is_some) && !already && covered;
        if held {
            state
                .holds
                .insert(transaction_id, (key, ahead.amount_minor));
            state.records.insert(transaction_id, ahead.record.to_vec());
        }
        Ok((found, held))
    }

    async fn cache_balance(
        &self,
        id: i64,
        currency: &str,
        balance: Balance,
    ) -> Result<(), CacheError> {
        self.redis()?;
        self.state()
            .cached
            .insert((id, currency.to_string()), balance.balance_minor);
        Ok(())
    }

    async fn reserve_hold(
        &self,
        transaction_id: Uuid,
        id: i64,
        currency: &str,
        amount_minor: i64,
        message: &[u8],
    ) -> Result<HoldOutcome, CacheError> {
        self.redis()?;
        let mut state = self.state();
        state.reserves += 1;
        if self.holds_untrusted.load(Ordering::SeqCst) {
            return Ok(HoldOutcome::Untrusted);
        }
        // As the reserve script: a transaction that holds already keeps its hold and record.
        if state.holds.contains_key(&transaction_id) {
            return Ok(HoldOutcome::Reserved);
        }
        let key = (id, currency.to_string());
        let Some(balance) = state.cached.get(&key).copied() else {
            return Ok(HoldOutcome::Missing);
        };
        if balance - Fake::held_on(&state, &key) < amount_minor {
            return Ok(HoldOutcome::Insufficient);
        }
        state.holds.insert(transaction_id, (key, amount_minor));
        state.records.insert(transaction_id, message.to_vec());
        Ok(HoldOutcome::Reserved)
    }

    async fn replace_pending(
        &self,
        transaction_id: Uuid,
        message: &[u8],
    ) -> Result<(), CacheError> {
        self.redis()?;
        self.state()
            .records
            .insert(transaction_id, message.to_vec());
        Ok(())
    }

    async fn release_hold(&self, transaction_id: Uuid, _: i64, _: &str) -> Result<(), CacheError> {
        self.redis()?;
        let mut state = self.state();
        state.holds.remove(&transaction_id);
        state.records.remove(&transaction_id);
        Ok(())
    }

    async fn settled_balance(
        &self,
        id: i64,
        currency: &str,
    ) -> Result<Option<Balance>, LedgerError> {
        self.ledger()?;
        Ok(self
            .state()
            .settled
            .get(&(id, currency.to_string()))
            .map(|balance_minor| Balance {
                balance_minor: *balance_minor,
                version: 1,
            }))
    }

    async fn produce(
        &self,
        _topic: &str,
        key: &str,
        _payload: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<Acknowledged, LogError> {
        let broker = *self.broker.lock().expect("the fake's lock");
        match broker {
            Broker::Acknowledges => {
                self.state().produced.push(key.to_string());
                self.state().produced_headers.push(
                    headers
                        .iter()
                        .map(|(name, value)| (name.to_string(), value.to_string()))
                        .collect(),
                );
                Ok(Acknowledged {
                    partition: 0,
                    offset: 0,
                })
            }
            Broker::Refuses => Err(LogError::NotSent("refused".into())),
            Broker::TimesOut => {
                // Written, but the answer never came.
                self.state().produced.push(key.to_string());
                Err(LogError::InDoubt("timed out".into()))
            }
        }
    }
}

fn outgoing(transaction_id: &str, sender: i64, amount_minor: i64) -> Outgoing {
    Outgoing {
        topic: "transfer_topic".into(),
        key: transaction_id.into(),
        payload: b"{}".to_vec(),
        hold: Some(Hold {
            account_id: sender,
            currency: "USD".into(),
            amount_minor,
        }),
    }
}

/// One publish of `amount_minor` from account 1: its answer and what it recorded.
async fn publish(
    fake: &Arc<Fake>,
    amount_minor: i64,
) -> (Uuid, Result<(), PublishError>, Publication) {
    let id = Uuid::now_v7();
    let cell = PublicationCell::default();
    let answer = deliver(
        Arc::clone(fake),
        id,
        outgoing(&id.to_string(), 1, amount_minor),
        amount_minor,
        Taken::No,
        cell.clone(),
        None,
        None,
    )
    .await;
    (id, answer, cell.get())
}

#[tokio::test]
async fn a_lookup_prefers_the_cache_and_falls_back_to_the_ledger() {
    let fake = Fake::new();
    fake.state().settled.insert(account(1), 500);
    // Not cached: the ledger answers and the balance is cached on the way.
    assert_eq!(
        lookup(&*fake, TX, 1, "USD", None, None).await.answer,
        Ok(Some(500))
    );
    assert_eq!(fake.state().cached.get(&account(1)), Some(&500));
    // Cached: holds are taken off.
    fake.state().holds.insert(OTHER, (account(1), 200));
    assert_eq!(
        lookup(&*fake, TX, 1, "USD", None, None).await.answer,
        Ok(Some(300))
    );
    // The transaction that holds it (a retry) sees its own hold as available.
    assert_eq!(
        lookup(&*fake, OTHER, 1, "USD", None, None).await.answer,
        Ok(Some(500))
    );
    // Redis down: the settled balance, holds unknown.
    fake.redis_down.store(true, Ordering::SeqCst);
    assert_eq!(
        lookup(&*fake, TX, 1, "USD", None, None).await.answer,
        Ok(Some(500))
    );
    // Neither: an error, never a made-up balance.
    fake.ledger_down.store(true, Ordering::SeqCst);
    assert!(
        lookup(&*fake, TX, 1, "USD", None, None)
            .await
            .answer
            .is_err()
    );
}

#[tokio::test]
async fn a_lookup_reads_the_partner_s_cached_balance_in_the_same_round_trip() {
    let fake = Fake::new();
    fake.state().cached.insert(account(1), 500);
    fake.state().cached.insert(account(2), 70);
    fake.state().holds.insert(OTHER, (account(1), 200));
    let found = lookup(&*fake, TX, 2, "USD", Some(1), None).await;
    assert_eq!(found.answer, Ok(Some(70)));
    assert_eq!(found.partner, Some(300), "the partner's holds count");
    assert_eq!(fake.state().cache_reads, 1, "one round trip for both");
    // A partner Redis does not have is left to its own lookup (which fills the cache).
    fake.state().cached.remove(&account(1));
    fake.state().settled.insert(account(1), 900);
    let found = lookup(&*fake, TX, 2, "USD", Some(1), None).await;
    assert_eq!(found.partner, None);
    assert_eq!(fake.state().cached.get(&account(1)), None);
    // Redis down: the ledger answers for the account asked for, nothing for the partner.
    fake.redis_down.store(true, Ordering::SeqCst);
    fake.state().settled.insert(account(2), 70);
    let found = lookup(&*fake, TX, 2, "USD", Some(1), None).await;
    assert_eq!(
        found,
        super::balance_lookup::LookedUp {
            answer: Ok(Some(70)),
            partner: None,
            held: Some(false),
        }
    );
}

fn plan(amount_minor: i64, record: &[u8]) -> HoldAhead {
    HoldAhead {
        account_id: 1,
        currency: "USD".into(),
        amount_minor,
        record: record.to_vec(),
    }
}

#[tokio::test]
async fn the_first_lookup_holds_ahead_in_its_round_trip_and_the_publish_needs_no_other() {
    let fake = Fake::new();
    fake.state().cached.insert(account(1), 500);
    fake.state().cached.insert(account(2), 70);
    let ahead = plan(300, b"the message");
    let found = lookup(&*fake, TX, 2, "USD", Some(1), Some(&ahead)).await;
    assert_eq!(found.answer, Ok(Some(70)));
    assert_eq!(found.partner, Some(500), "the balance before the hold");
    assert_eq!(found.held, Some(true));
    {
        let state = fake.state();
        assert_eq!(state.cache_reads, 1, "one round trip");
        assert_eq!(state.holds.get(&TX), Some(&(account(1), 300)));
        assert_eq!(
            state.records.get(&TX).map(Vec::as_slice),
            Some(&b"the message"[..])
        );
    }
    let cell = PublicationCell::default();
    let answer = deliver(
        Arc::clone(&fake),
        TX,
        outgoing("tx", 1, 300),
        300,
        Taken::AsRecorded,
        cell.clone(),
        None,
        None,
    )
    .await;
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(cell.get(), Publication::Acknowledged { amount_minor: 300 });
    let state = fake.state();
    assert_eq!(state.reserves, 0, "held already");
    assert_eq!(state.holds.get(&TX), Some(&(account(1), 300)));
    assert_eq!(state.produced.len(), 1);
}

#[tokio::test]
async fn nothing_is_held_ahead_without_the_money_or_a_cached_party() {
    let fake = Fake::new();
    fake.state().cached.insert(account(1), 500);
    fake.state().cached.insert(account(2), 70);
    fake.state().holds.insert(OTHER, (account(1), 300));
    let found = lookup(&*fake, TX, 2, "USD", Some(1), Some(&plan(300, b"m"))).await;
    assert_eq!((found.partner, found.held), (Some(200), Some(false)));
    // The receiver is not cached: its lookup goes to the ledger, nothing is held.
    fake.state().cached.remove(&account(2));
    fake.state().settled.insert(account(2), 70);
    let found = lookup(&*fake, TX, 2, "USD", Some(1), Some(&plan(100, b"m"))).await;
    assert_eq!((found.answer, found.held), (Ok(Some(70)), Some(false)));
    // A lookup that does not read the account the hold is on carries nothing.
    let found = lookup(&*fake, TX, 2, "USD", None, Some(&plan(100, b"m"))).await;
    assert_eq!(found.held, Some(false));
    assert!(!fake.state().holds.contains_key(&TX));
    // Redis down: the ledger answers, and whether it holds is unknown.
    fake.redis_down.store(true, Ordering::SeqCst);
    let found = lookup(&*fake, TX, 2, "USD", Some(1), Some(&plan(100, b"m"))).await;
    assert_eq!((found.answer, found.held), (Ok(Some(70)), None));
}

#[tokio::test]
async fn a_retry_s_lookup_leaves_the_hold_its_first_attempt_took() {
    let fake = Fake::new();
    fake.state().cached.insert(account(1), 500);
    fake.state().cached.insert(account(2), 70);
    fake.state().holds.insert(TX, (account(1), 300));
    fake.state().records.insert(TX, b"first attempt".to_vec());
    let found = lookup(&*fake, TX, 2, "USD", Some(1), Some(&plan(300, b"retry"))).await;
    assert_eq!(
        found.partner,
        Some(500),
        "its own hold does not count against it"
    );
    assert_eq!(
        found.held,
        Some(false),
        "not taken now: not this call's to give back"
    );
    let state = fake.state();
    assert_eq!(state.holds.get(&TX), Some(&(account(1), 300)));
    assert_eq!(
        state.records.get(&TX).map(Vec::as_slice),
        Some(&b"first attempt"[..])
    );
}

#[tokio::test]
async fn a_publish_of_another_message_replaces_the_record_of_the_hold_ahead() {
    let fake = Fake::new();
    fake.state().cached.insert(account(1), 500);
    fake.state().cached.insert(account(2), 70);
    let found = lookup(&*fake, TX, 2, "USD", Some(1), Some(&plan(300, b"expected"))).await;
    assert_eq!(found.held, Some(true));
    let mut message = outgoing("tx", 1, 300);
    message.payload = b"another".to_vec();
    let answer = deliver(
        Arc::clone(&fake),
        TX,
        message,
        300,
        Taken::OtherRecord,
        PublicationCell::default(),
        None,
        None,
    )
    .await;
    assert!(answer.is_ok(), "{answer:?}");
    let state = fake.state();
    assert_eq!(state.reserves, 0, "held already");
    assert_eq!(state.holds.len(), 1, "the one hold, not a second");
    assert_eq!(state.holds.get(&TX), Some(&(account(1), 300)));
    assert_eq!(
        state.records.get(&TX).map(Vec::as_slice),
        Some(&b"another"[..])
    );
}

#[tokio::test]
async fn an_acknowledged_publish_keeps_its_hold_for_settlement() {
    let fake = Fake::new();
    fake.state().settled.insert(account(1), 500);
    let (id, answer, publication) = publish(&fake, 300).await;
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(publication, Publication::Acknowledged { amount_minor: 300 });
    let state = fake.state();
    assert_eq!(state.holds.get(&id), Some(&(account(1), 300)));
    assert_eq!(state.produced, vec![id.to_string()]);
}

#[tokio::test]
async fn a_publish_beyond_the_available_balance_holds_and_sends_nothing() {
    let fake = Fake::new();
    fake.state().settled.insert(account(1), 500);
    let (_, first, _) = publish(&fake, 300).await;
    assert!(first.is_ok(), "{first:?}");
    let (id, second, publication) = publish(&fake, 300).await;
    assert!(
        matches!(second, Err(PublishError::InsufficientFunds)),
        "{second:?}"
    );
    assert!(matches!(publication, Publication::Refused { .. }));
    let state = fake.state();
    assert!(!state.holds.contains_key(&id));
    assert_eq!(state.produced.len(), 1, "only the first was sent");
}

#[tokio::test]
async fn a_refused_publish_gives_its_hold_back() {
    let fake = Fake::new();
    fake.state().settled.insert(account(1), 500);
    *fake.broker.lock().expect("lock") = Broker::Refuses;
    let (_, answer, publication) = publish(&fake, 300).await;
    assert!(matches!(answer, Err(PublishError::Unavailable(_))));
    assert!(matches!(publication, Publication::Refused { .. }));
    assert!(
        fake.state().holds.is_empty(),
        "nothing in the log: nothing held"
    );
}

#[tokio::test]
async fn a_publish_in_doubt_keeps_its_hold() {
    let fake = Fake::new();
    fake.state().settled.insert(account(1), 500);
    *fake.broker.lock().expect("lock") = Broker::TimesOut;
    let (id, answer, publication) = publish(&fake, 300).await;
    assert!(matches!(answer, Err(PublishError::Unavailable(_))));
    assert!(matches!(publication, Publication::InDoubt { .. }));
    // The message may settle: its money stays set aside.
    assert_eq!(fake.state().holds.get(&id), Some(&(account(1), 300)));
}

#[tokio::test]
async fn without_redis_a_publish_is_refused_and_sends_nothing() {
    let fake = Fake::new();
    fake.state().settled.insert(account(1), 500);
    fake.redis_down.store(true, Ordering::SeqCst);
    let (_, answer, publication) = publish(&fake, 300).await;
    assert!(
        matches!(answer, Err(PublishError::Unavailable(_))),
        "no hold, no transfer: {answer:?}"
    );
    assert!(matches!(publication, Publication::Refused { .. }));
    assert!(fake.state().produced.is_empty());
}

#[tokio::test]
async fn while_the_holds_are_untrusted_nothing_is_held_or_sent() {
    let fake = Fake::new();
    fake.state().cached.insert(account(1), 500);
    fake.state().cached.insert(account(2), 70);
    fake.holds_untrusted.store(true, Ordering::SeqCst);
    // The lookup still answers (reads go on), but takes nothing ahead.
    let found = lookup(&*fake, TX, 2, "USD", Some(1), Some(&plan(300, b"m"))).await;
    assert_eq!((found.answer, found.held), (Ok(Some(70)), Some(false)));
    let (_, answer, publication) = publish(&fake, 300).await;
    assert!(
        matches!(&answer, Err(PublishError::Unavailable(reason)) if reason == super::publish::HOLDS_UNTRUSTED),
        "{answer:?}"
    );
    assert!(matches!(publication, Publication::Refused { .. }));
    let state = fake.state();
    assert!(state.holds.is_empty() && state.records.is_empty());
    assert!(state.produced.is_empty());
}

#[tokio::test]
async fn without_redis_and_the_ledger_nothing_is_sent() {
    let fake = Fake::new();
    fake.redis_down.store(true, Ordering::SeqCst);
    fake.ledger_down.store(true, Ordering::SeqCst);
    let (_, answer, publication) = publish(&fake, 300).await;
    assert!(matches!(answer, Err(PublishError::Unavailable(_))));
    assert!(matches!(publication, Publication::Refused { .. }));
    assert!(fake.state().produced.is_empty());
}

#[tokio::test]
async fn an_account_the_ledger_does_not_have_cannot_send() {
    let fake = Fake::new();
    let (_, answer, _) = publish(&fake, 1).await;
    assert!(
        matches!(answer, Err(PublishError::InsufficientFunds)),
        "{answer:?}"
    );
    assert!(fake.state().produced.is_empty());
}

#[tokio::test]
async fn a_published_transfer_carries_its_request_id_and_trace() {
    let fake = Fake::new();
    fake.state().settled.insert(account(1), 500);
    let id = Uuid::now_v7();
    let mut headers = http::HeaderMap::new();
    headers.insert("x-request-id", http::HeaderValue::from_static("req-7"));
    let trace = crate::trace::TraceContext::of_request(&headers);
    let answer = deliver(
        Arc::clone(&fake),
        id,
        outgoing(&id.to_string(), 1, 100),
        100,
        Taken::No,
        PublicationCell::default(),
        Some(trace.clone()),
        None,
    )
    .await;
    assert!(answer.is_ok(), "acknowledged: {answer:?}");
    let sent = fake.state().produced_headers.clone();
    assert_eq!(
        sent,
        vec![vec![
            ("transaction_id".to_string(), id.to_string()),
            ("traceparent".to_string(), trace.traceparent()),
            ("request_id".to_string(), "req-7".to_string()),
        ]]
    );
}
