#!/usr/bin/env python3
"""PyTorch peers for the GEMV/GEMM reports, run in the same device check as the lab's kernels.

Times, on the same shapes and with the same method as the lab (CUDA events per launch, warm-up,
median and interquartile mean, weights rotated over copies that together exceed twice the L2):
  - torch fp16 matmul  x[m,k] @ W[k,n]                      (cuBLAS through PyTorch)
  - torch._weight_int4pack_mm (tinygemm, int4 g128, bf16)  the kernel gpt-fast uses
Writes JSON to the path given by --out. Needs torch with CUDA; --device cpu runs a tiny smoke test.
"""
import argparse, json, math, sys, time


def stats(samples_us):
    s = sorted(samples_us)
    n = len(s)
    cut = n // 4
    mid = s[cut:n - cut]
    q = lambda f: s[min(n - 1, int(round(f * (n - 1))))]
    return {"median_us": q(0.5), "iqm_us": sum(mid) / len(mid), "p25_us": q(0.25), "p75_us": q(0.75),
            "min_us": s[0], "samples": n}


def time_rotating(torch, fns, warmup, iters, device):
    """fns: list of zero-arg callables (one per weight copy), called round-robin."""
    for i in range(warmup):
        fns[i % len(fns)]()
    if device == "cpu":
        out = []
        for i in range(iters):
            t0 = time.perf_counter(); fns[i % len(fns)](); out.append((time.perf_counter() - t0) * 1e6)
        return stats(out)
    torch.cuda.synchronize()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for i, (a, b) in enumerate(ev):
        a.record(); fns[i % len(fns)](); b.record()
    torch.cuda.synchronize()
    return stats([a.elapsed_time(b) * 1e3 for a, b in ev])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default="4096x4096,4096x11008,11008x4096,5120x5120,5120x13824,13824x5120,4096x12288,4096x22016",
                    help="KxN list")
    ap.add_argument("--batches", default="1,2,4,8,16,32,64")
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    import torch
    dev = a.device
    res = {"torch": torch.__version__, "device": dev, "group": a.group, "rows": [], "errors": []}
    if dev == "cuda":
        p = torch.cuda.get_device_properties(0)
        res["gpu"] = p.name
        l2 = getattr(p, "L2_cache_size", 50 << 20)
    else:
        l2 = 1 << 20
    torch.manual_seed(0)
    for shape in a.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        wbytes16 = k * n * 2
        copies16 = max(1, min(16, math.ceil(2 * l2 / wbytes16)))
        w16 = [torch.randn(k, n, device=dev, dtype=torch.float16) * 0.02 for _ in range(copies16)]
        # int4 weights for tinygemm: codes [n, k] int32 in 0..15, packed by torch's own converter.
        int4 = None
        try:
            q = torch.randint(0, 16, (n, k), dtype=torch.int32, device=dev)
            inner_k_tiles = 8
            if dev == "cuda":
                packed = torch._convert_weight_to_int4pack(_pack_uint8(torch, q), inner_k_tiles)
            else:
                packed = torch._convert_weight_to_int4pack_for_cpu(q, inner_k_tiles)
            sz = torch.randn(k // a.group, n, 2, device=dev, dtype=torch.bfloat16) * 0.01
            wbytes4 = k * n // 2 + sz.numel() * 2
            copies4 = max(1, min(64, math.ceil(2 * l2 / wbytes4)))
            int4 = ([packed.clone() for _ in range(copies4)], sz, wbytes4)
        except Exception as e:  # a peer that cannot run is reported, not fatal
            res["errors"].append(f"int4pack {shape}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
        for m in (int(b) for b in a.batches.split(",")):
            x16 = torch.randn(m, k, device=dev, dtype=torch.float16)
            row = {"k": k, "n": n, "m": m}
            try:
                t = time_rotating(torch, [lambda w=w: torch.matmul(x16, w) for w in w16], 10, a.iters, dev)
                row["fp16_matmul"] = t
                row["fp16_bytes"] = wbytes16 + (m * k + m * n) * 2
            except Exception as e:
                res["errors"].append(f"fp16 {shape} m={m}: {str(e).splitlines()[0][:300]}")
            if int4 is not None:
                ws, sz, wb = int4
                xb = x16.to(torch.bfloat16)
                try:
                    t = time_rotating(torch, [lambda w=w: torch._weight_int4pack_mm(xb, w, a.group, sz) for w in ws],
                                      10, a.iters, dev)
                    row["int4pack_mm"] = t
                    row["int4_bytes"] = wb + (m * k + m * n) * 2
                except Exception as e:
                    res["errors"].append(f"int4pack_mm {shape} m={m}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
            res["rows"].append(row)
            print(f"{k}x{n} m={m}: fp16 {row.get('fp16_matmul', {}).get('iqm_us', float('nan')):.1f} us, "
                  f"int4pack {row.get('int4pack_mm', {}).get('iqm_us', float('nan')):.1f} us", flush=True)
        del w16, int4
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    for e in res["errors"][:5]:
        print("peer error:", e, file=sys.stderr)


def _pack_uint8(torch, q):
    """CUDA _convert_weight_to_int4pack takes uint8 [n, k/2]: two codes per byte, the even k in the high nibble."""
    q = q.to(torch.uint8)
    return (q[:, ::2] << 4) | q[:, 1::2]


if __name__ == "__main__":
    main()
