//! Locations: a URL or local path -> an object store plus a prefix inside it.
//! S3 settings come from the standard `AWS_*` variables (object_store reads
//! them), with path-style addressing and bounded retries so that an
//! unreachable endpoint fails within seconds to minutes, not never.

use crate::error::{Error, Result};
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::prelude::SessionContext;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use url::Url;

/// A root such as `s3://bucket/prefix` or `file:///data/events`.
#[derive(Debug, Clone)]
pub struct Location {
    /// Where the store lives: `s3://bucket` or `file:///`.
    pub store_url: Url,
    pub store: Arc<dyn ObjectStore>,
    /// The root inside the store (no leading or trailing slash).
    pub prefix: Path,
    /// What the user gave, without any userinfo, for messages and the manifest.
    pub display: String,
}

impl Location {
    /// Parses `--<arg>` given as `s3://`, `file://` or a plain local path.
    pub fn parse(arg: &str, value: &str) -> Result<Location> {
        if value.trim().is_empty() {
            return Err(Error::argument(format!("--{arg}"), "must not be empty"));
        }
        if let Some(rest) = value.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::argument(
                    format!("--{arg}"),
                    format!("'{value}' has no bucket; use s3://bucket/prefix"),
                ));
            }
            let store = s3_store(bucket)?;
            return Ok(Location {
                store_url: Url::parse(&format!("s3://{bucket}"))
                    .map_err(|e| Error::argument(format!("--{arg}"), format!("'{value}': {e}")))?,
                store,
                prefix: Path::from(key.trim_matches('/')),
                display: format!("s3://{bucket}/{}", key.trim_matches('/')),
            });
        }
        let local = if let Some(_rest) = value.strip_prefix("file://") {
            let url = Url::parse(value)
                .map_err(|e| Error::argument(format!("--{arg}"), format!("'{value}': {e}")))?;
            url.to_file_path().map_err(|_| {
                Error::argument(
                    format!("--{arg}"),
                    format!("'{value}' is not an absolute file:// URL"),
                )
            })?
        } else if value.contains("://") {
            return Err(Error::argument(
                format!("--{arg}"),
                format!("'{value}': only s3://, file:// and local paths are supported"),
            ));
        } else {
            std::path::absolute(value)
                .map_err(|e| Error::argument(format!("--{arg}"), format!("'{value}': {e}")))?
        };
        let url = Url::from_directory_path(&local).map_err(|_| {
            Error::argument(
                format!("--{arg}"),
                format!("'{value}' is not a usable path"),
            )
        })?;
        let prefix = Path::from_url_path(url.path())
            .map_err(|e| Error::argument(format!("--{arg}"), format!("'{value}': {e}")))?;
        Ok(Location {
            store_url: Url::parse("file:///").expect("static URL"),
            store: Arc::new(LocalFileSystem::new()),
            prefix,
            display: local.display().to_string(),
        })
    }

    pub fn is_local(&self) -> bool {
        self.store_url.scheme() == "file"
    }

    /// A path below this location, from `/`-separated parts.
    pub fn child(&self, rel: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.clone().join(part);
        }
        p
    }

    /// A path relative to this location's root, as recorded in the manifest.
    pub fn relative<'a>(&self, path: &'a Path) -> &'a str {
        let full = path.as_ref();
        let root = self.prefix.as_ref();
        if root.is_empty() {
            return full;
        }
        full.strip_prefix(root)
            .map(|s| s.trim_start_matches('/'))
            .unwrap_or(full)
    }

    /// The URL DataFusion uses for `path` in this store.
    pub fn url_of(&self, path: &Path) -> String {
        let host = self.store_url.host_str().unwrap_or("");
        format!("{}://{host}/{}", self.store_url.scheme(), path.as_ref())
    }

    /// Where a path is, for messages: the store URL and the key.
    pub fn describe(&self, path: &Path) -> String {
        if self.is_local() {
            format!("/{}", path.as_ref())
        } else {
            self.url_of(path)
        }
    }

    /// Makes the store reachable from queries (local disk is registered by default).
    pub fn register(&self, ctx: &SessionContext) {
        if !self.is_local() {
            ctx.register_object_store(&self.store_url, self.store.clone());
        }
    }
}

/// An object-store registry that builds stores on demand from a URL: local
/// disk for `file://`, and for `s3://bucket` a store made from this process's
/// `AWS_*` variables, exactly as for `--input`/`--output`. Ballista executors
/// and the scheduler use it, so they reach the same buckets as the client.
#[derive(Debug, Default)]
pub struct StoreRegistry {
    stores: RwLock<HashMap<String, Arc<dyn ObjectStore>>>,
}

fn registry_key(url: &Url) -> String {
    format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""))
}

impl ObjectStoreRegistry for StoreRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.stores
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(registry_key(url), store)
    }

    fn get_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        let key = registry_key(url);
        if let Some(store) = self
            .stores
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(store.clone());
        }
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "file" => Arc::new(LocalFileSystem::new()),
            "s3" => s3_store(url.host_str().unwrap_or(""))
                .map_err(|e| DataFusionError::External(Box::new(e)))?,
            other => {
                return Err(DataFusionError::Configuration(format!(
                    "no object store for '{other}://' URLs ({url}); convmart reads s3:// and local files"
                )))
            }
        };
        let mut stores = self.stores.write().unwrap_or_else(|p| p.into_inner());
        Ok(stores.entry(key).or_insert(store).clone())
    }
}

/// The endpoint named in messages: `AWS_ENDPOINT_URL`/`AWS_ENDPOINT`, or AWS itself.
pub fn s3_endpoint_for_messages() -> String {
    std::env::var("AWS_ENDPOINT_URL_S3")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .or_else(|_| std::env::var("AWS_ENDPOINT"))
        .unwrap_or_else(|_| "AWS S3".to_string())
}

fn retry_timeout() -> Duration {
    // A batch job should ride out a short outage but not hang for minutes;
    // schedulers retry exit 75 anyway. CONVMART_S3_RETRY_SECS tunes it.
    let secs = std::env::var("CONVMART_S3_RETRY_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(20);
    Duration::from_secs(secs)
}

fn s3_store(bucket: &str) -> Result<Arc<dyn ObjectStore>> {
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(4),
            base: 2.0,
        },
        max_retries: 5,
        retry_timeout: retry_timeout(),
    };
    // Timeouts go in as config keys: `with_client_options` would replace the
    // client options `from_env` read (AWS_ALLOW_HTTP, AWS_PROXY_URL, ...).
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry);
    for (key, default) in [
        (ClientConfigKey::ConnectTimeout, "5s"),
        (ClientConfigKey::Timeout, "120s"),
    ] {
        let key = AmazonS3ConfigKey::Client(key);
        if builder.get_config_value(&key).is_none() {
            builder = builder.with_config(key, default);
        }
    }
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        builder = builder.with_region("us-east-1");
    }
    let endpoint = builder
        .get_config_value(&AmazonS3ConfigKey::Endpoint)
        .unwrap_or_default();
    let allow_http = builder
        .get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp))
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
    if endpoint.starts_with("http://") && !allow_http {
        return Err(Error::argument(
            "AWS_ALLOW_HTTP",
            format!(
                "the S3 endpoint {endpoint} is plain HTTP; set AWS_ALLOW_HTTP=true to allow it"
            ),
        ));
    }
    let store = builder.build().map_err(|e| {
        Error::argument(
            "S3 settings (AWS_* variables)",
            crate::error::one_line(&e.to_string()),
        )
    })?;
    Ok(Arc::new(store))
}

/// Maps an object-store failure to the user-facing error.
pub fn store_error(location: String, err: object_store::Error) -> Error {
    if let object_store::Error::NotFound { .. } = err {
        return Error::Data {
            file: location,
            message: "disappeared while it was being read".into(),
        };
    }
    let location = format!("{location} (endpoint {})", endpoint_of(&location));
    if is_auth_failure(&err) {
        return Error::AccessDenied {
            location,
            message: crate::error::one_line(&err.to_string()),
        };
    }
    Error::storage(location, err)
}

/// 401/403 answers: object_store reports some as PermissionDenied, but list
/// and multipart calls wrap them in Generic errors, so the chain is read too.
fn is_auth_failure(err: &object_store::Error) -> bool {
    if matches!(
        err,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) {
        return true;
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push(' ');
        text.push_str(&s.to_string());
        source = s.source();
    }
    [
        "status 401",
        "status 403",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AccessDenied",
        "InvalidToken",
        "ExpiredToken",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

fn endpoint_of(location: &str) -> String {
    if location.starts_with("s3://") {
        s3_endpoint_for_messages()
    } else {
        "local disk".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_become_absolute_prefixes() {
        let loc = Location::parse("output", "/tmp/x/out/").unwrap();
        assert_eq!(loc.prefix.as_ref(), "tmp/x/out");
        assert_eq!(
            loc.child("a/event_date=2024-01-01").as_ref(),
            "tmp/x/out/a/event_date=2024-01-01"
        );
        assert_eq!(loc.url_of(&loc.child("a")), "file:///tmp/x/out/a");
        let p = loc.child("t/x.parquet");
        assert_eq!(loc.relative(&p), "t/x.parquet");
    }

    #[test]
    fn unsupported_schemes_name_the_argument() {
        let e = Location::parse("input", "gs://b/x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--input") && e.contains("gs://b/x"), "{e}");
    }
}
