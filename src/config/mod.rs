//! Configuration: from a YAML file to the snapshot every request reads.
//!
//! ```text
//!  sidecar.yaml ──parse──► ConfigFile ──compile──► Snapshot ──store──► ArcSwap<Snapshot>
//!  (text)        (schema,   (serde types,  (validate,     (immutable,    (one atomic swap;
//!                 all errors  defaults)     resolve         compiled)     requests keep the
//!                 with paths)               secrets)                      Arc they loaded)
//! ```
//!
//! [`watch`] triggers reloads on file changes and SIGHUP. A reload that fails keeps the
//! old snapshot serving and is counted in `llm_sidecar_config_reloads_total{result="failure"}`.

pub mod build;
pub mod compile;
pub mod errors;
pub mod kept;
pub mod parse;
pub mod schema;
pub mod secret;
pub mod units;
pub mod watch;

pub use compile::{LoadContext, LoadMode, Snapshot, StartupSettings, Target};
pub use errors::{ConfigError, ConfigErrors};

use crate::observability::metrics::{Metrics, ReloadResult};
use crate::upstream::dns::DnsRegistry;
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where `${env:...}` values come from.
pub type EnvSource = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

pub fn process_env() -> EnvSource {
    Arc::new(|name| std::env::var(name).ok())
}

/// The config path when none is given: `-c`, else `LLM_SIDECAR_CONFIG`, else this.
pub const DEFAULT_CONFIG_PATH: &str = "conf/sidecar.yaml";

/// Holds the serving snapshot and knows how to replace it.
pub struct ConfigStore {
    current: ArcSwap<Snapshot>,
    path: PathBuf,
    env: EnvSource,
    dns: Arc<DnsRegistry>,
    breakers: Arc<crate::resilience::breaker::BreakerRegistry>,
    limits: Arc<crate::limits::LimitRegistry>,
    metrics: Arc<Metrics>,
    /// Startup-only settings as they were applied; reloads warn when these change.
    applied: StartupSettings,
    /// Serializes reloads (file watcher, SIGHUP, tests). Never taken on the request path.
    reload_lock: Mutex<()>,
}

/// What a reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    Applied { hash: String },
    Unchanged,
    Rejected(ConfigErrors),
}

/// Loads and compiles a config file without serving it (`llm-sidecar check`).
pub fn check_file(path: &Path, env: EnvSource, mode: LoadMode) -> Result<Snapshot, ConfigErrors> {
    let (dns, metrics) = (DnsRegistry::default(), Metrics::new());
    let breakers = crate::resilience::breaker::BreakerRegistry::default();
    let limits = crate::limits::LimitRegistry::default();
    let ctx = LoadContext {
        env: &*env,
        mode,
        dns: &dns,
        breakers: &breakers,
        limits: &limits,
        metrics: &metrics,
    };
    compile::load_file(path, &ctx)
}

impl ConfigStore {
    /// Loads the config for the first time. Errors are returned, not logged.
    pub fn open(
        path: &Path,
        env: EnvSource,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<ConfigStore>, ConfigErrors> {
        let dns = Arc::new(DnsRegistry::default());
        let breakers = Arc::new(crate::resilience::breaker::BreakerRegistry::default());
        let limits = Arc::new(crate::limits::LimitRegistry::default());
        let snapshot = {
            let ctx = LoadContext {
                env: &*env,
                mode: Default::default(),
                dns: &dns,
                breakers: &breakers,
                limits: &limits,
                metrics: &metrics,
            };
            compile::load_file(path, &ctx)?
        };
        metrics.set_active_config(&snapshot.hash);
        let applied = snapshot.startup.clone();
        Ok(Arc::new(ConfigStore {
            current: ArcSwap::from_pointee(snapshot),
            path: path.to_path_buf(),
            env,
            dns,
            breakers,
            limits,
            metrics,
            applied,
            reload_lock: Mutex::new(()),
        }))
    }

    /// The snapshot to use for one request (one atomic load).
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn applied_startup(&self) -> &StartupSettings {
        &self.applied
    }

    /// Re-reads the file and swaps in the new snapshot if it is valid and different.
    /// Blocking (file I/O, CA parsing): call it from a blocking context.
    pub fn reload(&self) -> ReloadOutcome {
        let _serial = match self.reload_lock.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let loaded = {
            let ctx = LoadContext {
                env: &*self.env,
                mode: Default::default(),
                dns: &self.dns,
                breakers: &self.breakers,
                limits: &self.limits,
                metrics: &self.metrics,
            };
            compile::load_file(&self.path, &ctx)
        };
        let new = match loaded {
            Ok(s) => s,
            Err(errs) => {
                self.metrics.reload(ReloadResult::Failure);
                tracing::error!(
                    path = %self.path.display(),
                    errors = errs.len(),
                    "config reload rejected; the previous config keeps serving"
                );
                for e in errs.iter() {
                    tracing::error!("config error: {e}");
                }
                return ReloadOutcome::Rejected(errs);
            }
        };
        let old = self.current.load();
        if new.fingerprint == old.fingerprint {
            self.metrics.reload(ReloadResult::Unchanged);
            tracing::debug!("config reload: nothing changed");
            return ReloadOutcome::Unchanged;
        }
        self.warn_restart_only(&new.startup);
        for w in &new.warnings {
            tracing::warn!("{w}");
        }
        let hash = new.hash.clone();
        let (routes, providers) = (new.routes.len(), new.providers.len());
        self.current.store(Arc::new(new));
        self.metrics.set_active_config(&hash);
        self.metrics.reload(ReloadResult::Success);
        tracing::info!(%hash, routes, providers, "config reloaded");
        ReloadOutcome::Applied { hash }
    }

    fn warn_restart_only(&self, new: &StartupSettings) {
        let a = &self.applied;
        let mut changed: Vec<(&str, String, String)> = Vec::new();
        if a.reverse != new.reverse {
            changed.push((
                "listeners.reverse",
                a.reverse.to_string(),
                new.reverse.to_string(),
            ));
        }
        if a.admin != new.admin {
            changed.push((
                "listeners.admin",
                a.admin.to_string(),
                new.admin.to_string(),
            ));
        }
        if a.threads != new.threads {
            changed.push((
                "server.threads",
                a.threads.to_string(),
                new.threads.to_string(),
            ));
        }
        if a.upstream_pool_size != new.upstream_pool_size {
            changed.push((
                "server.upstream_pool_size",
                a.upstream_pool_size.to_string(),
                new.upstream_pool_size.to_string(),
            ));
        }
        if a.log_level != new.log_level {
            changed.push(("log.level", a.log_level.clone(), new.log_level.clone()));
        }
        if a.log_format != new.log_format {
            changed.push((
                "log.format",
                format!("{:?}", a.log_format),
                format!("{:?}", new.log_format),
            ));
        }
        let off = || "off".to_string();
        if a.audit != new.audit {
            changed.push((
                "audit",
                a.audit.as_ref().map_or_else(off, |s| s.to_string()),
                new.audit.as_ref().map_or_else(off, |s| s.to_string()),
            ));
        }
        if a.telemetry != new.telemetry {
            changed.push((
                "telemetry",
                a.telemetry
                    .as_ref()
                    .map_or_else(off, |t| t.endpoint.clone()),
                new.telemetry
                    .as_ref()
                    .map_or_else(off, |t| t.endpoint.clone()),
            ));
        }
        for (key, from, to) in changed {
            tracing::warn!(
                setting = key,
                running = %from,
                configured = %to,
                "{key} changed from {from} to {to}: this setting needs a restart; the sidecar keeps using {from} until then (everything else in the new config is applied)"
            );
        }
    }
}
