//! The balance cache and the holds, in Redis. The ledger re-checks every transfer when it
//! settles, so Redis never decides money; but a 200 promises that the transfer settles, and
//! only the holds serialise concurrent spends from one account: while Redis is unreachable, or
//! has not yet been trusted again after losing its data, no hold is taken and transfers are
//! refused (503); reads go on.
//!
//! Keys (with the configured prefix in front):
//! - `balance:{user_id}:{currency}`: the settled balance in minor units (the original
//!   service's key), written only together with
//! - `balance_version:{user_id}:{currency}`: the ledger version it was read at, so an older
//!   balance never overwrites a newer one;
//! - `holds:{user_id}:{currency}`: a hash of transaction id → held minor units, plus the
//!   field `total`. Reserving and releasing are idempotent per transaction id.
//! - `hold_times:{user_id}:{currency}`: a hash of transaction id → when its hold was taken,
//!   in milliseconds since the epoch by Redis's own clock (`TIME`), written by the script that
//!   takes the hold and removed with it: the reconciler judges a hold by it, not by its id (a
//!   retry takes a fresh hold under its first attempt's id).
//! - `pending:{transaction_id}`: the message of an accepted transfer until it settles (kept
//!   at most [`PENDING_TTL_SECONDS`]), so `GET /transfers/{id}` can say `pending`. Written
//!   atomically with the hold, removed with it.
//! - `holds_trusted`: present while the holds can be trusted to cover every accepted transfer
//!   not yet settled. Every script that takes a hold checks it and holds nothing without it.
//!   A Redis that comes back empty has lost holds and this key alike; the key is written again
//!   only once settlement has consumed the log up to where it ended after the key was found
//!   missing (`settlement::reconcile`, [`BalanceCache::claim_trust`]).
//! - `holds_trust_claim:{token}`: one attempt to write `holds_trusted` again, so that the key
//!   is written only into the same data the attempt found it missing in.
//!
//! Amounts are compared in Lua, whose numbers are doubles: exact up to 2^53 minor units
//! (90 trillion USD), far above any balance the amount limits allow.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, FromRedisValue, Script};
use tokio::sync::Mutex;
use transferd_guest::spending::RecentOutgoing;

use crate::config::Services;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis is unavailable: {0}")]
    Unavailable(String),
}

impl From<redis::RedisError> for CacheError {
    fn from(error: redis::RedisError) -> Self {
        CacheError::Unavailable(error.to_string())
    }
}

/// What reserving a hold found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldOutcome {
    /// The hold is in place (now or from an earlier call with the same transaction id).
    Reserved,
    /// Available balance is below the amount; nothing was reserved.
    Insufficient,
    /// The cache has no balance for the account; load it from the ledger and try again.
    Missing,
    /// The holds cannot be trusted (`holds_trusted` is missing); nothing was reserved.
    Untrusted,
}

/// What [`BalanceCache::claim_trust`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustClaim {
    /// `holds_trusted` is there.
    Trusted,
    /// It is missing; the claim was recorded for [`BalanceCache::confirm_trust`].
    Claimed,
}

/// After a failed connection attempt, requests skip Redis for this long instead of each
/// waiting for a connect timeout.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

/// The Lua that counts an accepted hold in its sender's outgoing counters, prepended to every
/// script that takes holds: `count_out(prefix, recent, id, amount, now)` adds the amount and
/// one to the day's counters (`prefix .. day`, a hash of `minor` and `count` that expires a
/// day after its day ends; the day is Redis's clock's UTC day) and the transaction to the
/// sender's last-minute set (`recent`, scored by milliseconds, trimmed to the last minute).
macro_rules! count_out_lua {
    () => {
        r"
local function count_out(prefix, recent, id, amount, now)
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local day = math.floor(tonumber(now[1]) / 86400)
  local key = prefix .. day
  redis.call('HINCRBY', key, 'minor', amount)
  redis.call('HINCRBY', key, 'count', 1)
  redis.call('EXPIREAT', key, (day + 2) * 86400)
  redis.call('ZREMRANGEBYSCORE', recent, '-inf', ms - 60000)
  redis.call('ZADD', recent, ms, id)
  redis.call('PEXPIRE', recent, 60000)
end
"
    };
}

/// Per account, KEYS (balance, holds); ARGV[1]: a transaction id whose own hold does not count
/// (empty: none). Per account, two numbers: 1 and the available balance, or 0 and 0 when the
/// balance is not cached (a Lua `false` in a table would cut the reply short).
///
/// Holding as well (six ARGV): four more KEYS, the transaction's pending key, the hold's
/// account's hold times, its last-minute set and `holds_trusted`; ARGV[2] the position, from
/// 1, of the account to hold on, ARGV[3] the amount, ARGV[4] the pending record, ARGV[5] its
/// time to live in seconds, ARGV[6] the account's counters' prefix (`count_out`). When the
/// holds are trusted, every account read is cached, the transaction holds nothing on the
/// hold's account yet and that account has the amount available, the hold, its time and the
/// pending record are written as RESERVE writes them (and counted); one more number ends the
/// reply: 1 when the hold was taken now, else 0 (a transaction that held already, a retry,
/// keeps its hold and record as they are).
const AVAILABLE: &str = concat!(
    count_out_lua!(),
    r"
local holding = #ARGV > 1
local accounts = #KEYS / 2
if holding then accounts = (#KEYS - 4) / 2 end
local reply = {}
local own = {}
local all_cached = true
for i = 1, accounts do
  local balance = redis.call('GET', KEYS[2 * i - 1])
  if balance then
    local held = redis.call('HMGET', KEYS[2 * i], 'total', ARGV[1])
    own[i] = held[2]
    reply[2 * i - 1] = 1
    reply[2 * i] = tonumber(balance) - tonumber(held[1] or '0') + tonumber(held[2] or '0')
  else
    all_cached = false
    reply[2 * i - 1] = 0
    reply[2 * i] = 0
  end
end
if holding then
  local i = tonumber(ARGV[2])
  local holds = KEYS[2 * i]
  local held = 0
  local trusted = redis.call('EXISTS', KEYS[#KEYS]) == 1
  if trusted and all_cached and not own[i] and reply[2 * i] >= tonumber(ARGV[3]) then
    local now = redis.call('TIME')
    redis.call('HSET', holds, ARGV[1], ARGV[3])
    redis.call('HINCRBY', holds, 'total', ARGV[3])
    redis.call('HSET', KEYS[#KEYS - 2], ARGV[1], now[1] .. string.format('%03d', math.floor(now[2] / 1000)))
    redis.call('SET', KEYS[#KEYS - 3], ARGV[4], 'EX', ARGV[5])
    count_out(ARGV[6], KEYS[#KEYS - 1], ARGV[1], ARGV[3], now)
    held = 1
  end
  reply[2 * accounts + 1] = held
end
return reply
"
);

/// Most accounts one availability call reads.
pub const MAX_ACCOUNTS_PER_LOOKUP: usize = 16;

/// How long a pending record outlives its transfer's acceptance at most: far beyond any
/// settlement delay, short enough that a lost one does not stay forever.
pub const PENDING_TTL_SECONDS: u64 = 7 * 24 * 3600;

/// KEYS: balance, holds, pending, hold times, `holds_trusted`, last-minute set. ARGV:
/// transaction id, amount, pending record, its time to live, the counters' prefix. 1 reserved
/// (now or before), 0 insufficient, -1 balance not cached, -2 holds not trusted. The hold's
/// time is Redis's clock, in milliseconds; a hold taken now is counted (`count_out`).
const RESERVE: &str = concat!(
    count_out_lua!(),
    r"
if redis.call('EXISTS', KEYS[5]) == 0 then return -2 end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 1 end
local balance = redis.call('GET', KEYS[1])
if not balance then return -1 end
local held = tonumber(redis.call('HGET', KEYS[2], 'total') or '0')
if tonumber(balance) - held < tonumber(ARGV[2]) then return 0 end
local now = redis.call('TIME')
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], 'total', ARGV[2])
redis.call('HSET', KEYS[4], ARGV[1], now[1] .. string.format('%03d', math.floor(now[2] / 1000)))
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
count_out(ARGV[5], KEYS[6], ARGV[1], ARGV[2], now)
return 1
"
);

/// A batch's one read of every party's available balance. Per account, KEYS (balance, holds);
/// ARGV per account: how many of the batch's own transaction ids follow, then those ids
/// (their holds, a retry's, do not count). Per account two numbers, as AVAILABLE answers.
const SNAPSHOT: &str = r"
local reply = {}
local a = 1
for i = 1, #KEYS / 2 do
  local own = tonumber(ARGV[a])
  local balance = redis.call('GET', KEYS[2 * i - 1])
  if balance then
    local available = tonumber(balance) - tonumber(redis.call('HGET', KEYS[2 * i], 'total') or '0')
    for j = 1, own do
      available = available + tonumber(redis.call('HGET', KEYS[2 * i], ARGV[a + j]) or '0')
    end
    reply[2 * i - 1] = 1
    reply[2 * i] = available
  else
    reply[2 * i - 1] = 0
    reply[2 * i] = 0
  end
  a = a + own + 1
end
return reply
";

/// A batch's holds, in one step, in order. KEYS[1] `holds_trusted`, then per item: the
/// sender's balance, holds and hold times, the item's pending key, the sender's last-minute
/// set. ARGV[1] `1` for an atomic batch, ARGV[2] the pending records' time to live, then per
/// item: transaction id, amount, pending record, (atomic) the receiver's balance key, whose
/// credit later items may spend, and the sender's counters' prefix. Each hold written is
/// counted (`count_out`). Each item fits when the sender's balance minus its holds and what earlier items
/// of the batch hold covers it (an item that holds already, a retry's, fits as it is).
/// Per item 1 held, 0 insufficient, -1 balance not cached; `{-2}` holds not trusted.
/// Atomic: nothing is written unless every item fits.
const RESERVE_BATCH: &str = concat!(
    count_out_lua!(),
    r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2} end
local atomic = ARGV[1] == '1'
local items = (#KEYS - 1) / 5
local extra = {}
local reply = {}
local write = {}
local all = true
for i = 1, items do
  local k = 1 + 5 * (i - 1)
  local a = 2 + 5 * (i - 1)
  local id, amount = ARGV[a + 1], tonumber(ARGV[a + 2])
  local fits = false
  if redis.call('HEXISTS', KEYS[k + 2], id) == 1 then
    fits = true
  else
    local balance = redis.call('GET', KEYS[k + 1])
    if not balance then
      reply[i] = -1
    else
      local held = tonumber(redis.call('HGET', KEYS[k + 2], 'total') or '0') + (extra[KEYS[k + 1]] or 0)
      if tonumber(balance) - held >= amount then
        fits = true
        write[i] = true
        extra[KEYS[k + 1]] = (extra[KEYS[k + 1]] or 0) + amount
      else
        reply[i] = 0
      end
    end
  end
  if fits then
    reply[i] = 1
    if atomic and ARGV[a + 4] ~= '' then
      extra[ARGV[a + 4]] = (extra[ARGV[a + 4]] or 0) - amount
    end
  else
    all = false
  end
end
if atomic and not all then return reply end
local now = redis.call('TIME')
local at = now[1] .. string.format('%03d', math.floor(now[2] / 1000))
for i = 1, items do
  if write[i] then
    local k = 1 + 5 * (i - 1)
    local a = 2 + 5 * (i - 1)
    redis.call('HSET', KEYS[k + 2], ARGV[a + 1], ARGV[a + 2])
    redis.call('HINCRBY', KEYS[k + 2], 'total', ARGV[a + 2])
    redis.call('HSET', KEYS[k + 3], ARGV[a + 1], at)
    redis.call('SET', KEYS[k + 4], ARGV[a + 3], 'EX', ARGV[2])
    count_out(ARGV[a + 5], KEYS[k + 5], ARGV[a + 1], ARGV[a + 2], now)
  end
end
return reply
"
);

/// KEYS: holds, pending, hold times, last-minute set. ARGV: transaction id, the counters'
/// prefix. A released hold is a transfer that did not happen: it stops counting, in the
/// counters of the day it was held in (when they are still there) and in the last minute.
const RELEASE: &str = r"
redis.call('DEL', KEYS[2])
local at = redis.call('HGET', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
local amount = redis.call('HGET', KEYS[1], ARGV[1])
if not amount then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'total', -tonumber(amount))
if at then
  local day = ARGV[2] .. math.floor(tonumber(at) / 86400000)
  if redis.call('EXISTS', day) == 1 then
    redis.call('HINCRBY', day, 'minor', -tonumber(amount))
    redis.call('HINCRBY', day, 'count', -1)
  end
end
return 1
";

/// KEYS: holds, hold times, last-minute set. ARGV: transaction id, the counters' prefix. The
/// account's outgoing counters as the transaction sees them (its own hold, when it holds
/// already, does not count): the UTC day's amount and count, and the last minute's count,
/// by Redis's clock.
const OUTGOING: &str = r"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local day = math.floor(tonumber(now[1]) / 86400)
local counts = redis.call('HMGET', ARGV[2] .. day, 'minor', 'count')
local minor = tonumber(counts[1] or '0')
local count = tonumber(counts[2] or '0')
local recent = redis.call('ZCOUNT', KEYS[3], '(' .. (ms - 60000), '+inf')
local own = redis.call('HGET', KEYS[1], ARGV[1])
if own then
  local at = redis.call('HGET', KEYS[2], ARGV[1])
  if at and math.floor(tonumber(at) / 86400000) == day then
    minor = minor - tonumber(own)
    count = count - 1
  end
  local score = redis.call('ZSCORE', KEYS[3], ARGV[1])
  if score and tonumber(score) > ms - 60000 then recent = recent - 1 end
end
return {minor, count, recent}
";

/// KEYS: `holds_trusted`, this attempt's claim. ARGV: the claim's time to live in seconds.
/// 1 trusted; 0 not, and the claim is recorded.
const CLAIM_TRUST: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
return 0
";

/// KEYS: `holds_trusted`, the attempt's claim. Writes `holds_trusted` (its value: Redis's time
/// in seconds, for an operator) when the claim is still there: the data is the one the claim
/// was made in, so no hold was lost since. 1 trusted, 0 the claim is gone.
const CONFIRM_TRUST: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('DEL', KEYS[2])
  return 1
end
if redis.call('DEL', KEYS[2]) == 0 then return 0 end
redis.call('SET', KEYS[1], redis.call('TIME')[1])
return 1
";

/// After settlement: store the new balances (never over newer ones), then release the holds
/// and pending records of the settled transfers, in one atomic step, so the available
/// balance never counts a settled transfer twice or not at all.
/// KEYS: per account (balance, version), then per transfer (holds, pending, hold times).
/// ARGV: account count, per account (balance, version), then per transfer the transaction id.
const SETTLE: &str = r"
local accounts = tonumber(ARGV[1])
for i = 1, accounts do
  local current = redis.call('GET', KEYS[2 * i])
  local version = ARGV[2 * i + 1]
  if not current or tonumber(current) <= tonumber(version) then
    redis.call('MSET', KEYS[2 * i - 1], ARGV[2 * i], KEYS[2 * i], version)
  end
end
local transfers = (#KEYS - 2 * accounts) / 3
for j = 1, transfers do
  local holds = KEYS[2 * accounts + 3 * j - 2]
  local id = ARGV[2 * accounts + 1 + j]
  local amount = redis.call('HGET', holds, id)
  if amount then
    redis.call('HDEL', holds, id)
    redis.call('HINCRBY', holds, 'total', -tonumber(amount))
  end
  redis.call('DEL', KEYS[2 * accounts + 3 * j - 1])
  redis.call('HDEL', KEYS[2 * accounts + 3 * j], id)
end
return 1
";

const STORE_BALANCE: &str = r"
local current = redis.call('GET', KEYS[2])
if current and tonumber(current) > tonumber(ARGV[2]) then return 0 end
redis.call('MSET', KEYS[1], ARGV[1], KEYS[2], ARGV[2])
return 1
";

struct Connection {
    manager: Option<ConnectionManager>,
    /// When the last attempt failed, and why (a refused certificate, a timeout): the answer
    /// until the next attempt.
    last_failure: Option<(Instant, String)>,
}

pub struct BalanceCache {
    client: Client,
    connection: Mutex<Connection>,
    prefix: String,
    timeout: Duration,
    available: Script,
    reserve: Script,
    snapshot: Script,
    reserve_batch: Script,
    release: Script,
    outgoing: Script,
    store_balance: Script,
    settle: Script,
    claim_trust: Script,
    confirm_trust: Script,
}

/// A settled account balance, for [`BalanceCache::settle`].
#[derive(Debug, Clone)]
pub struct SettledBalance {
    pub user_id: i64,
    pub currency: String,
    pub balance_minor: i64,
    pub version: i64,
}

/// One hold as the cache keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldTransfer {
    pub transaction_id: String,
    pub user_id: i64,
    pub currency: String,
    pub amount_minor: i64,
    /// When it was taken, by Redis's clock in milliseconds since the epoch; `None` for a hold
    /// written without its time.
    pub taken_at_ms: Option<u64>,
}

/// `(user_id, currency)` of a `{prefix}holds:{user_id}:{currency}` key.
fn parse_account(key: &str, key_prefix: &str) -> Option<(i64, String)> {
    let (user_id, currency) = key.strip_prefix(key_prefix)?.split_once(':')?;
    Some((user_id.parse().ok()?, currency.to_string()))
}

/// `text` with Redis glob characters escaped, for a SCAN MATCH pattern.
fn escape_glob(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// A hold to take with a lookup ([`BalanceCache::available_holding`]).
#[derive(Debug, Clone, Copy)]
pub struct HoldRequest<'a> {
    /// The position of the account to hold on among the accounts read.
    pub hold_on: usize,
    pub amount_minor: i64,
    /// The pending record written with it.
    pub record: &'a [u8],
}

/// One item's hold in [`BalanceCache::reserve_batch`].
#[derive(Debug, Clone, Copy)]
pub struct BatchHold<'a> {
    pub transaction_id: &'a str,
    pub user_id: i64,
    pub currency: &'a str,
    pub amount_minor: i64,
    /// The pending record written with it.
    pub record: &'a [u8],
    /// In an atomic batch, the receiver: later items of the batch may spend what it credits.
    pub credits: Option<i64>,
}

/// The availability script's answer for `accounts` accounts: per account, its available
/// balance, `None` when not cached.
fn availabilities(reply: &[i64], accounts: usize) -> Result<Vec<Option<i64>>, CacheError> {
    if reply.len() != 2 * accounts {
        return Err(CacheError::Unavailable(format!(
            "the availability script answered {} numbers for {accounts} accounts",
            reply.len()
        )));
    }
    Ok(reply
        .chunks_exact(2)
        .map(|pair| (pair[0] == 1).then_some(pair[1]))
        .collect())
}

/// A settled transfer whose hold is released, for [`BalanceCache::settle`].
#[derive(Debug, Clone)]
pub struct SettledHold {
    pub transaction_id: String,
    pub user_id: i64,
    pub currency: String,
}

/// The Redis client of `TRANSFERD_REDIS_URL`: over TLS for `rediss://`, checking the server
/// against the CA file when one is set (else the system's roots), and showing the client
/// certificate when one is set.
fn client(services: &Services) -> Result<Client, CacheError> {
    let url = services.redis_url.as_str();
    if services.redis_ca_file.is_none() && services.redis_client_cert_file.is_none() {
        return Ok(Client::open(url)?);
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|error| {
            CacheError::Unavailable(format!("cannot read {}: {error}", path.display()))
        })
    };
    let root_cert = services.redis_ca_file.as_deref().map(read).transpose()?;
    let client_tls = match (
        &services.redis_client_cert_file,
        &services.redis_client_key_file,
    ) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        _ => None,
    };
    let certificates = redis::TlsCertificates {
        client_tls,
        root_cert,
    };
    Ok(Client::build_with_tls(url, certificates)?)
}

impl BalanceCache {
    /// Creates the cache without connecting; the first command connects.
    pub fn new(services: &Services) -> Result<Arc<BalanceCache>, CacheError> {
        Ok(Arc::new(BalanceCache {
            client: client(services)?,
            connection: Mutex::new(Connection {
                manager: None,
                last_failure: None,
            }),
            prefix: services.redis_prefix.clone(),
            timeout: services.redis_timeout(),
            available: Script::new(AVAILABLE),
            reserve: Script::new(RESERVE),
            snapshot: Script::new(SNAPSHOT),
            reserve_batch: Script::new(RESERVE_BATCH),
            release: Script::new(RELEASE),
            outgoing: Script::new(OUTGOING),
            store_balance: Script::new(STORE_BALANCE),
            settle: Script::new(SETTLE),
            claim_trust: Script::new(CLAIM_TRUST),
            confirm_trust: Script::new(CONFIRM_TRUST),
        }))
    }

    /// The available balance (settled minus held), or `None` when the balance is not cached.
    pub async fn available(&self, user_id: i64, currency: &str) -> Result<Option<i64>, CacheError> {
        self.available_to(user_id, currency, "").await
    }

    /// The available balance as `transaction_id` sees it: its own hold (a retry of it, under
    /// the same idempotency key, is already holding) does not count against it.
    pub async fn available_to(
        &self,
        user_id: i64,
        currency: &str,
        transaction_id: &str,
    ) -> Result<Option<i64>, CacheError> {
        let found = self
            .available_many(&[user_id], currency, transaction_id)
            .await?;
        Ok(found.first().copied().flatten())
    }

    /// [`BalanceCache::available_to`] for several accounts in one currency, in one round
    /// trip: one answer per account, in order.
    pub async fn available_many(
        &self,
        user_ids: &[i64],
        currency: &str,
        transaction_id: &str,
    ) -> Result<Vec<Option<i64>>, CacheError> {
        let keys = self.availability_keys(user_ids, currency);
        let reply: Vec<i64> = self
            .run(
                &self.available,
                &keys,
                &[transaction_id.as_bytes().to_vec()],
            )
            .await?;
        availabilities(&reply, user_ids.len())
    }

    /// The keys the availability script reads: per account, its balance and its holds.
    fn availability_keys(&self, user_ids: &[i64], currency: &str) -> Vec<String> {
        assert!(
            !user_ids.is_empty() && user_ids.len() <= MAX_ACCOUNTS_PER_LOOKUP,
            "one lookup reads 1 to {MAX_ACCOUNTS_PER_LOOKUP} accounts"
        );
        user_ids
            .iter()
            .flat_map(|user_id| {
                [
                    self.balance_key(*user_id, currency),
                    self.holds_key(*user_id, currency),
                ]
            })
            .collect()
    }

    /// [`BalanceCache::available_many`], and in the same step the hold `ahead` asks for, when
    /// every account read is cached, `transaction_id` holds nothing there yet and the one to
    /// hold on has the amount available (with `ahead.record` as its pending record, as
    /// [`BalanceCache::reserve_hold`] writes them). The availabilities are read before the
    /// hold, and whether the hold was taken now.
    pub async fn available_holding(
        &self,
        user_ids: &[i64],
        currency: &str,
        transaction_id: &str,
        ahead: &HoldRequest<'_>,
    ) -> Result<(Vec<Option<i64>>, bool), CacheError> {
        assert!(
            ahead.hold_on < user_ids.len(),
            "the hold is on one of the accounts read"
        );
        assert!(ahead.amount_minor > 0, "a hold sets money aside");
        let mut keys = self.availability_keys(user_ids, currency);
        let hold_on = user_ids[ahead.hold_on];
        keys.push(self.pending_key(transaction_id));
        keys.push(self.hold_times_key(hold_on, currency));
        keys.push(self.recent_key(hold_on, currency));
        keys.push(self.trusted_key());
        let args = [
            transaction_id.as_bytes().to_vec(),
            (ahead.hold_on + 1).to_string().into_bytes(),
            ahead.amount_minor.to_string().into_bytes(),
            ahead.record.to_vec(),
            PENDING_TTL_SECONDS.to_string().into_bytes(),
            self.outgoing_prefix(hold_on, currency).into_bytes(),
        ];
        let mut reply: Vec<i64> = self.run(&self.available, &keys, &args).await?;
        let held = reply.pop() == Some(1);
        Ok((availabilities(&reply, user_ids.len())?, held))
    }

    /// Reserves `amount_minor` of the account's available balance for `transaction_id` and
    /// records the transfer's message as pending.
    pub async fn reserve_hold(
        &self,
        transaction_id: &str,
        user_id: i64,
        currency: &str,
        amount_minor: i64,
        message: &[u8],
    ) -> Result<HoldOutcome, CacheError> {
        assert!(amount_minor > 0, "a hold sets money aside");
        let keys = [
            self.balance_key(user_id, currency),
            self.holds_key(user_id, currency),
            self.pending_key(transaction_id),
            self.hold_times_key(user_id, currency),
            self.trusted_key(),
            self.recent_key(user_id, currency),
        ];
        let args = [
            transaction_id.as_bytes().to_vec(),
            amount_minor.to_string().into_bytes(),
            message.to_vec(),
            PENDING_TTL_SECONDS.to_string().into_bytes(),
            self.outgoing_prefix(user_id, currency).into_bytes(),
        ];
        let outcome: i64 = self.run(&self.reserve, &keys, &args).await?;
        Ok(match outcome {
            1 => HoldOutcome::Reserved,
            0 => HoldOutcome::Insufficient,
            -1 => HoldOutcome::Missing,
            _ => HoldOutcome::Untrusted,
        })
    }

    /// A batch's read of every account it names, in one round trip: per account (id,
    /// currency, the batch's own transaction ids held on it, whose holds do not count), its
    /// available balance, `None` when not cached.
    pub async fn available_snapshot(
        &self,
        accounts: &[(i64, &str, Vec<String>)],
    ) -> Result<Vec<Option<i64>>, CacheError> {
        let mut keys = Vec::with_capacity(2 * accounts.len());
        let mut args = Vec::new();
        for (user_id, currency, own) in accounts {
            keys.push(self.balance_key(*user_id, currency));
            keys.push(self.holds_key(*user_id, currency));
            args.push(own.len().to_string().into_bytes());
            args.extend(own.iter().map(|id| id.as_bytes().to_vec()));
        }
        let reply: Vec<i64> = self.run(&self.snapshot, &keys, &args).await?;
        availabilities(&reply, accounts.len())
    }

    /// Reserves every hold of a batch and writes each item's pending record in one step, in
    /// order (`RESERVE_BATCH`); with `atomic`, all or none. One outcome per item.
    pub async fn reserve_batch(
        &self,
        holds: &[BatchHold<'_>],
        atomic: bool,
    ) -> Result<Vec<HoldOutcome>, CacheError> {
        let mut keys = vec![self.trusted_key()];
        let mut args = vec![
            if atomic { b"1".to_vec() } else { b"0".to_vec() },
            PENDING_TTL_SECONDS.to_string().into_bytes(),
        ];
        for hold in holds {
            assert!(hold.amount_minor > 0, "a hold sets money aside");
            keys.push(self.balance_key(hold.user_id, hold.currency));
            keys.push(self.holds_key(hold.user_id, hold.currency));
            keys.push(self.hold_times_key(hold.user_id, hold.currency));
            keys.push(self.pending_key(hold.transaction_id));
            keys.push(self.recent_key(hold.user_id, hold.currency));
            args.push(hold.transaction_id.as_bytes().to_vec());
            args.push(hold.amount_minor.to_string().into_bytes());
            args.push(hold.record.to_vec());
            args.push(
                hold.credits
                    .map(|receiver| self.balance_key(receiver, hold.currency))
                    .unwrap_or_default()
                    .into_bytes(),
            );
            args.push(
                self.outgoing_prefix(hold.user_id, hold.currency)
                    .into_bytes(),
            );
        }
        let reply: Vec<i64> = self.run(&self.reserve_batch, &keys, &args).await?;
        if reply.first() == Some(&-2) {
            return Ok(vec![HoldOutcome::Untrusted; holds.len()]);
        }
        if reply.len() != holds.len() {
            return Err(CacheError::Unavailable(format!(
                "the batch hold script answered {} outcomes for {} holds",
                reply.len(),
                holds.len()
            )));
        }
        Ok(reply
            .into_iter()
            .map(|outcome| match outcome {
                1 => HoldOutcome::Reserved,
                0 => HoldOutcome::Insufficient,
                _ => HoldOutcome::Missing,
            })
            .collect())
    }

    /// Replaces the pending record of a transfer that holds already (its hold taken ahead of
    /// a publish whose message is another than the one recorded then).
    pub async fn replace_pending(
        &self,
        transaction_id: &str,
        message: &[u8],
    ) -> Result<(), CacheError> {
        let mut connection = self.connection().await?;
        let mut command = redis::cmd("SET");
        command
            .arg(self.pending_key(transaction_id))
            .arg(message)
            .arg("EX")
            .arg(PENDING_TTL_SECONDS);
        self.bounded(command.query_async::<()>(&mut connection))
            .await
    }

    /// Releases the hold and pending record of `transaction_id`; releasing twice changes nothing.
    pub async fn release_hold(
        &self,
        transaction_id: &str,
        user_id: i64,
        currency: &str,
    ) -> Result<(), CacheError> {
        let keys = [
            self.holds_key(user_id, currency),
            self.pending_key(transaction_id),
            self.hold_times_key(user_id, currency),
            self.recent_key(user_id, currency),
        ];
        let args = [
            transaction_id.as_bytes().to_vec(),
            self.outgoing_prefix(user_id, currency).into_bytes(),
        ];
        let _released: i64 = self.run(&self.release, &keys, &args).await?;
        Ok(())
    }

    /// The account's outgoing counters as `transaction_id` sees them (`OUTGOING`): what the
    /// transfers accepted in the current UTC day move and how many they are, and how many were
    /// accepted in the last minute. Never guessed: an error when Redis cannot say.
    pub async fn outgoing(
        &self,
        transaction_id: &str,
        user_id: i64,
        currency: &str,
    ) -> Result<RecentOutgoing, CacheError> {
        let keys = [
            self.holds_key(user_id, currency),
            self.hold_times_key(user_id, currency),
            self.recent_key(user_id, currency),
        ];
        let args = [
            transaction_id.as_bytes().to_vec(),
            self.outgoing_prefix(user_id, currency).into_bytes(),
        ];
        let reply: Vec<i64> = self.run(&self.outgoing, &keys, &args).await?;
        let count = |value: i64| u32::try_from(value.max(0)).unwrap_or(u32::MAX);
        match reply[..] {
            [minor, day_count, last_minute] => Ok(RecentOutgoing {
                outgoing_minor: minor.max(0),
                outgoing_count: count(day_count),
                last_minute_count: count(last_minute),
            }),
            _ => Err(CacheError::Unavailable(format!(
                "the outgoing counters script answered {} numbers",
                reply.len()
            ))),
        }
    }

    /// Whether the holds can be trusted; when they cannot, records a claim named `token` for
    /// [`BalanceCache::confirm_trust`] (it lapses after `claim_ttl`).
    pub async fn claim_trust(
        &self,
        token: &str,
        claim_ttl: Duration,
    ) -> Result<TrustClaim, CacheError> {
        let keys = [self.trusted_key(), self.claim_key(token)];
        let args = [claim_ttl.as_secs().max(1).to_string().into_bytes()];
        let trusted: i64 = self.run(&self.claim_trust, &keys, &args).await?;
        Ok(if trusted == 1 {
            TrustClaim::Trusted
        } else {
            TrustClaim::Claimed
        })
    }

    /// Marks the holds trusted if the claim `token` is still there (Redis lost nothing since
    /// it was made); whether they are trusted now. The caller has made sure, since the claim,
    /// that every accepted transfer whose hold may be missing is in the ledger.
    pub async fn confirm_trust(&self, token: &str) -> Result<bool, CacheError> {
        let keys = [self.trusted_key(), self.claim_key(token)];
        let trusted: i64 = self.run(&self.confirm_trust, &keys, &[]).await?;
        Ok(trusted == 1)
    }

    /// Redis's clock, in milliseconds since the epoch: the clock hold times are written by.
    pub async fn now_ms(&self) -> Result<u64, CacheError> {
        let mut connection = self.connection().await?;
        let (seconds, micros): (u64, u64) = self
            .bounded(redis::cmd("TIME").query_async(&mut connection))
            .await?;
        Ok(seconds * 1000 + micros / 1000)
    }

    /// Stores settled balances and releases the holds of settled transfers, atomically.
    pub async fn settle(
        &self,
        balances: &[SettledBalance],
        holds: &[SettledHold],
    ) -> Result<(), CacheError> {
        let mut keys = Vec::with_capacity(balances.len() * 2 + holds.len() * 3);
        let mut args = Vec::with_capacity(1 + balances.len() * 2 + holds.len());
        args.push(balances.len().to_string().into_bytes());
        for balance in balances {
            keys.push(self.balance_key(balance.user_id, &balance.currency));
            keys.push(self.version_key(balance.user_id, &balance.currency));
            args.push(balance.balance_minor.to_string().into_bytes());
            args.push(balance.version.to_string().into_bytes());
        }
        for hold in holds {
            keys.push(self.holds_key(hold.user_id, &hold.currency));
            keys.push(self.pending_key(&hold.transaction_id));
            keys.push(self.hold_times_key(hold.user_id, &hold.currency));
            args.push(hold.transaction_id.as_bytes().to_vec());
        }
        let _: i64 = self.run(&self.settle, &keys, &args).await?;
        Ok(())
    }

    /// The message of a transfer accepted but not yet settled, if Redis has it.
    pub async fn pending(&self, transaction_id: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let mut connection = self.connection().await?;
        let mut command = redis::cmd("GET");
        command.arg(self.pending_key(transaction_id));
        self.bounded(command.query_async(&mut connection)).await
    }

    /// Whether Redis answers a PING within the command timeout.
    pub async fn ping(&self) -> Result<(), CacheError> {
        let mut connection = self.connection().await?;
        let _pong: String = self
            .bounded(redis::cmd("PING").query_async(&mut connection))
            .await?;
        Ok(())
    }

    /// The total held on an account (0 when nothing is held).
    pub async fn held(&self, user_id: i64, currency: &str) -> Result<i64, CacheError> {
        let mut connection = self.connection().await?;
        let mut command = redis::cmd("HGET");
        command.arg(self.holds_key(user_id, currency)).arg("total");
        let total: Option<i64> = self.bounded(command.query_async(&mut connection)).await?;
        Ok(total.unwrap_or(0))
    }

    /// Caches a settled balance read at `version`; an older version never replaces a newer one.
    /// Returns whether the value was written.
    pub async fn store_balance(
        &self,
        user_id: i64,
        currency: &str,
        balance_minor: i64,
        version: i64,
    ) -> Result<bool, CacheError> {
        let keys = [
            self.balance_key(user_id, currency),
            self.version_key(user_id, currency),
        ];
        let args = [
            balance_minor.to_string().into_bytes(),
            version.to_string().into_bytes(),
        ];
        let written: i64 = self.run(&self.store_balance, &keys, &args).await?;
        Ok(written == 1)
    }

    /// Every hold in the cache, at most `limit` of them: the reconciler's worklist. SCAN walks
    /// the key space in steps, so a large cache never blocks Redis.
    pub async fn held_transfers(&self, limit: usize) -> Result<Vec<HeldTransfer>, CacheError> {
        let mut connection = self.connection().await?;
        let key_prefix = format!("{}holds:", self.prefix);
        let pattern = format!("{}*", escape_glob(&key_prefix));
        let mut cursor: u64 = 0;
        let mut held = Vec::new();
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500);
            let (next, keys): (u64, Vec<String>) =
                self.bounded(scan.query_async(&mut connection)).await?;
            for key in keys {
                let Some((user_id, currency)) = parse_account(&key, &key_prefix) else {
                    tracing::warn!(key, "a holds key that names no account; left alone");
                    continue;
                };
                let mut hgetall = redis::cmd("HGETALL");
                hgetall.arg(&key);
                let fields: Vec<(String, i64)> =
                    self.bounded(hgetall.query_async(&mut connection)).await?;
                let mut times = redis::cmd("HGETALL");
                times.arg(self.hold_times_key(user_id, &currency));
                let taken_at: HashMap<String, u64> =
                    self.bounded(times.query_async(&mut connection)).await?;
                for (transaction_id, amount_minor) in fields {
                    if transaction_id == "total" || held.len() >= limit {
                        continue;
                    }
                    held.push(HeldTransfer {
                        taken_at_ms: taken_at.get(&transaction_id).copied(),
                        transaction_id,
                        user_id,
                        currency: currency.clone(),
                        amount_minor,
                    });
                }
            }
            cursor = next;
            if cursor == 0 || held.len() >= limit {
                return Ok(held);
            }
        }
    }

    fn balance_key(&self, user_id: i64, currency: &str) -> String {
        format!("{}balance:{user_id}:{currency}", self.prefix)
    }
    fn version_key(&self, user_id: i64, currency: &str) -> String {
        format!("{}balance_version:{user_id}:{currency}", self.prefix)
    }
    fn holds_key(&self, user_id: i64, currency: &str) -> String {
        format!("{}holds:{user_id}:{currency}", self.prefix)
    }
    fn pending_key(&self, transaction_id: &str) -> String {
        format!("{}pending:{transaction_id}", self.prefix)
    }
    fn hold_times_key(&self, user_id: i64, currency: &str) -> String {
        format!("{}hold_times:{user_id}:{currency}", self.prefix)
    }
    /// The day's counters are this and the UTC day's number (days since the epoch).
    fn outgoing_prefix(&self, user_id: i64, currency: &str) -> String {
        format!("{}outgoing:{user_id}:{currency}:", self.prefix)
    }
    fn recent_key(&self, user_id: i64, currency: &str) -> String {
        format!("{}outgoing_recent:{user_id}:{currency}", self.prefix)
    }
    fn trusted_key(&self) -> String {
        format!("{}holds_trusted", self.prefix)
    }
    fn claim_key(&self, token: &str) -> String {
        format!("{}holds_trust_claim:{token}", self.prefix)
    }

    /// Runs a script (EVALSHA, loading it when Redis does not know it), bounded by the
    /// configured timeout whatever the client library does.
    async fn run<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[Vec<u8>],
    ) -> Result<T, CacheError> {
        let mut connection = self.connection().await?;
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg.as_slice());
        }
        self.bounded(invocation.invoke_async(&mut connection)).await
    }

    async fn bounded<T>(
        &self,
        command: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CacheError> {
        match tokio::time::timeout(self.timeout, command).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(CacheError::Unavailable(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// The shared connection, made on first use. The manager reconnects by itself after an
    /// outage; while no connection could ever be made, attempts are spaced by a back-off.
    async fn connection(&self) -> Result<ConnectionManager, CacheError> {
        let mut connection = self.connection.lock().await;
        if let Some(manager) = &connection.manager {
            return Ok(manager.clone());
        }
        if let Some((failed_at, reason)) = &connection.last_failure
            && failed_at.elapsed() < RECONNECT_BACKOFF
        {
            return Err(CacheError::Unavailable(format!(
                "redis connection failed less than a second ago: {reason}"
            )));
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1)
            .set_max_delay(1_000);
        let attempt = tokio::time::timeout(
            self.timeout * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await;
        match attempt {
            Ok(Ok(manager)) => {
                connection.manager = Some(manager.clone());
                connection.last_failure = None;
                Ok(manager)
            }
            Ok(Err(error)) => {
                connection.last_failure = Some((Instant::now(), error.to_string()));
                Err(error.into())
            }
            Err(_) => {
                let reason = "connecting timed out";
                connection.last_failure = Some((Instant::now(), reason.to_string()));
                Err(CacheError::Unavailable(reason.into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_keys_name_their_account() {
        assert_eq!(
            parse_account("t1:holds:42:USD", "t1:holds:"),
            Some((42, "USD".to_string()))
        );
        assert_eq!(parse_account("t1:holds:x:USD", "t1:holds:"), None);
        assert_eq!(parse_account("other:holds:42:USD", "t1:holds:"), None);
    }

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(escape_glob("plain:"), "plain:");
    }
}
