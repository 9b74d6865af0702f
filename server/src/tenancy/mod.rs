//! Multi-tenant hosting (SPEC H3): who a caller is, what their role lets them do, how
//! much each tenant may use, and the record of what admins and operators did.
//!
//! * [`auth`]: signing keys, JWT verification and issuing, claims.
//! * [`roles`]: roles, the permission of each route, and the one permission check that
//!   the API's guard middleware (`api::guard`) applies to every matched route.
//! * [`quota`]: per-tenant limits (memory, request rate) and usage.
//! * [`audit`]: the record of admin and operator actions.
//!
//! The node's own key (when `[auth]` configures none) is generated on first start and
//! kept in the data directory's sled `config` tree under [`GENERATED_KEY`].

pub mod audit;
pub mod auth;
pub mod quota;
pub mod roles;

use std::path::Path;
use std::sync::Arc;

use auth::{AuthConfig, KeyConfig, Keyring, ANY_TENANT};
use roles::Role;

use crate::node::Node;

/// The `config` tree key of the HS256 key a node generates when none is configured.
pub const GENERATED_KEY: &str = "auth/generated-key";

/// How long the admin token printed on first start lasts: ten years.
pub const FIRST_ADMIN_TOKEN_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

/// A node's tenancy state.
pub struct Tenancy {
    /// Absent when auth is disabled: every caller is then the node administrator.
    pub keyring: Option<Keyring>,
    pub quotas: quota::Quotas,
    pub audit: audit::Audit,
}

impl Tenancy {
    /// Prepares tenancy for `node`. When `[auth]` lists no key, the node's generated key
    /// is used, made on this first start; the admin token to print is then returned.
    pub fn start(
        node: &Arc<Node>,
        config: &AuthConfig,
        quota_defaults: quota::Limits,
    ) -> Result<(Tenancy, Option<String>), String> {
        let (keyring, token) = Self::keyring(node, config)?;
        let tenancy = Tenancy {
            keyring,
            quotas: quota::Quotas::load(node, quota_defaults).map_err(|e| e.to_string())?,
            audit: audit::Audit::open(node.clone()).map_err(|e| e.to_string())?,
        };
        Ok((tenancy, token))
    }

    fn keyring(
        node: &Node,
        config: &AuthConfig,
    ) -> Result<(Option<Keyring>, Option<String>), String> {
        if !config.enabled {
            return Ok((None, None));
        }
        if !config.keys.is_empty() {
            return Ok((Some(Keyring::new(config)?), None));
        }
        let stored = node
            .config_value(GENERATED_KEY)
            .map_err(|e| e.to_string())?;
        let (key, created) = match stored {
            Some(bytes) => (parse_key(&bytes)?, false),
            None => {
                let key = KeyConfig::generate_hs256("node-1")?;
                let bytes = serde_json::to_vec(&key).map_err(|e| e.to_string())?;
                node.set_config_value(GENERATED_KEY, &bytes)
                    .map_err(|e| e.to_string())?;
                (key, true)
            }
        };
        let keyring = Keyring::new(&with_key(config, key))?;
        let token = if created {
            Some(keyring.issue("admin", ANY_TENANT, Role::Admin, FIRST_ADMIN_TOKEN_TTL_SECS)?)
        } else {
            None
        };
        Ok((Some(keyring), token))
    }
}

fn parse_key(bytes: &[u8]) -> Result<KeyConfig, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("the stored auth key is unreadable: {e}"))
}

fn with_key(config: &AuthConfig, key: KeyConfig) -> AuthConfig {
    AuthConfig {
        keys: vec![key],
        ..config.clone()
    }
}

/// The keyring `doppel token` signs with: the configured keys, else the key stored in
/// `data_dir` (which must not be in use by a running node).
pub fn offline_keyring(config: &AuthConfig, data_dir: &Path) -> Result<Keyring, String> {
    if !config.keys.is_empty() {
        return Keyring::new(config);
    }
    let bytes = crate::node::read_config_offline(data_dir, GENERATED_KEY)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "{} holds no key yet: start the node on it once, or configure [auth] keys",
                data_dir.display()
            )
        })?;
    Keyring::new(&with_key(config, parse_key(&bytes)?))
}
