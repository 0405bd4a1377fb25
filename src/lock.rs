//! One run per report date at a time (issue: concurrent runs never mix).
//!
//! The lock is `<output>/_runs/event_date=D.lock`, created with a
//! create-only PUT (`If-None-Match: *` on S3, `O_EXCL` on local disk), so
//! of two runs started together exactly one gets it; the other exits 75
//! (temporary: retry later). The holder rewrites the lock every few
//! seconds; a lock not refreshed for `CONVMART_LOCK_STALE_SECS` (default
//! 120) belongs to a crashed run and is taken over. Before committing, the
//! holder checks the lock is still its own, so a run that stalled past the
//! stale limit never commits over its successor.

use crate::error::{Error, Result};
use crate::input::partition_dir;
use crate::storage::{store_error, Location};
use chrono::{NaiveDate, Utc};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub struct DateLock {
    out: Location,
    path: Path,
    run_id: String,
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

impl DateLock {
    /// Takes the lock of `date`, or fails with exit 75 if a live run holds it.
    pub async fn acquire(out: &Location, date: NaiveDate, run_id: &str) -> Result<DateLock> {
        let path = out.child(&format!("_runs/{}.lock", partition_dir(date)));
        let create = || PutOptions::from(PutMode::Create);
        let mut lock = DateLock {
            out: out.clone(),
            path: path.clone(),
            run_id: run_id.to_string(),
            heartbeat: None,
        };
        match out.store.put_opts(&path, body(run_id), create()).await {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                let meta = out
                    .store
                    .head(&path)
                    .await
                    .map_err(|e| store_error(out.describe(&path), e))?;
                let age = (Utc::now() - meta.last_modified)
                    .to_std()
                    .unwrap_or_default();
                if age < stale_after() {
                    let holder = out
                        .store
                        .get(&path)
                        .await
                        .ok()
                        .map(|g| async move { g.bytes().await.ok() });
                    let holder = match holder {
                        Some(f) => f.await.map(|b| String::from_utf8_lossy(&b).into_owned()),
                        None => None,
                    };
                    return Err(Error::Locked {
                        date: date.to_string(),
                        message: format!(
                            "another run holds {} (refreshed {}s ago: {}); retry when it has finished",
                            out.describe(&path),
                            age.as_secs(),
                            holder.unwrap_or_default()
                        ),
                    });
                }
                warn!(lock = %out.describe(&path), age_s = age.as_secs(), "taking over a stale lock left by a crashed run");
                let _ = out.store.delete(&path).await;
                out.store.put_opts(&path, body(run_id), create()).await.map_err(|e| match e {
                    object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => Error::Locked {
                        date: date.to_string(),
                        message: "another run took over the stale lock at the same moment; retry later".into(),
                    },
                    other => store_error(out.describe(&path), other),
                })?;
            }
            Err(object_store::Error::NotImplemented { .. }) => {
                warn!("this store has no create-only PUT; concurrent runs of one date are not detected");
                return Ok(lock);
            }
            Err(e) => return Err(store_error(out.describe(&path), e)),
        }
        let (store, hb_path, hb_run) = (out.store.clone(), path.clone(), run_id.to_string());
        let every = (stale_after() / 6).max(Duration::from_millis(200));
        lock.heartbeat = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = store.put(&hb_path, body(&hb_run)).await {
                    warn!(error = %e, "could not refresh the run lock");
                }
            }
        }));
        info!(lock = %out.describe(&path), "lock taken");
        Ok(lock)
    }

    /// Fails if another run has taken the lock over (this run stalled too long).
    pub async fn confirm(&self) -> Result<()> {
        if self.heartbeat.is_none() {
            return Ok(());
        }
        let got = self
            .out
            .store
            .get(&self.path)
            .await
            .map_err(|e| store_error(self.out.describe(&self.path), e))?;
        let bytes = got
            .bytes()
            .await
            .map_err(|e| store_error(self.out.describe(&self.path), e))?;
        let holder: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if holder.get("run_id").and_then(|v| v.as_str()) != Some(self.run_id.as_str()) {
            return Err(Error::Locked {
                date: self.path.to_string(),
                message:
                    "this run stalled and another run took its lock over; nothing was committed"
                        .into(),
            });
        }
        Ok(())
    }

    /// Stops the heartbeat and removes the lock (best effort: a lock left
    /// behind only delays the next run until it is stale).
    pub async fn release(mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
            let _ = h.await;
            if let Err(e) = self.out.store.delete(&self.path).await {
                warn!(error = %e, "could not remove the run lock; it expires by itself");
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
