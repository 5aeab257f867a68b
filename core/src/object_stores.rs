//! Object stores: `s3://` on any S3-compatible endpoint, next to local paths.
//!
//! Every process (scheduler, executor, client session) resolves `s3://bucket/...` URLs through
//! [`EmberObjectStores`], which builds a store per bucket on first use from the process's own
//! [`ObjectStoreConfig`] (flags, `EMBER_S3_*`, then the standard `AWS_*` variables). Credentials
//! therefore never travel in plans, job records or catalog entries: each process holds its own,
//! and `Debug` output redacts the secret.

use std::fmt;
use std::sync::Arc;

use clap::Parser;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use url::Url;

/// How to reach S3-compatible object stores. Unset values fall back to the `AWS_*`
/// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
/// `AWS_ENDPOINT`, ...), as AWS tools read them.
#[derive(Clone, Parser)]
pub struct ObjectStoreConfig {
    /// Endpoint of an S3-compatible store (MinIO, Ceph, moto, ...), e.g. http://minio:9000;
    /// unset: AWS S3.
    #[arg(long = "s3-endpoint", env = "EMBER_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// S3 region (default: AWS_REGION, else us-east-1).
    #[arg(long = "s3-region", env = "EMBER_S3_REGION")]
    pub s3_region: Option<String>,

    /// Access key id (prefer the environment variable to the flag: flags show in `ps`).
    #[arg(
        long = "s3-access-key-id",
        env = "EMBER_S3_ACCESS_KEY_ID",
        hide_env_values = true
    )]
    pub s3_access_key_id: Option<String>,

    /// Secret access key (prefer the environment variable to the flag: flags show in `ps`).
    #[arg(
        long = "s3-secret-access-key",
        env = "EMBER_S3_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub s3_secret_access_key: Option<String>,

    /// Address buckets as `endpoint/bucket` (path style, what most S3-compatible servers
    /// expect) rather than `bucket.endpoint`.
    #[arg(long = "s3-path-style", env = "EMBER_S3_PATH_STYLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub s3_path_style: bool,

    /// Allow plain-HTTP endpoints (a store inside the cluster's network).
    #[arg(long = "s3-allow-http", env = "EMBER_S3_ALLOW_HTTP", default_value_t = false, action = clap::ArgAction::Set)]
    pub s3_allow_http: bool,
}

impl ObjectStoreConfig {
    /// The configuration the environment gives (for clients, which take no flags); a
    /// malformed `EMBER_S3_*` value is an error naming it.
    pub fn from_env() -> crate::Result<Self> {
        Self::try_parse_from(["ember"]).map_err(|e| {
            crate::EmberError::User(format!(
                "object store settings in the environment: {}",
                e.render().to_string().trim()
            ))
        })
    }

    fn s3_builder(&self, bucket: &str) -> AmazonS3Builder {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(endpoint) = &self.s3_endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(self.s3_allow_http || endpoint.starts_with("http://"));
        } else if self.s3_allow_http {
            builder = builder.with_allow_http(true);
        }
        let region = self
            .s3_region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".to_string());
        builder = builder
            .with_region(region)
            .with_virtual_hosted_style_request(!self.s3_path_style);
        if let Some(key) = &self.s3_access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &self.s3_secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        builder
    }
}

impl fmt::Debug for ObjectStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreConfig")
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_region", &self.s3_region)
            .field(
                "s3_access_key_id",
                &self.s3_access_key_id.as_ref().map(|_| "<set>"),
            )
            .field(
                "s3_secret_access_key",
                &self.s3_secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("s3_path_style", &self.s3_path_style)
            .field("s3_allow_http", &self.s3_allow_http)
            .finish()
    }
}

/// DataFusion's registry (local files, and stores registered explicitly), plus `s3://`
/// buckets built on first use from the process's configuration.
#[derive(Debug)]
pub struct EmberObjectStores {
    config: ObjectStoreConfig,
    registry: DefaultObjectStoreRegistry,
}

impl EmberObjectStores {
    pub fn new(config: ObjectStoreConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            registry: DefaultObjectStoreRegistry::new(),
        })
    }
}

impl ObjectStoreRegistry for EmberObjectStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.registry.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        self.registry.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.registry.get_store(url) {
            return Ok(store);
        }
        match url.scheme() {
            "s3" | "s3a" => {
                let bucket = url.host_str().filter(|b| !b.is_empty()).ok_or_else(|| {
                    DataFusionError::Configuration(format!("{url}: an s3:// URL names a bucket"))
                })?;
                let store: Arc<dyn ObjectStore> =
                    Arc::new(self.config.s3_builder(bucket).build().map_err(|e| {
                        DataFusionError::Configuration(format!(
                            "cannot set up S3 for bucket {bucket}: {e}"
                        ))
                    })?);
                self.registry.register_store(url, Arc::clone(&store));
                Ok(store)
            }
            scheme => Err(DataFusionError::Configuration(format!(
                "{url}: no object store for {scheme}:// (Ember reads local paths and s3://)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let config = ObjectStoreConfig {
            s3_access_key_id: Some("AKIDEXAMPLE".into()),
            s3_secret_access_key: Some("very-secret".into()),
            ..ObjectStoreConfig::from_env().unwrap()
        };
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("very-secret") && !shown.contains("AKIDEXAMPLE"),
            "{shown}"
        );
    }

    #[test]
    fn s3_buckets_resolve_and_other_schemes_are_refused_clearly() {
        let stores = EmberObjectStores::new(ObjectStoreConfig {
            s3_endpoint: Some("http://127.0.0.1:1".into()),
            ..ObjectStoreConfig::from_env().unwrap()
        });
        let a = stores
            .get_store(&Url::parse("s3://bucket-a/x").unwrap())
            .unwrap();
        let again = stores
            .get_store(&Url::parse("s3://bucket-a/y").unwrap())
            .unwrap();
        assert!(Arc::ptr_eq(&a, &again), "one store per bucket");
        assert!(
            stores
                .get_store(&Url::parse("file:///tmp").unwrap())
                .is_ok()
        );
        let e = stores
            .get_store(&Url::parse("gs://bucket/x").unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("gs://"), "{e}");
    }
}

/// An object-store error as Ember's: permission, credential, path and capability errors will
/// not go away by trying again (the user's setup must change); anything else (network, server,
/// throttling, timeouts) may, and is `Unavailable`.
pub fn store_error(e: object_store::Error) -> crate::EmberError {
    use object_store::Error as E;
    match e {
        E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. } => {
            crate::EmberError::User(format!("object store: {e}"))
        }
        other => crate::EmberError::Unavailable(format!("object store: {other}")),
    }
}

#[cfg(test)]
mod error_tests {
    use crate::error::ErrorKind;

    use super::store_error;

    #[test]
    fn object_store_errors_are_classed_retryable_or_not() {
        let cases = [
            (
                object_store::Error::PermissionDenied {
                    path: "b/k".into(),
                    source: "denied".into(),
                },
                ErrorKind::User,
            ),
            (
                object_store::Error::Generic {
                    store: "S3",
                    source: "connection reset".into(),
                },
                ErrorKind::Unavailable,
            ),
            (
                object_store::Error::NotImplemented {
                    operation: "rename".into(),
                    implementer: "S3".into(),
                },
                ErrorKind::User,
            ),
        ];
        for (e, kind) in cases {
            assert_eq!(store_error(e).kind(), kind);
        }
    }
}
