//! Outlier detection (gRFC A50, plus Envoy's and Finagle's consecutive failures).
//!
//! Health checks catch a backend that *knows* it is unwell; outlier detection catches
//! one that does not: it answers the health check but fails the calls. Each interval the
//! channel compares every backend's calls with the others' and ejects outliers (no
//! new calls) for a time that grows with each ejection. A backend that fails N calls in
//! a row is ejected at once, without waiting for the interval.

use crate::load::{DEFAULT_FAILURE_CODES, Outcomes};
use rand::Rng;
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;

pub use crate::defaults::DEFAULT_BASE_EJECTION_TIME;
pub use crate::defaults::DEFAULT_CONSECUTIVE_FAILURES;
pub use crate::defaults::DEFAULT_EJECTION_INTERVAL as DEFAULT_INTERVAL;
pub use crate::defaults::DEFAULT_MAX_EJECTION_PERCENT;
pub use crate::defaults::DEFAULT_MAX_EJECTION_TIME;

/// Outlier detection settings. Off unless given to
/// [`Builder::outlier_detection`](crate::Builder::outlier_detection).
///
/// Ejection time = `base_ejection_time × times ejected`, capped at
/// `max(max_ejection_time, base_ejection_time)`; the count decays by one for each interval
/// the backend is not ejected. At most `max_ejection_percent` of the backends are ejected
/// at once, and at least one may always be.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct OutlierDetection {
    /// How often the algorithms run. Default [`DEFAULT_INTERVAL`].
    pub interval: Duration,
    /// First ejection's length. Default [`DEFAULT_BASE_EJECTION_TIME`].
    pub base_ejection_time: Duration,
    /// Longest ejection. Default [`DEFAULT_MAX_EJECTION_TIME`].
    pub max_ejection_time: Duration,
    /// Most backends ejected at once, in percent. Default [`DEFAULT_MAX_EJECTION_PERCENT`].
    pub max_ejection_percent: u32,
    /// The success-rate algorithm, or `None` to skip it. Default: on.
    pub success_rate: Option<SuccessRateEjection>,
    /// The failure-percentage algorithm, or `None` to skip it. Default: on.
    pub failure_percentage: Option<FailurePercentageEjection>,
    /// Eject after this many failures in a row (0: never). Default
    /// [`DEFAULT_CONSECUTIVE_FAILURES`].
    pub consecutive_failures: u32,
    /// The status codes that count as failures. Default: UNAVAILABLE,
    /// DEADLINE_EXCEEDED, INTERNAL, UNKNOWN, RESOURCE_EXHAUSTED (transport errors always
    /// count).
    pub failure_codes: Vec<Code>,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            base_ejection_time: DEFAULT_BASE_EJECTION_TIME,
            max_ejection_time: DEFAULT_MAX_EJECTION_TIME,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
            success_rate: Some(SuccessRateEjection::default()),
            failure_percentage: Some(FailurePercentageEjection::default()),
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            failure_codes: DEFAULT_FAILURE_CODES.to_vec(),
        }
    }
}

/// gRFC A50's success-rate algorithm: eject backends whose success rate is more than
/// `stdev_factor / 1000` standard deviations below the mean.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SuccessRateEjection {
    /// Standard deviations × 1000. Default 1900.
    pub stdev_factor: u32,
    /// Chance, in percent, that an outlier is ejected. Default 100.
    pub enforcement_percentage: u32,
    /// Backends with enough calls needed to run at all. Default 5.
    pub minimum_hosts: u32,
    /// Calls in the interval for a backend to count. Default 100.
    pub request_volume: u32,
}

impl Default for SuccessRateEjection {
    fn default() -> Self {
        Self {
            stdev_factor: 1900,
            enforcement_percentage: 100,
            minimum_hosts: 5,
            request_volume: 100,
        }
    }
}

/// gRFC A50's failure-percentage algorithm: eject backends failing more than `threshold`
/// percent of their calls.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FailurePercentageEjection {
    /// Failure percentage above which a backend is ejected. Default 85.
    pub threshold: u32,
    /// Chance, in percent, that an outlier is ejected. Default 100.
    pub enforcement_percentage: u32,
    /// Backends with enough calls needed to run at all. Default 5.
    pub minimum_hosts: u32,
    /// Calls in the interval for a backend to count. Default 50.
    pub request_volume: u32,
}

impl Default for FailurePercentageEjection {
    fn default() -> Self {
        Self {
            threshold: 85,
            enforcement_percentage: 100,
            minimum_hosts: 5,
            request_volume: 50,
        }
    }
}

impl OutlierDetection {
    /// Checks the settings; the error names the offending one.
    pub fn validate(&self) -> Result<(), crate::InvalidSetting> {
        let field = |name: &str, why: &str| {
            Err(crate::InvalidSetting::new(
                format!("outlier_detection.{name}"),
                why,
            ))
        };
        if self.interval.is_zero() {
            return field("interval", "must be > 0");
        }
        if self.base_ejection_time.is_zero() {
            return field("base_ejection_time", "must be > 0");
        }
        if self.max_ejection_percent > 100 {
            return field("max_ejection_percent", "must be at most 100");
        }
        let percent = |p: u32| p <= 100;
        if let Some(sr) = &self.success_rate
            && !percent(sr.enforcement_percentage)
        {
            return field("success_rate.enforcement_percentage", "must be at most 100");
        }
        if let Some(fp) = &self.failure_percentage
            && !(percent(fp.enforcement_percentage) && percent(fp.threshold))
        {
            return field(
                "failure_percentage",
                "threshold and enforcement_percentage must be at most 100",
            );
        }
        Ok(())
    }
}

/// A service config's `outlier_detection_experimental` as the channel runs it: A50's
/// settings, the default failure codes, and no ejection after consecutive failures
/// (A50 has none).
impl From<&crate::config::OutlierDetectionConfig> for OutlierDetection {
    fn from(config: &crate::config::OutlierDetectionConfig) -> Self {
        Self {
            interval: config.interval,
            base_ejection_time: config.base_ejection_time,
            max_ejection_time: config.max_ejection_time,
            max_ejection_percent: config.max_ejection_percent,
            success_rate: config
                .success_rate_ejection
                .as_ref()
                .map(|sr| SuccessRateEjection {
                    stdev_factor: sr.stdev_factor,
                    enforcement_percentage: sr.enforcement_percentage,
                    minimum_hosts: sr.minimum_hosts,
                    request_volume: sr.request_volume,
                }),
            failure_percentage: config.failure_percentage_ejection.as_ref().map(|fp| {
                FailurePercentageEjection {
                    threshold: fp.threshold,
                    enforcement_percentage: fp.enforcement_percentage,
                    minimum_hosts: fp.minimum_hosts,
                    request_volume: fp.request_volume,
                }
            }),
            consecutive_failures: 0,
            failure_codes: DEFAULT_FAILURE_CODES.to_vec(),
        }
    }
}

/// One backend's ejection state, kept by the channel's control task.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Ejection {
    /// Until when it is ejected, if it is.
    pub(crate) until: Option<Instant>,
    /// Times ejected, decayed by one per interval spent not ejected.
    pub(crate) multiplier: u32,
}

impl Ejection {
    pub(crate) fn is_ejected(&self) -> bool {
        self.until.is_some()
    }
}

/// A backend as the algorithms see it.
pub(crate) struct Host<'a> {
    pub(crate) outcomes: &'a Outcomes,
    pub(crate) ejection: &'a mut Ejection,
}

fn ejected_count(hosts: &[Host<'_>]) -> usize {
    hosts.iter().filter(|h| h.ejection.is_ejected()).count()
}

/// Whether one more ejection keeps the ejected share within `max_ejection_percent`,
/// or nothing is ejected yet (at least one may always be, gRFC A50).
///
/// The share is checked *after* the ejection: grpc-go and Envoy check it before, so
/// with 10 backends and 15 % they eject a second one (20 %); here it stays at one.
fn may_eject(config: &OutlierDetection, hosts: &[Host<'_>]) -> bool {
    let ejected = ejected_count(hosts) as u64;
    ejected == 0
        || (ejected + 1) * 100 <= u64::from(config.max_ejection_percent) * hosts.len() as u64
}

fn eject(config: &OutlierDetection, host: &mut Host<'_>, now: Instant) {
    host.ejection.multiplier = host.ejection.multiplier.saturating_add(1);
    let cap = config.max_ejection_time.max(config.base_ejection_time);
    let time = config
        .base_ejection_time
        .saturating_mul(host.ejection.multiplier)
        .min(cap);
    host.ejection.until = Some(crate::deadline::saturating_add(now, time));
    host.outcomes.reset_consecutive();
}

/// Runs one interval: both algorithms on this interval's counts, then un-ejects the
/// backends whose time is up. Returns whether any backend changed.
pub(crate) fn on_interval<R: Rng>(
    config: &OutlierDetection,
    hosts: &mut [Host<'_>],
    now: Instant,
    rng: &mut R,
) -> bool {
    let counts: Vec<(u64, u64)> = hosts.iter().map(|h| h.outcomes.take()).collect();
    let before: Vec<bool> = hosts.iter().map(|h| h.ejection.is_ejected()).collect();

    if let Some(sr) = &config.success_rate {
        let eligible: Vec<usize> = (0..hosts.len())
            .filter(|&i| counts[i].0 + counts[i].1 >= u64::from(sr.request_volume))
            .collect();
        if eligible.len() as u64 >= u64::from(sr.minimum_hosts) && !eligible.is_empty() {
            let rate = |i: usize| counts[i].0 as f64 / (counts[i].0 + counts[i].1) as f64;
            let n = eligible.len() as f64;
            let mean = eligible.iter().map(|&i| rate(i)).sum::<f64>() / n;
            let variance = eligible
                .iter()
                .map(|&i| (rate(i) - mean).powi(2))
                .sum::<f64>()
                / n;
            let threshold = mean - variance.sqrt() * f64::from(sr.stdev_factor) / 1000.0;
            for &i in &eligible {
                if !may_eject(config, hosts) {
                    break;
                }
                if rate(i) < threshold
                    && !hosts[i].ejection.is_ejected()
                    && rng.random_range(0..100) < sr.enforcement_percentage
                {
                    eject(config, &mut hosts[i], now);
                }
            }
        }
    }

    if let Some(fp) = &config.failure_percentage {
        let eligible: Vec<usize> = (0..hosts.len())
            .filter(|&i| counts[i].0 + counts[i].1 >= u64::from(fp.request_volume))
            .collect();
        if eligible.len() as u64 >= u64::from(fp.minimum_hosts) {
            for &i in &eligible {
                if !may_eject(config, hosts) {
                    break;
                }
                let (ok, failed) = counts[i];
                let failure_percent = 100.0 * failed as f64 / (ok + failed) as f64;
                if failure_percent > f64::from(fp.threshold)
                    && !hosts[i].ejection.is_ejected()
                    && rng.random_range(0..100) < fp.enforcement_percentage
                {
                    eject(config, &mut hosts[i], now);
                }
            }
        }
    }

    for (i, host) in hosts.iter_mut().enumerate() {
        match host.ejection.until {
            None => host.ejection.multiplier = host.ejection.multiplier.saturating_sub(1),
            Some(until) if now >= until && before[i] => host.ejection.until = None,
            Some(_) => {}
        }
    }
    hosts
        .iter()
        .zip(before)
        .any(|(h, was)| h.ejection.is_ejected() != was)
}

/// Ejects the backends that have failed `consecutive_failures` calls in a row, within
/// the cap. Returns whether any backend changed.
pub(crate) fn on_consecutive_failures(
    config: &OutlierDetection,
    hosts: &mut [Host<'_>],
    now: Instant,
) -> bool {
    let limit = u64::from(config.consecutive_failures);
    if limit == 0 {
        return false;
    }
    let mut changed = false;
    for i in 0..hosts.len() {
        if hosts[i].ejection.is_ejected() || hosts[i].outcomes.consecutive_failures() < limit {
            continue;
        }
        if !may_eject(config, hosts) {
            break;
        }
        eject(config, &mut hosts[i], now);
        changed = true;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    struct Fleet {
        outcomes: Vec<Outcomes>,
        ejections: Vec<Ejection>,
    }

    impl Fleet {
        fn new(n: usize) -> Self {
            Self {
                outcomes: (0..n).map(|_| Outcomes::default()).collect(),
                ejections: vec![Ejection::default(); n],
            }
        }

        /// Records `ok` successes and `failed` failures on host `i`.
        fn calls(&self, i: usize, ok: u32, failed: u32) {
            for _ in 0..ok {
                self.outcomes[i].record(false);
            }
            for _ in 0..failed {
                self.outcomes[i].record(true);
            }
        }

        fn hosts(&mut self) -> Vec<Host<'_>> {
            self.outcomes
                .iter()
                .zip(self.ejections.iter_mut())
                .map(|(outcomes, ejection)| Host { outcomes, ejection })
                .collect()
        }

        fn interval(&mut self, config: &OutlierDetection, rng: &mut SmallRng) -> bool {
            let now = Instant::now();
            on_interval(config, &mut self.hosts(), now, rng)
        }

        fn ejected(&self) -> Vec<usize> {
            (0..self.ejections.len())
                .filter(|&i| self.ejections[i].is_ejected())
                .collect()
        }
    }

    fn failure_percentage_only() -> OutlierDetection {
        OutlierDetection {
            success_rate: None,
            consecutive_failures: 0,
            ..OutlierDetection::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_backend_is_ejected_returns_and_is_ejected_longer_again() {
        let config = failure_percentage_only();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut fleet = Fleet::new(5);
        // Not enough evidence yet: 49 calls is under the request volume of 50.
        fleet.calls(0, 0, 49);
        (1..5).for_each(|i| fleet.calls(i, 100, 0));
        assert!(!fleet.interval(&config, &mut rng));
        assert!(fleet.ejected().is_empty());

        fleet.calls(0, 0, 50);
        (1..5).for_each(|i| fleet.calls(i, 100, 0));
        assert!(fleet.interval(&config, &mut rng));
        assert_eq!(fleet.ejected(), [0]);

        // Still ejected just before the base ejection time (30 s); back after it.
        tokio::time::advance(Duration::from_secs(29)).await;
        fleet.interval(&config, &mut rng);
        assert_eq!(fleet.ejected(), [0]);
        tokio::time::advance(Duration::from_secs(1)).await;
        fleet.interval(&config, &mut rng);
        assert!(fleet.ejected().is_empty());

        // Failing again at once: ejected for twice as long.
        fleet.calls(0, 0, 60);
        (1..5).for_each(|i| fleet.calls(i, 100, 0));
        fleet.interval(&config, &mut rng);
        assert_eq!(fleet.ejected(), [0]);
        assert_eq!(fleet.ejections[0].multiplier, 2);
        tokio::time::advance(Duration::from_secs(59)).await;
        fleet.interval(&config, &mut rng);
        assert_eq!(fleet.ejected(), [0]);
        tokio::time::advance(Duration::from_secs(1)).await;
        fleet.interval(&config, &mut rng);
        assert!(fleet.ejected().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_multiplier_decays_while_a_backend_stays_in() {
        let config = failure_percentage_only();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut fleet = Fleet::new(5);
        fleet.ejections[2].multiplier = 3;
        for expected in [2, 1, 0, 0] {
            fleet.interval(&config, &mut rng);
            assert_eq!(fleet.ejections[2].multiplier, expected);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_max_percentage_but_always_one() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut config = failure_percentage_only();
        config.max_ejection_percent = 20;
        let mut fleet = Fleet::new(10);
        (0..5).for_each(|i| fleet.calls(i, 0, 100));
        (5..10).for_each(|i| fleet.calls(i, 100, 0));
        fleet.interval(&config, &mut rng);
        assert_eq!(fleet.ejected().len(), 2);

        // 15 % of 10 backends is one and a half: a second ejection would make 20 %.
        config.max_ejection_percent = 15;
        let mut fleet = Fleet::new(10);
        (0..3).for_each(|i| fleet.calls(i, 0, 100));
        (3..10).for_each(|i| fleet.calls(i, 100, 0));
        fleet.interval(&config, &mut rng);
        assert_eq!(fleet.ejected().len(), 1);

        // 10 % of 5 backends is half of one: one may still be ejected.
        let config = failure_percentage_only();
        let mut fleet = Fleet::new(5);
        (0..2).for_each(|i| fleet.calls(i, 0, 100));
        (2..5).for_each(|i| fleet.calls(i, 100, 0));
        fleet.interval(&config, &mut rng);
        assert_eq!(fleet.ejected().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn success_rate_ejects_below_mean_minus_stdev_factor() {
        let mut rng = SmallRng::seed_from_u64(1);
        let config = OutlierDetection {
            failure_percentage: None,
            consecutive_failures: 0,
            ..OutlierDetection::default()
        };
        let mut fleet = Fleet::new(5);
        // Rates 1, 1, 1, 1, 0.5: mean 0.9, stdev 0.2, threshold 0.9 − 1.9 × 0.2 = 0.52.
        (0..4).for_each(|i| fleet.calls(i, 100, 0));
        fleet.calls(4, 50, 50);
        fleet.interval(&config, &mut rng);
        assert_eq!(fleet.ejected(), [4]);

        // Rates 1, 1, 1, 1, 0.8: mean 0.96, stdev 0.08, threshold 0.808; 0.8 is below it.
        let mut fleet = Fleet::new(5);
        (0..4).for_each(|i| fleet.calls(i, 100, 0));
        fleet.calls(4, 80, 20);
        fleet.interval(&config, &mut rng);
        assert_eq!(fleet.ejected(), [4]);
        let mut fleet = Fleet::new(5);
        (0..3).for_each(|i| fleet.calls(i, 100, 0));
        fleet.calls(3, 90, 10);
        fleet.calls(4, 85, 15);
        fleet.interval(&config, &mut rng);
        // Rates 1, 1, 1, 0.9, 0.85: mean 0.95, stdev 0.063, threshold 0.83: no outlier.
        assert!(fleet.ejected().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_at_once() {
        let config = OutlierDetection::default();
        let mut fleet = Fleet::new(5);
        fleet.calls(1, 0, 4);
        assert!(!on_consecutive_failures(
            &config,
            &mut fleet.hosts(),
            Instant::now()
        ));
        // A success resets the streak.
        fleet.calls(1, 1, 4);
        assert!(!on_consecutive_failures(
            &config,
            &mut fleet.hosts(),
            Instant::now()
        ));
        fleet.calls(1, 0, 1);
        assert!(on_consecutive_failures(
            &config,
            &mut fleet.hosts(),
            Instant::now()
        ));
        assert_eq!(fleet.ejected(), [1]);
        assert_eq!(fleet.outcomes[1].consecutive_failures(), 0);
    }

    #[test]
    fn settings_are_checked() {
        assert!(OutlierDetection::default().validate().is_ok());
        let bad = OutlierDetection {
            max_ejection_percent: 101,
            ..OutlierDetection::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().setting,
            "outlier_detection.max_ejection_percent"
        );
        let bad = OutlierDetection {
            interval: Duration::ZERO,
            ..OutlierDetection::default()
        };
        assert!(bad.validate().is_err());
    }
}
