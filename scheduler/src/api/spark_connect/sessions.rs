//! Spark sessions: named by the client, owned by the caller who opened them, holding
//! temporary views, settings and the operations still running or not yet released.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_core::JobId;
use ember_core::job::JobStatus;
use parking_lot::Mutex;
use tonic::Status;

use crate::spark::SessionViews;

/// A session unused this long is forgotten (its views with it), as Spark's server does.
const IDLE: Duration = Duration::from_secs(3600);

/// A session's key: its owner (the caller who opened it) and the client's session id.
type SessionKey = (Option<String>, String);

#[derive(Default)]
pub(super) struct Sessions {
    open: Mutex<HashMap<SessionKey, Arc<Session>>>,
}

pub(super) struct Session {
    pub id: String,
    /// The server's name for this incarnation: a client that sees it change knows its
    /// session (views, settings) is gone, after a restart or a failover.
    pub server_id: String,
    pub views: Arc<SessionViews>,
    pub config: Mutex<BTreeMap<String, String>>,
    pub operations: Mutex<HashMap<String, Operation>>,
    used: Mutex<Instant>,
}

#[derive(Default, Clone)]
pub(super) struct Operation {
    pub tags: Vec<String>,
    /// The job running it, once submitted.
    pub job: Option<JobId>,
    /// Its finished job, kept until released so that the client may reattach.
    pub finished: Option<JobStatus>,
}

impl Sessions {
    /// The session `id` of `owner`, opened now if new. A client that names a server-side
    /// session other than this one's had its session on another server (or before a
    /// restart): it is told so rather than handed an empty one.
    pub fn open(
        &self,
        owner: Option<&str>,
        id: &str,
        observed_server_id: Option<&str>,
    ) -> Result<Arc<Session>, Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument("the request names no session"));
        }
        let mut open = self.open.lock();
        open.retain(|_, s| s.used.lock().elapsed() < IDLE);
        let key = (owner.map(str::to_string), id.to_string());
        let session = open
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Session {
                    id: id.to_string(),
                    server_id: uuid::Uuid::new_v4().to_string(),
                    views: Arc::new(SessionViews::default()),
                    config: Mutex::new(BTreeMap::new()),
                    operations: Mutex::new(HashMap::new()),
                    used: Mutex::new(Instant::now()),
                })
            })
            .clone();
        if let Some(observed) = observed_server_id
            && !observed.is_empty()
            && observed != session.server_id
        {
            return Err(Status::failed_precondition(format!(
                "[INVALID_HANDLE.SESSION_CHANGED] the session {id} is no longer known to this \
                 server (it restarted or another scheduler took over); create a new session"
            )));
        }
        *session.used.lock() = Instant::now();
        Ok(session)
    }

    /// Ends a session; its operations' jobs are returned to be cancelled and released.
    pub fn close(&self, owner: Option<&str>, id: &str) -> Option<Arc<Session>> {
        self.open
            .lock()
            .remove(&(owner.map(str::to_string), id.to_string()))
    }
}

impl Session {
    pub fn start(&self, operation_id: &str, tags: Vec<String>) -> Result<(), Status> {
        let mut operations = self.operations.lock();
        if operations.contains_key(operation_id) {
            return Err(Status::already_exists(format!(
                "[INVALID_HANDLE.OPERATION_ALREADY_EXISTS] operation {operation_id}"
            )));
        }
        operations.insert(
            operation_id.to_string(),
            Operation {
                tags,
                ..Operation::default()
            },
        );
        Ok(())
    }

    pub fn update(&self, operation_id: &str, change: impl FnOnce(&mut Operation)) {
        if let Some(op) = self.operations.lock().get_mut(operation_id) {
            change(op);
        }
    }

    pub fn operation(&self, operation_id: &str) -> Option<Operation> {
        self.operations.lock().get(operation_id).cloned()
    }

    /// Forgets an operation; its job, to be released.
    pub fn forget(&self, operation_id: &str) -> Option<JobId> {
        self.operations
            .lock()
            .remove(operation_id)
            .and_then(|op| op.job)
    }

    /// The operations to interrupt: all, those with `tag`, or the one named.
    pub fn select(&self, tag: Option<&str>, id: Option<&str>) -> Vec<(String, Option<JobId>)> {
        self.operations
            .lock()
            .iter()
            .filter(|(op_id, op)| match (tag, id) {
                (Some(tag), _) => op.tags.iter().any(|t| t == tag),
                (None, Some(id)) => op_id.as_str() == id,
                (None, None) => true,
            })
            .map(|(id, op)| (id.clone(), op.job.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_belong_to_their_callers() {
        let sessions = Sessions::default();
        let alice = sessions.open(Some("alice"), "s1", None).unwrap();
        let bob = sessions.open(Some("bob"), "s1", None).unwrap();
        assert_ne!(alice.server_id, bob.server_id);
        let again = sessions.open(Some("alice"), "s1", None).unwrap();
        assert_eq!(again.server_id, alice.server_id);
        // A client that knew another incarnation is told its session is gone.
        let err = sessions
            .open(Some("alice"), "s1", Some("another"))
            .err()
            .unwrap();
        assert!(err.message().contains("SESSION_CHANGED"));
        assert!(sessions.open(None, "", None).is_err());
        assert!(sessions.close(Some("alice"), "s1").is_some());
        assert!(sessions.close(Some("alice"), "s1").is_none());
    }

    #[test]
    fn operations_are_selected_by_tag_or_id() {
        let sessions = Sessions::default();
        let s = sessions.open(None, "s", None).unwrap();
        s.start("op1", vec!["etl".into()]).unwrap();
        s.start("op2", vec![]).unwrap();
        assert!(s.start("op1", vec![]).is_err());
        assert_eq!(s.select(Some("etl"), None).len(), 1);
        assert_eq!(s.select(None, Some("op2"))[0].0, "op2");
        assert_eq!(s.select(None, None).len(), 2);
    }
}
