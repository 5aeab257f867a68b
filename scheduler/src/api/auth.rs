//! Authentication at the scheduler's port: every call is given its caller before a handler
//! runs — a user by a token, a process of the cluster by its mutual-TLS certificate, or
//! nobody where anonymous calls are allowed — and refused otherwise.

use std::sync::Arc;

use ember_core::auth::{Authenticator, Principal};
use ember_core::tls::Role;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

/// The header credentials travel in.
pub(crate) const AUTHORIZATION: &str = "authorization";

/// Names the caller of every request (in its extensions), or refuses it.
pub(crate) fn interceptor(
    auth: Arc<Authenticator>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let principal = caller_of(&auth, &request)?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

fn caller_of<T>(auth: &Authenticator, request: &Request<T>) -> Result<Principal, Status> {
    if let Some(header) = request.metadata().get(AUTHORIZATION) {
        return Ok(auth.authenticate(Some(header.as_bytes()))?);
    }
    // Schedulers and executors prove themselves with their certificates.
    match ember_core::tls::peer_role(request) {
        Some(role @ (Role::Scheduler | Role::Executor)) => Ok(Principal::Cluster(role)),
        _ => Ok(auth.authenticate(None)?),
    }
}

/// Whom a request's work belongs to: a user or `anonymous`; `None` for a process of the
/// cluster.
pub(crate) fn owner<T>(request: &Request<T>) -> Option<String> {
    match request.extensions().get::<Principal>()? {
        Principal::Cluster(_) => None,
        principal => Some(principal.name().to_string()),
    }
}

/// Whether the caller of `request` may act on work that `owner` submitted: its owner, a
/// process of the cluster, or anyone when the work has no recorded owner.
pub(crate) fn may_act_on<T>(request: &Request<T>, owner: Option<&str>) -> Result<(), Status> {
    let Some(owner) = owner else {
        return Ok(());
    };
    match request.extensions().get::<Principal>() {
        Some(Principal::Cluster(_)) | None => Ok(()),
        Some(principal) if principal.name() == owner => Ok(()),
        Some(principal) => Err(Status::permission_denied(format!(
            "this job belongs to {owner}, not to {}",
            principal.name()
        ))),
    }
}

/// The credentials a request carries.
pub(crate) type Credentials = Option<MetadataValue<Ascii>>;

pub(crate) fn credentials<T>(request: &Request<T>) -> Credentials {
    request.metadata().get(AUTHORIZATION).cloned()
}

/// A new request (to the leader) carrying `credentials`.
pub(crate) fn with_credentials<U>(credentials: Credentials, inner: U) -> Request<U> {
    let mut out = Request::new(inner);
    if let Some(header) = credentials {
        out.metadata_mut().insert(AUTHORIZATION, header);
    }
    out
}

/// The same request, for the leader: of its metadata, the caller's credentials travel on.
pub(crate) fn forward<T>(request: Request<T>) -> Request<T> {
    let credentials = credentials(&request);
    with_credentials(credentials, request.into_inner())
}
