//! The service registry as both APIs consult it: the admin REST API
//! (join tokens, OAuth clients) and the gRPC API (certificate signing).
use ward_store::{Service, Store, StoreError};

/// Why a named service could not be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegistryError {
    /// No such service: says how to register it.
    #[error("service {ns}/{name} is not registered: add it with `ward service add {name} --namespace {ns}`")]
    NotRegistered { ns: String, name: String },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The registered service `ns/name`.
pub(crate) async fn registered(
    store: &dyn Store,
    ns: &str,
    name: &str,
) -> Result<Service, RegistryError> {
    store
        .get_service(ns, name)
        .await?
        .ok_or_else(|| RegistryError::NotRegistered {
            ns: ns.to_string(),
            name: name.to_string(),
        })
}
