//! The planner's byte count against a real checkpoint written by the lab's writer and loaded back:
//! every tensor kind must agree to the byte (g_idx: the file always stores it; the plan counts it
//! only with act-order, where the kernels need a K x 4 permutation in its place).

mod checkpoint_fixtures;

use checkpoint_fixtures as fx;
use gptq_lab::gptq::ZeroFormat;
use gptq_lab::model::checkpoint::Checkpoint;
use gptq_lab::plan::checkpoint::plan_from_tensor_bytes;
use gptq_lab::plan::{PlanSpec, WeightDtype};

#[test]
fn plan_bytes_match_a_loaded_checkpoint_for_every_group_size() {
    for (gs, act) in [(32, false), (64, true), (128, false), (-1, false)] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ckpt");
        fx::write(&dir, gs, false, act, ZeroFormat::V1);
        let ck = Checkpoint::open(&dir).unwrap();
        let on_disk = plan_from_tensor_bytes(&ck.tensor_bytes());

        let mut spec = PlanSpec::new(ck.config.clone(), WeightDtype::Int4, gs, 512);
        spec.act_order = act;
        let plan = spec.plan().unwrap();
        let p = &plan.weights.parts;

        assert_eq!(p.qweight, on_disk.qweight, "qweight, group {gs}");
        assert_eq!(p.qzeros, on_disk.qzeros, "qzeros, group {gs}");
        assert_eq!(p.scales, on_disk.scales, "scales, group {gs}");
        assert_eq!(p.embeddings, on_disk.embeddings, "embeddings, group {gs}");
        assert_eq!(p.norms, on_disk.norms, "norms, group {gs}");
        assert_eq!(p.lm_head, on_disk.lm_head, "lm_head, group {gs}");
        // The fixture gives q_proj a bias (fp16 [n]) in each layer: the only "other" bytes.
        assert_eq!(
            on_disk.other,
            (fx::LAYERS * fx::HIDDEN * 2) as u64,
            "other, group {gs}"
        );
        if act {
            assert_eq!(p.g_idx, on_disk.g_idx, "g_idx with act-order, group {gs}");
        } else {
            assert_eq!(p.g_idx, 0, "g_idx is not needed without act-order");
            assert!(on_disk.g_idx > 0, "the writer always stores g_idx");
        }
    }
}
