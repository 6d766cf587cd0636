//! What every part's compile step shares while a config loads: the errors and warnings
//! found so far (each with its path), the secrets resolved (for the audit log's redaction
//! by value), the files read (for the watcher) and the fingerprint a reload compares.
//!
//! A leaf: a part compiles its own schema section into its runtime type with a
//! `&mut Build` (e.g. [`crate::forward::settings::ForwardSettings::compile`]), and
//! `config::compile` only assembles the parts into a snapshot.

use super::errors::ConfigErrors;
use super::secret::{EnvLookup, Template};
use http::HeaderName;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// What a load is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoadMode {
    /// To serve (start-up and reloads): every reference resolves, every file is there.
    #[default]
    Serve,
    /// `llm-sidecar check`: as `Serve`, but files that `run` creates on its first start
    /// (the interception CA) may be missing.
    Check,
    /// `llm-sidecar check --no-secrets`: the structure and the references only. No
    /// `${env:...}` or `${file:...}` is resolved and no file is read (CA files, trust
    /// bundles, credential files): a platform team's CI has none of them. A provider whose
    /// secrets are unresolved is checked as far as it can be without them.
    Structure,
}

/// The state of one load, passed to each part's compile step.
pub struct Build<'a> {
    pub env: EnvLookup<'a>,
    pub mode: LoadMode,
    pub errs: ConfigErrors,
    pub warnings: Vec<String>,
    /// Files whose change should trigger a reload.
    pub files: Vec<PathBuf>,
    /// Over the config text and every value and file it resolves.
    pub fingerprint: Sha256,
    /// Every secret value resolved, for the audit log's redaction by value.
    pub secrets: Vec<String>,
    /// `LoadMode::Structure`: the references left unresolved, by path.
    pub unresolved: Vec<String>,
}

impl<'a> Build<'a> {
    pub fn new(env: EnvLookup<'a>, mode: LoadMode, text: &str) -> Build<'a> {
        let mut fingerprint = Sha256::new();
        fingerprint.update(text.as_bytes());
        Build {
            env,
            mode,
            errs: ConfigErrors::default(),
            warnings: Vec::new(),
            files: Vec::new(),
            fingerprint,
            secrets: Vec::new(),
            unresolved: Vec::new(),
        }
    }

    pub fn header_names(&mut self, path: &str, names: &[String]) -> Vec<HeaderName> {
        let mut out = Vec::new();
        for (i, n) in names.iter().enumerate() {
            match HeaderName::from_bytes(n.as_bytes()) {
                Ok(h) => out.push(h),
                Err(_) => self.errs.push(
                    format!("{path}[{i}]"),
                    format!("\"{n}\" is not a valid header name"),
                ),
            }
        }
        out
    }

    /// Resolves a template. A missing secret of an optional provider is returned as
    /// `Err(Some(reason))` (the provider gets disabled); otherwise it is recorded.
    pub fn resolve(
        &mut self,
        path: &str,
        t: &Template,
        optional: bool,
    ) -> Result<String, Option<String>> {
        if self.mode == LoadMode::Structure && t.has_refs() {
            self.unresolved.push(path.to_string());
            return Err(Some(format!("{path}: not resolved (--no-secrets)")));
        }
        match t.resolve(self.env) {
            Ok(r) => {
                self.fingerprint.update(r.value.as_bytes());
                if !path.ends_with(".base_url") {
                    self.secrets.push(r.value.clone());
                }
                self.files.extend(r.files);
                Ok(r.value)
            }
            Err(e) => {
                // Watch where a missing file would appear: a Secret that gains the key
                // later is then picked up by the watcher.
                self.files.extend(t.files().map(Path::to_path_buf));
                if optional {
                    Err(Some(format!("{path}: {e}")))
                } else {
                    self.errs.push(path, format!("{e}{}", optional_hint(path)));
                    Err(None)
                }
            }
        }
    }

    /// [`Self::resolve`] for a value that must be there: a missing reference of an
    /// optional provider goes to `missing`.
    pub fn secret(
        &mut self,
        path: &str,
        t: &Template,
        optional: bool,
        missing: &mut Vec<String>,
    ) -> Option<String> {
        match self.resolve(path, t, optional) {
            Ok(v) => Some(v),
            Err(Some(reason)) => {
                missing.push(reason);
                None
            }
            Err(None) => None,
        }
    }

    /// Counts a secret read outside templates (AWS credentials) in the fingerprint, so a
    /// rotated value is a change.
    pub fn fingerprint_secret(&mut self, value: &str) {
        self.fingerprint.update(value.as_bytes());
        self.secrets.push(value.to_string());
    }
}

fn optional_hint(path: &str) -> &'static str {
    if path.starts_with("providers.") {
        " (set it, or mark the provider `optional: true` to run without it)"
    } else {
        ""
    }
}
