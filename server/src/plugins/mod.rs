//! WebAssembly stage plugins (SPEC E1–E6): the host side of the contract in
//! `sdk/wit/doppel.wit`.
//!
//! - [`runtime`]: wasmtime engines, limits (epoch deadline, memory, stack, output size,
//!   fuel for deterministic roles), validation, compilation, pre-instantiated templates,
//!   stages (filter, transform and rule calls; resolver calls with the base version,
//!   answering `Resolution`s) and chains.
//! - [`registry`]: tenant-scoped plugins by name and version, content-addressed, with
//!   compiled artefacts cached by content hash in sled.
//! - [`builtin`]: the plugins of `plugins/`, built to wasm components by `build.rs`.
//! - [`wrap`]: a component of the contract from a core module (seeds, tests).

pub mod registry;
pub mod runtime;
pub mod wrap;

pub use registry::{PluginInfo, Registry};
pub use runtime::{Chain, Limits, PluginError, Resolution, Resolved, Role, Runtime, Stage};

/// The built-in plugins, compiled from `plugins/` by the build script.
pub mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));
}

#[cfg(test)]
mod tests;
