//! The one timing harness, used by criterion benches, `lab bench`, the tuner and the decode
//! engine's measurements: CUDA events around each launch, warm-up first, median and interquartile
//! mean (or, to separate the per-launch fixed cost, one event pair around N back-to-back launches);
//! callers rotate weights across copies whose total exceeds L2 (`copies_to_exceed_l2`) so
//! every figure is a cold-weight figure.

pub mod ceilings;
pub mod stats;
pub mod timing;

pub use ceilings::{measure_ceilings, Ceilings};
pub use stats::Timing;
pub use timing::{copies_to_exceed_l2, time_back_to_back, time_launches, TimingConfig};
pub mod cold;
pub mod sweep;
