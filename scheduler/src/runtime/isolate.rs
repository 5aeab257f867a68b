//! Where statements are planned: on threads of their own, with stacks large enough for any
//! statement within [`PlanLimits`](crate::limits::PlanLimits), so that a deep statement cannot
//! overflow a server thread's stack (which would abort the process), and a panic while
//! planning fails that one statement, not the scheduler.

use std::future::Future;
use std::sync::OnceLock;

use ember_core::{EmberError, Result};
use tokio::runtime::Runtime;

/// Stack of each planning thread. Address space only: pages are touched as deep as a plan
/// goes, and the limits keep that far below this.
const PLANNING_STACK_BYTES: usize = 256 << 20;

fn planning_runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .thread_name("ember-planner")
            // As many as the machine has cores (at least two): statements that run on the
            // scheduler (DDL, queries reading no files) do not hold up everyone's planning.
            .worker_threads(
                std::thread::available_parallelism()
                    .map_or(2, |n| n.get())
                    .max(2),
            )
            .thread_stack_size(PLANNING_STACK_BYTES)
            .enable_all()
            .build()
            .expect("the planning threads start")
    })
}

/// Runs `planning` on a planning thread and returns what it returned; a panic becomes an
/// internal error of this statement. Dropping the returned future (a client gone) does not
/// stop it: a submission is recorded and handed to the driver whole, or not at all (a job
/// recorded but never dispatched would wait for the next leader).
pub(crate) async fn planned<T, F>(planning: F) -> Result<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    match planning_runtime().spawn(planning).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => {
            let message = ember_core::error::panic_message(e.into_panic().as_ref());
            tracing::error!(panic = %message, "planning a statement panicked");
            Err(EmberError::Internal(format!(
                "planning this statement failed with an internal error ({message}); the \
                 scheduler keeps serving other statements"
            )))
        }
        Err(_) => Err(EmberError::Cancelled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_fails_the_statement_only() {
        let error = planned(async { panic!("boom") as Result<()> })
            .await
            .unwrap_err();
        assert!(
            matches!(error, EmberError::Internal(ref m) if m.contains("boom")),
            "{error}"
        );
        assert_eq!(planned(async { Ok(7) }).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn deep_recursion_fits_on_a_planning_thread() {
        fn depth(n: u64) -> u64 {
            // ~1 KiB of stack per level: 20,000 levels overflow a 2 MiB server thread.
            let pad = std::hint::black_box([n as u8; 1024]);
            if n == 0 {
                pad[0] as u64
            } else {
                1 + depth(n - 1)
            }
        }
        assert_eq!(planned(async { Ok(depth(20_000)) }).await.unwrap(), 20_000);
    }
}
