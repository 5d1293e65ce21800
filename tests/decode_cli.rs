//! `lab decode --backend gpu` bench flags that are refused before any device is opened: a bad
//! value names its flag and what was expected, with or without a GPU, and nothing panics.

mod common;
use common::{lab, stderr};

#[test]
fn bad_bench_lists_name_their_flag_before_touching_a_gpu() {
    let bench = ["decode", "--backend", "gpu", "--model", "vicuna-7b"];
    for (flag, value, expect) in [
        ("--v6-one-per-sm", "32768,lots", "bytes per block"),
        ("--pdl-small-plain", "16k", "bytes per block"),
        ("--pdl-prefetch-variant", "gemv_v2_vec=16k", "VARIANT=BYTES"),
        ("--pdl-prefetch-variant", "gemv_v99=16384", "VARIANT=BYTES"),
        (
            "--pdl-prefetch-variant",
            "gemm_v2_mma=16384",
            "VARIANT=BYTES",
        ),
        ("--prefill-list", "128,-5", "positive prompt lengths"),
    ] {
        let mut args = bench.to_vec();
        args.extend([flag, value]);
        let o = lab(&args);
        let e = stderr(&o);
        assert!(!o.status.success(), "{flag} {value}: {e}");
        assert!(
            e.contains(flag) && e.contains(expect),
            "{flag} {value}: {e}"
        );
        assert!(!e.contains("panicked"), "{e}");
    }
    // A bad --prefill-int4 is clap's: it names the flag and the accepted values.
    let mut args = bench.to_vec();
    args.extend(["--prefill-int4", "fast"]);
    let o = lab(&args);
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("--prefill-int4") && e.contains("dequant"),
        "{e}"
    );
}
