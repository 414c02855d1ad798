//! The retry schedule every kiln binary uses: exponential backoff that starts at a first delay,
//! doubles with each retry and stops growing at a cap. One schedule for the builder's downloads,
//! kiln-firstboot's datasource requests and kubectl-kiln's API calls and evictions; each caller
//! keeps its own loop (blocking or async, interruptible or not) and its own idea of what is worth
//! retrying.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max }
    }

    /// The wait before retry `n` (1 for the first retry, 0 for none): `first × 2^(n-1)`, at most
    /// `max`. Never overflows, however many retries.
    pub fn delay(&self, retry: u32) -> Duration {
        if retry == 0 {
            return Duration::ZERO;
        }
        let factor = 2u32.checked_pow(retry - 1).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_first_delay_up_to_the_cap_without_overflow() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let d: Vec<u128> = (0..=8).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(d, [0, 100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(5));
        let huge = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::MAX);
        assert_eq!(huge.delay(40), Duration::MAX);
    }
}
