//! `doppel token`: mints a token offline with the node's key, from `[auth]` keys in the
//! config file or, when it lists none, from the key the node generated in its data
//! directory (which must not be in use by a running node: sled locks it).

use std::path::PathBuf;

use clap::Args;

use crate::tenancy::auth::ANY_TENANT;
use crate::tenancy::offline_keyring;
use crate::tenancy::roles::Role;

/// Options of `doppel token`.
#[derive(Args, Debug)]
pub struct TokenArgs {
    /// Tenant the token acts for ('*': the node administrator, admin role only).
    #[arg(long)]
    tenant: String,
    /// admin, operator, writer or reader.
    #[arg(long)]
    role: Role,
    /// Who the token is for (the `sub` claim, shown in the audit log).
    #[arg(long, default_value = "cli")]
    sub: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
    /// Data directory whose generated key signs (when the config has no [auth] keys).
    #[arg(long, env = "DOPPEL_DATA")]
    data: Option<PathBuf>,
    /// The node's TOML config file.
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(args: TokenArgs) -> Result<(), String> {
    if args.tenant != ANY_TENANT {
        crate::node::check_name("tenant", &args.tenant).map_err(|e| e.to_string())?;
    }
    let file = super::serve::read_config(args.config.as_deref())?;
    let data = super::serve::data_dir(args.data, &file);
    let keyring = offline_keyring(&file.auth, &data)?;
    let token = keyring.issue(&args.sub, &args.tenant, args.role, args.ttl_secs)?;
    println!("{token}");
    Ok(())
}
