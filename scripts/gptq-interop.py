#!/usr/bin/env python3
"""Do the GPTQ checkpoints that `lab quantize` writes load in AutoGPTQ / transformers, on CPU, and
compute what the lab computes?

For each variant below (format v1/v2, group 32/64/-1, act-order, static groups, sym/asym) this
script quantizes the tiny fp16 fixture (tests/fixtures/tiny-fp16) with `lab quantize`, then runs
the same token ids through:
  lab  - the lab's CPU engine: `lab decode --backend cpu --greedy --dump-logits FILE`;
  ref  - an independent dequantization written here from shared/gptq-format.md (unpack qweight,
         qzeros, scales, g_idx; +1 on v1 zeros) into a plain float32 transformers LlamaForCausalLM;
  autogptq     - AutoGPTQForCausalLM.from_quantized(dir, device="cpu", ...), its pure-torch
                 QuantLinear (the CUDA extension is not built);
  transformers - AutoModelForCausalLM.from_pretrained(dir), which reads config.json's
                 quantization_config and goes through optimum + auto-gptq (transformers 4.x) or
                 optimum 2 + GPTQModel (transformers 5.x);
  gptqmodel    - GPTQModel.load(dir, device="cpu", backend=BACKEND.TORCH) (fp16 only).
It reports, per checkpoint and loader, the max |logit difference| against lab and ref over every
position of prompt + lab's greedy continuation (teacher-forced), the top-1 agreement on those
positions, whether free-running greedy decoding gives lab's tokens, and the quantization settings
the library ended up with (compared with what was asked for).

Environment (CPU only; nothing here needs a GPU). The venv used for reports/cpu/gptq-interop.md:
    python3.11 -m venv /work/gptqvenv
    # torch: any CPU-capable torch >= 2.1 (here the one in /work/refvenv, linked in via a .pth file
    # to avoid a second multi-GB download; `pip install torch` works too)
    pip install "transformers==4.40.2" "optimum==1.19.2" "accelerate==0.29.3" "peft==0.10.0" \
        "numpy<2" "pyarrow<17" "datasets<2.20" "pandas<2.3" safetensors sentencepiece
    BUILD_CUDA_EXT=0 pip install --no-binary auto-gptq --no-build-isolation "auto-gptq==0.7.1"
    pip install "optimum==1.20.0" --no-deps   # 1.19 leaves bias-less QuantLinear biases uninitialised
(AutoGPTQ 0.7.1 is the last release; it goes with transformers <= 4.40 / optimum <= 1.20. With
BUILD_CUDA_EXT=0 it is pure Python and its QuantLinear falls back to a torch dequantize+matmul.)
A second venv for GPTQModel + transformers 5 (/work/gptqmvenv, torch linked the same way):
    pip install -c <(echo torch==2.11.0) "transformers>=5.20.2" "accelerate>=1.15" "optimum>=2.3" \
        safetensors "numpy>=2" threadpoolctl device-smi pypcre tokenicer logbar defuser pillow \
        datasets pyarrow dill torchao requests ninja protobuf
    pip install --no-deps "gptqmodel==7.7.0"   # it pins torch>=2.14.1; its torch path runs on 2.11

Run (from the repository root, after `cargo build --release --bin lab`), once per venv:
    /work/gptqvenv/bin/python scripts/gptq-interop.py --lab $CARGO_TARGET_DIR/release/lab \
        --work /tmp/gptq-interop --report A.md
    /work/gptqmvenv/bin/python scripts/gptq-interop.py --lab $CARGO_TARGET_DIR/release/lab \
        --work /tmp/gptq-interop-gm --report B.md
reports/cpu/gptq-interop.md is A.md and B.md under a hand-written summary.
Options: --only NAME[,NAME] to run some variants, --dtype float16 to run the libraries in fp16
(their default; float32 isolates format errors from fp16 rounding), --loaders to pick loaders.
A loader that cannot be imported is reported as such, and ref vs lab is still measured.
"""

import argparse
import importlib.metadata as md
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny-fp16"
# "USER: Tell me" in the fixture tokenizer, with BOS: a real prompt, 10 positions.
PROMPT = [1, 55, 53, 39, 52, 28, 223, 54, 288, 78]
NEW_TOKENS = 8

# name -> lab quantize flags. The tiny model has K in {64, 192}: groups 32 and 64 divide both.
VARIANTS = {
    "v1-sym-g32": ["--format", "v1", "--group", "32"],
    "v1-asym-g32": ["--format", "v1", "--group", "32", "--asym"],
    "v1-sym-g32-act": ["--format", "v1", "--group", "32", "--act-order"],
    "v1-asym-g32-act": ["--format", "v1", "--group", "32", "--asym", "--act-order"],
    "v1-sym-g64-act-static": ["--format", "v1", "--group", "64", "--act-order", "--static-groups"],
    "v1-sym-gall": ["--format", "v1", "--group", "-1"],
    "v1-asym-gall-act": ["--format", "v1", "--group", "-1", "--asym", "--act-order"],
    "v2-sym-g32": ["--format", "v2", "--group", "32"],
    "v2-asym-g32-act": ["--format", "v2", "--group", "32", "--asym", "--act-order"],
    "v2-asym-gall": ["--format", "v2", "--group", "-1", "--asym"],
}


def expected_settings(flags):
    """What the quantize config must say for these flags."""
    g = int(flags[flags.index("--group") + 1])
    return {
        "bits": 4,
        "group_size": g,
        "desc_act": "--act-order" in flags,
        "sym": "--asym" not in flags,
        "static_groups": "--static-groups" in flags,
        "format": flags[flags.index("--format") + 1],
    }


# ---------------------------------------------------------------- lab side


def lab_quantize(lab, out, flags):
    if out.exists():
        shutil.rmtree(out)
    cmd = [lab, "quantize", "--checkpoint", str(TINY), "--out", str(out), "--quiet",
           "--seqlen", "128", "--nsamples", "4"] + flags
    r = subprocess.run(cmd, capture_output=True, text=True)
    return cmd, r


def lab_decode(lab, ckpt, dump):
    cmd = [lab, "decode", "--backend", "cpu", "--checkpoint", str(ckpt),
           "--prompt-ids", ",".join(map(str, PROMPT)), "--max-new-tokens", str(NEW_TOKENS),
           "--greedy", "--ignore-eos", "--json", "--dump-logits", str(dump)]
    subprocess.run(cmd, capture_output=True, text=True, check=True)
    d = json.loads(dump.read_text())
    # The logits at every position of prompt + tokens[:-1]: what a teacher-forced forward gives.
    logits = torch.tensor(d["prompt_logits"] + d["step_logits"][1:], dtype=torch.float64)
    return d["tokens"], logits


# ---------------------------------------------------------------- independent dequantization


def unpack_along_rows(qweight):
    """int32 [K/8, N] -> codes [K, N]; the lowest nibble holds the lowest k."""
    u = qweight.to(torch.int64) & 0xFFFFFFFF
    shifts = (4 * torch.arange(8, dtype=torch.int64)).view(1, 8, 1)
    codes = (u.unsqueeze(1) >> shifts) & 0xF
    return codes.reshape(-1, qweight.shape[1])


def unpack_along_cols(qzeros):
    """int32 [G, N/8] -> codes [G, N]; the lowest nibble holds the lowest n."""
    u = qzeros.to(torch.int64) & 0xFFFFFFFF
    shifts = (4 * torch.arange(8, dtype=torch.int64)).view(1, 1, 8)
    codes = (u.unsqueeze(2) >> shifts) & 0xF
    return codes.reshape(qzeros.shape[0], -1)


def dequantize(t, prefix, v1, group_size):
    """The fp32 [N, K] weight of one linear (W[k][n] = s[g][n] * (q[k][n] - z[g][n]))."""
    q = unpack_along_rows(t[prefix + ".qweight"])
    k, n = q.shape
    z = unpack_along_cols(t[prefix + ".qzeros"])[:, :n]
    if v1:
        z = z + 1  # v1 ("gptq") stores zero - 1
    s = t[prefix + ".scales"].to(torch.float64)
    if prefix + ".g_idx" in t:
        g = t[prefix + ".g_idx"].to(torch.int64)
    else:
        g = torch.arange(k) // (k if group_size == -1 else group_size)
    w = s[g] * (q - z[g]).to(torch.float64)  # [K, N]
    return w.t().contiguous().to(torch.float32)


def reference_model(ckpt):
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg_json = json.loads((ckpt / "config.json").read_text())
    qc = cfg_json.pop("quantization_config", None)
    if (ckpt / "quantize_config.json").is_file():
        qc = json.loads((ckpt / "quantize_config.json").read_text())
    v1 = qc.get("checkpoint_format", qc.get("format", "gptq")) == "gptq"
    cfg = LlamaConfig(**cfg_json)
    cfg._attn_implementation = "eager"
    t = load_file(str(ckpt / "model.safetensors"))
    sd = {}
    for name, v in t.items():
        if name.endswith(".qweight"):
            p = name[: -len(".qweight")]
            sd[p + ".weight"] = dequantize(t, p, v1, qc["group_size"])
        elif not name.endswith((".qzeros", ".scales", ".g_idx")):
            sd[name] = v.to(torch.float32)
    m = LlamaForCausalLM(cfg).to(torch.float32)
    missing, unexpected = m.load_state_dict(sd, strict=False)
    missing = [x for x in missing if "rotary_emb" not in x]
    if missing or unexpected:
        raise RuntimeError(f"reference state dict: missing {missing}, unexpected {unexpected}")
    return m.eval()


# ---------------------------------------------------------------- external loaders


class LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def quant_linear_class(model):
    names = sorted({type(m).__module__.split(".")[-1] + "." + type(m).__name__
                    for m in model.modules()
                    if "QuantLinear" in type(m).__name__ or "qlinear" in type(m).__module__})
    return ",".join(names) or "none"


def load_autogptq(ckpt, dtype):
    from auto_gptq import AutoGPTQForCausalLM

    cap = LogCapture()
    logging.getLogger("auto_gptq").addHandler(cap)
    try:
        m = AutoGPTQForCausalLM.from_quantized(
            str(ckpt), device="cpu", use_triton=False, disable_exllama=True,
            disable_exllamav2=True, use_safetensors=True, torch_dtype=dtype)
    finally:
        logging.getLogger("auto_gptq").removeHandler(cap)
    qc = m.quantize_config
    # AutoGPTQ 0.7.1 has no checkpoint_format field: every file is read as v1 ("gptq").
    seen = {"bits": qc.bits, "group_size": qc.group_size, "desc_act": qc.desc_act, "sym": qc.sym,
            "static_groups": qc.static_groups, "is_marlin_format": qc.is_marlin_format,
            "format": "gptq"}
    unknown = [l.split(": ")[-1].rstrip(".") for l in cap.lines if "ignoring unknown parameter" in l]
    return m.model.eval(), seen, quant_linear_class(m.model), unknown, dtype


def load_transformers(ckpt, dtype):
    import transformers
    from transformers import AutoModelForCausalLM, GPTQConfig

    if int(transformers.__version__.split(".")[0]) >= 5:
        # transformers 5 loads GPTQ through optimum 2 + GPTQModel, whose CPU kernel is fp16/bf16.
        dtype = torch.float16
        m = AutoModelForCausalLM.from_pretrained(str(ckpt), device_map="cpu", dtype=dtype,
                                                 attn_implementation="eager")
    else:
        # Only the kernel choice is overridden (exllama needs CUDA); every quantization setting
        # comes from config.json's quantization_config.
        m = AutoModelForCausalLM.from_pretrained(
            str(ckpt), device_map="cpu", torch_dtype=dtype,
            quantization_config=GPTQConfig(bits=4, use_exllama=False), attn_implementation="eager")
    qc = m.config.quantization_config
    qc = qc.to_dict() if hasattr(qc, "to_dict") else dict(qc)
    seen = {k: qc.get(k) for k in ("bits", "group_size", "desc_act", "sym", "static_groups")}
    fmt = qc.get("checkpoint_format", qc.get("format"))
    # transformers 4.x + optimum 1.x have no v2 reader: what they load is v1 whatever it says.
    seen["format"] = str(getattr(fmt, "value", fmt)) if fmt is not None else "gptq"
    return m.eval(), seen, quant_linear_class(m), [], dtype


def load_gptqmodel(ckpt, dtype):
    from gptqmodel import BACKEND, GPTQModel

    # GPTQModel's CPU kernel (TorchLinear) refuses float32: it runs fp16 whatever --dtype says.
    dtype = torch.float16
    m = GPTQModel.load(str(ckpt), device="cpu", backend=BACKEND.TORCH, dtype=dtype)
    qc = m.quantize_config
    seen = {"bits": qc.bits, "group_size": qc.group_size, "desc_act": qc.desc_act, "sym": qc.sym,
            "static_groups": qc.static_groups,
            "format": str(getattr(qc.format, "value", qc.format))}
    return m.model.eval(), seen, quant_linear_class(m.model), [], dtype


LOADERS = {"autogptq": load_autogptq, "transformers": load_transformers,
           "gptqmodel": load_gptqmodel}
IMPORT_NAME = {"autogptq": "auto_gptq", "transformers": "transformers", "gptqmodel": "gptqmodel"}


def module_versions():
    out = {"python": sys.version.split()[0]}
    for p in ("torch", "transformers", "optimum", "auto-gptq", "accelerate", "safetensors",
              "gptqmodel"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


# ---------------------------------------------------------------- comparison


@torch.no_grad()
def teacher_forced(model, ids):
    x = torch.tensor([ids], dtype=torch.long)
    return model(x).logits[0].to(torch.float64)


@torch.no_grad()
def greedy(model, n):
    ids = list(PROMPT)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(PROMPT):]


def compare(a, b):
    return {"max_abs": float((a - b).abs().max()),
            "top1": float((a.argmax(-1) == b.argmax(-1)).double().mean())}


def settings_mismatch(seen, want):
    bad = []
    for k in ("bits", "group_size", "desc_act", "sym", "static_groups"):
        if k in seen and seen[k] is not None and seen[k] != want[k]:
            bad.append(f"{k}={seen[k]!r} (want {want[k]!r})")
    fmt = {"v1": "gptq", "v2": "gptq_v2"}[want["format"]]
    if seen.get("format") != fmt:
        bad.append(f"format={seen.get('format')!r} (want {fmt!r})")
    if seen.get("is_marlin_format"):
        bad.append("is_marlin_format=True")
    return bad


def run_variant(name, flags, args, dtype):
    out = args.work / name
    cmd, r = lab_quantize(args.lab, out, flags)
    row = {"name": name, "flags": flags, "quantize_cmd": " ".join(cmd[1:])}
    if r.returncode != 0:
        row["quantize_error"] = (r.stderr.strip().splitlines() or ["?"])[-1]
        return row
    want = expected_settings(flags)
    qcfg = json.loads((out / "quantize_config.json").read_text())
    row["quantize_config"] = qcfg
    tokens, lab_logits = lab_decode(args.lab, out, args.work / f"{name}.logits.json")
    row["lab_tokens"] = tokens
    ids = PROMPT + tokens[:-1]

    ref = reference_model(out)
    ref_logits = teacher_forced(ref, ids)
    row["ref_vs_lab"] = compare(ref_logits, lab_logits)
    row["ref_greedy_same"] = greedy(ref, NEW_TOKENS) == tokens
    # The same reference in fp16: what a library that runs fp16 activations can be held to.
    ref16 = ref.to(torch.float16)
    ref16_logits = teacher_forced(ref16, ids)
    ref16_greedy = greedy(ref16, NEW_TOKENS)
    del ref, ref16

    for lname in args.loaders:
        res = {}
        try:
            t0 = time.time()
            model, seen, qlin, unknown, ran = LOADERS[lname](out, dtype)
            res.update(seen=seen, quant_linear=qlin, unknown_fields=unknown,
                       load_s=round(time.time() - t0, 2), dtype=str(ran).replace("torch.", ""))
            res["settings_mismatch"] = settings_mismatch(seen, want)
            lg = teacher_forced(model, ids)
            res["vs_lab"] = compare(lg, lab_logits)
            res["vs_ref"] = compare(lg, ref_logits)
            got = greedy(model, NEW_TOKENS)
            res["greedy_tokens"] = got
            res["greedy_same"] = sum(a == b for a, b in zip(got, tokens))
            if ran == torch.float16:
                res["vs_ref16"] = compare(lg, ref16_logits)
                res["greedy_same_ref16"] = sum(a == b for a, b in zip(got, ref16_greedy))
            del model
        except Exception as e:  # report any loader failure and go on with the others
            res["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        row[lname] = res
    return row


def fmt_cmp(c):
    return f"{c['max_abs']:.2e} / {100 * c['top1']:.0f}%"


def write_report(path, rows, versions, args, dtype, wall):
    L = []
    L.append("# Do `lab quantize` checkpoints load in AutoGPTQ / transformers, and agree? (CPU)\n")
    L.append("Generated by `scripts/gptq-interop.py` (see its header for the venv). "
             f"Wall time {wall:.0f} s on the 2-core dev machine.\n")
    L.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ". "
             "AutoGPTQ built with BUILD_CUDA_EXT=0 (pure-torch QuantLinear); no GPU.\n")
    L.append(f"Libraries run in {dtype} on CPU where they allow it (the dtype column says what ran); the independent reference (ref) dequantizes in "
             "f64 and runs a float32 transformers LlamaForCausalLM; lab is `lab decode --backend cpu` "
             "(f32). Source: tests/fixtures/tiny-fp16 (hidden 64, 2 layers, K in {64, 192}), "
             f"quantized with `--seqlen 128 --nsamples 4`. Prompt ids {PROMPT}, {NEW_TOKENS} greedy "
             f"tokens: logits compared at all {len(PROMPT) + NEW_TOKENS - 1} positions of "
             "prompt + lab's continuation (teacher-forced).\n")
    L.append("Cells: `max |Δlogit| / top-1 agreement`; greedy: free-running greedy tokens equal "
             f"to lab's, out of {NEW_TOKENS}. A loader that ran fp16 is also compared with the same "
             "independent reference run in fp16 (fp16 ref), which shows how much of the difference "
             "is fp16 arithmetic rather than the file.\n")
    hdr = "| checkpoint | ref vs lab | ref greedy = lab |"
    sep = "|---|---|---|"
    for l in args.loaders:
        hdr += f" {l} vs lab | {l} vs ref | {l} greedy | {l} QuantLinear (dtype) |"
        sep += "---|---|---|---|"
    L.append(hdr)
    L.append(sep)
    for r in rows:
        if "quantize_error" in r:
            L.append(f"| {r['name']} | quantize failed: {r['quantize_error']} |" + " |" * (1 + 4 * len(args.loaders)))
            continue
        line = f"| {r['name']} | {fmt_cmp(r['ref_vs_lab'])} | {'yes' if r['ref_greedy_same'] else 'NO'} |"
        for l in args.loaders:
            x = r[l]
            if "error" in x and "vs_lab" not in x:
                line += f" load failed: `{x['error']}` | | | |"
                continue
            if "error" in x:
                line += f" failed: `{x['error']}` | | | |"
                continue
            vs_ref = fmt_cmp(x["vs_ref"])
            greedy_cell = f"{x['greedy_same']}/{NEW_TOKENS}"
            if "vs_ref16" in x:
                vs_ref += f"; fp16 ref: {fmt_cmp(x['vs_ref16'])}"
                greedy_cell += f" (fp16 ref: {x['greedy_same_ref16']}/{NEW_TOKENS})"
            line += (f" {fmt_cmp(x['vs_lab'])} | {vs_ref} | {greedy_cell} | "
                     f"{x['quant_linear']} ({x['dtype']}) |")
        L.append(line)
    L.append("")
    L.append("## Quantization settings as each library read them\n")
    L.append("| checkpoint | asked | " + " | ".join(f"{l} read" for l in args.loaders) + " |")
    L.append("|---|---|" + "---|" * len(args.loaders))
    for r in rows:
        if "quantize_error" in r:
            continue
        want = expected_settings(r["flags"])
        cells = []
        for l in args.loaders:
            x = r[l]
            if "seen" not in x:
                cells.append("-")
                continue
            mm = x["settings_mismatch"]
            s = "as asked" if not mm else "MISREAD: " + ", ".join(mm)
            if x.get("unknown_fields"):
                s += "; ignored: " + ", ".join(x["unknown_fields"])
            cells.append(s)
        asked = (f"g{want['group_size']} {'sym' if want['sym'] else 'asym'}"
                 f"{' act' if want['desc_act'] else ''}{' static' if want['static_groups'] else ''} {want['format']}")
        L.append(f"| {r['name']} | {asked} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("## Commands\n")
    L.append("```")
    L.append(" ".join([sys.executable, "scripts/gptq-interop.py"] + sys.argv[1:]))
    for r in rows:
        L.append("lab " + r["quantize_cmd"])
    L.append("lab decode --backend cpu --checkpoint DIR --prompt-ids "
             + ",".join(map(str, PROMPT)) + f" --max-new-tokens {NEW_TOKENS} --greedy --ignore-eos "
             "--json --dump-logits DIR.logits.json")
    L.append("```\n")
    path.write_text("\n".join(L) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    ap.add_argument("--lab", default=str(Path(target) / "release" / "lab"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/gptq-interop"))
    ap.add_argument("--report", type=Path)
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--only", help="comma-separated variant names")
    ap.add_argument("--loaders", help="comma-separated, from: " + ", ".join(LOADERS)
                    + " (default: those importable here)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    args = ap.parse_args()
    if args.loaders is None:
        import importlib.util

        args.loaders = [l for l in LOADERS if importlib.util.find_spec(IMPORT_NAME[l])]
    else:
        args.loaders = [l for l in args.loaders.split(",") if l]
    for l in args.loaders:
        if l not in LOADERS:
            ap.error(f"--loaders: unknown loader {l}; known: {', '.join(LOADERS)}")
    if not Path(args.lab).is_file():
        ap.error(f"--lab {args.lab}: no such binary; build it with cargo build --release --bin lab")
    args.work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # the dev machine is shared; the model is tiny
    dtype = getattr(torch, args.dtype)
    names = args.only.split(",") if args.only else list(VARIANTS)
    t0 = time.time()
    rows = []
    for n in names:
        row = run_variant(n, VARIANTS[n], args, dtype)
        rows.append(row)
        brief = {k: row[k] for k in ("ref_vs_lab", "quantize_error") if k in row}
        for l in args.loaders:
            if l in row:
                brief[l] = {k: row[l][k] for k in ("vs_lab", "greedy_same", "settings_mismatch", "error")
                            if k in row[l]}
        print(n, json.dumps(brief), flush=True)
    versions = module_versions()
    if args.json:
        args.json.write_text(json.dumps({"versions": versions, "dtype": args.dtype, "rows": rows},
                                        indent=1) + "\n")
    if args.report:
        write_report(args.report, rows, versions, args, args.dtype, time.time() - t0)


if __name__ == "__main__":
    main()
