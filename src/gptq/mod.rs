//! The GPTQ 4-bit format (../shared/gptq-format.md is the contract): packing, zero points v1/v2,
//! g_idx and the act-order reorder, the RTN and GPTQ quantizers (`solver`, fed by `hessian`).
//!
//! In memory the lab keeps one *canonical* form, `QuantLinear`: codes packed exactly as on disk,
//! zeros stored as TRUE zeros (v2 semantics; a v1 file gets +1 per nibble at load time), and an
//! explicit g_idx only when it is not `k / group_size`.

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub mod amx;
pub mod gidx;
pub mod hessian;
pub mod measure;
pub mod pack;
pub mod reorder;
pub mod rtn;
pub mod solver;
pub mod synthetic;
pub mod zeros;

pub use hessian::{Hessian, HessianBackend, HessianView};
pub use reorder::{reorder_by_group, Reordered};
pub use rtn::{act_order_g_idx, quantize_rtn};
pub use solver::{quantize_gptq, GptqOutput, GptqParams};
pub use zeros::ZeroFormat;

use half::f16;

/// The group size as a row count: `-1` (per-channel) -> `k`; it must be positive and divide `k`
/// (the contract: a group size that does not divide K is refused, although the format
/// would allow ceil(K/G) groups). Err is a reason sentence.
pub fn group_rows(group_size: i32, k: usize) -> Result<usize, String> {
    let g = match group_size {
        -1 => k,
        g if g > 0 => g as usize,
        g => {
            return Err(format!(
                "group_size {g} is invalid; expected -1 (per-channel) or a positive size"
            ))
        }
    };
    if k == 0 || k % g != 0 {
        return Err(format!("group_size {g} does not divide K = {k}"));
    }
    Ok(g)
}

/// One quantized linear layer, canonical form. K = in_features, N = out_features.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantLinear {
    pub k: usize,
    pub n: usize,
    /// Rows per group; equals `k` for per-channel (`group_size = -1` in checkpoints).
    pub group_size: usize,
    /// u32 [k/8, n]: code of row k, column n = (qweight[k/8][n] >> 4*(k%8)) & 0xF.
    pub qweight: Vec<u32>,
    /// u32 [groups, n/8]: TRUE zero of group g, column n = (qzeros[g][n/8] >> 4*(n%8)) & 0xF.
    pub qzeros: Vec<u32>,
    /// fp16 [groups, n].
    pub scales: Vec<f16>,
    /// i32 [k]: group of each row. `None` means `k / group_size` (no act-order or static groups).
    pub g_idx: Option<Vec<i32>>,
    /// fp16 [n], if the layer has a bias.
    pub bias: Option<Vec<f16>>,
    /// All zeros equal 8 (symmetric quantization): kernels may skip reading qzeros.
    pub symmetric: bool,
}

impl QuantLinear {
    /// Rows of `scales`/`qzeros`: ceil(k / group_size).
    pub fn groups(&self) -> usize {
        self.k.div_ceil(self.group_size)
    }
    /// The 4-bit code of row `k`, column `n`.
    pub fn code(&self, k: usize, n: usize) -> u32 {
        (self.qweight[(k / 8) * self.n + n] >> (4 * (k % 8))) & 0xF
    }
    /// The true zero of group `g`, column `n`.
    pub fn zero(&self, g: usize, n: usize) -> u32 {
        (self.qzeros[g * (self.n / 8) + n / 8] >> (4 * (n % 8))) & 0xF
    }
    /// The group of row `k`.
    pub fn group_of(&self, k: usize) -> usize {
        match &self.g_idx {
            Some(g) => g[k] as usize,
            None => k / self.group_size,
        }
    }
    /// Whether g_idx is present and not the trivial k / group_size (i.e. act-order).
    pub fn is_act_order(&self) -> bool {
        self.g_idx.as_ref().is_some_and(|g| {
            g.iter()
                .enumerate()
                .any(|(k, &gi)| gi as usize != k / self.group_size)
        })
    }

    /// Check every length against k, n and group_size, g_idx range, and the `symmetric` flag.
    /// Err is a reason sentence; callers add the file/tensor.
    pub fn validate(&self) -> Result<(), String> {
        let (k, n) = (self.k, self.n);
        if k == 0 || n == 0 || k % 8 != 0 || n % 8 != 0 {
            return Err(format!(
                "shape K = {k}, N = {n}: both must be positive multiples of 8 (8 codes per int32)"
            ));
        }
        group_rows(self.group_size as i32, k)?;
        let groups = self.groups();
        let want = [
            (
                "qweight",
                self.qweight.len(),
                k / 8 * n,
                format!("[{}, {n}]", k / 8),
            ),
            (
                "qzeros",
                self.qzeros.len(),
                groups * n / 8,
                format!("[{groups}, {}]", n / 8),
            ),
            (
                "scales",
                self.scales.len(),
                groups * n,
                format!("[{groups}, {n}]"),
            ),
        ];
        for (name, got, exp, shape) in want {
            if got != exp {
                return Err(format!(
                    "{name} has {got} elements, expected {exp} = {shape}"
                ));
            }
        }
        if let Some(g) = &self.g_idx {
            gidx::validate_g_idx(g, k, groups)?;
        }
        if let Some(b) = &self.bias {
            if b.len() != n {
                return Err(format!("bias has {} elements, expected N = {n}", b.len()));
            }
        }
        if self.symmetric && !zeros::is_symmetric_true(&self.qzeros) {
            return Err("marked symmetric but not every true zero is 8".into());
        }
        Ok(())
    }

    /// All codes as [k, n] bytes.
    pub fn codes(&self) -> Vec<u8> {
        pack::unpack_codes_kn(&self.qweight, self.k, self.n)
    }

    /// All true zeros as [groups, n] bytes.
    pub fn zeros(&self) -> Vec<u8> {
        pack::unpack_zeros(&self.qzeros, self.groups(), self.n)
    }

    /// g_idx written out (the trivial `k / G` when `None`).
    pub fn g_idx_full(&self) -> Vec<i32> {
        match &self.g_idx {
            Some(g) => g.clone(),
            None => gidx::trivial_g_idx(self.k, self.group_size),
        }
    }
}

/// The checks every quantizer makes on its input weights W [k, n] (row-major f32): K and N
/// positive multiples of 8 (the packing), the length, every value finite. `what` names the caller.
pub fn check_weights(what: &str, w_kn: &[f32], k: usize, n: usize) -> crate::Result<()> {
    let bad = |r: String| crate::LabError::invalid(what, r);
    if k == 0 || n == 0 || k % 8 != 0 || n % 8 != 0 {
        return Err(bad(format!(
            "K = {k}, N = {n}: both must be positive multiples of 8"
        )));
    }
    if w_kn.len() != k * n {
        return Err(bad(format!(
            "weights have {} elements, expected K*N = {}",
            w_kn.len(),
            k * n
        )));
    }
    if let Some(i) = w_kn.iter().position(|w| !w.is_finite()) {
        return Err(bad(format!("weight [{}, {}] is not finite", i / n, i % n)));
    }
    Ok(())
}
