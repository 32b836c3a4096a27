//! The balance cache and the holds, in Redis. Redis only advises: the ledger re-checks every
//! transfer when it settles, so losing Redis costs speed and early refusals, never money.
//!
//! Keys (with the configured prefix in front):
//! - `balance:{user_id}:{currency}`: the settled balance in minor units (the original
//!   service's key), written only together with
//! - `balance_version:{user_id}:{currency}`: the ledger version it was read at, so an older
//!   balance never overwrites a newer one;
//! - `holds:{user_id}:{currency}`: a hash of transaction id → held minor units, plus the
//!   field `total`. Reserving and releasing are idempotent per transaction id.
//!
//! Amounts are compared in Lua, whose numbers are doubles: exact up to 2^53 minor units
//! (90 trillion USD), far above any balance the amount limits allow.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, FromRedisValue, Script};
use tokio::sync::Mutex;

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
}

/// After a failed connection attempt, requests skip Redis for this long instead of each
/// waiting for a connect timeout.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

const AVAILABLE: &str = r"
local balance = redis.call('GET', KEYS[1])
if not balance then return false end
local held = redis.call('HGET', KEYS[2], 'total')
return tonumber(balance) - tonumber(held or '0')
";

const RESERVE: &str = r"
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 1 end
local balance = redis.call('GET', KEYS[1])
if not balance then return -1 end
local held = tonumber(redis.call('HGET', KEYS[2], 'total') or '0')
if tonumber(balance) - held < tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], 'total', ARGV[2])
return 1
";

const RELEASE: &str = r"
local amount = redis.call('HGET', KEYS[1], ARGV[1])
if not amount then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'total', -tonumber(amount))
return 1
";

const STORE_BALANCE: &str = r"
local current = redis.call('GET', KEYS[2])
if current and tonumber(current) > tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
return 1
";

struct Connection {
    manager: Option<ConnectionManager>,
    last_failure: Option<Instant>,
}

pub struct BalanceCache {
    client: Client,
    connection: Mutex<Connection>,
    prefix: String,
    timeout: Duration,
    available: Script,
    reserve: Script,
    release: Script,
    store_balance: Script,
}

impl BalanceCache {
    /// Creates the cache without connecting; the first command connects.
    pub fn new(services: &Services) -> Result<Arc<BalanceCache>, CacheError> {
        Ok(Arc::new(BalanceCache {
            client: Client::open(services.redis_url.as_str())?,
            connection: Mutex::new(Connection {
                manager: None,
                last_failure: None,
            }),
            prefix: services.redis_prefix.clone(),
            timeout: services.redis_timeout(),
            available: Script::new(AVAILABLE),
            reserve: Script::new(RESERVE),
            release: Script::new(RELEASE),
            store_balance: Script::new(STORE_BALANCE),
        }))
    }

    /// The available balance (settled minus held), or `None` when the balance is not cached.
    pub async fn available(&self, user_id: i64, currency: &str) -> Result<Option<i64>, CacheError> {
        let keys = [
            self.balance_key(user_id, currency),
            self.holds_key(user_id, currency),
        ];
        self.run(&self.available, &keys, &[]).await
    }

    /// Reserves `amount_minor` of the account's available balance for `transaction_id`.
    pub async fn reserve_hold(
        &self,
        transaction_id: &str,
        user_id: i64,
        currency: &str,
        amount_minor: i64,
    ) -> Result<HoldOutcome, CacheError> {
        assert!(amount_minor > 0, "a hold sets money aside");
        let keys = [
            self.balance_key(user_id, currency),
            self.holds_key(user_id, currency),
        ];
        let outcome: i64 = self
            .run(
                &self.reserve,
                &keys,
                &[transaction_id.to_string(), amount_minor.to_string()],
            )
            .await?;
        Ok(match outcome {
            1 => HoldOutcome::Reserved,
            0 => HoldOutcome::Insufficient,
            _ => HoldOutcome::Missing,
        })
    }

    /// Releases the hold of `transaction_id`; releasing twice changes nothing.
    pub async fn release_hold(
        &self,
        transaction_id: &str,
        user_id: i64,
        currency: &str,
    ) -> Result<(), CacheError> {
        let keys = [self.holds_key(user_id, currency)];
        let _released: i64 = self
            .run(&self.release, &keys, &[transaction_id.to_string()])
            .await?;
        Ok(())
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
        let written: i64 = self
            .run(
                &self.store_balance,
                &keys,
                &[balance_minor.to_string(), version.to_string()],
            )
            .await?;
        Ok(written == 1)
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

    /// Runs a script (EVALSHA, loading it when Redis does not know it), bounded by the
    /// configured timeout whatever the client library does.
    async fn run<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, CacheError> {
        let mut connection = self.connection().await?;
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection)).await {
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
        if let Some(failed_at) = connection.last_failure
            && failed_at.elapsed() < RECONNECT_BACKOFF
        {
            return Err(CacheError::Unavailable(
                "redis connection failed less than a second ago".into(),
            ));
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
                connection.last_failure = Some(Instant::now());
                Err(error.into())
            }
            Err(_) => {
                connection.last_failure = Some(Instant::now());
                Err(CacheError::Unavailable("connecting timed out".into()))
            }
        }
    }
}
