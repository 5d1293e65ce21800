//! Where a decode step's time goes: the engine's ops grouped by kind, GPU time per group.
//!
//! Why: the first H100 decode run reached 37% of the bandwidth roofline for Vicuna-7B int4
//! (3.27 ms per token against ~1.2 ms of bytes), and the step time alone could not say whether
//! the GEMVs, the attention, the small launches of each layer or the lm_head held the rest. The
//! engine (`GpuEngine::profile_step`) queues one eager step behind a spinning kernel, with a CUDA
//! event after every op, so the ops run back to back on the GPU (not at the host's launch rate);
//! this module turns those marks into a table: microseconds and bytes per group, GB/s where the
//! group streams weights or the KV cache.
//!
//! Everything here is pure arithmetic on recorded marks, tested without a GPU.

use serde::{Deserialize, Serialize};

/// One mark of a profiled step: the op that ends there, the GPU time since the previous mark,
/// and the bytes the op streams from memory (weights, KV cache; 0 for the small ops).
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    pub op: &'static str,
    pub us: f64,
    pub bytes: u64,
}

/// The group an engine op is reported under. The engine's trace names (`enqueue_step`) end
/// each op; the residual add and both norms are one fused launch, so `residual_*` carries the
/// norm's time and the `*_norm` marks that follow it measure nothing.
pub fn group_of(op: &str) -> &'static str {
    match op {
        "embedding" => "embedding",
        "attn_norm" | "ffn_norm" | "final_norm" | "residual_attn" | "residual_final" => {
            "add + rmsnorm"
        }
        "qkv_proj" => "q|k|v proj",
        // One kernel since attention v3 (RoPE + KV append + attention); the trace's "rope"
        // point sits right after it, so its time can land on either mark.
        "rope" | "attention" => "rope + attention",
        "o_proj" => "o proj",
        "gate_up_proj" => "gate|up proj",
        "silu_mul" => "silu * up",
        "down_proj" => "down proj",
        "decode_layers" => "persistent decode layers",
        "lm_head" => "lm_head (fp16)",
        "argmax" => "argmax",
        _ => "other",
    }
}

/// One group's share of a step (means over the profiled steps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupTime {
    pub group: String,
    /// Marks per step that fell in this group (layers x ops of the group).
    pub marks: usize,
    pub us: f64,
    pub bytes: u64,
    /// bytes / time; 0 where the group moves no counted bytes.
    pub gbs: f64,
}

/// The profile of a step at one context length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepProfile {
    /// Cached positions when the profiled steps start.
    pub ctx: usize,
    pub steps: usize,
    /// Sum over groups: the step's GPU time with the host's launch cost hidden.
    pub total_us: f64,
    /// How long the spinning kernel held the GPU while the host queued each step.
    pub hold_ms: f64,
    /// True when the GPU had already passed the hold before the host finished queueing (even at
    /// the longest hold): then the figures include host gaps and read as upper bounds.
    pub host_bound: bool,
    pub groups: Vec<GroupTime>,
}

/// Mean per group over `steps` (each a list of marks in launch order); groups keep the order of
/// their first appearance, so the table reads like the step.
pub fn aggregate(ctx: usize, hold_ms: f64, host_bound: bool, steps: &[Vec<Mark>]) -> StepProfile {
    let mut groups: Vec<GroupTime> = Vec::new();
    for step in steps {
        for m in step {
            let g = group_of(m.op);
            let i = match groups.iter().position(|x| x.group == g) {
                Some(i) => i,
                None => {
                    groups.push(GroupTime {
                        group: g.to_string(),
                        marks: 0,
                        us: 0.0,
                        bytes: 0,
                        gbs: 0.0,
                    });
                    groups.len() - 1
                }
            };
            groups[i].marks += 1;
            groups[i].us += m.us;
            groups[i].bytes += m.bytes;
        }
    }
    let n = steps.len().max(1);
    for g in &mut groups {
        g.marks /= n;
        g.us /= n as f64;
        g.bytes /= n as u64;
        g.gbs = if g.us > 0.0 {
            g.bytes as f64 / (g.us * 1e3)
        } else {
            0.0
        };
    }
    StepProfile {
        ctx,
        steps: steps.len(),
        total_us: groups.iter().map(|g| g.us).sum(),
        hold_ms,
        host_bound,
        groups,
    }
}

/// Markdown table: one row per group, microseconds at each profiled context, then the share of
/// the step and GB/s at the first context; a last row with the sum, and the graph step time
/// measured in the same run beside it when given (`graph_ms[i]` for `profiles[i]`).
pub fn markdown(profiles: &[StepProfile], graph_ms: &[Option<f64>]) -> String {
    let Some(first) = profiles.first() else {
        return String::new();
    };
    let mut head = vec!["op (per step)".to_string(), "marks".to_string()];
    head.extend(profiles.iter().map(|p| format!("us @ ctx {}", p.ctx)));
    head.push(format!("% @ ctx {}", first.ctx));
    head.push(format!("GB/s @ ctx {}", first.ctx));
    let mut s = format!("| {} |\n", head.join(" | "));
    s.push_str(&format!(
        "|{}\n",
        head.iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { " --- |" } else { " ---: |" })
            .collect::<String>()
    ));
    for g in &first.groups {
        let mut row = vec![g.group.clone(), g.marks.to_string()];
        for p in profiles {
            let us = p.groups.iter().find(|x| x.group == g.group).map(|x| x.us);
            row.push(us.map_or("-".into(), |u| format!("{u:.1}")));
        }
        row.push(format!("{:.1}%", 100.0 * g.us / first.total_us.max(1e-9)));
        row.push(if g.gbs > 0.0 {
            format!("{:.0}", g.gbs)
        } else {
            "-".into()
        });
        s.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    let mut row = vec!["sum (GPU, ops back to back)".to_string(), String::new()];
    row.extend(profiles.iter().map(|p| format!("{:.1}", p.total_us)));
    row.push("100%".into());
    let bytes: u64 = first.groups.iter().map(|g| g.bytes).sum();
    row.push(format!(
        "{:.0}",
        bytes as f64 / (first.total_us.max(1e-9) * 1e3)
    ));
    s.push_str(&format!("| {} |\n", row.join(" | ")));
    if graph_ms.iter().any(|g| g.is_some()) {
        let mut row = vec!["graph step (timed above)".to_string(), String::new()];
        row.extend(
            graph_ms
                .iter()
                .map(|g| g.map_or("-".into(), |ms| format!("{:.1}", ms * 1e3))),
        );
        row.push(String::new());
        row.push(String::new());
        s.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(us: [f64; 3]) -> Vec<Mark> {
        vec![
            Mark {
                op: "attn_norm",
                us: us[0],
                bytes: 0,
            },
            Mark {
                op: "qkv_proj",
                us: us[1],
                bytes: 1000,
            },
            Mark {
                op: "residual_attn",
                us: us[2],
                bytes: 0,
            },
            Mark {
                op: "ffn_norm",
                us: 0.0,
                bytes: 0,
            },
        ]
    }

    #[test]
    fn groups_sum_per_step_and_average_over_steps() {
        // Two layers per step, two steps with different times: the means per step.
        let s1 = [layer([1.0, 10.0, 2.0]), layer([1.0, 10.0, 2.0])].concat();
        let s2 = [layer([3.0, 20.0, 2.0]), layer([3.0, 20.0, 2.0])].concat();
        let p = aggregate(128, 20.0, false, &[s1, s2]);
        assert_eq!(p.steps, 2);
        let names: Vec<&str> = p.groups.iter().map(|g| g.group.as_str()).collect();
        assert_eq!(names, ["add + rmsnorm", "q|k|v proj"]);
        let norm = &p.groups[0];
        // Per step: 2 layers x (attn_norm + residual_attn + ffn_norm) = 6 marks; us = 2 x (1 + 2)
        // in step 1, 2 x (3 + 2) in step 2: mean 8.
        assert_eq!(norm.marks, 6);
        assert!((norm.us - 8.0).abs() < 1e-12);
        assert_eq!(norm.gbs, 0.0);
        let qkv = &p.groups[1];
        assert!((qkv.us - 30.0).abs() < 1e-12);
        assert_eq!(qkv.bytes, 2000);
        // 2000 bytes in 30 us = 0.0667 GB/s.
        assert!((qkv.gbs - 2000.0 / 30e3).abs() < 1e-12);
        assert!((p.total_us - 38.0).abs() < 1e-12);
    }

    #[test]
    fn every_engine_op_name_has_a_group() {
        // The names the engine's step marks, read from its source (every `keep(.., "op", ..)` and
        // `mark(m, "op")` of gpu_engine/step.rs), so a renamed or added op cannot land in
        // "other" unnoticed.
        let src = include_str!("gpu_engine/step.rs");
        let mut ops = std::collections::BTreeSet::new();
        for lead in ["keep(None, \"", "keep(Some(li), \"", "self.mark(m, \""] {
            for (i, _) in src.match_indices(lead) {
                let rest = &src[i + lead.len()..];
                ops.insert(&rest[..rest.find('"').unwrap()]);
            }
        }
        assert!(ops.len() >= 16, "{ops:?}");
        for op in [
            "embedding",
            "attn_norm",
            "qkv_proj",
            "rope",
            "attention",
            "o_proj",
            "residual_attn",
            "ffn_norm",
            "gate_up_proj",
            "silu_mul",
            "down_proj",
            "decode_layers",
            "residual_final",
            "final_norm",
            "lm_head",
            "argmax",
        ] {
            assert!(ops.contains(op), "the step no longer marks {op}: {ops:?}");
        }
        for op in &ops {
            assert_ne!(group_of(op), "other", "{op}");
        }
        assert_eq!(group_of("something new"), "other");
    }

    #[test]
    fn markdown_has_a_row_per_group_and_the_sum_beside_the_graph_time() {
        let a = aggregate(128, 20.0, false, &[layer([1.0, 10.0, 2.0])]);
        let b = aggregate(2048, 20.0, false, &[layer([1.0, 12.0, 2.0])]);
        let md = markdown(&[a, b], &[Some(0.0150), None]);
        assert!(
            md.contains("| q|k|v proj | 1 | 10.0 | 12.0 | 76.9% | 0 |"),
            "{md}"
        );
        assert!(
            md.contains("| sum (GPU, ops back to back) |  | 13.0 | 15.0 | 100% |"),
            "{md}"
        );
        assert!(
            md.contains("| graph step (timed above) |  | 15.0 | - |"),
            "{md}"
        );
        assert_eq!(markdown(&[], &[]), "");
    }

    #[test]
    fn each_op_lands_in_its_own_group() {
        for (op, group) in [
            ("embedding", "embedding"),
            ("attn_norm", "add + rmsnorm"),
            ("residual_attn", "add + rmsnorm"),
            ("ffn_norm", "add + rmsnorm"),
            ("residual_final", "add + rmsnorm"),
            ("final_norm", "add + rmsnorm"),
            ("qkv_proj", "q|k|v proj"),
            ("rope", "rope + attention"),
            ("attention", "rope + attention"),
            ("o_proj", "o proj"),
            ("gate_up_proj", "gate|up proj"),
            ("silu_mul", "silu * up"),
            ("down_proj", "down proj"),
            ("decode_layers", "persistent decode layers"),
            ("lm_head", "lm_head (fp16)"),
            ("argmax", "argmax"),
        ] {
            assert_eq!(group_of(op), group, "{op}");
        }
    }

    fn mark(op: &'static str, us: f64, bytes: u64) -> Mark {
        Mark { op, us, bytes }
    }

    #[test]
    fn groups_keep_the_steps_order_and_the_sum_row_counts_every_groups_bytes() {
        // Launch order, not the names' order: embedding, q|k|v, the norm after it, lm_head.
        let step = vec![
            mark("embedding", 1.0, 0),
            mark("qkv_proj", 10.0, 100_000),
            mark("residual_attn", 2.0, 0),
            mark("lm_head", 3.0, 400_000),
        ];
        let p = aggregate(64, 20.0, false, &[step]);
        let names: Vec<&str> = p.groups.iter().map(|g| g.group.as_str()).collect();
        assert_eq!(
            names,
            ["embedding", "q|k|v proj", "add + rmsnorm", "lm_head (fp16)"]
        );
        // 500 kB in 16 us: 31 GB/s, the last group's 400 kB included.
        let md = markdown(&[p], &[None]);
        assert!(
            md.contains("| sum (GPU, ops back to back) |  | 16.0 | 100% | 31 |"),
            "{md}"
        );
    }
}
