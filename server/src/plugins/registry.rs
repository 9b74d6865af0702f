//! The plugin registry: plugins by tenant, name and version, stored content-addressed.
//!
//! sled trees:
//! - `plugins`: `tenant/name/version` → [`PluginInfo`] (JSON);
//! - `plugin-blobs`: SHA-256 of the wasm → the wasm bytes (one copy however many names
//!   point at it);
//! - `plugin-artefacts`: `sha256/role` → the compiled artefact, so a restart does not
//!   compile again.
//!
//! In memory, templates (`InstancePre`) are cached by (hash, role). Compilation happens
//! on upload, or once after a restart on a cache miss; never per batch.
//!
//! The built-in plugins (`super::builtin`) are in every tenant's registry without an
//! upload, as `name@{version}`: the plugin crate's own version when it has one
//! (`json-columns@1.0.0`, whose config and row contract are a published interface),
//! else the server's (`prefix-filter@0.1.0`): listed, shown, loaded as stages like an upload,
//! compiled on first use (the artefact cached like an upload's). Their names are
//! reserved: a tenant cannot upload a plugin of that name, nor delete one, so a stage
//! `prefix-filter@0.1.0` runs the same code on every node and tenant of a topology.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::runtime::{PluginError, Role, Runtime, Template};
use crate::node::Node;

/// What the registry keeps about one plugin version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub role: Role,
    /// SHA-256 of the wasm bytes, hex.
    pub sha256: String,
    pub size: usize,
    /// Time the upload's compilation took (a built-in's: its first compilation; 0
    /// before it).
    pub compile_ms: u64,
    /// Carried by the server, in every tenant's registry (not stored, not deletable).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub builtin: bool,
    /// What it does (built-ins: from their crate's description).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// The version of the built-in plugins that have none of their own: the server's.
pub const BUILTIN_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A built-in plugin's version (None: no built-in of that name).
pub fn builtin_version(name: &str) -> Option<&'static str> {
    super::builtin::BUILTIN_VERSIONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
}

/// One built-in plugin: what the registry answers for it, and its bytes.
struct Builtin {
    info: PluginInfo,
    wasm: &'static [u8],
}

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Malformed(String),
    /// An upload or delete under a built-in plugin's name.
    #[error("{0}")]
    Builtin(String),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("plugin storage: {0}")]
    Storage(String),
}

impl From<sled::Error> for RegistryError {
    fn from(e: sled::Error) -> Self {
        RegistryError::Storage(e.to_string())
    }
}

type Result<T> = std::result::Result<T, RegistryError>;

/// Plugins of every tenant of a node.
pub struct Registry {
    runtime: Arc<Runtime>,
    plugins: sled::Tree,
    blobs: sled::Tree,
    artefacts: sled::Tree,
    templates: Mutex<HashMap<(String, Role), Template>>,
    builtins: Vec<Builtin>,
    /// How long each built-in's first load took in this process (compile or artefact).
    builtin_compile_ms: Mutex<HashMap<String, u64>>,
}

fn key(tenant: &str, name: &str, version: &str) -> String {
    format!("{tenant}/{name}/{version}")
}

/// Plugin versions: 1 to 32 characters of A-Z, a-z, 0-9, '.', '_', '-' and '+'.
pub fn check_version(version: &str) -> Result<()> {
    let ok = !version.is_empty()
        && version.len() <= 32
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Malformed(format!(
            "plugin version '{version}' must be 1 to 32 characters of A-Z, a-z, 0-9, '.', '_', '-' and '+'"
        )))
    }
}

impl Registry {
    pub fn open(node: &Node, runtime: Arc<Runtime>) -> Result<Registry> {
        let tree = |name: &str| {
            node.tree(name)
                .map_err(|e| RegistryError::Storage(e.to_string()))
        };
        Ok(Registry {
            runtime,
            plugins: tree("plugins")?,
            blobs: tree("plugin-blobs")?,
            artefacts: tree("plugin-artefacts")?,
            templates: Mutex::new(HashMap::new()),
            builtins: super::builtin::BUILTIN_PLUGINS
                .iter()
                .filter_map(|(name, role, description, wasm)| {
                    Some(Builtin {
                        info: PluginInfo {
                            name: (*name).to_owned(),
                            version: builtin_version(name).unwrap_or(BUILTIN_VERSION).to_owned(),
                            role: Role::parse(role)?,
                            sha256: hex(&Sha256::digest(wasm)),
                            size: wasm.len(),
                            compile_ms: 0,
                            builtin: true,
                            description: (*description).to_owned(),
                        },
                        wasm,
                    })
                })
                .collect(),
            builtin_compile_ms: Mutex::new(HashMap::new()),
        })
    }

    fn builtin(&self, name: &str) -> Option<&Builtin> {
        self.builtins.iter().find(|b| b.info.name == name)
    }

    /// The built-in plugins, by name.
    pub fn builtins(&self) -> Vec<PluginInfo> {
        self.builtins.iter().map(|b| b.info.clone()).collect()
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Uploads a plugin version: validates and compiles it, stores it. Uploading the same
    /// bytes again is the same plugin (`Ok((info, false))`); other bytes under an existing
    /// name and version are a conflict (versions are immutable).
    pub fn put(
        &self,
        tenant: &str,
        name: &str,
        version: &str,
        role: Role,
        wasm: &[u8],
    ) -> Result<(PluginInfo, bool)> {
        crate::node::check_name("plugin", name)
            .map_err(|e| RegistryError::Malformed(e.to_string()))?;
        check_version(version)?;
        if let Some(b) = self.builtin(name) {
            let version = &b.info.version;
            return Err(RegistryError::Builtin(format!(
                "'{name}' is a built-in plugin ({name}@{version}, in every tenant's registry); \
                 its name is reserved so that a stage naming it means the same code on every node: \
                 upload yours under another name"
            )));
        }
        let sha256 = hex(&Sha256::digest(wasm));
        let k = key(tenant, name, version);
        if let Some(old) = self.info_at(&k)? {
            if old.sha256 == sha256 && old.role == role {
                return Ok((old, false));
            }
            return Err(RegistryError::Conflict(format!(
                "plugin '{name}' version {version} already exists with other content or role; upload a new version"
            )));
        }
        let plugin = format!("{name}@{version}");
        let started = Instant::now();
        let component = self.runtime.compile(&plugin, role, wasm)?;
        let template = self.runtime.template(&plugin, role, &component)?;
        // Instantiating once checks what compilation cannot: the contract version.
        template.check()?;
        let compile_ms = started.elapsed().as_millis() as u64;
        let artefact = component.serialize().map_err(|e| {
            RegistryError::Storage(format!("serialising the compiled plugin: {e:#}"))
        })?;
        self.blobs.insert(sha256.as_bytes(), wasm)?;
        self.artefacts
            .insert(format!("{sha256}/{role}").as_bytes(), artefact)?;
        let info = PluginInfo {
            name: name.to_owned(),
            version: version.to_owned(),
            role,
            sha256: sha256.clone(),
            size: wasm.len(),
            compile_ms,
            builtin: false,
            description: String::new(),
        };
        let json = serde_json::to_vec(&info).map_err(|e| RegistryError::Storage(e.to_string()))?;
        // Insert only if still absent: two racing uploads of one version cannot both win.
        match self
            .plugins
            .compare_and_swap(k.as_bytes(), None::<&[u8]>, Some(json))?
        {
            Ok(()) => {}
            Err(_) => return self.put(tenant, name, version, role, wasm),
        }
        self.plugins.flush()?;
        self.templates.lock().insert((sha256, role), template);
        Ok((info, true))
    }

    fn info_at(&self, k: &str) -> Result<Option<PluginInfo>> {
        match self.plugins.get(k.as_bytes())? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| RegistryError::Storage(format!("plugin record {k}: {e}"))),
        }
    }

    /// One plugin version: a built-in, or one of the tenant's.
    pub fn get(&self, tenant: &str, name: &str, version: &str) -> Result<PluginInfo> {
        if let Some(b) = self.builtin(name).filter(|b| b.info.version == version) {
            let mut info = b.info.clone();
            if let Some(ms) = self.builtin_compile_ms.lock().get(name) {
                info.compile_ms = *ms;
            }
            return Ok(info);
        }
        self.info_at(&key(tenant, name, version))?.ok_or_else(|| match self.builtin(name) {
            Some(b) => RegistryError::NotFound(format!(
                "plugin '{name}' version '{version}' not found: the built-in '{name}' is version {}",
                b.info.version
            )),
            None => {
                RegistryError::NotFound(format!("plugin '{name}' version '{version}' not found"))
            }
        })
    }

    /// A tenant's own (uploaded) plugins, by name then version; `builtins` has the others.
    pub fn list(&self, tenant: &str) -> Result<Vec<PluginInfo>> {
        let mut out = Vec::new();
        for item in self.plugins.scan_prefix(format!("{tenant}/").as_bytes()) {
            let (_, v) = item?;
            out.push(
                serde_json::from_slice(&v).map_err(|e| RegistryError::Storage(e.to_string()))?,
            );
        }
        Ok(out)
    }

    /// Deletes a plugin version; its bytes and artefact go when nothing else names them.
    pub fn delete(&self, tenant: &str, name: &str, version: &str) -> Result<PluginInfo> {
        let info = self.get(tenant, name, version)?;
        if info.builtin {
            return Err(RegistryError::Builtin(format!(
                "'{name}@{version}' is a built-in plugin: it comes with the server and cannot be deleted"
            )));
        }
        self.plugins.remove(key(tenant, name, version).as_bytes())?;
        let still_used = self.plugins.iter().values().any(|v| {
            v.ok()
                .and_then(|v| serde_json::from_slice::<PluginInfo>(&v).ok())
                .is_some_and(|i| i.sha256 == info.sha256)
        });
        let still_used = still_used || self.builtins.iter().any(|b| b.info.sha256 == info.sha256);
        if !still_used {
            self.blobs.remove(info.sha256.as_bytes())?;
            let mut templates = self.templates.lock();
            for role in Role::ALL {
                self.artefacts
                    .remove(format!("{}/{role}", info.sha256).as_bytes())?;
                templates.remove(&(info.sha256.clone(), role));
            }
        }
        self.plugins.flush()?;
        Ok(info)
    }

    /// The template of a plugin version: from memory, else from the cached artefact,
    /// else compiled once from the stored bytes.
    pub fn template(&self, tenant: &str, name: &str, version: &str) -> Result<Template> {
        let info = self.get(tenant, name, version)?;
        let cache_key = (info.sha256.clone(), info.role);
        if let Some(t) = self.templates.lock().get(&cache_key) {
            return Ok(t.clone());
        }
        let started = Instant::now();
        let plugin = format!("{name}@{version}");
        let artefact_key = format!("{}/{}", info.sha256, info.role);
        let component = match self.artefacts.get(artefact_key.as_bytes())? {
            Some(a) => self.runtime.load_compiled(&plugin, info.role, &a).ok(),
            None => None,
        };
        let component = match component {
            Some(c) => c,
            None => {
                let stored;
                let wasm: &[u8] = match self.builtin(name).filter(|_| info.builtin) {
                    Some(b) => b.wasm,
                    None => {
                        stored = self.blobs.get(info.sha256.as_bytes())?.ok_or_else(|| {
                            RegistryError::Storage(format!(
                                "the bytes of plugin '{plugin}' are missing"
                            ))
                        })?;
                        &stored
                    }
                };
                let c = self.runtime.compile(&plugin, info.role, wasm)?;
                if let Ok(a) = c.serialize() {
                    self.artefacts.insert(artefact_key.as_bytes(), a)?;
                }
                c
            }
        };
        let template = self.runtime.template(&plugin, info.role, &component)?;
        if info.builtin {
            // Checked like an upload (the contract version), once per process.
            template.check()?;
            self.builtin_compile_ms
                .lock()
                .insert(name.to_owned(), started.elapsed().as_millis() as u64);
        }
        self.templates.lock().insert(cache_key, template.clone());
        Ok(template)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
