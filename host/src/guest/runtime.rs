//! Runs the guest: one engine, one pre-instantiated component, a fresh store per request.
//!
//! A fresh store per request means no state leaks from one transfer into the next, and a trap
//! poisons nothing but its own request. The store is dropped after the response is decided,
//! on a spawned task, so its teardown stays off the request path.
//!
//! The engine owns one budget of instance-pool slots for every guest it loaded: the active
//! version, a canary or shadow, vector runs and an old version finishing during a swap all
//! draw from the same pool, so they share one semaphore of its size.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use transferd_guest::logic::{Accepted, Rejection, RequestContext};
use transferd_guest::rules::TransferRequest;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};

use transferd_guest::vectors::{self, Replay, Vector};

use crate::capabilities::guard::{self, Expected, Violation};
use crate::capabilities::{
    Capabilities, Publication, PublicationCell, RecordedAnswers, RequestState,
};
use crate::guest::bindings::{self, TransferLogic, TransferLogicPre};
use crate::guest::replay::ReplayState;

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

/// What one live call came to: the guest's answer (or why there is none), what its publish
/// did, and the answers the imports gave.
#[derive(Debug)]
pub struct Decided {
    pub decision: Result<Result<Accepted, Rejection>, GuestFailure>,
    pub publication: Publication,
    pub answers: RecordedAnswers,
}

/// Why a guest call produced no decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestFailure {
    #[error("the transfer logic failed: {0}")]
    Trap(String),
    #[error("the transfer logic did not finish within {0} ms")]
    Timeout(u128),
    /// It broke one of the host's checks (`capabilities::guard`).
    #[error("the transfer logic failed: {}", .0.describe())]
    Violation(Violation),
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
    #[error("the component does not fit the transfer-logic world: {0:#}")]
    WrongWorld(wasmtime::Error),
}

/// Limits every guest call runs under.
#[derive(Debug, Clone)]
pub struct GuestLimits {
    pub timeout: Duration,
    pub memory_bytes: usize,
    pub concurrency: u32,
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
    /// the call's store is dropped, which is when its instance returns to the pool.
    slots: Arc<Semaphore>,
}

/// Bytes of each pooled memory and table kept resident between calls.
const KEEP_RESIDENT_BYTES: usize = 2 * 1024 * 1024;

impl GuestEngine {
    pub fn new(limits: GuestLimits) -> Result<GuestEngine, LoadError> {
        let instances = limits.concurrency;
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
            .table_keep_resident(KEEP_RESIDENT_BYTES);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
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
        TransferLogic::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(LoadError::Invalid)?;
        let mut replay_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut replay_linker).map_err(LoadError::Invalid)?;
        TransferLogic::add_to_linker::<_, HasSelf<_>>(&mut replay_linker, |state| state)
            .map_err(LoadError::Invalid)?;
        Ok(GuestEngine {
            engine,
            linker,
            slots: Arc::new(Semaphore::new(limits.concurrency as usize)),
            replay_linker,
            limits,
        })
    }

    /// A place in the instance pool; every call holds one while it runs.
    async fn slot(&self) -> Result<OwnedSemaphorePermit, GuestFailure> {
        Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| GuestFailure::Trap("guest engine closed".into()))
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
        let pre = TransferLogicPre::new(instance_pre).map_err(LoadError::WrongWorld)?;
        let replay_pre = TransferLogicPre::new(
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
    pre: TransferLogicPre<RequestState>,
    replay_pre: TransferLogicPre<ReplayState>,
    version: String,
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
        store.epoch_deadline_async_yield_and_update(1);
        store
    }

    /// The sha256 of the component's bytes, in hex.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Runs `initiate-transfer` in a fresh store. Returns what the call came to even when
    /// the guest trapped or ran out of time: its publish may have happened all the same.
    pub async fn initiate_transfer(
        &self,
        capabilities: Arc<Capabilities>,
        context: &RequestContext,
        request: &TransferRequest,
    ) -> Decided {
        let publication = PublicationCell::default();
        let failed = |failure| Decided {
            decision: Err(failure),
            publication: Publication::None,
            answers: RecordedAnswers::default(),
        };
        let limits = &self.engine.limits;
        let slot = match self.engine.slot().await {
            Ok(slot) => slot,
            Err(failure) => return failed(failure),
        };
        let expected = Expected::of(context, request);
        let mut store = self.new_store(|store_limits| {
            RequestState::new(capabilities, expected, publication.clone(), store_limits)
        });

        let (wit_context, wit_request) = bindings::wit_arguments(context, request);
        let call = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            instance
                .transferd_transfer_handler()
                .call_initiate_transfer(&mut store, &wit_context, &wit_request)
                .await
        };
        let outcome = tokio::time::timeout(limits.timeout, call).await;
        let answers = std::mem::take(&mut store.data_mut().answers);
        let violation = store.data_mut().violation.take();
        // The slot goes back only once the instance is back in the pool.
        tokio::spawn(async move {
            drop(store);
            drop(slot);
        });
        let decision = match (outcome, violation) {
            (Err(_elapsed), _) => Err(GuestFailure::Timeout(limits.timeout.as_millis())),
            (Ok(Err(_trap)), Some(violation)) => Err(GuestFailure::Violation(violation)),
            (Ok(Err(trap)), None) => Err(GuestFailure::Trap(format!("{trap:#}"))),
            (Ok(Ok(decision)), _) => Ok(decision.map(Accepted::from).map_err(Rejection::from)),
        };
        Decided {
            decision,
            // Read after the call ended: a publish still running is `InFlight`.
            publication: publication.get(),
            answers,
        }
    }
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
        let limits = &self.engine.limits;
        // Shadow runs take a slot too: they share the instance pool with live requests.
        let _slot = self.engine.slot().await?;
        let expected = Expected::of(context, request);
        let mut store =
            self.new_store(|store_limits| ReplayState::new(replay, expected, store_limits));
        let (context, request) = bindings::wit_arguments(context, request);
        let call = async {
            let instance = self.replay_pre.instantiate_async(&mut store).await?;
            instance
                .transferd_transfer_handler()
                .call_initiate_transfer(&mut store, &context, &request)
                .await
        };
        let outcome = tokio::time::timeout(limits.timeout, call).await;
        let state = store.data_mut();
        let decision = match (outcome, state.violation.take()) {
            (Err(_elapsed), _) => return Err(GuestFailure::Timeout(limits.timeout.as_millis())),
            (Ok(Err(_trap)), Some(violation)) => return Err(GuestFailure::Violation(violation)),
            (Ok(Err(trap)), None) => return Err(GuestFailure::Trap(format!("{trap:#}"))),
            (Ok(Ok(decision)), _) => decision.map(Accepted::from).map_err(Rejection::from),
        };
        // The same check as the live path: `accepted` names this transfer and what it published.
        if let Ok(accepted) = &decision {
            guard::check_accepted(&state.expected, state.published_minor, accepted)
                .map_err(GuestFailure::Violation)?;
        }
        Ok(vectors::outcome(&decision, &state.replay.calls))
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
