//! `doppel-sdk`: write Doppel stage plugins as plain Rust functions.
//!
//! The SDK owns the guest side of the contract in `sdk/wit/doppel.wit`: the batch loops
//! ([`run`]), the record layout ([`abi`]), per-record error indexing, typed configuration
//! ([`PluginConfig`]), per-source rules ([`origin`]), bounded log capture ([`log`]), JSON
//! helpers ([`json`]) and a test harness ([`testing`]) that runs a plugin function on
//! records without any server.
//!
//! A plugin is one function and one macro call, one macro per role: [`filter!`],
//! [`transform!`], [`rule!`] and [`resolver!`] (they are `macro_rules!`, not attribute
//! macros: no proc-macro crate to build for every plugin):
//!
//! ```text
//! fn keep(r: &Record, cfg: &MyConfig) -> bool { r.key.starts_with(&cfg.prefix) }
//! doppel_sdk::filter!(keep, MyConfig);
//! ```
//!
//! See docs/PLUGINS.md.

extern crate self as doppel_sdk;

pub mod abi;
pub mod json;
pub mod origin;
pub mod run;
pub mod testing;

pub use abi::{BatchBuilder, BatchRef, Op, OwnedRecord, Record};
pub use run::{Dependency, Edit, Out, Resolution, Resolves, Verdict};

/// Configuration of a plugin: parsed from JSON and validated when the stage loads.
pub trait PluginConfig: serde::de::DeserializeOwned + 'static {
    /// A JSON schema of the configuration, exported for the console's form.
    const SCHEMA: &'static str;
    /// Checks beyond what parsing checks.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// No configuration.
#[derive(serde::Deserialize, Default, Debug, Clone)]
pub struct NoConfig {}

impl PluginConfig for NoConfig {
    const SCHEMA: &'static str = r#"{"type":"object","properties":{}}"#;
}

/// Parses and validates a configuration. An empty string or `null` means `{}`.
pub fn load_config<C: PluginConfig>(json: &str) -> Result<C, String> {
    let text = json.trim();
    let text = if text.is_empty() || text == "null" {
        "{}"
    } else {
        text
    };
    let cfg: C = serde_json::from_str(text).map_err(|e| format!("invalid config: {e}"))?;
    cfg.validate().map_err(|e| format!("invalid config: {e}"))?;
    Ok(cfg)
}

/// Log lines a plugin writes; they come back with each call's result, bounded.
pub mod log {
    use std::cell::RefCell;

    /// Most lines kept per call.
    pub const MAX_LINES: usize = 64;
    /// Longest line kept, in bytes.
    pub const MAX_LINE_BYTES: usize = 512;

    thread_local! {
        static LINES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    /// Records one log line (dropped past [`MAX_LINES`], cut at [`MAX_LINE_BYTES`]).
    pub fn line(msg: impl Into<String>) {
        let mut msg = msg.into();
        if msg.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg.truncate(cut);
        }
        LINES.with(|l| {
            let mut l = l.borrow_mut();
            if l.len() < MAX_LINES {
                l.push(msg);
            }
        });
    }

    /// Takes the lines written since the last call.
    pub fn take() -> Vec<String> {
        LINES.with(|l| std::mem::take(&mut *l.borrow_mut()))
    }
}

/// The generated guest bindings, one module per world (wasm only).
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod bindings {
    pub mod filter {
        wit_bindgen::generate!({
            path: "wit",
            world: "filter",
            pub_export_macro: true,
            export_macro_name: "__export_filter",
            default_bindings_module: "doppel_sdk::bindings::filter",
            runtime_path: "doppel_sdk::__rt",
        });
    }
    pub mod transform {
        wit_bindgen::generate!({
            path: "wit",
            world: "transform",
            pub_export_macro: true,
            export_macro_name: "__export_transform",
            default_bindings_module: "doppel_sdk::bindings::transform",
            runtime_path: "doppel_sdk::__rt",
        });
    }
    pub mod rule {
        wit_bindgen::generate!({
            path: "wit",
            world: "rule",
            pub_export_macro: true,
            export_macro_name: "__export_rule",
            default_bindings_module: "doppel_sdk::bindings::rule",
            runtime_path: "doppel_sdk::__rt",
        });
    }
    pub mod resolver {
        wit_bindgen::generate!({
            path: "wit",
            world: "resolver",
            pub_export_macro: true,
            export_macro_name: "__export_resolver",
            default_bindings_module: "doppel_sdk::bindings::resolver",
            runtime_path: "doppel_sdk::__rt",
        });
    }
}

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub use wit_bindgen::rt as __rt;

/// Shared body of the four role macros: the config cell, the three common exports, the
/// batch and error conversions, and the world's export macro. `$role` is the role's own
/// export, written against `__b` (the world's bindings), `__batch`, `__errors` and
/// `__with_config`.
#[doc(hidden)]
#[macro_export]
macro_rules! __plugin {
    ($world:ident, $export:ident, $f:path, $cfg:ty, { $($role:tt)* }) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::bindings::$world as __b;
            ::std::thread_local! {
                static __DOPPEL_CONFIG: ::core::cell::RefCell<Option<$cfg>> =
                    const { ::core::cell::RefCell::new(None) };
            }
            /// Runs `run` with the configuration, or `unconfigured` before `configure`.
            fn __with_config<R>(run: impl FnOnce(&$cfg) -> R, unconfigured: impl FnOnce() -> R) -> R {
                __DOPPEL_CONFIG.with(|s| match s.borrow().as_ref() {
                    Some(cfg) => run(cfg),
                    None => unconfigured(),
                })
            }
            fn __batch(b: &__b::Batch) -> $crate::BatchRef<'_> {
                $crate::BatchRef {
                    arena: &b.arena,
                    offsets: &b.offsets,
                }
            }
            fn __errors(errors: Vec<(u32, String)>) -> Vec<__b::RecordError> {
                errors
                    .into_iter()
                    .map(|(index, message)| __b::RecordError { index, message })
                    .collect()
            }
            struct __Plugin;
            impl __b::Guest for __Plugin {
                fn contract_version() -> u32 {
                    $crate::abi::CONTRACT_VERSION
                }
                fn config_schema() -> String {
                    <$cfg as $crate::PluginConfig>::SCHEMA.to_string()
                }
                fn configure(config: String) -> Result<(), String> {
                    let c = $crate::load_config::<$cfg>(&config)?;
                    __DOPPEL_CONFIG.with(|s| *s.borrow_mut() = Some(c));
                    Ok(())
                }
                $($role)*
            }
            $crate::bindings::$world::$export!(__Plugin with_types_in $crate::bindings::$world);
        };
        // Off wasm the macro only checks that the function exists; tests call it through
        // `doppel_sdk::testing`.
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _ = $f;
        };
    };
}

/// Exports a filter: `fn(&Record, &Config) -> bool` (or `Result<bool, E: Display>`).
#[macro_export]
macro_rules! filter {
    ($f:path, $cfg:ty) => {
        $crate::__plugin!(filter, __export_filter, $f, $cfg, {
            fn filter(records: __b::Batch) -> __b::FilterResult {
                let batch = __batch(&records);
                let out = __with_config(
                    |cfg| $crate::run::filter(batch, cfg, $f),
                    || $crate::run::unconfigured(batch.len()),
                );
                __b::FilterResult {
                    keep: out.keep,
                    errors: __errors(out.errors),
                    log: out.log,
                }
            }
        });
    };
}

/// Exports a transform: `fn(&Record, &Config) -> Result<Out, E: Display>`.
#[macro_export]
macro_rules! transform {
    ($f:path, $cfg:ty) => {
        $crate::__plugin!(transform, __export_transform, $f, $cfg, {
            fn transform(records: __b::Batch) -> __b::TransformResult {
                let batch = __batch(&records);
                let out = __with_config(
                    |cfg| $crate::run::transform(batch, cfg, $f),
                    || $crate::run::unconfigured_transform(batch.len()),
                );
                __b::TransformResult {
                    records: __b::Batch {
                        arena: out.batch.arena,
                        offsets: out.batch.offsets,
                    },
                    errors: __errors(out.errors),
                    log: out.log,
                }
            }
        });
    };
}

/// Exports an interrelation rule: `fn(&Record, &Config) -> D` where `D` is
/// `Vec<Dependency>`, `Option<Dependency>` or a `Result` of either (see [`run::Depends`]).
#[macro_export]
macro_rules! rule {
    ($f:path, $cfg:ty) => {
        $crate::__plugin!(rule, __export_rule, $f, $cfg, {
            fn depends(records: __b::Batch) -> __b::RuleResult {
                let batch = __batch(&records);
                let out = __with_config(
                    |cfg| $crate::run::rule(batch, cfg, $f),
                    || $crate::run::unconfigured_rule(batch.len()),
                );
                __b::RuleResult {
                    depends: out
                        .depends
                        .into_iter()
                        .map(|(index, d)| __b::Dependency {
                            index,
                            file: d.file,
                            key: d.key,
                        })
                        .collect(),
                    errors: __errors(out.errors),
                    log: out.log,
                }
            }
        });
    };
}

/// Exports a conflict resolver:
/// `fn(local: &Record, remote: &Record, base: Option<&Record>, &Config) -> Resolution`
/// (or `Result<Resolution, E: Display>`); `base` is `None` when the host has no base
/// version. It must be deterministic: every site decides alike.
#[macro_export]
macro_rules! resolver {
    ($f:path, $cfg:ty) => {
        $crate::__plugin!(resolver, __export_resolver, $f, $cfg, {
            fn resolve(
                local: __b::Batch,
                remote: __b::Batch,
                base: __b::Batch,
            ) -> __b::ResolveResult {
                let (local, remote, base) = (__batch(&local), __batch(&remote), __batch(&base));
                let out = __with_config(
                    |cfg| $crate::run::resolve(local, remote, base, cfg, $f),
                    || {
                        $crate::run::unconfigured_resolve(
                            local.len().max(remote.len()).max(base.len()),
                        )
                    },
                );
                __b::ResolveResult {
                    decisions: out.decisions,
                    merged: __b::Batch {
                        arena: out.merged.arena,
                        offsets: out.merged.offsets,
                    },
                    errors: __errors(out.errors),
                    log: out.log,
                }
            }
        });
    };
}
