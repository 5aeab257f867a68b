//! Identifiers of jobs, stages, tasks and executors.

use std::fmt;

/// A job: one query submitted by a client.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(String);

impl JobId {
    /// A fresh, random job id.
    pub fn new_random() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self(id[..16].to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for JobId {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for JobId {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stage within a job; stage ids are small integers assigned by the distributed planner.
pub type StageId = u32;

/// An executor process (or an embedded executor), unique within a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecutorId(String);

impl ExecutorId {
    pub fn new_random() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self(format!("exec-{}", &id[..8]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for ExecutorId {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for ExecutorId {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl fmt::Display for ExecutorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One attempt at running one partition of one stage.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    pub job_id: JobId,
    pub stage_id: StageId,
    pub partition: u32,
    pub attempt: u32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}#{}",
            self.job_id, self.stage_id, self.partition, self.attempt
        )
    }
}
