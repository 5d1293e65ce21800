//! The problem keys the tuner measures by default: every linear shape of a model (plus the fused
//! qkv and gate_up that engines launch as one GEMV), group 128, act-order off and on, every batch bucket.

use super::dispatch::BATCH_BUCKETS;
use super::schema::ProblemKey;
use crate::model::config::ModelConfig;

/// The group size of the Vicuna GPTQ checkpoints people run (gptq-format.md).
pub const DEFAULT_GROUP: i32 = 128;

/// Distinct (n, k) = (out_features, in_features) of one layer, fused qkv and gate_up included.
pub fn shapes(cfg: &ModelConfig) -> Vec<(u32, u32)> {
    let h = cfg.hidden_size as u32;
    let kv = (cfg.num_key_value_heads * cfg.head_dim()) as u32;
    let inter = cfg.intermediate_size as u32;
    let mut s: Vec<(u32, u32)> = cfg
        .layer_linears()
        .iter()
        .map(|&(_, k, n)| (n as u32, k as u32))
        .collect();
    s.push((h + 2 * kv, h)); // fused q,k,v
    s.push((2 * inter, h)); // fused gate,up
    s.sort_unstable();
    s.dedup();
    s
}

pub fn default_keys(cfg: &ModelConfig) -> Vec<ProblemKey> {
    let mut keys = Vec::new();
    for (n, k) in shapes(cfg) {
        for act_order in [false, true] {
            for &batch_bucket in BATCH_BUCKETS {
                keys.push(ProblemKey {
                    n,
                    k,
                    group_size: DEFAULT_GROUP,
                    act_order,
                    batch_bucket,
                });
            }
        }
    }
    keys
}

/// Every default key of `models` together, sorted, without duplicates.
pub fn keys_of(models: &[ModelConfig]) -> Vec<ProblemKey> {
    let mut keys: Vec<ProblemKey> = models.iter().flat_map(default_keys).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Vicuna 7B and 13B: what `lab tune` tunes when no model is named.
pub fn vicuna_models() -> Vec<ModelConfig> {
    vec![ModelConfig::vicuna_7b(), ModelConfig::vicuna_13b()]
}

/// Vicuna 7B and 13B together, sorted, without duplicates.
pub fn vicuna_default_keys() -> Vec<ProblemKey> {
    keys_of(&vicuna_models())
}
