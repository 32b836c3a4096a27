//! Runs the guest: one engine, one pre-instantiated component, a store per instance.
//!
//! By default (`reuse_count` 1) every request gets a fresh instance: no guest state survives
//! from one transfer into the next, and a trap poisons nothing but its own request. With a
//! reuse count above 1 an instance that finished its call normally is kept for up to that many
//! calls, as `wasmtime serve` does: the host's per-request state in the store is reset before
//! each call (`RequestState::begin`), an instance that trapped, timed out or broke a host check
//! is never kept, and the guest's own memory does persist (a guest must keep no state; the
//! host checks every publish against the request that made it, so state cannot move money).
//! A store is dropped on a spawned task, so its teardown stays off the request path.
//!
//! The engine owns one budget of instance-pool slots for every guest it loaded: the active
//! version, a canary or shadow, vector runs and an old version finishing during a swap all
//! draw from the same pool. A running call holds a slot; a kept instance holds a place of the
//! idle budget instead, so kept instances never stop a call from starting.
//!
//! A request that holds an idempotency key waits for a slot only while its call would still
//! end inside the key's lease (its end minus the guest timeout); past that it is answered
//! 503 having done nothing, and its key is left to the retry. Within the call, the publish and
//! any release of what the call held act only while the key is still the request's
//! (`stores::idempotency::KeyLease`).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use transferd_guest::logic::{Accepted, Rejection, RequestContext};
use transferd_guest::rules::TransferRequest;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder, Trap,
};
use wasmtime_wasi::WasiView;

use transferd_guest::vectors::{self, Replay, Vector};

use crate::bindings::{self, Logic, LogicPre, Package};
use crate::capabilities::batch::{self, BatchBook, Staged};
use crate::capabilities::guard::{self, Expected, Violation};
use crate::capabilities::hold_ahead::{self, HoldAhead};
use crate::capabilities::{Publication, PublicationCell, RecordedAnswers, RequestState};
use crate::guest::determinism;
use crate::guest::replay::ReplayState;
use crate::stores::Stores;
use crate::stores::idempotency::{self, KeyLease};

/// How often the engine's epoch advances; a running guest yields to the scheduler at each
/// tick, so a guest stuck in a loop cannot hold a worker thread past its deadline.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Store data that carries the store's resource limits.
pub trait LimitedState: Send + 'static {
    fn limits(&mut self) -> &mut StoreLimits;
}

impl LimitedState for RequestState {
    fn limits(&mut self) -> &mut StoreLimits {
        &mut self.limits
    }
}

impl LimitedState for ReplayState {
    fn limits(&mut self) -> &mut StoreLimits {
        &mut self.limits
    }
}

/// Store data that a call starts from: built for a fresh instance, or reset on a kept one.
/// Its WASI context is replaced for every call (`determinism`).
pub trait CallState: LimitedState + WasiView + Sized {
    /// What one call brings (its request, and what its imports answer with).
    type Call;
    fn for_call(call: Self::Call, limits: StoreLimits) -> Self;
    fn begin(&mut self, call: Self::Call);
}

impl CallState for RequestState {
    type Call = (
        Arc<Stores>,
        Expected,
        PublicationCell,
        Option<HoldAhead>,
        Option<KeyLease>,
    );
    fn for_call(
        (stores, expected, publication, ahead, lease): Self::Call,
        limits: StoreLimits,
    ) -> Self {
        let mut state = RequestState::new(stores, expected, publication, ahead, limits);
        state.lease = lease;
        state
    }
    fn begin(&mut self, (stores, expected, publication, ahead, lease): Self::Call) {
        RequestState::begin(self, stores, expected, publication, ahead);
        self.lease = lease;
    }
}

impl CallState for ReplayState {
    type Call = (Replay, Expected);
    fn for_call((replay, expected): Self::Call, limits: StoreLimits) -> Self {
        ReplayState::new(replay, expected, limits)
    }
    fn begin(&mut self, (replay, expected): Self::Call) {
        ReplayState::begin(self, replay, expected);
    }
}

/// How one call ended, before the host reads what it left in its store.
enum Ran {
    Decided(Result<Accepted, Rejection>),
    Trapped(wasmtime::Error),
    TimedOut,
}

/// How one call's attempt ended: out of time, trapped, or decided on its instance.
type Attempt =
    Result<wasmtime::Result<(Logic, Result<Accepted, Rejection>)>, tokio::time::error::Elapsed>;

/// An instance kept for its next call, holding a place of the idle budget.
struct Kept<T: 'static> {
    store: Store<T>,
    instance: Logic,
    calls: u32,
    _idle: OwnedSemaphorePermit,
}

/// A guest's kept instances of one kind of store.
struct KeptInstances<T: 'static> {
    idle: Mutex<Vec<Kept<T>>>,
}

impl<T> KeptInstances<T> {
    fn new() -> KeptInstances<T> {
        KeptInstances {
            idle: Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Option<Kept<T>> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    fn keep(&self, kept: Kept<T>) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(kept);
    }
}

/// Drops a store, then gives its slot back, on a task of its own: the instance is back in the
/// pool before anyone else may take its place.
fn drop_later<T: Send + 'static>(store: Store<T>, slot: OwnedSemaphorePermit) {
    tokio::spawn(async move {
        drop(store);
        drop(slot);
    });
}

/// What one live call came to: the guest's answer (or why there is none), what its publish
/// did, and the answers the imports gave.
#[derive(Debug)]
pub struct Decided {
    pub decision: Result<Result<Accepted, Rejection>, GuestFailure>,
    pub publication: Publication,
    pub answers: RecordedAnswers,
}

impl Decided {
    /// What a request came to without calling the guest: nothing published or answered.
    fn without_a_call(decision: Result<Result<Accepted, Rejection>, GuestFailure>) -> Decided {
        Decided {
            decision,
            publication: Publication::None,
            answers: RecordedAnswers::default(),
        }
    }
}

/// Why a guest call produced no decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestFailure {
    #[error("the transfer logic failed: {0}")]
    Trap(String),
    #[error("the transfer logic did not finish within {0} ms")]
    Timeout(u128),
    /// No guest slot came free while the request's idempotency key could still cover its
    /// call: nothing was done.
    #[error("the service is busy: no room to run the transfer logic in time; nothing was done")]
    Busy,
    /// It broke one of the host's checks (`capabilities::guard`).
    #[error("the transfer logic failed: {}", .0.describe())]
    Violation(Violation),
    /// It used its whole fuel budget (this many units) without deciding.
    #[error("the transfer logic ran out of fuel: it used its whole budget of {0} fuel units")]
    OutOfFuel(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the guest file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the wasm engine could not be set up: {0:#}")]
    Invalid(wasmtime::Error),
    #[error("not WebAssembly: the bytes do not start with the wasm magic number")]
    NotWasm,
    #[error("a core WebAssembly module, not a component: build the guest for wasm32-wasip2")]
    CoreModule,
    #[error("not a valid component: {0:#}")]
    Compile(wasmtime::Error),
    #[error("the component does not fit the transfer-logic world (0.2.0 or 0.1.0): {0:#}")]
    WrongWorld(wasmtime::Error),
}

/// Limits every guest call runs under.
#[derive(Debug, Clone)]
pub struct GuestLimits {
    pub timeout: Duration,
    pub memory_bytes: usize,
    /// Fuel (about one unit per wasm instruction) one call of `initiate-transfer` may use;
    /// instantiating an instance has a budget of the same size of its own.
    pub fuel_budget: u64,
    pub concurrency: u32,
    /// Calls one instance may serve before it is dropped; 1: a fresh instance every call.
    pub reuse_count: u32,
    /// Where compiled guests are kept between runs (keyed by bytes, wasmtime version and
    /// compiler settings, so another wasmtime never reads them); `None` compiles every time.
    pub compiled_cache: Option<std::path::PathBuf>,
}

/// The engine and linkers, shared by every guest version.
pub struct GuestEngine {
    engine: Engine,
    linker: Linker<RequestState>,
    /// The same world with imports that replay conformance vectors.
    replay_linker: Linker<ReplayState>,
    limits: GuestLimits,
    /// One place in the instance pool per running call, whichever guest makes it; held until
    /// the call's store is dropped (its instance returns to the pool) or kept.
    slots: Arc<Semaphore>,
    /// Places in the pool for kept instances (as many as `slots` when instances are reused,
    /// none otherwise); a kept instance holds one while it waits for its next call.
    idle: Arc<Semaphore>,
}

/// Bytes of each pooled memory and table kept resident between calls.
const KEEP_RESIDENT_BYTES: usize = 2 * 1024 * 1024;

impl GuestEngine {
    pub fn new(limits: GuestLimits) -> Result<GuestEngine, LoadError> {
        let kept = if limits.reuse_count > 1 {
            limits.concurrency
        } else {
            0
        };
        let instances = limits.concurrency + kept;
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(instances)
            .total_core_instances(instances * 8)
            .total_memories(instances * 2)
            .total_tables(instances * 8)
            .max_memory_size(limits.memory_bytes)
            // Reset a returning instance's first pages with memset instead of madvise: no page
            // faults on the next call and no TLB shootdowns across cores. A transfer touches
            // well under this; memory beyond it is still returned to the kernel.
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_BYTES)
            // Where the kernel has PAGEMAP_SCAN (Linux 6.7 on), reset only the pages a call
            // dirtied; without it a returning instance memsets all of its first
            // KEEP_RESIDENT_BYTES, whatever the call touched (the store's teardown was a
            // quarter of a fresh call's CPU, a third of that with the scan). Older kernels
            // fall back to the memset.
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            // Beside the deadline: a budget of work, the same on every run of a call.
            .consume_fuel(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        if let Some(directory) = &limits.compiled_cache {
            let mut cache_config = wasmtime::CacheConfig::new();
            cache_config.with_directory(directory);
            config.cache(Some(
                wasmtime::Cache::new(cache_config).map_err(LoadError::Invalid)?,
            ));
        }
        let engine = Engine::new(&config).map_err(LoadError::Invalid)?;

        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|error| LoadError::Invalid(error.into()))?;

        let mut linker = Linker::new(&engine);
        // A Rust guest imports wasi:io and wasi:cli through std even though the world does not
        // ask for them; they are satisfied with an empty context (no files, network or env).
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(LoadError::Invalid)?;
        add_transfer_imports(&mut linker)?;
        let mut replay_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut replay_linker).map_err(LoadError::Invalid)?;
        add_transfer_imports(&mut replay_linker)?;
        Ok(GuestEngine {
            engine,
            linker,
            slots: Arc::new(Semaphore::new(limits.concurrency as usize)),
            idle: Arc::new(Semaphore::new(kept as usize)),
            replay_linker,
            limits,
        })
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> &GuestLimits {
        &self.limits
    }

    /// A place in the instance pool; every call holds one while it runs. With `start_by`, a
    /// call that has none by then does not run (`Busy`).
    async fn slot(&self, start_by: Option<Instant>) -> Result<OwnedSemaphorePermit, GuestFailure> {
        let acquire = Arc::clone(&self.slots).acquire_owned();
        let acquired = match start_by {
            None => acquire.await,
            Some(start_by) => tokio::time::timeout_at(start_by.into(), acquire)
                .await
                .map_err(|_elapsed| GuestFailure::Busy)?,
        };
        acquired.map_err(|_| GuestFailure::Trap("guest engine closed".into()))
    }

    /// When a call covered by `lease` must have started to end inside it: the lease's end
    /// minus the guest timeout (already past when the lease is lost).
    fn start_by(&self, lease: &KeyLease) -> Instant {
        let now = Instant::now();
        lease
            .until()
            .and_then(|until| until.checked_sub(self.limits.timeout))
            .unwrap_or(now)
    }

    /// Compiles a component and checks it against the `transfer-logic` world.
    pub fn load(self: &Arc<Self>, bytes: &[u8]) -> Result<Guest, LoadError> {
        // wasm magic, then version and layer: 1/0 is a core module, 0x0d/1 a component.
        if bytes.get(0..4) != Some(b"\0asm".as_slice()) {
            return Err(LoadError::NotWasm);
        }
        if bytes.get(4..8) == Some([1, 0, 0, 0].as_slice()) {
            return Err(LoadError::CoreModule);
        }
        let version = hex_sha256(bytes);
        let component = Component::new(&self.engine, bytes).map_err(LoadError::Compile)?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(LoadError::WrongWorld)?;
        let pre = LogicPre::new(instance_pre).map_err(LoadError::WrongWorld)?;
        let replay_pre = LogicPre::new(
            self.replay_linker
                .instantiate_pre(&component)
                .map_err(LoadError::WrongWorld)?,
        )
        .map_err(LoadError::WrongWorld)?;
        Ok(Guest {
            engine: Arc::clone(self),
            pre,
            replay_pre,
            version,
            kept: KeptInstances::new(),
            kept_replays: KeptInstances::new(),
            instances_created: AtomicU64::new(0),
        })
    }

    pub fn load_file(self: &Arc<Self>, path: &Path) -> Result<Guest, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.load(&bytes)
    }
}

/// One compiled guest version, ready to serve.
pub struct Guest {
    engine: Arc<GuestEngine>,
    pre: LogicPre<RequestState>,
    replay_pre: LogicPre<ReplayState>,
    version: String,
    kept: KeptInstances<RequestState>,
    kept_replays: KeptInstances<ReplayState>,
    instances_created: AtomicU64,
}

impl Guest {
    /// A fresh store under the memory cap, yielding to the scheduler at every epoch tick.
    fn new_store<T: LimitedState>(&self, state: impl FnOnce(StoreLimits) -> T) -> Store<T> {
        let store_limits = StoreLimitsBuilder::new()
            .memory_size(self.engine.limits.memory_bytes)
            .instances(64)
            .build();
        let mut store = Store::new(&self.engine.engine, state(store_limits));
        store.limiter(|state| state.limits());
        // What to do at a deadline: yield, then move the deadline one tick on. This sets no
        // deadline: a new store's is 0, already passed (`run` sets one for each call).
        store.epoch_deadline_async_yield_and_update(1);
        store
    }

    /// The sha256 of the component's bytes, in hex.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The WIT package the guest implements.
    pub fn package(&self) -> Package {
        self.pre.package()
    }

    /// Instances this guest has created; with reuse, fewer than the calls it served.
    pub fn instances_created(&self) -> u64 {
        self.instances_created.load(Ordering::Relaxed)
    }

    /// Runs `initiate-transfer` with live imports. Returns what the call came to even when
    /// the guest trapped or ran out of time: its publish may have happened all the same.
    /// `lease`: the request's claim on its idempotency key, which bounds the wait for a slot
    /// and fences the publish and the releases.
    pub async fn initiate_transfer(
        &self,
        stores: Arc<Stores>,
        context: &RequestContext,
        request: &TransferRequest,
        lease: Option<KeyLease>,
    ) -> Decided {
        // A request the guest's package cannot carry is refused before it runs.
        if let Some(refusal) = self.package().refusal(request) {
            return Decided::without_a_call(Ok(Err(refusal)));
        }
        let expected = match Expected::of(context, request) {
            Ok(expected) => expected,
            Err(violation) => {
                return Decided::without_a_call(Err(GuestFailure::Violation(violation)));
            }
        };
        let publication = PublicationCell::default();
        let transaction_id = expected.transaction_id;
        let start_by = lease.as_ref().map(|lease| self.engine.start_by(lease));
        let call = (
            Arc::clone(&stores),
            expected,
            publication.clone(),
            HoldAhead::plan(context, request),
            lease.clone(),
        );
        let ran = self
            .run(
                &self.pre,
                &self.kept,
                call,
                start_by,
                (context, request),
                self.engine.limits.fuel_budget,
                |state| {
                    let unused = state.ahead.take_unused();
                    (
                        std::mem::take(&mut state.answers),
                        state.violation.take(),
                        unused,
                    )
                },
            )
            .await;
        let (decision, answers) = match ran {
            Err(failure) => (Err(failure), RecordedAnswers::default()),
            Ok((ran, _fuel_used, (answers, violation, unused))) => {
                // Before the answer: a refused transfer's money is available again when the
                // client hears of it.
                if let Some(unused) = hold_ahead::to_give_back(unused, &publication.get()) {
                    // Not when a retry took the key over: the hold may be the retry's now.
                    if idempotency::may_act(lease.as_ref()).await {
                        hold_ahead::give_back(&*stores, transaction_id, &unused).await;
                    }
                }
                let budget = self.engine.limits.fuel_budget;
                (self.decision(ran, violation, budget), answers)
            }
        };
        Decided {
            decision,
            // Read after the call ended: a publish still running is `InFlight`.
            publication: publication.get(),
            answers,
        }
    }

    /// The guest's decision, or why there is none.
    fn decision(
        &self,
        ran: Ran,
        violation: Option<Violation>,
        fuel_budget: u64,
    ) -> Result<Result<Accepted, Rejection>, GuestFailure> {
        match (ran, violation) {
            (Ran::TimedOut, _) => Err(GuestFailure::Timeout(
                self.engine.limits.timeout.as_millis(),
            )),
            (Ran::Trapped(_), Some(violation)) => Err(GuestFailure::Violation(violation)),
            (Ran::Trapped(trap), None) if trap.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) => {
                Err(GuestFailure::OutOfFuel(fuel_budget))
            }
            (Ran::Trapped(trap), None) => Err(GuestFailure::Trap(format!("{trap:#}"))),
            (Ran::Decided(decision), _) => Ok(decision),
        }
    }

    /// One call of `initiate-transfer` on a kept instance (its data reset for `call`) or a
    /// fresh one, within the time limit and `fuel_budget`, once it has a slot (by `start_by`,
    /// when given). `inspect` reads what the call left in the store's data before the
    /// instance is kept or dropped. Returns how it ended, the fuel it used and what `inspect`
    /// read.
    #[allow(clippy::too_many_arguments)] // one per thing a call is given
    async fn run<T: CallState, R>(
        &self,
        pre: &LogicPre<T>,
        kept: &KeptInstances<T>,
        call: T::Call,
        start_by: Option<Instant>,
        (context, request): (&RequestContext, &TransferRequest),
        fuel_budget: u64,
        inspect: impl FnOnce(&mut T) -> R,
    ) -> Result<(Ran, u64, R), GuestFailure> {
        let slot = self.engine.slot(start_by).await?;
        let (mut store, instance, calls) = match kept.take() {
            Some(mut reused) => {
                reused.store.data_mut().begin(call);
                (reused.store, Some(reused.instance), reused.calls)
            }
            None => (self.new_store(|limits| T::for_call(call, limits)), None, 0),
        };
        let (outcome, fuel_used) = self
            .call_in(pre, &mut store, instance, (context, request), fuel_budget)
            .await;
        let inspected = inspect(store.data_mut());
        let ran = match outcome {
            Ok(Ok((instance, decision))) => {
                self.keep_or_drop(kept, store, instance, calls + 1, slot);
                Ran::Decided(decision)
            }
            Ok(Err(trap)) => {
                drop_later(store, slot);
                Ran::Trapped(trap)
            }
            Err(_elapsed) => {
                drop_later(store, slot);
                Ran::TimedOut
            }
        };
        Ok((ran, fuel_used, inspected))
    }

    /// One call of `initiate-transfer` in `store` (on a new instance when there is none),
    /// with the request's deterministic WASI (`determinism`), within `fuel_budget` and the
    /// time limit. Returns how it ended and the fuel the call itself used.
    async fn call_in<T: CallState>(
        &self,
        pre: &LogicPre<T>,
        store: &mut Store<T>,
        instance: Option<Logic>,
        (context, request): (&RequestContext, &TransferRequest),
        fuel_budget: u64,
    ) -> (Attempt, u64) {
        *store.data_mut().ctx().ctx =
            determinism::wasi_ctx(&context.transaction_id, context.received_at_ms);
        // The next tick from now: a call yields only once a tick has passed while it runs.
        // Without it a fresh store's deadline (0) has passed, and a kept one's may have: the
        // call would go back to the scheduler at its first instruction, behind every task
        // that is ready, and wake an idle worker thread to steal it.
        store.set_epoch_deadline(1);
        let attempt = async {
            store.set_fuel(fuel_budget)?;
            let instance = match instance {
                Some(instance) => instance,
                None => {
                    let instance = self.instantiate(pre, &mut *store).await?;
                    // The call's budget is its own, whether or not it needed an instance.
                    store.set_fuel(fuel_budget)?;
                    instance
                }
            };
            let decision = instance
                .initiate_transfer(&mut *store, context, request)
                .await?;
            Ok::<_, wasmtime::Error>((instance, decision))
        };
        let outcome = tokio::time::timeout(self.engine.limits.timeout, attempt).await;
        let fuel_used = fuel_budget.saturating_sub(store.get_fuel().unwrap_or(0));
        (outcome, fuel_used)
    }

    /// A new instance in `store`, counted.
    async fn instantiate<T: Send + 'static>(
        &self,
        pre: &LogicPre<T>,
        store: &mut Store<T>,
    ) -> wasmtime::Result<Logic> {
        self.instances_created.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::metrics::GUEST_INSTANCES, "version" => self.version.clone())
            .increment(1);
        pre.instantiate_async(store).await
    }

    /// Keeps an instance that finished normally for its next call, while it has calls left
    /// and the idle budget has room; otherwise drops it.
    fn keep_or_drop<T: Send + 'static>(
        &self,
        kept: &KeptInstances<T>,
        store: Store<T>,
        instance: Logic,
        calls: u32,
        slot: OwnedSemaphorePermit,
    ) {
        let room = (calls < self.engine.limits.reuse_count)
            .then(|| Arc::clone(&self.engine.idle).try_acquire_owned().ok())
            .flatten();
        match room {
            Some(idle) => {
                kept.keep(Kept {
                    store,
                    instance,
                    calls,
                    _idle: idle,
                });
                drop(slot);
            }
            None => drop_later(store, slot),
        }
    }
}

/// One batch item's decision, and what it staged when the guest accepted it as staged.
#[derive(Debug)]
pub struct ItemDecided {
    pub decision: Result<Result<Accepted, Rejection>, GuestFailure>,
    pub staged: Option<Staged>,
    /// What the item may publish; `None` when it was refused before a call.
    pub expected: Option<Expected>,
}

/// A batch's one instance while it runs its items: created on first use and again after an
/// item trapped (a trapped instance is never called again).
struct BatchInstance {
    store: Option<(Store<RequestState>, Logic, u32)>,
}

impl Guest {
    /// Runs `initiate-transfer` for every item of a batch on one instance (one slot), each
    /// item in batch mode (`capabilities::batch`): nothing is held or published here. An item
    /// that traps or breaks a host check is failed and the rest go on on a fresh instance; an
    /// item that runs out of time fails with every item after it, so a batch's time stays
    /// bounded by one guest timeout past its work. `items`: each item's context and request.
    pub async fn initiate_batch(
        &self,
        stores: Arc<Stores>,
        items: &[(RequestContext, TransferRequest)],
        atomic: bool,
        lease: Option<KeyLease>,
    ) -> Vec<ItemDecided> {
        let expected: Vec<Result<Expected, Violation>> = items
            .iter()
            .map(|(context, request)| Expected::of(context, request))
            .collect();
        let readable: Vec<Expected> = expected.iter().filter_map(|e| e.clone().ok()).collect();
        let mut book = Some(BatchBook::new(
            atomic,
            batch::snapshot(&stores, &readable).await,
        ));
        let start_by = lease.as_ref().map(|lease| self.engine.start_by(lease));
        let slot = match self.engine.slot(start_by).await {
            Ok(slot) => slot,
            Err(failure) => return failed_items(items.len(), &failure),
        };
        let mut instance = BatchInstance { store: None };
        let mut decided = Vec::with_capacity(items.len());
        for ((context, request), expected) in items.iter().zip(expected) {
            if decided
                .last()
                .is_some_and(|last: &ItemDecided| timed_out(&last.decision))
            {
                let failure = GuestFailure::Timeout(self.engine.limits.timeout.as_millis());
                decided.push(failed_item(&failure));
                continue;
            }
            let item = match (self.package().refusal(request), expected) {
                (Some(refusal), _) => failed_item_with(Ok(Err(refusal))),
                (None, Err(violation)) => failed_item(&GuestFailure::Violation(violation)),
                (None, Ok(expected)) => {
                    let call = (&stores, expected, context, request);
                    self.batch_item(&mut instance, &mut book, call).await
                }
            };
            decided.push(item);
        }
        match instance.store {
            Some((store, logic, calls)) => self.keep_or_drop(&self.kept, store, logic, calls, slot),
            None => drop(slot),
        }
        decided
    }

    /// One item's call on the batch's instance, with the batch's book in its store.
    async fn batch_item(
        &self,
        instance: &mut BatchInstance,
        book: &mut Option<BatchBook>,
        (stores, expected, context, request): (
            &Arc<Stores>,
            Expected,
            &RequestContext,
            &TransferRequest,
        ),
    ) -> ItemDecided {
        let call = (
            Arc::clone(stores),
            expected.clone(),
            PublicationCell::default(),
            None,
            None,
        );
        let (mut store, logic, calls) = match instance.store.take() {
            Some((mut store, logic, calls)) => {
                CallState::begin(store.data_mut(), call);
                (store, Some(logic), calls)
            }
            None => (
                self.new_store(|limits| <RequestState as CallState>::for_call(call, limits)),
                None,
                0,
            ),
        };
        store.data_mut().batch = book.take();
        let budget = self.engine.limits.fuel_budget;
        let (outcome, _fuel_used) = self
            .call_in(&self.pre, &mut store, logic, (context, request), budget)
            .await;
        let violation = store.data_mut().violation.take();
        *book = store.data_mut().batch.take();
        let ran = match outcome {
            Ok(Ok((logic, decision))) => {
                instance.store = Some((store, logic, calls + 1));
                Ran::Decided(decision)
            }
            Ok(Err(trap)) => {
                drop_store_later(store);
                Ran::Trapped(trap)
            }
            Err(_elapsed) => {
                drop_store_later(store);
                Ran::TimedOut
            }
        };
        item_decided(
            book.as_mut(),
            expected,
            self.decision(ran, violation, budget),
        )
    }
}

/// An item's decision with what it staged: kept when the guest accepted it as staged, taken
/// back otherwise, so later items see only what will be held.
fn item_decided(
    book: Option<&mut BatchBook>,
    expected: Expected,
    decision: Result<Result<Accepted, Rejection>, GuestFailure>,
) -> ItemDecided {
    let Some(book) = book else {
        return failed_item(&GuestFailure::Trap("the batch's book was lost".into()));
    };
    let staged_minor = book.current.as_ref().map(|staged| staged.amount_minor);
    let accepted = matches!(&decision, Ok(Ok(accepted))
        if guard::check_accepted(&expected, staged_minor, accepted).is_ok());
    if !accepted {
        book.unstage(&expected);
    }
    ItemDecided {
        decision,
        staged: book.current.take(),
        expected: Some(expected),
    }
}

fn timed_out(decision: &Result<Result<Accepted, Rejection>, GuestFailure>) -> bool {
    matches!(decision, Err(GuestFailure::Timeout(_)))
}

fn failed_item(failure: &GuestFailure) -> ItemDecided {
    failed_item_with(Err(failure.clone()))
}

fn failed_item_with(decision: Result<Result<Accepted, Rejection>, GuestFailure>) -> ItemDecided {
    ItemDecided {
        decision,
        staged: None,
        expected: None,
    }
}

fn failed_items(count: usize, failure: &GuestFailure) -> Vec<ItemDecided> {
    (0..count).map(|_| failed_item(failure)).collect()
}

/// Drops a trapped store off the request path; the batch keeps its slot.
fn drop_store_later<T: Send + 'static>(store: Store<T>) {
    tokio::spawn(async move { drop(store) });
}

/// What a replayed call came to, and the fuel its call of `initiate-transfer` used.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// The outcome in the vectors' format (`{"calls": [...], "result": ...}`).
    pub outcome: serde_json::Value,
    /// Fuel used by the call (0 when the runtime refused the request before calling).
    pub fuel_used: u64,
}

impl Guest {
    /// Runs one conformance vector with its recorded import answers; returns the outcome in
    /// the vectors' format (`{"calls": [...], "result": ...}`).
    pub async fn run_vector(&self, vector: &Vector) -> Result<serde_json::Value, GuestFailure> {
        self.run_replayed(&vector.context, &vector.request, vector.replay())
            .await
    }

    /// Runs `initiate-transfer` with imports answering from `replay` (nothing is looked up or
    /// published); returns the outcome in the vectors' format.
    pub async fn run_replayed(
        &self,
        context: &RequestContext,
        request: &TransferRequest,
        replay: Replay,
    ) -> Result<serde_json::Value, GuestFailure> {
        let measured = self.run_replayed_measured(context, request, replay).await?;
        Ok(measured.outcome)
    }

    /// [`Guest::run_replayed`] within the configured fuel budget, with the fuel it used.
    pub async fn run_replayed_measured(
        &self,
        context: &RequestContext,
        request: &TransferRequest,
        replay: Replay,
    ) -> Result<Measured, GuestFailure> {
        let budget = self.engine.limits.fuel_budget;
        self.replay_within(context, request, replay, budget).await
    }

    /// Runs one conformance vector within `fuel_budget` (which may differ from the
    /// configured one: the upload check measures past it to say by how much a guest is over).
    pub async fn measure_vector(
        &self,
        vector: &Vector,
        fuel_budget: u64,
    ) -> Result<Measured, GuestFailure> {
        let (context, request) = (&vector.context, &vector.request);
        self.replay_within(context, request, vector.replay(), fuel_budget)
            .await
    }

    async fn replay_within(
        &self,
        context: &RequestContext,
        request: &TransferRequest,
        replay: Replay,
        fuel_budget: u64,
    ) -> Result<Measured, GuestFailure> {
        if let Some(refusal) = self.package().refusal(request) {
            let outcome = vectors::outcome(&Err(refusal), &[]);
            return Ok(Measured {
                outcome,
                fuel_used: 0,
            });
        }
        // Shadow runs take a slot too: they share the instance pool with live requests.
        let expected = Expected::of(context, request).map_err(GuestFailure::Violation)?;
        let call = (replay, expected.clone());
        let (ran, fuel_used, (violation, published_minor, calls)) = self
            .run(
                &self.replay_pre,
                &self.kept_replays,
                call,
                None,
                (context, request),
                fuel_budget,
                |state| {
                    let calls = std::mem::take(&mut state.replay.calls);
                    (state.violation.take(), state.published_minor, calls)
                },
            )
            .await?;
        let decision = self.decision(ran, violation, fuel_budget)?;
        // The same check as the live path: `accepted` names this transfer and what it published.
        if let Ok(accepted) = &decision {
            guard::check_accepted(&expected, published_minor, accepted)
                .map_err(GuestFailure::Violation)?;
        }
        let outcome = vectors::outcome(&decision, &calls);
        Ok(Measured { outcome, fuel_used })
    }
}

/// Every package's imports: a guest of any instantiates from the same linker.
fn add_transfer_imports<T>(linker: &mut Linker<T>) -> Result<(), LoadError>
where
    T: bindings::transferd::transfer::balance_lookup::Host
        + bindings::transferd::transfer::account_info::Host
        + bindings::transferd::transfer::publish::Host
        + bindings::transferd::transfer::types::Host
        + Send
        + 'static,
{
    bindings::TransferLogic::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
        .map_err(LoadError::Invalid)?;
    bindings::v0_2::TransferLogic::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
        .map_err(LoadError::Invalid)?;
    bindings::legacy::TransferLogic::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
        .map_err(LoadError::Invalid)
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
