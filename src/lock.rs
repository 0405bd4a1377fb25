//! One run per report date at a time (concurrent runs never mix).
//!
//! The lock is `<output>/_runs/event_date=D.lock`, created with a
//! create-only PUT (`If-None-Match: *` on S3, `O_EXCL` on local disk), so
//! of two runs started together exactly one gets it; the other exits 75
//! (temporary: retry later). The holder rewrites the lock every few seconds;
//! a lock not refreshed for `CONVMART_LOCK_STALE_SECS` (default 120) belongs
//! to a crashed run. Taking a stale lock over is itself a create-only PUT of
//! a marker named after the stale lock's timestamp, so of several runs that
//! find the same stale lock only one takes it. The heartbeat, the check
//! before committing and the release all first read the lock and act only
//! if it still names this run.

use crate::error::{Error, Result};
use crate::input::partition_dir;
use crate::storage::Location;
use chrono::{NaiveDate, Utc};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub struct DateLock {
    out: Location,
    path: Path,
    date: NaiveDate,
    run_id: String,
    /// False when the store cannot create-only PUT (no protection, warned).
    enforced: bool,
    lost: Arc<AtomicBool>,
    heartbeat: Option<JoinHandle<()>>,
}

fn stale_after() -> Duration {
    let secs = std::env::var("CONVMART_LOCK_STALE_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(120.0);
    Duration::from_secs_f64(secs)
}

fn body(run_id: &str) -> PutPayload {
    let text = serde_json::json!({
        "run_id": run_id,
        "pid": std::process::id(),
        "refreshed_at": Utc::now().to_rfc3339(),
    });
    PutPayload::from(text.to_string().into_bytes())
}

enum Created {
    Yes,
    Exists,
    Unsupported,
}

async fn create_only(
    store: &dyn ObjectStore,
    path: &Path,
    payload: PutPayload,
) -> object_store::Result<Created> {
    match store
        .put_opts(path, payload, PutOptions::from(PutMode::Create))
        .await
    {
        Ok(_) => Ok(Created::Yes),
        Err(object_store::Error::AlreadyExists { .. })
        | Err(object_store::Error::Precondition { .. }) => Ok(Created::Exists),
        Err(object_store::Error::NotImplemented { .. }) => Ok(Created::Unsupported),
        Err(e) => Err(e),
    }
}

/// The run id written in the lock, or None if there is no readable lock.
async fn owner(store: &dyn ObjectStore, path: &Path) -> object_store::Result<Option<String>> {
    let bytes = match store.get(path).await {
        Ok(got) => match got.bytes().await {
            Ok(b) => b,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        },
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    Ok(value
        .get("run_id")
        .and_then(|v| v.as_str())
        .map(str::to_string))
}

impl DateLock {
    fn locked(&self, message: impl Into<String>) -> Error {
        Error::Locked {
            date: self.date.to_string(),
            message: message.into(),
        }
    }

    fn storage(&self, e: object_store::Error) -> Error {
        Error::storage(self.out.describe(&self.path), e)
    }

    /// Takes the lock of `date`, or fails with exit 75 if a live run holds it.
    pub async fn acquire(out: &Location, date: NaiveDate, run_id: &str) -> Result<DateLock> {
        let mut lock = DateLock {
            out: out.clone(),
            path: out.child(&format!("_runs/{}.lock", partition_dir(date))),
            date,
            run_id: run_id.to_string(),
            enforced: true,
            lost: Arc::new(AtomicBool::new(false)),
            heartbeat: None,
        };
        let store = out.store.clone();
        let mut attempts = 0;
        loop {
            attempts += 1;
            if attempts > 4 {
                return Err(lock.locked("the lock kept changing hands; retry later"));
            }
            match create_only(store.as_ref(), &lock.path, body(run_id))
                .await
                .map_err(|e| lock.storage(e))?
            {
                Created::Yes => break,
                Created::Unsupported => {
                    warn!("this store has no create-only PUT; concurrent runs of one date are not detected");
                    lock.enforced = false;
                    return Ok(lock);
                }
                Created::Exists => {}
            }
            let meta = match store.head(&lock.path).await {
                Ok(meta) => meta,
                // Released between our PUT and HEAD: try again.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(lock.storage(e)),
            };
            let age = (Utc::now() - meta.last_modified)
                .to_std()
                .unwrap_or_default();
            if age < stale_after() {
                let holder = owner(store.as_ref(), &lock.path)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                return Err(lock.locked(format!(
                    "run {holder} holds {} (refreshed {}s ago); retry when it has finished",
                    out.describe(&lock.path),
                    age.as_secs()
                )));
            }
            let stamp = meta.last_modified.timestamp_nanos_opt().unwrap_or_default();
            let marker = out.child(&format!(
                "_runs/{}.lock.takeover-{stamp}",
                partition_dir(date)
            ));
            match create_only(store.as_ref(), &marker, body(run_id))
                .await
                .map_err(|e| lock.storage(e))?
            {
                Created::Yes | Created::Unsupported => {}
                Created::Exists => {
                    return Err(
                        lock.locked("another run is taking over the stale lock; retry later")
                    )
                }
            }
            warn!(lock = %out.describe(&lock.path), age_s = age.as_secs(), "taking over a stale lock left by a crashed run");
            match store.delete(&lock.path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(lock.storage(e)),
            }
            let taken = create_only(store.as_ref(), &lock.path, body(run_id)).await;
            let _ = store.delete(&marker).await;
            match taken.map_err(|e| lock.storage(e))? {
                Created::Yes | Created::Unsupported => break,
                Created::Exists => {
                    return Err(
                        lock.locked("another run took the lock at the same moment; retry later")
                    )
                }
            }
        }
        let (hb_store, hb_path, hb_run, lost) = (
            store.clone(),
            lock.path.clone(),
            run_id.to_string(),
            lock.lost.clone(),
        );
        let every = (stale_after() / 6).max(Duration::from_millis(200));
        lock.heartbeat = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match owner(hb_store.as_ref(), &hb_path).await {
                    Ok(Some(id)) if id == hb_run => {
                        if let Err(e) = hb_store.put(&hb_path, body(&hb_run)).await {
                            warn!(error = %e, "could not refresh the run lock");
                        }
                    }
                    Ok(_) => {
                        warn!(
                            "another run has taken this run's lock over; this run will not commit"
                        );
                        lost.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => warn!(error = %e, "could not read the run lock"),
                }
            }
        }));
        info!(lock = %out.describe(&lock.path), "lock taken");
        Ok(lock)
    }

    /// Fails (exit 75) if another run has taken the lock over.
    pub async fn confirm(&self) -> Result<()> {
        if !self.enforced {
            return Ok(());
        }
        let holder = owner(self.out.store.as_ref(), &self.path)
            .await
            .map_err(|e| self.storage(e))?;
        if self.lost.load(Ordering::SeqCst) || holder.as_deref() != Some(self.run_id.as_str()) {
            return Err(self.locked(
                "this run stalled and another run took its lock over; nothing was committed",
            ));
        }
        Ok(())
    }

    /// Stops the heartbeat and removes the lock if it is still this run's
    /// (best effort: a lock left behind only delays the next run until stale).
    pub async fn release(mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
            let _ = h.await;
        }
        if !self.enforced {
            return;
        }
        if let Ok(Some(holder)) = owner(self.out.store.as_ref(), &self.path).await {
            if holder == self.run_id {
                if let Err(e) = self.out.store.delete(&self.path).await {
                    warn!(error = %e, "could not remove the run lock; it expires by itself");
                }
            }
        }
    }
}

impl Drop for DateLock {
    fn drop(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }
}
