//! Who may call the HTTP door: `[[http.keys]]` accepted as `Authorization: Bearer`, `x-api-key`
//! or `api-key`, compared in constant time (by SHA-256: the key itself is not held); each key's
//! `rpm` (governor's GCRA: a gateway's smoothing limit, bursts up to `rpm`) and daily spend cap,
//! which holds across instances through the cluster bucket (`share` writes this instance's spend
//! there and reads the cluster's total back).

use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hyper::HeaderMap;
use subtle::ConstantTimeEq;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::errors::HttpError;
use crate::cluster::{Link, key_spend};
use crate::config::{HttpKey, key_digest};
use crate::observe::keys::KeyUsage;
use crate::observe::spend::until_next_day;
use crate::protocol::ErrorKind;

pub struct Keys {
    keys: Vec<HttpKey>,
    limiters: Vec<Option<DefaultDirectRateLimiter>>,
    usage: Arc<KeyUsage>,
    /// Woken when a key spent something, so the spend reaches the bucket soon.
    spent: Notify,
    /// `breaker.max_retry_after`: the longest `Retry-After` told, as for the engine's refusals.
    max_wait: Duration,
}

impl Keys {
    pub fn new(keys: &[HttpKey], usage: Arc<KeyUsage>, max_wait: Duration) -> Self {
        Self {
            limiters: keys
                .iter()
                .map(|k| k.rpm.map(|n| RateLimiter::direct(Quota::per_minute(n))))
                .collect(),
            keys: keys.to_vec(),
            usage,
            spent: Notify::new(),
            max_wait,
        }
    }

    pub fn key(&self, i: usize) -> Option<&HttpKey> {
        self.keys.get(i)
    }

    /// The caller's key (its index), `None` when the door has no keys (loopback or
    /// `allow_unauthenticated`: a key sent there is ignored), or 401.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Option<usize>, HttpError> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let Some(presented) = presented(headers) else {
            return Err(HttpError::unauthorized(
                "no API key: send it as `Authorization: Bearer KEY`, `x-api-key` or `api-key`",
            ));
        };
        let digest = key_digest(presented);
        // Every key is compared, whichever matches: the time taken says nothing about which.
        let mut found = None;
        for (i, k) in self.keys.iter().enumerate() {
            if bool::from(k.sha256.ct_eq(&digest)) {
                found = Some(i);
            }
        }
        match found {
            Some(i) => Ok(Some(i)),
            None => Err(HttpError::unauthorized(
                "the API key is not one of [[http.keys]]",
            )),
        }
    }

    /// The key's `rpm` and daily cap, for one request.
    pub fn admit(&self, i: usize) -> Result<(), HttpError> {
        let name = self.usage.name(i);
        if let Some(Some(limiter)) = self.limiters.get(i)
            && let Err(not_until) = limiter.check()
        {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(HttpError::of(
                ErrorKind::RateLimited,
                format!(
                    "key `{name}` is over its rpm (http.keys): retry after {} ms",
                    wait.as_millis()
                ),
            )
            .retry_after(wait.min(self.max_wait)));
        }
        let (spent, cap) = self.usage.spent_and_cap(i);
        if let Some(cap) = cap
            && spent >= cap
        {
            return Err(HttpError::of(
                ErrorKind::BudgetExceeded,
                format!(
                    "key `{name}` spent ${spent:.6} today (UTC), its max_cost_usd_per_day is ${cap}"
                ),
            )
            .retry_after(until_next_day().min(self.max_wait)));
        }
        self.usage.count_request(i);
        Ok(())
    }

    pub fn record(&self, i: usize, cost_usd: f64) {
        if cost_usd > 0.0 {
            self.usage.record_cost(i, cost_usd);
            self.spent.notify_one();
        }
    }

    /// Until `stop`: adds what each key spent here to its cluster total in the bucket, and
    /// reads the totals of capped keys back (what other instances spent), at least every
    /// `EVERY`. Without the bucket (NATS down, `[cluster] enabled = false`) each instance holds
    /// the caps on its own spend and writes it once the bucket is back.
    pub async fn share(self: Arc<Self>, link: Arc<Link>, stop: CancellationToken) {
        const EVERY: Duration = Duration::from_millis(500);
        loop {
            tokio::select! {
                () = self.spent.notified() => {}
                () = tokio::time::sleep(EVERY) => {}
                () = stop.cancelled() => {}
            }
            if let Some(kv) = link.kv() {
                let day = self.usage.day();
                for (i, k) in self.keys.iter().enumerate() {
                    let units = self.usage.take_unflushed(i);
                    if units == 0 && k.max_cost_usd_per_day.is_none() {
                        continue;
                    }
                    match key_spend::add(&kv, &key_spend::key(&day, &k.name), units).await {
                        Ok(total) => self.usage.set_shared(i, total),
                        Err(e) => {
                            self.usage.unflush(i, units);
                            warn!(key = %k.name, error = %e, "could not share a key's spend");
                        }
                    }
                }
            }
            if stop.is_cancelled() {
                return;
            }
        }
    }
}

/// The key as the caller sent it.
fn presented(headers: &HeaderMap) -> Option<&str> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(auth) = text("authorization") {
        let (scheme, rest) = auth.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim())
            .filter(|k| !k.is_empty());
    }
    text("x-api-key")
        .or_else(|| text("api-key"))
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_WAIT: Duration = Duration::from_secs(300);

    fn key(name: &str, value: &str, rpm: Option<u32>, cap: Option<f64>) -> HttpKey {
        HttpKey {
            name: name.into(),
            sha256: key_digest(value),
            allowed: None,
            rpm: rpm.and_then(std::num::NonZeroU32::new),
            max_cost_usd_per_day: cap,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn keys_are_taken_from_each_header_openai_clients_use() {
        let ks = [
            key("a", "sk-a", None, None),
            key("b", "sk-b", Some(2), Some(0.5)),
        ];
        let keys = Keys::new(&ks, Arc::new(KeyUsage::new(&ks)), MAX_WAIT);
        let who = |pairs| {
            keys.authenticate(&headers(pairs))
                .map_err(|e| e.status.as_u16())
        };
        assert_eq!(who(&[("authorization", "Bearer sk-b")]), Ok(Some(1)));
        assert_eq!(who(&[("x-api-key", "sk-a")]), Ok(Some(0)));
        assert_eq!(who(&[("api-key", "sk-a")]), Ok(Some(0)));
        assert_eq!(who(&[("authorization", "Bearer sk-c")]), Err(401));
        assert_eq!(who(&[("authorization", "Basic sk-a")]), Err(401));
        assert_eq!(who(&[]), Err(401));
        // rpm 2: a burst of two, then 429 with a wait.
        assert!(keys.admit(1).is_ok() && keys.admit(1).is_ok());
        let e = keys.admit(1).unwrap_err();
        assert_eq!((e.status.as_u16(), e.kind.as_str()), (429, "rate_limited"));
        assert!(
            e.retry_after.is_some_and(|s| (1..=30).contains(&s)),
            "{:?}",
            e.retry_after
        );
        // The cap: spent is refused once reached.
        keys.record(0, 1.0);
        assert!(keys.admit(0).is_ok(), "key a has no cap");
        let open = Keys::new(&[], Arc::new(KeyUsage::new(&[])), MAX_WAIT);
        assert_eq!(
            open.authenticate(&headers(&[("x-api-key", "x")])).unwrap(),
            None
        );
    }

    #[test]
    fn a_key_over_its_daily_cap_is_refused_until_midnight_or_max_retry_after() {
        let ks = [key("b", "sk-b", None, Some(0.5))];
        let keys = Keys::new(&ks, Arc::new(KeyUsage::new(&ks)), MAX_WAIT);
        assert!(keys.admit(0).is_ok());
        keys.record(0, 0.5);
        let e = keys.admit(0).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.kind.as_str()),
            (429, "budget_exceeded")
        );
        assert!(e.retry_after.is_some_and(|s| (1..=300).contains(&s)));
    }
}
