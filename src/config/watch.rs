//! Reload triggers: file changes (notify), SIGHUP, and explicit requests.
//!
//! The watcher watches *directories*, not files: editors that write a temporary file and
//! rename it over the config, and Kubernetes, which swaps the `..data` symlink of a
//! ConfigMap or Secret volume, both replace the inode a file watch would follow. Watched:
//! the config file's directory (as given and, if it is a symlink, where it points) and the
//! directory of every `${file:...}` secret and CA file, so rotated secrets reload too.
//!
//! Events are debounced (`server.reload_debounce` of quiet, at most 10x that in total),
//! then the whole file is reloaded in one go on a blocking thread. A reload whose files
//! and secrets did not change is a no-op.

use super::{ConfigStore, ReloadOutcome};
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

enum Trigger {
    File,
    Signal,
    Manual(oneshot::Sender<ReloadOutcome>),
}

/// Asks the reload task to reload now (used by SIGHUP and tests).
#[derive(Clone)]
pub struct ReloadHandle {
    tx: mpsc::Sender<Trigger>,
}

impl ReloadHandle {
    /// Reloads and waits for the outcome.
    pub async fn reload_now(&self) -> Option<ReloadOutcome> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Trigger::Manual(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Queues a reload (SIGHUP) without waiting.
    pub fn signal(&self) {
        let _ = self.tx.try_send(Trigger::Signal);
    }
}

/// File names whose changes matter, shared with notify's callback thread.
#[derive(Default)]
struct Relevant {
    names: BTreeSet<OsString>,
}

impl Relevant {
    fn matches(&self, path: &Path) -> bool {
        match path.file_name() {
            // Kubernetes' atomic writer: `..data`, `..2024_01_01_...`, `..data_tmp`.
            Some(n) if n.to_string_lossy().starts_with("..") => true,
            Some(n) => self.names.contains(n),
            None => false,
        }
    }
}

fn watch_targets(store: &ConfigStore) -> (BTreeSet<PathBuf>, BTreeSet<OsString>) {
    let mut dirs = BTreeSet::new();
    let mut names = BTreeSet::new();
    let snapshot = store.load();
    let files = std::iter::once(store.path().to_path_buf()).chain(snapshot.files.iter().cloned());
    for f in files {
        for p in [Some(f.clone()), std::fs::canonicalize(&f).ok()]
            .into_iter()
            .flatten()
        {
            if let Some(n) = p.file_name() {
                names.insert(n.to_os_string());
            }
            let dir = match p.parent() {
                Some(d) if d.as_os_str().is_empty() => PathBuf::from("."),
                Some(d) => d.to_path_buf(),
                None => continue,
            };
            dirs.insert(dir);
        }
    }
    (dirs, names)
}

fn update_watches(
    store: &ConfigStore,
    relevant: &Mutex<Relevant>,
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut BTreeSet<PathBuf>,
) {
    let (dirs, names) = watch_targets(store);
    if let Ok(mut r) = relevant.lock() {
        r.names = names;
    }
    for d in watched.difference(&dirs).cloned().collect::<Vec<_>>() {
        let _ = watcher.unwatch(&d);
        watched.remove(&d);
    }
    for d in dirs {
        if watched.contains(&d) {
            continue;
        }
        match watcher.watch(&d, RecursiveMode::NonRecursive) {
            Ok(()) => {
                watched.insert(d);
            }
            Err(e) => {
                tracing::warn!(dir = %d.display(), error = %e, "cannot watch directory; changes there need SIGHUP")
            }
        }
    }
}

/// Starts the watcher and the reload task. The task ends when `stop` is cancelled.
pub fn spawn(
    store: Arc<ConfigStore>,
    stop: CancellationToken,
) -> Result<ReloadHandle, notify::Error> {
    let (tx, mut rx) = mpsc::channel::<Trigger>(64);
    let relevant = Arc::new(Mutex::new(Relevant::default()));

    let cb_tx = tx.clone();
    let cb_relevant = relevant.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if matches!(ev.kind, EventKind::Access(_)) {
            return;
        }
        let hit = match cb_relevant.lock() {
            Ok(r) => ev.paths.iter().any(|p| r.matches(p)),
            Err(_) => true,
        };
        if hit {
            // A full queue already holds a pending reload.
            let _ = cb_tx.try_send(Trigger::File);
        }
    })?;

    let mut watched: BTreeSet<PathBuf> = BTreeSet::new();
    update_watches(&store, &relevant, &mut watcher, &mut watched);

    let handle = ReloadHandle { tx };
    let task_store = store.clone();
    tokio::spawn(async move {
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => break,
                t = rx.recv() => match t { Some(t) => t, None => break },
            };
            let mut replies = Vec::new();
            let debounce = task_store.load().reload_debounce;
            match first {
                Trigger::Manual(r) => replies.push(r),
                Trigger::Signal => tracing::info!("SIGHUP received: reloading config"),
                Trigger::File => {
                    // Wait for the writes to settle.
                    let cap = tokio::time::Instant::now() + debounce * 10;
                    loop {
                        let quiet = tokio::time::sleep(debounce);
                        tokio::select! {
                            _ = quiet => break,
                            _ = tokio::time::sleep_until(cap) => break,
                            t = rx.recv() => match t {
                                Some(Trigger::File) => continue,
                                Some(Trigger::Signal) => break,
                                Some(Trigger::Manual(r)) => { replies.push(r); break }
                                None => break,
                            },
                        }
                    }
                }
            }
            let s = task_store.clone();
            let outcome = tokio::task::spawn_blocking(move || s.reload()).await;
            update_watches(&task_store, &relevant, &mut watcher, &mut watched);
            let Ok(outcome) = outcome else { continue };
            let mut replies = replies.into_iter();
            if let Some(first) = replies.next() {
                // Extra callers get a cheap summary of the same reload.
                for r in replies {
                    let _ = r.send(match &outcome {
                        ReloadOutcome::Applied { hash } => {
                            ReloadOutcome::Applied { hash: hash.clone() }
                        }
                        ReloadOutcome::Unchanged => ReloadOutcome::Unchanged,
                        ReloadOutcome::Rejected(e) => ReloadOutcome::Rejected(e.clone()),
                    });
                }
                let _ = first.send(outcome);
            }
        }
        drop(watcher);
    });
    Ok(handle)
}
