//! The failure policy: the one exhaustive table (docs/contract.md §2) that decides what a
//! provider's `Failure` does — fall back or stop, count for the circuit breaker or not, cool down
//! for `Retry-After`. The engine hands it to every deployment as a `Policy` (the deployment's
//! call applies the `Decision` to its breaker and limits); the walk reads the same `Decision`.

use std::sync::Arc;
use std::time::Duration;

use crate::config::BreakerConfig;
use crate::deployment::{Decision, FailurePolicy};
use crate::protocol::ErrorKind;
use crate::providers::Failure;

/// The table with what it reads from the config: `[breaker]` and `routing.fallback_on_auth`.
pub struct Policy {
    breaker: Arc<BreakerConfig>,
    fallback_on_auth: bool,
}

impl Policy {
    pub fn new(breaker: Arc<BreakerConfig>, fallback_on_auth: bool) -> Self {
        Self {
            breaker,
            fallback_on_auth,
        }
    }
}

impl FailurePolicy for Policy {
    fn decide(&self, failure: &Failure) -> Decision {
        decide(failure, &self.breaker, self.fallback_on_auth)
    }
}

/// The one exhaustive decision table of docs/contract.md §2.
pub fn decide(failure: &Failure, breaker: &BreakerConfig, fallback_on_auth: bool) -> Decision {
    let fall = |kind, count| Decision {
        kind,
        fall_back: true,
        count,
        cool_down: None,
    };
    let stop = |kind| Decision {
        kind,
        fall_back: false,
        count: false,
        cool_down: None,
    };
    let decision = match failure {
        Failure::Status {
            status,
            retry_after,
            ..
        } => match *status {
            400 | 413 | 422 => stop(ErrorKind::InvalidRequest),
            401 | 403 if fallback_on_auth => fall(ErrorKind::Auth, false),
            401 | 403 => stop(ErrorKind::Auth),
            404 => fall(ErrorKind::NotFound, false),
            // The provider does not take the request as asked (method, conflict, gone, payment):
            // another provider may; this one is not failing.
            402 | 405..=407 | 409..=412 | 414..=421 | 423..=428 | 430..=499 => {
                fall(ErrorKind::Unavailable, false)
            }
            408 => fall(ErrorKind::Unavailable, true),
            429 => Decision {
                cool_down: retry_after.map(|asked| capped_cool_down(asked, breaker)),
                ..fall(ErrorKind::RateLimited, true)
            },
            // 500, 502, 503, 504, Anthropic's 529 overloaded, and every other server error.
            500..=599 => fall(ErrorKind::Unavailable, true),
            // Informational, redirects and non-HTTP codes are not a provider reply we can use.
            0..=399 | 600.. => fall(ErrorKind::Unavailable, true),
        },
        Failure::Timeout
        | Failure::Connect(_)
        | Failure::Transport(_)
        | Failure::InvalidBody(_) => fall(ErrorKind::Unavailable, true),
        Failure::DeadlineSpent => stop(ErrorKind::Timeout),
        // Our own bound on a stream, not the provider failing (a long answer is not an outage;
        // a stalled one is caught by the idle `timeout`). It only happens once chunks went out,
        // when falling back is no longer possible anyway.
        Failure::StreamDuration(_) => fall(ErrorKind::Timeout, false),
        // The request, not the provider, is at fault here; a provider of another kind may take it.
        Failure::Untranslatable(_) => fall(ErrorKind::InvalidRequest, false),
    };
    match failure.status() {
        Some(s) if breaker.ignored_status.contains(&s) => Decision {
            count: false,
            ..decision
        },
        _ => decision,
    }
}

/// A provider's `Retry-After`, at most `breaker.max_retry_after`: a misconfigured proxy's
/// `Retry-After: 31536000` must not take a deployment away for a year.
fn capped_cool_down(asked: Duration, breaker: &BreakerConfig) -> Duration {
    let cap = breaker.max_retry_after;
    if asked > cap {
        tracing::warn!(
            asked_s = asked.as_secs_f64(),
            cap_s = cap.as_secs_f64(),
            "Retry-After above breaker.max_retry_after: cooling down for the cap"
        );
        cap
    } else {
        asked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: u16) -> Failure {
        Failure::Status {
            status: s,
            message: String::new(),
            retry_after: None,
        }
    }

    #[test]
    fn the_contract_table() {
        let b = BreakerConfig::default();
        let d = |f: &Failure| {
            let d = decide(f, &b, false);
            (d.kind, d.fall_back, d.count)
        };
        use ErrorKind::*;
        assert_eq!(d(&status(400)), (InvalidRequest, false, false));
        assert_eq!(d(&status(401)), (Auth, false, false));
        assert_eq!(d(&status(403)), (Auth, false, false));
        assert_eq!(d(&status(404)), (NotFound, true, false));
        assert_eq!(d(&status(429)), (RateLimited, true, true));
        for s in [500, 502, 503, 504, 529] {
            assert_eq!(d(&status(s)), (Unavailable, true, true), "{s}");
        }
        assert_eq!(d(&Failure::Timeout), (Unavailable, true, true));
        assert_eq!(
            d(&Failure::Transport("reset".into())),
            (Unavailable, true, true)
        );
        assert_eq!(
            d(&Failure::InvalidBody("x".into())),
            (Unavailable, true, true)
        );
        assert_eq!(d(&Failure::Connect("x".into())), (Unavailable, true, true));
        assert_eq!(d(&Failure::DeadlineSpent), (Timeout, false, false));
        let u = Failure::Untranslatable("an `input_audio` content part".into());
        assert_eq!(d(&u), (InvalidRequest, true, false));
        assert_eq!(
            u.describe(),
            "cannot translate the request for this provider: an `input_audio` content part"
        );
    }

    #[test]
    fn auth_falls_back_only_when_configured() {
        let b = BreakerConfig::default();
        let d = decide(&status(401), &b, true);
        assert!(d.fall_back && !d.count);
    }

    #[test]
    fn retry_after_cools_down_and_ignored_statuses_do_not_count() {
        let mut b = BreakerConfig::default();
        let f = Failure::Status {
            status: 429,
            message: String::new(),
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(
            decide(&f, &b, false).cool_down,
            Some(Duration::from_secs(7))
        );
        b.ignored_status.push(503);
        assert!(!decide(&status(503), &b, false).count);
    }

    #[test]
    fn retry_after_is_capped_at_max_retry_after() {
        let b = BreakerConfig {
            max_retry_after: Duration::from_secs(300),
            ..BreakerConfig::default()
        };
        let asked = |d: Duration| {
            let f = Failure::Status {
                status: 429,
                message: String::new(),
                retry_after: Some(d),
            };
            decide(&f, &b, false).cool_down
        };
        let cap = Some(Duration::from_secs(300));
        assert_eq!(asked(Duration::from_secs(31_536_000)), cap, "a year");
        assert_eq!(asked(Duration::MAX), cap, "`Retry-After: 1e20`, saturated");
        assert_eq!(asked(Duration::from_secs(u64::MAX / 2)), cap, "1e19");
        assert_eq!(asked(Duration::from_secs(300)), cap);
        assert_eq!(asked(Duration::from_secs(7)), Some(Duration::from_secs(7)));
        assert_eq!(asked(Duration::ZERO), Some(Duration::ZERO));
    }

    #[test]
    fn a_stream_cut_by_its_overall_bound_is_a_timeout_that_does_not_count() {
        let f = Failure::StreamDuration(Duration::from_secs(600));
        let d = decide(&f, &BreakerConfig::default(), false);
        assert_eq!(
            (d.kind, d.count, d.cool_down),
            (ErrorKind::Timeout, false, None)
        );
        assert_eq!(f.kind_name(), "stream_duration");
        assert_eq!(
            f.describe(),
            "the stream ran past max_stream_duration (10m)"
        );
    }

    /// `Retry-After` as any provider may send it: parsed without panicking, and the cool-down
    /// it asks for is capped, whatever it says.
    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn retry_after_takes_any_header_value(
                value in prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..80),
                    "\\PC{0,80}".prop_map(String::into_bytes),
                    "[-+]?[0-9]{0,30}(\\.[0-9]{0,10})?(e[-+]?[0-9]{1,4})?".prop_map(String::into_bytes),
                    "(Mon|Sun), [0-9]{1,3} (Jan|Feb|Nov|Foo) [0-9]{1,6} [0-9:]{0,9} GMT".prop_map(String::into_bytes),
                ],
                name in prop::sample::select(&["retry-after", "retry-after-ms"][..]),
            ) {
                let Ok(value) = reqwest::header::HeaderValue::from_bytes(&value) else {
                    return Ok(());
                };
                let mut headers = reqwest::header::HeaderMap::new();
                headers.insert(name, value);
                let asked = crate::providers::http::retry_after(&headers);
                let breaker = BreakerConfig {
                    max_retry_after: Duration::from_secs(300),
                    ..BreakerConfig::default()
                };
                let f = Failure::Status { status: 429, message: String::new(), retry_after: asked };
                let cool = decide(&f, &breaker, false).cool_down;
                prop_assert!(cool.is_none_or(|d| d <= Duration::from_secs(300)));
                prop_assert!(cool.is_none_or(|d| std::time::Instant::now().checked_add(d).is_some()));
            }
        }
    }
}
