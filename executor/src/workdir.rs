//! The executor's work directory, `{work_dir}/{executor_id}`: its shuffle files and spills. It
//! is locked (an OS file lock on `.lock`) while the executor runs, so that an executor starting
//! on the same work dir can tell the folders of executors that died — killed, they could not
//! clean up — from those of executors still running, and remove the former.

use std::fs::File;
use std::path::{Path, PathBuf};

use ember_core::{EmberError, ExecutorId, Result};
use tracing::{info, warn};

const LOCK: &str = ".lock";
/// A folder being claimed carries this suffix until its lock is held.
const CLAIMING: &str = ".claiming";

/// A claimed work directory; the lock is held until it is dropped.
#[derive(Debug)]
pub struct WorkDir {
    pub path: PathBuf,
    _lock: File,
}

/// Claims `{root}/{id}` (emptied first: files of an earlier run under the same id are stale),
/// then removes the folders under `root` that no running executor holds.
pub fn claim(root: &Path, id: &ExecutorId) -> Result<WorkDir> {
    std::fs::create_dir_all(root)
        .map_err(|e| EmberError::User(format!("cannot create {}: {e}", root.display())))?;
    let path = root.join(id.as_str());
    let claiming = root.join(format!("{}{CLAIMING}", id.as_str()));
    let _ = std::fs::remove_dir_all(&claiming);
    std::fs::create_dir_all(&claiming)?;
    let lock = File::create(claiming.join(LOCK))?;
    lock.try_lock().map_err(|_| {
        EmberError::User(format!(
            "another executor with id {id} is starting in {}",
            root.display()
        ))
    })?;
    if path.exists() {
        match held(&path) {
            Some(true) => {
                let _ = std::fs::remove_dir_all(&claiming);
                return Err(EmberError::User(format!(
                    "an executor with id {id} already runs with work dir {}",
                    path.display()
                )));
            }
            _ => std::fs::remove_dir_all(&path)?,
        }
    }
    std::fs::rename(&claiming, &path)?;
    remove_abandoned(root);
    Ok(WorkDir { path, _lock: lock })
}

/// Whether the executor of `dir` still runs (holds its lock); `None` without a lock file.
fn held(dir: &Path) -> Option<bool> {
    let file = File::options()
        .read(true)
        .write(true)
        .open(dir.join(LOCK))
        .ok()?;
    Some(file.try_lock().is_err())
}

/// Removes every folder under `root` whose executor is gone (its lock is free).
fn remove_abandoned(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let claiming = dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(CLAIMING));
        if !dir.is_dir() || claiming {
            continue;
        }
        if held(&dir) == Some(false) {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {
                    info!(dir = %dir.display(), "removed the work dir of an executor that is gone")
                }
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "cannot remove an abandoned work dir")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_executors_folder_goes_and_a_running_ones_stays() {
        let root = tempfile::tempdir().unwrap();
        let running = claim(root.path(), &"running".into()).unwrap();
        std::fs::write(running.path.join("shuffle.data"), b"x").unwrap();
        let dead = claim(root.path(), &"dead".into()).unwrap();
        std::fs::write(dead.path.join("shuffle.data"), b"x").unwrap();
        let dead_path = dead.path.clone();
        drop(dead); // the process died: its lock is released, its files stay
        assert!(dead_path.join("shuffle.data").exists());
        let next = claim(root.path(), &"next".into()).unwrap();
        assert!(!dead_path.exists(), "the dead executor's files are removed");
        assert!(
            running.path.join("shuffle.data").exists(),
            "a running one's stay"
        );
        assert!(next.path.join(LOCK).exists());
        // The same id twice at once is refused; again after it stopped, its old files go.
        assert!(claim(root.path(), &"running".into()).is_err());
        let running_path = running.path.clone();
        drop(running);
        let again = claim(root.path(), &"running".into()).unwrap();
        assert!(!running_path.join("shuffle.data").exists());
        drop(again);
    }
}
