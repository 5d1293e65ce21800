//! The GPTQ 4-bit format (../shared/gptq-format.md is the contract): packing, zero points v1/v2,
//! g_idx and the act-order reorder, the RTN quantizer.
//!
//! In memory the lab keeps one *canonical* form, `QuantLinear`: codes packed exactly as on disk,
//! zeros stored as TRUE zeros (v2 semantics; a v1 file gets +1 per nibble at load time), and an
//! explicit g_idx only when it is not `k / group_size`.

use half::f16;

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
}
