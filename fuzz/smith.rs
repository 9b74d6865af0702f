//! The `plugin_smith` target's input → a plugin upload (`role u8 | component`): a valid
//! core module from `wasm-smith` (no imports, as a plugin may import nothing), wrapped
//! into a component that instantiates it. Shared by the fuzz target and the stable
//! corpus replay (`server/tests/fuzz_corpus.rs`), so both see the same component.

use arbitrary::{Result, Unstructured};
use wasm_encoder::{Component, ComponentSectionId, InstanceSection, ModuleArg, RawSection};

/// The upload a `plugin_smith` input stands for (what `fuzzing::plugin` takes).
pub fn upload(data: &[u8]) -> Result<Vec<u8>> {
    let mut u = Unstructured::new(data);
    let role: u8 = u.arbitrary()?;
    let mut config: wasm_smith::Config = u.arbitrary()?;
    // What a plugin may use under the node's wasmtime configuration.
    config.max_imports = 0;
    config.min_imports = 0;
    config.gc_enabled = false;
    config.exceptions_enabled = false;
    config.threads_enabled = false;
    config.shared_everything_threads_enabled = false;
    config.custom_page_sizes_enabled = false;
    config.custom_descriptors_enabled = false;
    config.wide_arithmetic_enabled = false;
    config.max_memory32_bytes = 64 << 20;
    let module = wasm_smith::Module::new(config, &mut u)?.to_bytes();
    let mut c = Component::new();
    c.section(&RawSection {
        id: ComponentSectionId::CoreModule as u8,
        data: &module,
    });
    let mut instances = InstanceSection::new();
    instances.instantiate(0, Vec::<(&str, ModuleArg)>::new());
    c.section(&instances);
    let mut upload = vec![role];
    upload.extend_from_slice(&c.finish());
    Ok(upload)
}
