//! One way to wait before trying again: pauses that double from a first one up to a ceiling,
//! and a wait that gives up at shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The pause before the next try: the first, then twice the last, up to the ceiling.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }

    /// The last try succeeded: the next failure starts from the first pause again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps the next pause; false when `shutdown` came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let pause = self.next_pause();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(pause) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_ceiling_and_reset() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(350));
        let pauses: Vec<Duration> = (0..4).map(|_| b.next_pause()).collect();
        assert_eq!(pauses, [ms(100), ms(200), ms(350), ms(350)]);
        b.reset();
        assert_eq!(b.next_pause(), ms(100));
    }

    #[tokio::test]
    async fn a_wait_ends_at_shutdown() {
        let mut b = Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600));
        let token = CancellationToken::new();
        token.cancel();
        assert!(!b.wait(&token).await);
    }
}
