//! A component of the contract from a core module: the contract's WIT (`sdk/wit`,
//! compiled in) embedded into the module and wrapped by `wit-component`. What the
//! fuzz seeds and the tests use to make small plugins from WAT; a plugin project's
//! build wraps modules whose metadata `wit-bindgen` already embedded
//! (`cli::plugin`).

/// The contract, as `sdk/wit/doppel.wit` says it.
const CONTRACT: &str = include_str!("../../../sdk/wit/doppel.wit");

/// `module` (a core wasm module exporting a world's functions with the canonical ABI)
/// as a component of `world` of the contract.
pub fn wrap_module(module: Vec<u8>, world: &str) -> Result<Vec<u8>, String> {
    wrap_module_with(module, CONTRACT, world)
}

/// [`wrap_module`] against another WIT text (an older contract, in tests).
pub fn wrap_module_with(mut module: Vec<u8>, wit: &str, world: &str) -> Result<Vec<u8>, String> {
    let mut resolve = wit_parser::Resolve::default();
    let pkg = resolve
        .push_str("doppel.wit", wit)
        .map_err(|e| format!("the WIT: {e:#}"))?;
    let world = resolve
        .select_world(&[pkg], Some(world))
        .map_err(|e| format!("world {world}: {e:#}"))?;
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
        false,
    )
    .map_err(|e| format!("embedding the contract: {e:#}"))?;
    wit_component::ComponentEncoder::default()
        .module(&module)
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| format!("making a component: {e:#}"))
}
