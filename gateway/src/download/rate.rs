//! The bandwidth cap (`[download] max-bytes-per-sec`): one token bucket shared by every
//! transfer of the agent (store files, firmware streams, delta ranges), so the cap holds for
//! their sum. A transfer takes its bytes after receiving a chunk and sleeps off any debt
//! before reading the next, so the socket's receive window throttles the sender.
//! The arithmetic is a pure function ([`charge`]) apart from the clock and the sleep.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The bucket: how many bytes may pass now (negative: owed), as of `at`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    pub at: Instant,
}

/// A cap of `rate` bytes a second with a burst of `burst` bytes.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

/// `bucket` refilled at `rate` up to `burst` by `now`, less `n` bytes; how long the taker
/// waits so the bucket is not in debt.
pub fn charge(bucket: Bucket, rate: f64, burst: f64, now: Instant, n: usize) -> (Bucket, Duration) {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    let tokens = (bucket.tokens + elapsed * rate).min(burst) - n as f64;
    let wait = if tokens < 0.0 {
        Duration::from_secs_f64(-tokens / rate)
    } else {
        Duration::ZERO
    };
    (Bucket { tokens, at: now }, wait)
}

impl RateLimit {
    /// A cap of `bytes_per_sec` (non-zero); the burst is a quarter second's worth, at least
    /// 16 KiB, so short bursts do not overshoot the cap measured over a minute.
    pub fn new(bytes_per_sec: u64) -> RateLimit {
        let rate = bytes_per_sec.max(1) as f64;
        let burst = (rate / 4.0).max(16.0 * 1024.0);
        RateLimit {
            rate,
            burst,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                at: Instant::now(),
            }),
        }
    }

    /// Takes `n` bytes that were just received, waiting off what the cap does not allow yet.
    pub async fn take(&self, n: usize) {
        let wait = {
            let mut b = self.bucket.lock().expect("rate bucket lock");
            let (next, wait) = charge(*b, self.rate, self.burst, Instant::now(), n);
            *b = next;
            wait
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_within_the_burst_passes_and_debt_is_waited_off_at_the_rate() {
        let t0 = Instant::now();
        let full = Bucket {
            tokens: 1000.0,
            at: t0,
        };
        let (b, wait) = charge(full, 1000.0, 1000.0, t0, 600);
        assert_eq!((b.tokens, wait), (400.0, Duration::ZERO));
        // 1000 more bytes at once: 600 owed, 0.6 s at 1000 B/s.
        let (b, wait) = charge(b, 1000.0, 1000.0, t0, 1000);
        assert_eq!(b.tokens, -600.0);
        assert_eq!(wait, Duration::from_millis(600));
        // After the wait the debt is paid; the bucket never holds more than the burst.
        let later = t0 + Duration::from_secs(10);
        let (b, wait) = charge(b, 1000.0, 1000.0, later, 0);
        assert_eq!((b.tokens, wait), (1000.0, Duration::ZERO));
    }

    #[test]
    fn over_a_minute_the_bytes_passed_follow_the_rate_within_the_burst() {
        // 16 KiB chunks taken back to back, each after the wait the one before asked for.
        let (rate, burst, chunk) = (100_000.0, 25_000.0, 16 * 1024);
        let t0 = Instant::now();
        let (mut now, mut passed) = (t0, 0usize);
        let mut b = Bucket {
            tokens: burst,
            at: t0,
        };
        while passed < 6_000_000 {
            let (next, wait) = charge(b, rate, burst, now, chunk);
            b = next;
            now += wait;
            passed += chunk;
        }
        let elapsed = (now - t0).as_secs_f64();
        assert!(
            (elapsed - (passed as f64 - burst) / rate).abs() < 0.01,
            "{elapsed}"
        );
        let average = passed as f64 / elapsed;
        assert!(
            average <= rate * 1.01 && average >= rate * 0.99,
            "{average}"
        );
    }
}
