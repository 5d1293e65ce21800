#!/usr/bin/env python3
"""Build the tiny LLaMA fixtures under tests/fixtures/ and the outputs transformers gives on them.

Needs: torch (CPU is enough), transformers (LlamaForCausalLM), safetensors, numpy, tokenizers.
Run:   /work/refvenv/bin/python scripts/make-tiny-fixtures.py      (from the repository root)
Its outputs are COMMITTED (tests/fixtures/tiny-*/), so neither cargo test nor CI needs Python;
rerun it only to change the fixtures, and commit the result.

What it makes, from one seeded random LlamaForCausalLM (hidden 64, 4 heads of 16, 2 KV heads so
grouped-query attention is exercised, 2 layers, intermediate 192, vocab 320):
  tiny-fp16/           the "normal" fp16 checkpoint (no quantization)
  tiny-sym-g32/        GPTQ 4-bit, symmetric, group 32, no act-order        (`lab decode --model tiny`)
  tiny-asym-gall/      GPTQ 4-bit, asymmetric, group_size -1 (one group over all of K)
  tiny-sym-act-g64/    GPTQ 4-bit, symmetric, group 64, act-order (non-monotone g_idx)
  tiny-asym-act-g32/   GPTQ 4-bit, asymmetric, group 32, act-order
Each holds model.safetensors, config.json, quantize_config.json (quantized ones), tokenizer.json and
expected.json: for three fixed prompts (1, 5 and 12 token ids) the logits of every prompt position,
the 16 greedy tokens and the logits each greedy step chose from, all computed by transformers in
float32 on the DEQUANTIZED weights (so the Rust engine is compared on the same weights, apart from
quantization error).

The quantizer is written here in numpy from ../shared/gptq-format.md (RTN, maxq 15), independent
of the Rust code, so these files also cross-check the Rust loader (bit order, v1 zeros, g_idx).
Like GPTQ's own quantizer, the range of each group column is widened to include 0 (min <= 0 <= max),
which keeps the zero inside [0, 15].

The v1 underflow trap: v1 files store zero - 1 per nibble, so a true zero of 0 cannot be stored.
Asymmetric zeros are therefore clamped to >= 1 BEFORE the codes are computed (codes and zeros stay
consistent); the script prints how many zeros were clamped.

Act-order: a seeded permutation of the K input channels stands in for GPTQ's Hessian order;
g_idx[k] = rank(k) // group_size, which is non-monotone.
"""

import json
import os
import sys

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import LlamaConfig, LlamaForCausalLM

SEED = 20240607
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")

HIDDEN, HEADS, KV_HEADS, LAYERS, INTER, VOCAB = 64, 4, 2, 2, 192, 320
EPS, THETA, CTX = 1e-6, 10000.0, 256
BOS, EOS = 1, 2
# Random init wider than HF's 0.02 so the logits spread out: greedy choices must not hinge on
# float rounding (the script asserts a top-1/top-2 margin below).
INIT_STD = 0.15
PROMPTS = [
    [1],
    [1, 17, 200, 45, 3],
    [1, 300, 12, 12, 99, 150, 7, 64, 250, 31, 5, 180],
]
GREEDY_STEPS = 16
# Smallest accepted gap between the best and second-best logit at each greedy step. The Rust
# engine's f32 logits differ from torch's by ~1e-5 (tests/cpu_engine.rs); 1e-3 leaves 100x room.
MIN_MARGIN = 1e-3
LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
VARIANTS = [  # (dir name, sym, act_order, group_size)
    ("tiny-sym-g32", True, False, 32),
    ("tiny-asym-gall", False, False, -1),
    ("tiny-sym-act-g64", True, True, 64),
    ("tiny-asym-act-g32", False, True, 32),
]
TOKENIZER_TEXT = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What is the capital of France? ASSISTANT: The capital of France is Paris.",
    "### Human: Tell me a story about a small robot. ### Assistant: Once upon a time, a small robot",
    "learned to quantize weights into four bits and ran fast on a consumer graphics card.",
]


def build_model(seed):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, vocab_size=VOCAB,
        rms_norm_eps=EPS, rope_theta=THETA, max_position_embeddings=CTX,
        bos_token_id=BOS, eos_token_id=EOS, tie_word_embeddings=False,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))  # not all ones, so the norm weight matters
            else:
                p.copy_(INIT_STD * torch.randn_like(p))
    # Round every parameter to fp16 once: the fp16 checkpoint then holds the model exactly.
    fp16_state = {k: v.detach().to(torch.float16).numpy() for k, v in model.state_dict().items()}
    return model, cfg, fp16_state


def quantize(w_kn, sym, act_order, group_size, rng):
    """RTN-quantize W [K, N] (K = in_features). Returns packed v1 tensors and the dequantized W."""
    k, n = w_kn.shape
    g = k if group_size == -1 else group_size
    groups = (k + g - 1) // g
    order = rng.permutation(k) if act_order else np.arange(k)
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    g_idx = (rank // g).astype(np.int32)

    q = np.zeros((k, n), dtype=np.int64)
    zeros = np.zeros((groups, n), dtype=np.int64)
    scales = np.zeros((groups, n), dtype=np.float16)
    clamped = 0
    for gi in range(groups):
        rows = np.nonzero(g_idx == gi)[0]
        x = w_kn[rows].astype(np.float64)
        xmin = np.minimum(x.min(axis=0), 0.0)
        xmax = np.maximum(x.max(axis=0), 0.0)
        if sym:
            xmax = np.maximum(-xmin, xmax)
            xmin = -xmax
        both_zero = (xmin == 0) & (xmax == 0)
        xmin[both_zero], xmax[both_zero] = -1.0, 1.0
        scale = ((xmax - xmin) / 15.0).astype(np.float16)
        s64 = scale.astype(np.float64)
        if sym:
            z = np.full(n, 8, dtype=np.int64)
        else:
            z = np.clip(np.round(-xmin / s64), 0, 15).astype(np.int64)
            clamped += int((z < 1).sum())
            z = np.maximum(z, 1)  # v1 cannot store a true zero of 0 (see the top comment)
        q[rows] = np.clip(np.round(x / s64) + z, 0, 15).astype(np.int64)
        zeros[gi], scales[gi] = z, scale

    # Pack: code of row k at nibble k % 8 of qweight[k // 8]; zero of column n at nibble n % 8 of
    # qzeros[g][n // 8], stored as zero - 1 (v1 format, checkpoint_format "gptq").
    qweight = np.zeros((k // 8, n), dtype=np.uint32)
    for j in range(8):
        qweight |= (q[j::8].astype(np.uint32) << np.uint32(4 * j))
    qzeros = np.zeros((groups, n // 8), dtype=np.uint32)
    for j in range(8):
        qzeros |= ((zeros[:, j::8] - 1).astype(np.uint32) << np.uint32(4 * j))

    # Dequantize in f64 from the stored values exactly as the format doc says, then f32.
    deq = scales.astype(np.float64)[g_idx] * (q - zeros[g_idx])
    tensors = {
        "qweight": qweight.view(np.int32),
        "qzeros": qzeros.view(np.int32),
        "scales": scales,
        "g_idx": g_idx,
    }
    return tensors, deq.astype(np.float32), clamped


def write_json(path, obj, compact=False):
    with open(path, "w") as f:
        if compact:
            json.dump(obj, f, separators=(",", ":"))
        else:
            json.dump(obj, f, indent=2)
        f.write("\n")


def config_json(name):
    # Written by hand in the HF LLaMA layout with a top-level rope_theta (transformers 5 would nest
    # it in rope_parameters; the files users hold from 2023 have it top-level or not at all).
    return {
        "_name_or_path": name, "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB,
        "max_position_embeddings": CTX, "rms_norm_eps": EPS, "rope_theta": THETA,
        "hidden_act": "silu", "bos_token_id": BOS, "eos_token_id": EOS,
        "tie_word_embeddings": False, "torch_dtype": "float16",
    }


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TOKENIZER_TEXT, trainer)
    # Like LLaMA's tokenizer: encode() puts <s> in front.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    assert tok.token_to_id("<s>") == BOS and tok.token_to_id("</s>") == EOS
    assert tok.get_vocab_size() <= VOCAB, tok.get_vocab_size()
    return tok


def sig6(rows):
    """Round to 6 significant digits (relative error <= 5e-7, far below the test tolerance)."""
    return [[float(f"{v:.6g}") for v in row] for row in rows]


@torch.no_grad()
def expected_outputs(model):
    """Logits of every prompt position (one full causal forward) and a 16-step greedy decode that
    recomputes the whole sequence each step (no KV cache: the Rust engine's cache is checked
    against attention computed from scratch)."""
    out, min_margin = [], float("inf")
    for ids in PROMPTS:
        prompt_logits = model(torch.tensor([ids])).logits[0].numpy()
        seq, tokens, step_logits = list(ids), [], []
        for _ in range(GREEDY_STEPS):
            last = model(torch.tensor([seq])).logits[0, -1].numpy()
            top2 = np.sort(last)[-2:]
            min_margin = min(min_margin, float(top2[1] - top2[0]))
            t = int(np.argmax(last))
            tokens.append(t)
            step_logits.append(last)
            seq.append(t)
        out.append({"ids": ids, "prompt_logits": sig6(prompt_logits),
                    "greedy_tokens": tokens, "greedy_logits": sig6(step_logits)})
    return out, min_margin


def load_dense(model, state_f32):
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_f32.items()})


def emit(dirname, tensors, quant_cfg, tokenizer, expected):
    d = os.path.join(ROOT, dirname)
    os.makedirs(d, exist_ok=True)
    save_file(tensors, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    write_json(os.path.join(d, "config.json"), config_json(dirname))
    if quant_cfg is not None:
        write_json(os.path.join(d, "quantize_config.json"), quant_cfg)
    tokenizer.save(os.path.join(d, "tokenizer.json"), pretty=False)
    write_json(os.path.join(d, "expected.json"), expected, compact=True)


def build_all(seed, tokenizer):
    """Every fixture in memory, or None when some greedy step's margin is below MIN_MARGIN."""
    model, cfg, fp16_state = build_model(seed)
    rng = np.random.default_rng(seed)
    plain_f32 = {k: v.astype(np.float32) for k, v in fp16_state.items()}
    text = "USER: Tell me a story. ASSISTANT:"
    fixtures = []

    def run(dirname, tensors, quant_cfg, dense, note):
        load_dense(model, dense)
        prompts, margin = expected_outputs(model)
        print(f"seed {seed} {dirname}: {note}min greedy margin {margin:.3g}")
        fixtures.append((dirname, tensors, quant_cfg, {
            "generator": "scripts/make-tiny-fixtures.py (transformers LlamaForCausalLM, float32, eager attention)",
            "seed": seed, "min_greedy_margin": round(margin, 6),
            "tokenizer_check": {"text": text, "ids_with_bos": tokenizer.encode(text).ids},
            "prompts": prompts,
        }))
        return margin >= MIN_MARGIN

    if not run("tiny-fp16", fp16_state, None, plain_f32, ""):
        return None
    for dirname, sym, act, gs in VARIANTS:
        tensors, dense, clamped = {}, dict(plain_f32), 0
        for name, arr in fp16_state.items():
            if not any(f".{lin}." in name for lin in LINEARS):
                tensors[name] = arr  # embeddings, norms, lm_head stay fp16
        for layer in range(LAYERS):
            for lin in LINEARS:
                prefix = f"model.layers.{layer}.{lin}"
                w_nk = fp16_state[f"{prefix}.weight"].astype(np.float32)  # torch layout [out, in]
                if not sym and layer == 0:
                    # Plant one all-positive column (output 0) in each layer-0 linear so its
                    # group minimum is 0, its true zero 0, and the v1 clamp to 1 is exercised.
                    w_nk[0] = np.abs(w_nk[0])
                qt, deq_kn, c = quantize(w_nk.T.copy(), sym, act, gs, rng)
                clamped += c
                for suffix, t in qt.items():
                    tensors[f"{prefix}.{suffix}"] = t
                dense[f"{prefix}.weight"] = deq_kn.T.copy()
        quant_cfg = {"bits": 4, "group_size": gs, "desc_act": act, "sym": sym,
                     "static_groups": False, "damp_percent": 0.01, "true_sequential": True,
                     "quant_method": "gptq", "checkpoint_format": "gptq",
                     "model_file_base_name": "model"}
        note = "" if sym else f"{clamped} asym zeros clamped to 1, "
        if not run(dirname, tensors, quant_cfg, dense, note):
            return None
    return fixtures


def main():
    tokenizer = build_tokenizer()
    # Random logits put two candidates within MIN_MARGIN now and then; the first seed from SEED
    # on where no greedy step is that close is used (and recorded in expected.json).
    for seed in range(SEED, SEED + 50):
        fixtures = build_all(seed, tokenizer)
        if fixtures is not None:
            break
    else:
        sys.exit(f"no seed in [{SEED}, {SEED + 50}) gives greedy margins >= {MIN_MARGIN}")
    for f in fixtures:
        emit(*f[:3], tokenizer, f[3])


if __name__ == "__main__":
    main()
