#!/usr/bin/env python3
"""transformers' outputs for tiny-fp16's weights under linear RoPE scaling (Vicuna v1.5-16K's kind).

Needs what scripts/make-tiny-fixtures.py needs (torch on the CPU, transformers, safetensors, numpy).
Run:   /path/to/venv/bin/python scripts/make-rope-linear-fixture.py      (from the repository root)
Writes tests/fixtures/tiny-fp16-rope-linear/{config.json, expected.json}; COMMITTED, so neither
cargo test nor CI needs Python. The folder holds no weights: tests/cpu_engine.rs puts tiny-fp16's
model.safetensors beside this config in a temp folder (the same weights, a different RoPE).

config.json is tiny-fp16's with `"rope_scaling": {"type": "linear", "factor": F}` (lmsys'
vicuna-*-v1.5-16k configs say F = 4.0; F is the first of FACTORS whose greedy margins are safe). transformers reads it through its own linear-scaling
code path (LlamaLinearScalingRotaryEmbedding in 4.40: positions divided by the factor), which the
lab's engines do not share: its inv_freq table divided by the factor. The prompts, the greedy
decode and the rounding are make-tiny-fixtures.py's own (imported from it).
"""

import importlib.util
import json
import os
import sys

import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import LlamaConfig, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("tiny", os.path.join(HERE, "make-tiny-fixtures.py"))
tiny = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tiny)

# Vicuna v1.5-16K's 4 first; the first factor whose greedy margins all clear MIN_MARGIN is written
# (on these random weights a step's top two logits can lie closer than the engines' rounding).
FACTORS = [4.0, 2.0, 8.0, 3.0]
SRC = os.path.join(tiny.ROOT, "tiny-fp16")
DST = os.path.join(tiny.ROOT, "tiny-fp16-rope-linear")


def outputs(factor):
    with open(os.path.join(SRC, "config.json")) as f:
        config = json.load(f)
    config["_name_or_path"] = "tiny-fp16-rope-linear"
    config["rope_scaling"] = {"type": "linear", "factor": factor}
    cfg = LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures", "torch_dtype")},
                      attn_implementation="eager")
    model = LlamaForCausalLM(cfg).float().eval()
    state = {k: torch.from_numpy(v.astype(np.float32)) for k, v in load_file(os.path.join(SRC, "model.safetensors")).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Only the rotary buffers may be missing (transformers computes them); nothing may be left over.
    assert not unexpected and all("rotary_emb" in m for m in missing), (missing, unexpected)
    prompts, margin = tiny.expected_outputs(model)
    print(f"linear RoPE x{factor}: min greedy margin {margin:.3g}")
    return config, prompts, margin


def main():
    for factor in FACTORS:
        config, prompts, margin = outputs(factor)
        if margin >= tiny.MIN_MARGIN:
            break
    else:
        sys.exit(f"no factor in {FACTORS} gives greedy margins >= {tiny.MIN_MARGIN}")
    os.makedirs(DST, exist_ok=True)
    tiny.write_json(os.path.join(DST, "config.json"), config)
    tiny.write_json(os.path.join(DST, "expected.json"), {
        "generator": "scripts/make-rope-linear-fixture.py (transformers LlamaForCausalLM, float32, eager "
                     f"attention, rope_scaling linear x{factor}, transformers {__import__('transformers').__version__})",
        "seed": None, "min_greedy_margin": round(margin, 6), "prompts": prompts,
    }, compact=True)


if __name__ == "__main__":
    main()
