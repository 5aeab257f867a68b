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

/// Set by a standby on a call it forwards for an anonymous client, so that the leader does not
/// take the standby's certificate for the caller. (A client sending it only makes itself
/// anonymous.)
const ANONYMOUS: &str = "ember-anonymous";

fn caller_of<T>(auth: &Authenticator, request: &Request<T>) -> Result<Principal, Status> {
    if let Some(header) = request.metadata().get(AUTHORIZATION) {
        return Ok(auth.authenticate(Some(header.as_bytes()))?);
    }
    if request.metadata().contains_key(ANONYMOUS) {
        return Ok(auth.authenticate(None)?);
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
    may_act_as(caller(request).as_ref(), owner)
}

/// The caller a request was given by the interceptor.
pub(crate) fn caller<T>(request: &Request<T>) -> Option<Principal> {
    request.extensions().get::<Principal>().cloned()
}

/// [`may_act_on`] for a caller taken from its request beforehand.
pub(crate) fn may_act_as(caller: Option<&Principal>, owner: Option<&str>) -> Result<(), Status> {
    let Some(owner) = owner else {
        return Ok(());
    };
    match caller {
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

/// The same request, for the leader: of its metadata, the caller's credentials travel on
/// (or the mark of an anonymous caller).
pub(crate) fn forward<T>(request: Request<T>) -> Request<T> {
    let credentials = credentials(&request);
    let anonymous = matches!(caller(&request), Some(Principal::Anonymous));
    let mut out = with_credentials(credentials, request.into_inner());
    if anonymous {
        out.metadata_mut()
            .insert(ANONYMOUS, tonic::metadata::MetadataValue::from_static("1"));
    }
    out
}

/// A call to the leader on behalf of an HTTP caller (the REST API and web UI of a standby):
/// its `authorization` header, or the mark of an anonymous caller.
pub(crate) fn forwarded_http<U>(authorization: Option<&[u8]>, inner: U) -> Request<U> {
    let header = authorization.and_then(|h| MetadataValue::try_from(h).ok());
    let anonymous = header.is_none();
    let mut out = with_credentials(header, inner);
    if anonymous {
        out.metadata_mut()
            .insert(ANONYMOUS, tonic::metadata::MetadataValue::from_static("1"));
    }
    out
}

/// Refuses a cluster call (registration, heartbeat, task report) from anyone but a process of
/// the cluster: with mutual TLS, by the role in its certificate (`tls::require_role`); without
/// it, by an executor's token (one of a user named `ember-executor…`), unless the cluster lets
/// anyone in.
pub(crate) fn require_cluster<T>(request: &Request<T>, roles: &[Role]) -> Result<(), Status> {
    if ember_core::tls::mutual() {
        return ember_core::tls::require_role(request, roles);
    }
    match caller(request) {
        Some(Principal::User(name)) if !ember_core::auth::is_executor(&name) => {
            Err(Status::permission_denied(format!(
                "this call is for the cluster's processes: an executor's token (a user named \
                 {}…) or mutual TLS; {name}'s token is a client's",
                ember_core::auth::EXECUTOR_USER
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_core::auth::AuthOptions;

    fn request(headers: &[(&'static str, &str)]) -> Request<()> {
        let mut request = Request::new(());
        for (key, value) in headers {
            request.metadata_mut().insert(*key, value.parse().unwrap());
        }
        request
    }

    #[test]
    fn an_anonymous_call_forwarded_by_a_standby_stays_anonymous() {
        let open = Authenticator::new(&AuthOptions::open()).unwrap();
        let forwarded = forward({
            let mut r = request(&[]);
            r.extensions_mut().insert(Principal::Anonymous);
            r
        });
        assert!(forwarded.metadata().contains_key(ANONYMOUS));
        assert_eq!(caller_of(&open, &forwarded).unwrap(), Principal::Anonymous);
        // Where anonymous calls are not let in, the mark gets none in.
        let token = ember_core::auth::new_token().unwrap();
        let closed = Authenticator::new(&AuthOptions {
            auth_tokens: Some(ember_core::auth::Credentials::line("alice", &token).unwrap()),
            ..AuthOptions::default()
        })
        .unwrap();
        let status = caller_of(&closed, &forwarded).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        // A user's call carries the user's credentials on, not the mark.
        let bearer = format!("Bearer {token}");
        let forwarded = forward({
            let mut r = request(&[(AUTHORIZATION, &bearer)]);
            r.extensions_mut().insert(Principal::User("alice".into()));
            r
        });
        assert!(!forwarded.metadata().contains_key(ANONYMOUS));
        assert_eq!(
            caller_of(&closed, &forwarded).unwrap(),
            Principal::User("alice".into())
        );
    }

    #[test]
    fn without_mutual_tls_only_executor_tokens_make_cluster_calls() {
        let call = |principal: Principal| {
            let mut r = request(&[]);
            r.extensions_mut().insert(principal);
            require_cluster(&r, &[Role::Executor])
        };
        assert!(call(Principal::User("ember-executor-7".into())).is_ok());
        let status = call(Principal::User("alice".into())).unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(call(Principal::Cluster(Role::Executor)).is_ok());
    }

    #[test]
    fn only_owners_and_the_cluster_act_on_owned_work() {
        let alice = Principal::User("alice".into());
        let bob = Principal::User("bob".into());
        assert!(may_act_as(Some(&alice), Some("alice")).is_ok());
        assert!(may_act_as(Some(&bob), Some("alice")).is_err());
        assert!(may_act_as(Some(&Principal::Anonymous), Some("alice")).is_err());
        assert!(may_act_as(Some(&Principal::Cluster(Role::Scheduler)), Some("alice")).is_ok());
        assert!(may_act_as(Some(&bob), None).is_ok());
    }
}
