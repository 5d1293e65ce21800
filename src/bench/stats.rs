//! Summary statistics of a set of per-launch times.

use serde::{Deserialize, Serialize};

/// Per-launch times in microseconds. `iqm_us` (the mean of the middle half) is what comparisons
/// use: robust to the odd preempted launch, less jumpy than the median on bimodal timings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub median_us: f64,
    pub iqm_us: f64,
    pub p25_us: f64,
    pub p75_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    pub samples: usize,
}

/// Whether `t` can be a recorded time (us or ms): positive and finite. No launch takes no time;
/// NaN, inf or a negative value in a report or tuned config come only from damage or hand edits.
pub fn is_recorded_time(t: f64) -> bool {
    t.is_finite() && t > 0.0
}

impl Timing {
    /// Statistics of `samples_us`; `None` when empty or any sample is not finite.
    pub fn from_samples(samples_us: &[f64]) -> Option<Timing> {
        if samples_us.is_empty() || samples_us.iter().any(|x| !x.is_finite()) {
            return None;
        }
        let mut s = samples_us.to_vec();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let n = s.len();
        let q = |f: f64| {
            // Linear interpolation between closest ranks.
            let pos = f * (n - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
        };
        // Middle half: drop floor(n/4) from each end (all of it when n < 4).
        let cut = n / 4;
        let mid = &s[cut..n - cut];
        Some(Timing {
            median_us: q(0.5),
            iqm_us: mid.iter().sum::<f64>() / mid.len() as f64,
            p25_us: q(0.25),
            p75_us: q(0.75),
            min_us: s[0],
            max_us: s[n - 1],
            samples: n,
        })
    }

    /// The first statistic that is not a positive finite time ("median_us = -3"), if any: what
    /// a recorded report must not hold (no launch takes no time, and NaN/inf come only from
    /// damage).
    pub fn bad_field(&self) -> Option<String> {
        [
            ("median_us", self.median_us),
            ("iqm_us", self.iqm_us),
            ("p25_us", self.p25_us),
            ("p75_us", self.p75_us),
            ("min_us", self.min_us),
            ("max_us", self.max_us),
        ]
        .into_iter()
        .find(|&(_, t)| !is_recorded_time(t))
        .map(|(f, t)| format!("{f} = {t}"))
    }

    /// Relative spread (p75 - p25) / median: the noise figure the tuner compares gains against.
    pub fn spread(&self) -> f64 {
        if self.median_us > 0.0 {
            (self.p75_us - self.p25_us) / self.median_us
        } else {
            f64::INFINITY
        }
    }

    /// Achieved GB/s for `bytes` moved per launch, at the interquartile mean.
    pub fn gbps(&self, bytes: u64) -> f64 {
        bytes as f64 / (self.iqm_us * 1e-6) / 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iqm_ignores_outliers_and_quartiles_interpolate() {
        let t = Timing::from_samples(&[10.0, 11.0, 12.0, 13.0, 1000.0, 9.0, 10.5, 11.5]).unwrap();
        // sorted: 9 10 10.5 11 11.5 12 13 1000; middle half = 10.5 11 11.5 12
        assert!((t.iqm_us - 11.25).abs() < 1e-12, "{t:?}");
        assert!((t.median_us - 11.25).abs() < 1e-12);
        assert_eq!((t.min_us, t.max_us, t.samples), (9.0, 1000.0, 8));
        // p25 at rank 1.75: 10 + 0.75*0.5
        assert!((t.p25_us - 10.375).abs() < 1e-12);
    }

    #[test]
    fn a_recorded_timing_must_be_positive_and_finite() {
        let t = Timing::from_samples(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(t.bad_field(), None);
        for (v, want) in [
            (0.0, "p25_us = 0"),
            (-2.0, "p25_us = -2"),
            (f64::NAN, "p25_us = NaN"),
        ] {
            let bad = Timing { p25_us: v, ..t };
            assert_eq!(bad.bad_field().as_deref(), Some(want));
        }
    }

    #[test]
    fn iqm_drops_floor_of_a_quarter_from_each_end() {
        // n = 7: floor(7/4) = 1 from each end, mean of 2 3 4 5 10 = 4.8.
        let t = Timing::from_samples(&[20.0, 1.0, 5.0, 2.0, 10.0, 3.0, 4.0]).unwrap();
        assert!((t.iqm_us - 4.8).abs() < 1e-12, "{t:?}");
        // n = 3: floor(3/4) = 0, nothing dropped: the plain mean.
        let t = Timing::from_samples(&[1.0, 6.0, 2.0]).unwrap();
        assert!((t.iqm_us - 3.0).abs() < 1e-12, "{t:?}");
    }

    #[test]
    fn empty_or_nan_samples_are_rejected() {
        assert!(Timing::from_samples(&[]).is_none());
        assert!(Timing::from_samples(&[1.0, f64::NAN]).is_none());
    }

    #[test]
    fn gbps_and_spread() {
        let t = Timing::from_samples(&[100.0; 5]).unwrap();
        assert!((t.gbps(1_000_000) - 10.0).abs() < 1e-9);
        assert_eq!(t.spread(), 0.0);
    }
}
