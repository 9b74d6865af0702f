//! The plugin runtime: wasmtime engines and every limit a plugin runs under.
//!
//! - No ambient capabilities: the linker defines nothing, so a component that imports
//!   anything (WASI or otherwise) is rejected on upload.
//! - Per call: an epoch deadline (a ticker thread advances the epoch), fuel for the
//!   deterministic roles (rules and resolvers run on an engine that meters fuel), a memory
//!   limit through `ResourceLimiter`, a max wasm stack, and a max output size.
//! - Validation on upload: max size, a component, no imports, the role's exports, the
//!   contract version. Compilation happens once, on upload or on first load from the
//!   sled cache; a [`Template`] (`InstancePre`) then instantiates without compiling.
//! - A [`Stage`] is one configured instance: [`Stage::call`] runs a filter, transform or
//!   rule over one batch, [`Stage::resolve`] a resolver over (local, remote, base)
//!   conflicts into [`Resolution`]s. A [`Chain`] runs stages over one batch, forwarding
//!   record bytes between them without decoding or re-encoding.
//! - Contract versions: each role accepts the versions whose world it still speaks
//!   ([`Role::contract_versions`]); version 2 changed only the resolver world.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use doppel_sdk::abi::{bit, peek_serial, BatchBuilder, BatchRef};
use wasmtime::component::{Component, Func, Linker, TypedFunc};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};

mod bind {
    pub mod filter {
        wasmtime::component::bindgen!({ path: "../sdk/wit", world: "filter" });
    }
    pub mod transform {
        wasmtime::component::bindgen!({ path: "../sdk/wit", world: "transform" });
    }
    pub mod rule {
        wasmtime::component::bindgen!({ path: "../sdk/wit", world: "rule" });
    }
    pub mod resolver {
        wasmtime::component::bindgen!({ path: "../sdk/wit", world: "resolver" });
    }
}

/// A batch as the role calls' argument, lowered straight from the caller's arena and
/// offset table (the generated bindings would take owned copies first). It has the WIT
/// `batch` record's shape, which [`Stage::instantiate`] checks once per instance.
#[derive(Clone, Copy, wasmtime::component::ComponentType, wasmtime::component::Lower)]
#[component(record)]
struct BorrowedBatch<'a> {
    arena: &'a [u8],
    offsets: &'a [u32],
}

impl<'a> From<BatchRef<'a>> for BorrowedBatch<'a> {
    fn from(b: BatchRef<'a>) -> Self {
        BorrowedBatch {
            arena: b.arena,
            offsets: b.offsets,
        }
    }
}

/// The role export of an instance, checked against [`BorrowedBatch`] arguments.
type RoleFunc<P, R> = TypedFunc<P, (R,)>;

/// What a plugin does in a stage; one WIT world each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Filter,
    Transform,
    Rule,
    Resolver,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Filter, Role::Transform, Role::Rule, Role::Resolver];

    pub fn name(self) -> &'static str {
        match self {
            Role::Filter => "filter",
            Role::Transform => "transform",
            Role::Rule => "rule",
            Role::Resolver => "resolver",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }

    /// The exports the role's world requires.
    pub fn exports(self) -> [&'static str; 4] {
        let call = match self {
            Role::Filter => "filter",
            Role::Transform => "transform",
            Role::Rule => "depends",
            Role::Resolver => "resolve",
        };
        ["contract-version", "config-schema", "configure", call]
    }

    /// The contract versions whose world of this role the host speaks. Version 2 changed
    /// the resolver world only (base version, decisions, merges), so filters,
    /// transforms and rules of version 1 still load; resolvers of version 1 do not.
    pub fn contract_versions(self) -> std::ops::RangeInclusive<u32> {
        match self {
            Role::Resolver => 2..=doppel_sdk::abi::CONTRACT_VERSION,
            _ => 1..=doppel_sdk::abi::CONTRACT_VERSION,
        }
    }

    /// Rules and resolvers must be deterministic: they run metered by fuel.
    pub fn deterministic(self) -> bool {
        matches!(self, Role::Rule | Role::Resolver)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The limits every plugin runs under.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest module accepted on upload.
    pub max_module_bytes: usize,
    /// Linear memory (all memories of an instance together).
    pub max_memory_bytes: usize,
    /// Wasm stack.
    pub max_stack_bytes: usize,
    /// Bytes a call may return (bitmap, output arena, errors and log lines).
    pub max_output_bytes: usize,
    /// Wall-clock time of one call, in epoch ticks of [`Limits::tick`].
    pub deadline_ticks: u64,
    /// Epoch tick.
    pub tick: Duration,
    /// Fuel of one call of a deterministic role.
    pub fuel: u64,
    /// Log lines kept per call, and their length.
    pub max_log_lines: usize,
    pub max_log_line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            // A JavaScript component (componentize-js: the SpiderMonkey engine, ~11.1 MiB
            // with a small plugin) fits; Rust plugins are 0.1-0.5 MiB.
            max_module_bytes: 12 << 20,
            max_memory_bytes: 64 << 20,
            max_stack_bytes: 512 << 10,
            max_output_bytes: 16 << 20,
            deadline_ticks: 100,
            tick: Duration::from_millis(10),
            fuel: 2_000_000_000,
            max_log_lines: 64,
            max_log_line_bytes: 512,
        }
    }
}

/// Why a plugin was rejected or stopped. Every message names the plugin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// Rejected on upload or load: the module is not acceptable.
    #[error("plugin '{plugin}' rejected: {reason}")]
    Invalid { plugin: String, reason: String },
    /// The configuration failed the plugin's validation.
    #[error("plugin '{plugin}' rejected its config: {reason}")]
    Config { plugin: String, reason: String },
    /// Stopped during a call (time, fuel, memory, stack, output size, trap).
    #[error("plugin '{plugin}' stopped: {reason}")]
    Stopped { plugin: String, reason: String },
    /// The host could not run it (engine failure).
    #[error("plugin '{plugin}': {reason}")]
    Host { plugin: String, reason: String },
}

impl PluginError {
    pub fn plugin(&self) -> &str {
        match self {
            PluginError::Invalid { plugin, .. }
            | PluginError::Config { plugin, .. }
            | PluginError::Stopped { plugin, .. }
            | PluginError::Host { plugin, .. } => plugin,
        }
    }
}

/// Why a resolver of contract version 1 is refused.
const OLD_RESOLVER: &str = "a resolver of contract version 1 (resolve(local, remote) answering a remote-wins bitmap): \
this node runs resolvers of contract version 2, whose resolve(local, remote, base) gets the base version and answers \
decisions (local, remote or merged) and merged records; rebuild the plugin with the current doppel-sdk (docs/PLUGINS.md)";

/// What a store carries: its resource limits.
pub struct StoreState {
    limits: StoreLimits,
}

/// The engines (one plain, one fuel-metered), the epoch ticker and the limits.
pub struct Runtime {
    plain: Engine,
    metered: Engine,
    linker_plain: Linker<StoreState>,
    linker_metered: Linker<StoreState>,
    limits: Limits,
    stop: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn engine(limits: &Limits, fuel: bool) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(fuel)
        .max_wasm_stack(limits.max_stack_bytes);
    Engine::new(&config)
}

impl Runtime {
    pub fn new(limits: Limits) -> Result<Arc<Runtime>, PluginError> {
        let host = |e: wasmtime::Error| PluginError::Host {
            plugin: "-".into(),
            reason: format!("{e:#}"),
        };
        let plain = engine(&limits, false).map_err(host)?;
        let metered = engine(&limits, true).map_err(host)?;
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (plain, metered, stop) = (plain.clone(), metered.clone(), stop.clone());
            let tick = limits.tick;
            std::thread::Builder::new()
                .name("plugin-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        plain.increment_epoch();
                        metered.increment_epoch();
                    }
                })
                .map_err(|e| PluginError::Host {
                    plugin: "-".into(),
                    reason: format!("starting the epoch ticker: {e}"),
                })?;
        }
        Ok(Arc::new(Runtime {
            linker_plain: Linker::new(&plain),
            linker_metered: Linker::new(&metered),
            plain,
            metered,
            limits,
            stop,
        }))
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn engine(&self, role: Role) -> &Engine {
        if role.deterministic() {
            &self.metered
        } else {
            &self.plain
        }
    }

    /// Validates and compiles a module for a role. The slow step: only on upload or on
    /// a cache miss, never per batch.
    pub fn compile(&self, plugin: &str, role: Role, wasm: &[u8]) -> Result<Component, PluginError> {
        let invalid = |reason: String| PluginError::Invalid {
            plugin: plugin.to_owned(),
            reason,
        };
        if wasm.len() > self.limits.max_module_bytes {
            return Err(invalid(format!(
                "module is {} bytes, more than the {} allowed",
                wasm.len(),
                self.limits.max_module_bytes
            )));
        }
        if !wasm.starts_with(b"\0asm") {
            return Err(invalid("not a WebAssembly binary".into()));
        }
        // A core module has version 1; a component has a different version/layer word.
        if wasm.get(4..8) == Some(&[1, 0, 0, 0]) {
            return Err(invalid(
                "a core wasm module, not a component: wrap it with wit-component (see docs/PLUGINS.md)"
                    .into(),
            ));
        }
        let component = Component::new(self.engine(role), wasm)
            .map_err(|e| invalid(format!("not a valid component: {e:#}")))?;
        self.check_component(plugin, role, &component)?;
        Ok(component)
    }

    /// Loads a compiled artefact this runtime produced earlier (the sled cache).
    pub fn load_compiled(
        &self,
        plugin: &str,
        role: Role,
        artefact: &[u8],
    ) -> Result<Component, PluginError> {
        // SAFETY: the artefact was produced by `Component::serialize` of this node and
        // read back from the node's own sled tree; wasmtime checks its engine version and
        // configuration and refuses a mismatch.
        let component =
            unsafe { Component::deserialize(self.engine(role), artefact) }.map_err(|e| {
                PluginError::Host {
                    plugin: plugin.to_owned(),
                    reason: format!("cached artefact unusable: {e:#}"),
                }
            })?;
        self.check_component(plugin, role, &component)?;
        Ok(component)
    }

    fn check_component(
        &self,
        plugin: &str,
        role: Role,
        component: &Component,
    ) -> Result<(), PluginError> {
        let invalid = |reason: String| PluginError::Invalid {
            plugin: plugin.to_owned(),
            reason,
        };
        let engine = self.engine(role);
        let ty = component.component_type();
        if let Some((name, _)) = ty.imports(engine).next() {
            return Err(invalid(format!(
                "forbidden import '{name}': plugins may import nothing (no WASI, file system, network, clock or randomness)"
            )));
        }
        if role == Role::Resolver {
            let resolve = ty.get_export(engine, "resolve").map(|e| e.ty);
            if let Some(wasmtime::component::types::ComponentItem::ComponentFunc(f)) = resolve {
                if f.params().len() == 2 {
                    return Err(invalid(OLD_RESOLVER.to_owned()));
                }
            }
        }
        let exports: Vec<&str> = ty.exports(engine).map(|(n, _)| n).collect();
        for want in role.exports() {
            if !exports.contains(&want) {
                return Err(invalid(format!(
                    "missing export '{want}' required by the {role} world (it exports: {})",
                    if exports.is_empty() {
                        "nothing".to_owned()
                    } else {
                        exports.join(", ")
                    }
                )));
            }
        }
        Ok(())
    }

    /// A pre-instantiated template of a compiled component: imports resolved and
    /// exports type-checked once, so that instantiating it compiles nothing.
    pub fn template(
        self: &Arc<Self>,
        plugin: &str,
        role: Role,
        component: &Component,
    ) -> Result<Template, PluginError> {
        let invalid = |reason: String| PluginError::Invalid {
            plugin: plugin.to_owned(),
            reason,
        };
        let linker = if role.deterministic() {
            &self.linker_metered
        } else {
            &self.linker_plain
        };
        let pre = linker
            .instantiate_pre(component)
            .map_err(|e| invalid(format!("cannot be linked: {e:#}")))?;
        let mismatch =
            |e: wasmtime::Error| invalid(format!("exports do not match the {role} world: {e:#}"));
        let typed = match role {
            Role::Filter => Typed::Filter(bind::filter::FilterPre::new(pre).map_err(mismatch)?),
            Role::Transform => {
                Typed::Transform(bind::transform::TransformPre::new(pre).map_err(mismatch)?)
            }
            Role::Rule => Typed::Rule(bind::rule::RulePre::new(pre).map_err(mismatch)?),
            Role::Resolver => {
                Typed::Resolver(bind::resolver::ResolverPre::new(pre).map_err(mismatch)?)
            }
        };
        Ok(Template {
            plugin: plugin.to_owned(),
            role,
            runtime: self.clone(),
            typed: Arc::new(typed),
        })
    }
}

/// The typed pre-instantiated component of each world.
enum Typed {
    Filter(bind::filter::FilterPre<StoreState>),
    Transform(bind::transform::TransformPre<StoreState>),
    Rule(bind::rule::RulePre<StoreState>),
    Resolver(bind::resolver::ResolverPre<StoreState>),
}

/// A live instance of one world.
enum Instance {
    Filter(bind::filter::Filter),
    Transform(bind::transform::Transform),
    Rule(bind::rule::Rule),
    Resolver(bind::resolver::Resolver),
}

/// A compiled, linked and type-checked plugin, ready to instantiate (cheap to clone).
#[derive(Clone)]
pub struct Template {
    plugin: String,
    role: Role,
    runtime: Arc<Runtime>,
    typed: Arc<Typed>,
}

/// A record's error, by its index in the stage's input batch.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RecordError {
    pub index: u32,
    pub message: String,
}

/// What a resolver decided for one conflicting record (SPEC E4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Keep the local version.
    Local,
    /// Take the remote (incoming) version.
    Remote,
    /// Replace both with a merge: the merged record's data (JSON bytes).
    Merged(Vec<u8>),
}

/// What [`Stage::resolve`] returned, checked against the contract and the limits: one
/// decision per record (a record with an error is [`Resolution::Local`] and has its
/// entry in `errors`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub decisions: Vec<Resolution>,
    pub errors: Vec<RecordError>,
    pub log: Vec<String>,
}

/// What one call returned, checked against the limits.
#[derive(Debug, Default)]
pub struct CallOutput {
    /// Filter: the kept bitmap.
    pub bitmap: Vec<u8>,
    /// Transform: the output batch.
    pub batch: BatchBuilder,
    /// Rule: (index, file, key) dependencies.
    pub depends: Vec<(u32, String, String)>,
    pub errors: Vec<RecordError>,
    pub log: Vec<String>,
}

impl Template {
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    pub fn role(&self) -> Role {
        self.role
    }

    fn err_stopped(&self, reason: String) -> PluginError {
        PluginError::Stopped {
            plugin: self.plugin.clone(),
            reason,
        }
    }

    /// Instantiates and configures: the stage is ready for batches. A config the plugin
    /// refuses is a [`PluginError::Config`].
    pub fn stage(&self, config: &str) -> Result<Stage, PluginError> {
        let mut stage = self.unstarted(config);
        stage.start()?;
        Ok(stage)
    }

    /// Instantiates once and checks the contract version, without configuring: what an
    /// upload checks beyond compilation.
    pub fn check(&self) -> Result<(), PluginError> {
        self.unstarted("").instantiate().map(|_| ())
    }

    /// The plugin's config schema, from an instance that is not configured (configure
    /// may need values the caller does not have yet).
    pub fn schema(&self) -> Result<String, PluginError> {
        let mut stage = self.unstarted("");
        let inst = stage.instantiate()?;
        stage.instance = Some(inst);
        stage.config_schema()
    }

    fn unstarted(&self, config: &str) -> Stage {
        let limits = self.runtime.limits;
        let engine = self.runtime.engine(self.role);
        let mut store = Store::new(
            engine,
            StoreState {
                limits: StoreLimitsBuilder::new()
                    .memory_size(limits.max_memory_bytes)
                    .memories(4)
                    .instances(32)
                    .tables(16)
                    .table_elements(100_000)
                    .trap_on_grow_failure(true)
                    .build(),
            },
        );
        store.limiter(|s| &mut s.limits);
        Stage {
            template: self.clone(),
            config: config.to_owned(),
            store,
            instance: None,
            func: None,
        }
    }
}

/// One configured instance of a plugin. After a trap the instance is dropped and the
/// next call starts a fresh one from the template.
pub struct Stage {
    template: Template,
    config: String,
    store: Store<StoreState>,
    instance: Option<Instance>,
    /// The role export of `instance`, called with borrowed batches.
    func: Option<Func>,
}

impl Stage {
    pub fn plugin(&self) -> &str {
        &self.template.plugin
    }

    pub fn role(&self) -> Role {
        self.template.role
    }

    fn arm(&mut self) -> Result<(), PluginError> {
        let limits = self.template.runtime.limits;
        self.store.set_epoch_deadline(limits.deadline_ticks);
        self.store.epoch_deadline_trap();
        if self.template.role.deterministic() {
            self.store
                .set_fuel(limits.fuel)
                .map_err(|e| self.template.err_stopped(format!("{e:#}")))?;
        }
        Ok(())
    }

    /// Turns a wasmtime error into a stopped-plugin error with a reason a user reads.
    fn stopped(&mut self, e: wasmtime::Error) -> PluginError {
        self.instance = None;
        let limits = self.template.runtime.limits;
        let reason = match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => format!(
                "time limit exceeded ({} ms per call)",
                limits.tick.as_millis() as u64 * limits.deadline_ticks
            ),
            Some(Trap::OutOfFuel) => format!("fuel exhausted ({} units per call)", limits.fuel),
            Some(Trap::StackOverflow) => {
                format!("stack overflow (max {} bytes)", limits.max_stack_bytes)
            }
            Some(Trap::UnreachableCodeReached) => {
                "trapped: unreachable code (a panic in the plugin, or a JavaScript exception thrown out of an export)".to_owned()
            }
            Some(trap) => format!("trapped: {trap}"),
            None => {
                let text = format!("{e:#}");
                if text.contains("memory") && (text.contains("grow") || text.contains("limit")) {
                    format!(
                        "memory limit exceeded (max {} bytes): {text}",
                        limits.max_memory_bytes
                    )
                } else {
                    text
                }
            }
        };
        self.template.err_stopped(reason)
    }

    /// Instantiates from the template (no compilation), checks the contract version and
    /// configures.
    fn start(&mut self) -> Result<(), PluginError> {
        let inst = self.instantiate()?;
        self.arm()?;
        let store = &mut self.store;
        let config = self.config.as_str();
        let configured = match &inst {
            Instance::Filter(i) => i.call_configure(&mut *store, config),
            Instance::Transform(i) => i.call_configure(&mut *store, config),
            Instance::Rule(i) => i.call_configure(&mut *store, config),
            Instance::Resolver(i) => i.call_configure(&mut *store, config),
        }
        .map_err(|e| self.stopped(e))?;
        if let Err(reason) = configured {
            return Err(PluginError::Config {
                plugin: self.template.plugin.clone(),
                reason: truncate(reason, 1024),
            });
        }
        self.instance = Some(inst);
        Ok(())
    }

    fn instantiate(&mut self) -> Result<Instance, PluginError> {
        self.arm()?;
        let typed = self.template.typed.clone();
        let store = &mut self.store;
        let made = match &*typed {
            Typed::Filter(p) => p.instance_pre().instantiate(&mut *store).and_then(|raw| {
                let f = raw.get_typed_func::<(BorrowedBatch<'_>,), (bind::filter::FilterResult,)>(
                    &mut *store,
                    "filter",
                )?;
                Ok((
                    Instance::Filter(bind::filter::Filter::new(&mut *store, &raw)?),
                    *f.func(),
                ))
            }),
            Typed::Transform(p) => p.instance_pre().instantiate(&mut *store).and_then(|raw| {
                let f = raw
                    .get_typed_func::<(BorrowedBatch<'_>,), (bind::transform::TransformResult,)>(
                        &mut *store,
                        "transform",
                    )?;
                Ok((
                    Instance::Transform(bind::transform::Transform::new(&mut *store, &raw)?),
                    *f.func(),
                ))
            }),
            Typed::Rule(p) => p.instance_pre().instantiate(&mut *store).and_then(|raw| {
                let f = raw.get_typed_func::<(BorrowedBatch<'_>,), (bind::rule::RuleResult,)>(
                    &mut *store,
                    "depends",
                )?;
                Ok((
                    Instance::Rule(bind::rule::Rule::new(&mut *store, &raw)?),
                    *f.func(),
                ))
            }),
            Typed::Resolver(p) => p.instance_pre().instantiate(&mut *store).and_then(|raw| {
                let f = raw.get_typed_func::<
                    (BorrowedBatch<'_>, BorrowedBatch<'_>, BorrowedBatch<'_>),
                    (bind::resolver::ResolveResult,),
                >(&mut *store, "resolve")?;
                Ok((
                    Instance::Resolver(bind::resolver::Resolver::new(&mut *store, &raw)?),
                    *f.func(),
                ))
            }),
        };
        let (inst, func) = made.map_err(|e| self.stopped(e))?;
        self.func = Some(func);
        let store = &mut self.store;
        let version = match &inst {
            Instance::Filter(i) => i.call_contract_version(&mut *store),
            Instance::Transform(i) => i.call_contract_version(&mut *store),
            Instance::Rule(i) => i.call_contract_version(&mut *store),
            Instance::Resolver(i) => i.call_contract_version(&mut *store),
        }
        .map_err(|e| self.stopped(e))?;
        let role = self.template.role;
        let accepted = role.contract_versions();
        if !accepted.contains(&version) {
            let reason = if role == Role::Resolver && version == 1 {
                OLD_RESOLVER.to_owned()
            } else {
                format!(
                    "contract version {version}, but this node runs {role}s of contract version {} to {}",
                    accepted.start(),
                    accepted.end()
                )
            };
            return Err(PluginError::Invalid {
                plugin: self.template.plugin.clone(),
                reason,
            });
        }
        Ok(inst)
    }

    /// The plugin's configuration schema (JSON text).
    pub fn config_schema(&mut self) -> Result<String, PluginError> {
        if self.instance.is_none() {
            self.start()?;
        }
        self.arm()?;
        let store = &mut self.store;
        let res = match self.instance.as_ref() {
            Some(Instance::Filter(i)) => i.call_config_schema(&mut *store),
            Some(Instance::Transform(i)) => i.call_config_schema(&mut *store),
            Some(Instance::Rule(i)) => i.call_config_schema(&mut *store),
            Some(Instance::Resolver(i)) => i.call_config_schema(&mut *store),
            None => return Err(self.template.err_stopped("not started".into())),
        };
        let schema = res.map_err(|e| self.stopped(e))?;
        self.check_output(schema.len())?;
        Ok(schema)
    }

    fn check_output(&mut self, bytes: usize) -> Result<(), PluginError> {
        let max = self.template.runtime.limits.max_output_bytes;
        if bytes > max {
            self.instance = None;
            return Err(self
                .template
                .err_stopped(format!("output too large ({bytes} bytes, max {max})")));
        }
        Ok(())
    }

    /// Runs a filter, transform or rule over a batch. A resolver is refused: it takes
    /// three batches, through [`Stage::resolve`]. `remote` must be `None` (it remains so
    /// that callers need not change; giving one is refused too).
    pub fn call(
        &mut self,
        batch: BatchRef<'_>,
        remote: Option<BatchRef<'_>>,
    ) -> Result<CallOutput, PluginError> {
        let role = self.template.role;
        if role == Role::Resolver {
            return Err(self.misuse(
                "a resolver is called with Stage::resolve(local, remote, base), not Stage::call",
            ));
        }
        if remote.is_some() {
            return Err(self.misuse(&format!(
                "a {role} takes one batch; only a resolver takes a remote one (Stage::resolve)"
            )));
        }
        if self.instance.is_none() {
            self.start()?;
        }
        self.arm()?;
        let n = batch.len();
        let mut out = CallOutput::default();
        let (errors, log, size) = match self.instance.as_ref() {
            Some(Instance::Filter(_)) => {
                let f: RoleFunc<_, bind::filter::FilterResult> = self.role_func()?;
                let (r,) = f
                    .call(&mut self.store, (BorrowedBatch::from(batch),))
                    .map_err(|e| self.stopped(e))?;
                let errs: Vec<_> = r.errors.into_iter().map(|e| (e.index, e.message)).collect();
                let size = r.keep.len();
                out.bitmap = r.keep;
                (errs, r.log, size)
            }
            Some(Instance::Transform(_)) => {
                let f: RoleFunc<_, bind::transform::TransformResult> = self.role_func()?;
                let (r,) = f
                    .call(&mut self.store, (BorrowedBatch::from(batch),))
                    .map_err(|e| self.stopped(e))?;
                let errs: Vec<_> = r.errors.into_iter().map(|e| (e.index, e.message)).collect();
                let size = r.records.arena.len() + 4 * r.records.offsets.len();
                out.batch = BatchBuilder {
                    arena: r.records.arena,
                    offsets: r.records.offsets,
                };
                (errs, r.log, size)
            }
            Some(Instance::Rule(_)) => {
                let f: RoleFunc<_, bind::rule::RuleResult> = self.role_func()?;
                let (r,) = f
                    .call(&mut self.store, (BorrowedBatch::from(batch),))
                    .map_err(|e| self.stopped(e))?;
                let errs: Vec<_> = r.errors.into_iter().map(|e| (e.index, e.message)).collect();
                let size = r
                    .depends
                    .iter()
                    .map(|d| 4 + d.file.len() + d.key.len())
                    .sum();
                out.depends = r
                    .depends
                    .into_iter()
                    .map(|d| (d.index, d.file, d.key))
                    .collect();
                (errs, r.log, size)
            }
            Some(Instance::Resolver(_)) | None => {
                return Err(self.template.err_stopped("not started".into()))
            }
        };
        self.check_output(size + errors_size(&errors, &log))?;
        (out.errors, out.log) = self.errors_and_log(n, errors, log)?;
        if self.template.role == Role::Transform {
            let b = out.batch.as_batch();
            if (0..b.len()).any(|i| b.raw(i).is_err()) {
                self.instance = None;
                return Err(self
                    .template
                    .err_stopped("returned a batch whose offset table is out of range".into()));
            }
        }
        Ok(out)
    }

    /// The instance's role export, typed for borrowed arguments.
    fn role_func<P, R>(&self) -> Result<RoleFunc<P, R>, PluginError>
    where
        P: wasmtime::component::ComponentNamedList + wasmtime::component::Lower,
        R: wasmtime::component::Lift,
    {
        match self.func {
            // SAFETY: `instantiate` took this function from the instance with
            // `get_typed_func` for exactly these parameter and result types (the role's
            // world fixes both; only the borrows' lifetimes differ), and the instance
            // lives in this stage's store as long as `func` does.
            Some(func) if self.instance.is_some() => Ok(unsafe { TypedFunc::new_unchecked(func) }),
            _ => Err(self.template.err_stopped("not started".into())),
        }
    }

    /// A caller's mistake (the wrong entry point, batches that do not pair up): the
    /// plugin did not run.
    fn misuse(&self, reason: &str) -> PluginError {
        PluginError::Host {
            plugin: self.template.plugin.clone(),
            reason: reason.to_owned(),
        }
    }

    /// A contract violation in a call's answer: the plugin is stopped (the next call
    /// starts from a fresh instance).
    fn violation(&mut self, reason: String) -> PluginError {
        self.instance = None;
        self.template.err_stopped(reason)
    }

    /// Checks the per-record errors' indexes against the batch of `n` and bounds them
    /// and the log lines.
    fn errors_and_log(
        &mut self,
        n: usize,
        errors: Vec<(u32, String)>,
        log: Vec<String>,
    ) -> Result<(Vec<RecordError>, Vec<String>), PluginError> {
        let limits = self.template.runtime.limits;
        let mut out = Vec::with_capacity(errors.len());
        for (index, message) in errors {
            if index as usize >= n {
                return Err(self.violation(format!(
                    "reported an error for record {index} of a batch of {n}"
                )));
            }
            out.push(RecordError {
                index,
                message: truncate(message, 1024),
            });
        }
        let log = log
            .into_iter()
            .take(limits.max_log_lines)
            .map(|l| truncate(l, limits.max_log_line_bytes))
            .collect();
        Ok((out, log))
    }

    /// Runs a resolver over conflicts (SPEC E4): record i of `local` (this site's
    /// version), `remote` (the incoming one) and `base` (the version both overwrote, or
    /// [`doppel_sdk::abi::no_base`] when there is none) is one record. Answers one
    /// [`Resolution`] per record. Batches of different lengths are refused before the
    /// plugin runs; an answer that breaks the contract (decision count or value, merged
    /// count, merged data that is not JSON, error index, output size) stops the plugin.
    pub fn resolve(
        &mut self,
        local: BatchRef<'_>,
        remote: BatchRef<'_>,
        base: BatchRef<'_>,
    ) -> Result<Resolved, PluginError> {
        let role = self.template.role;
        if role != Role::Resolver {
            return Err(self.misuse(&format!("a {role} is not a resolver: use Stage::call")));
        }
        let n = local.len();
        if remote.len() != n || base.len() != n {
            return Err(self.misuse(&format!(
                "resolve takes batches of one length, record i of each being one record: got {n} local, {} remote and {} base records",
                remote.len(),
                base.len()
            )));
        }
        if self.instance.is_none() {
            self.start()?;
        }
        self.arm()?;
        let f: RoleFunc<_, bind::resolver::ResolveResult> = self.role_func()?;
        let (r,) = f
            .call(
                &mut self.store,
                (
                    BorrowedBatch::from(local),
                    BorrowedBatch::from(remote),
                    BorrowedBatch::from(base),
                ),
            )
            .map_err(|e| self.stopped(e))?;
        let errors: Vec<_> = r.errors.into_iter().map(|e| (e.index, e.message)).collect();
        let size = r.decisions.len()
            + r.merged.arena.len()
            + 4 * r.merged.offsets.len()
            + errors_size(&errors, &r.log);
        self.check_output(size)?;
        if r.decisions.len() != n {
            return Err(self.violation(format!(
                "returned {} decisions for a batch of {n} records",
                r.decisions.len()
            )));
        }
        if let Some((i, d)) = r.decisions.iter().enumerate().find(|(_, d)| **d > 2) {
            return Err(self.violation(format!(
                "returned decision {d} for record {i}: 0 (keep local), 1 (take remote) or 2 (merged)"
            )));
        }
        let merges = r.decisions.iter().filter(|d| **d == 2).count();
        if r.merged.offsets.len() != merges {
            return Err(self.violation(format!(
                "returned {} merged records for {merges} decisions to merge",
                r.merged.offsets.len()
            )));
        }
        let merged = BatchRef {
            arena: &r.merged.arena,
            offsets: &r.merged.offsets,
        };
        let mut data = Vec::with_capacity(merges);
        let records = r.decisions.iter().enumerate().filter(|(_, d)| **d == 2);
        for (j, (i, _)) in records.enumerate() {
            let rec = match merged.get(j) {
                Ok(rec) => rec,
                Err(e) => return Err(self.violation(format!("merged record for record {i}: {e}"))),
            };
            if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(rec.data) {
                return Err(self.violation(format!("merged data for record {i} is not JSON: {e}")));
            }
            data.push(rec.data.to_vec());
        }
        let (errors, log) = self.errors_and_log(n, errors, r.log)?;
        let mut data = data.into_iter();
        let mut decisions: Vec<Resolution> = r
            .decisions
            .iter()
            .map(|d| match d {
                0 => Resolution::Local,
                1 => Resolution::Remote,
                _ => Resolution::Merged(data.next().unwrap_or_default()),
            })
            .collect();
        for e in &errors {
            decisions[e.index as usize] = Resolution::Local;
        }
        Ok(Resolved {
            decisions,
            errors,
            log,
        })
    }
}

/// Bytes the errors and log lines of a call take, for the output limit.
fn errors_size(errors: &[(u32, String)], log: &[String]) -> usize {
    errors.iter().map(|(_, m)| 4 + m.len()).sum::<usize>()
        + log.iter().map(String::len).sum::<usize>()
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Each record's serial, if the batch's serials tell its records apart. Reads only the
/// records' headers; serials in increasing order (a log's order) need no sorting.
fn serials_of(batch: &BatchBuilder) -> Option<Vec<u64>> {
    let b = batch.as_batch();
    let serials: Vec<u64> = (0..b.len())
        .map(|i| b.raw(i).ok().and_then(peek_serial))
        .collect::<Option<_>>()?;
    if serials.windows(2).all(|w| w[0] < w[1]) {
        return Some(serials);
    }
    let mut sorted = serials.clone();
    sorted.sort_unstable();
    sorted.dedup();
    (sorted.len() == serials.len()).then_some(serials)
}

/// After a transform, which input record each output record came from: the one with its
/// serial, among those still in the batch (`origin`). None when that cannot be told
/// (serials repeated or changed, a record split in two). A transform that keeps the
/// order (the usual case) is followed in one pass, without hashing.
fn follow(input: &Option<Vec<u64>>, origin: &[u32], out: &BatchBuilder) -> Option<Vec<u32>> {
    let input = input.as_ref()?;
    let b = out.as_batch();
    let serials: Vec<u64> = (0..b.len())
        .map(|j| b.raw(j).ok().and_then(peek_serial))
        .collect::<Option<_>>()?;
    let mut in_order = Vec::with_capacity(serials.len());
    let mut p = 0;
    for s in &serials {
        while p < origin.len() && input[origin[p] as usize] != *s {
            p += 1;
        }
        if p == origin.len() {
            break;
        }
        in_order.push(origin[p]);
        p += 1;
    }
    if in_order.len() == serials.len() {
        return Some(in_order);
    }
    let by_serial: std::collections::HashMap<u64, u32> =
        origin.iter().map(|&i| (input[i as usize], i)).collect();
    let mut seen = std::collections::HashSet::new();
    serials
        .iter()
        .map(|s| {
            let i = *by_serial.get(s)?;
            seen.insert(i).then_some(i)
        })
        .collect()
}

/// One stage's per-record error in a chain.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChainError {
    /// The plugin that reported it.
    pub plugin: String,
    /// The record's index in the chain's input batch, when the stages before kept the
    /// correspondence (filters do; after a transform, records are followed by their
    /// serial, when serials tell them apart).
    pub index: Option<u32>,
    pub message: String,
}

/// What a chain produced.
#[derive(Debug, Default)]
pub struct ChainOutput {
    pub batch: BatchBuilder,
    pub errors: Vec<ChainError>,
    pub log: Vec<(String, String)>,
}

/// Filters and transforms in order over one batch. Between stages records travel as
/// their arena bytes: a filter's bitmap selects byte ranges, a transform's output arena
/// is the next input; nothing is decoded or re-encoded by the host.
pub struct Chain {
    pub stages: Vec<Stage>,
}

impl Chain {
    pub fn run(&mut self, input: BatchBuilder) -> Result<ChainOutput, PluginError> {
        let mut cur = input;
        // origin[i]: index in the chain's input of the current batch's record i.
        let mut origin: Option<Vec<u32>> = Some((0..cur.len() as u32).collect());
        // A record's serial names it across transforms (they keep the header fields).
        let serials = serials_of(&cur);
        let mut out = ChainOutput::default();
        for stage in &mut self.stages {
            let res = stage.call(cur.as_batch(), None)?;
            for e in res.errors {
                out.errors.push(ChainError {
                    plugin: stage.plugin().to_owned(),
                    index: origin
                        .as_ref()
                        .and_then(|o| o.get(e.index as usize).copied()),
                    message: e.message,
                });
            }
            out.log
                .extend(res.log.into_iter().map(|l| (stage.plugin().to_owned(), l)));
            match stage.role() {
                Role::Filter => {
                    let b = cur.as_batch();
                    let mut next = BatchBuilder::new();
                    next.arena.reserve(b.arena.len());
                    let mut next_origin = Vec::new();
                    for i in 0..b.len() {
                        if bit(&res.bitmap, i) {
                            if let Ok(raw) = b.raw(i) {
                                next.push_raw(raw);
                                if let Some(o) = &origin {
                                    next_origin.push(o[i]);
                                }
                            }
                        }
                    }
                    origin = origin.map(|_| next_origin);
                    cur = next;
                }
                Role::Transform => {
                    cur = res.batch;
                    origin = origin.and_then(|o| follow(&serials, &o, &cur));
                }
                role => {
                    return Err(PluginError::Invalid {
                        plugin: stage.plugin().to_owned(),
                        reason: format!("a {role} cannot be a chain stage"),
                    })
                }
            }
        }
        out.batch = cur;
        Ok(out)
    }
}
