//! The one table of kernel variants. Tests, `lab check`, benches, the tuner, reports and plots
//! iterate `all()`; nothing else lists kernels. Each family contributes its own table
//! (`gemv::VARIANTS`, `gemm::VARIANTS`, ...), concatenated here.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Family {
    /// Batch 1 (m = 1) dequant-GEMV.
    Gemv,
    /// Batch 2..64 dequant-GEMM.
    Gemm,
    /// Reference matmul and bandwidth probes.
    Reference,
}

/// How a variant handles act-order (non-monotone g_idx) checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ActOrder {
    /// Groups are k / group_size; act-order checkpoints are refused.
    None,
    /// Reads g_idx per row in the kernel (the slow 2023 way).
    Gather,
    /// Rows sorted by group at load time, activations permuted (perm pointer).
    Reordered,
}

/// The weight layout a variant expects on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Layout {
    /// qweight u32 [k/8, n] exactly as in the checkpoint.
    Canonical,
    /// Re-laid once at load time by the variant's `prepare` step (e.g. mma fragment order).
    Prepared,
}

/// One tunable launch parameter and the values the tuner may try; `default` is used untuned.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Tunable {
    pub name: &'static str,
    pub values: &'static [u32],
    pub default: u32,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Variant {
    /// Stable name, e.g. "gemv_v2_vec"; versions are numbered and never reused.
    pub name: &'static str,
    pub family: Family,
    pub version: u32,
    /// One line: what this version does differently.
    pub description: &'static str,
    /// Every C symbol the variant launches (template instantiations included); all must be in the fatbin.
    pub symbols: &'static [&'static str],
    pub layout: Layout,
    /// Supported group sizes; -1 = per-channel.
    pub group_sizes: &'static [i32],
    pub act_order: &'static [ActOrder],
    /// Inclusive batch (m) range.
    pub batch: (u32, u32),
    /// Minimum compute capability, e.g. 80 for mma.sync m16n8k16.
    pub min_sm: u32,
    pub tunables: &'static [Tunable],
    /// Register budget per thread that the static check enforces on every arch.
    pub reg_budget: u32,
    /// Hot kernel: zero spills and no stack frame required.
    pub hot: bool,
    /// SASS must show 128-bit global loads (LDG.E.128) on every arch.
    pub wide_loads: bool,
    /// SASS must show HMMA on sm_80 and sm_90.
    pub tensor_cores: bool,
}

/// Every variant of every family.
pub fn all() -> Vec<&'static Variant> {
    let mut v: Vec<&'static Variant> = Vec::new();
    v.extend(REFERENCE.iter());
    v.extend(super::gemv::VARIANTS.iter());
    v.extend(super::gemm::VARIANTS.iter());
    v
}

pub fn by_name(name: &str) -> Option<&'static Variant> {
    all().into_iter().find(|v| v.name == name)
}

pub static REFERENCE: &[Variant] = &[
    Variant {
        name: "ref_matmul_v1",
        family: Family::Reference,
        version: 1,
        description: "naive fp16 x fp16 matmul, one output per thread, fp32 accumulate",
        symbols: &["lab_ref_matmul_f16"],
        layout: Layout::Canonical,
        group_sizes: &[],
        act_order: &[],
        batch: (1, 64),
        min_sm: 75,
        tunables: &[],
        reg_budget: 64,
        hot: false,
        wide_loads: false,
        tensor_cores: false,
    },
    Variant {
        name: "probe_copy",
        family: Family::Reference,
        version: 1,
        description: "device copy, 16-byte loads and stores: measured copy ceiling",
        symbols: &["lab_probe_copy"],
        layout: Layout::Canonical,
        group_sizes: &[],
        act_order: &[],
        batch: (0, 0),
        min_sm: 75,
        tunables: &[],
        reg_budget: 64,
        hot: true,
        wide_loads: true,
        tensor_cores: false,
    },
    Variant {
        name: "probe_read",
        family: Family::Reference,
        version: 1,
        description: "pure read, 4 x 16-byte streaming loads in flight: measured read ceiling",
        symbols: &["lab_probe_read"],
        layout: Layout::Canonical,
        group_sizes: &[],
        act_order: &[],
        batch: (0, 0),
        min_sm: 75,
        tunables: &[],
        reg_budget: 64,
        hot: true,
        wide_loads: true,
        tensor_cores: false,
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_and_symbols_are_unique() {
        let mut names = HashSet::new();
        let mut syms = HashSet::new();
        for v in all() {
            assert!(names.insert(v.name), "duplicate variant name {}", v.name);
            for s in v.symbols {
                assert!(syms.insert(*s), "symbol {s} listed twice");
            }
        }
    }

    #[test]
    fn every_registry_symbol_is_in_the_embedded_kernels() {
        if !crate::build_info::KERNELS_BUILT {
            assert!(
                std::env::var("LAB_REQUIRE_KERNELS")
                    .map(|v| v != "1")
                    .unwrap_or(true),
                "LAB_REQUIRE_KERNELS=1 but kernels were not built"
            );
            crate::util::note_skip(
                "every_registry_symbol_is_in_the_embedded_kernels",
                "kernels not built",
            );
            return;
        }
        for v in all() {
            for s in v.symbols {
                assert!(
                    crate::cuda::modules::family_of(s).is_some(),
                    "variant {}: symbol {s} is not in any embedded fatbin",
                    v.name
                );
            }
        }
    }
}
