//! Memory sizes and spec bandwidths of the cards people run Vicuna on.
//!
//! Memory convention: the "GB" on a card's box is a binary size (GDDR/HBM chips come in powers of
//! two): an "8 GB" RTX 3070 has 8 GiB = 8192 MiB, and `nvidia-smi` reports that as its total. So
//! `memory_bytes` is the total the driver reports: nominal GiB, minus ECC's 1/16 on the GDDR6
//! data-centre cards that ship with ECC on (T4, A10, L4: 16384 -> 15360 MiB, 24576 -> 23040 MiB).
//! HBM cards keep ECC out of band. What the driver and the CUDA context take from that total is
//! `CUDA_CONTEXT_BYTES`, counted in every plan's total.
//!
//! Bandwidth: the vendor's spec figure in GB/s (1e9 bytes/s). It is not reachable; every roofline
//! from it is an estimate and labelled so (measure the card's ceiling with `lab bench`).

use serde::Serialize;
use std::borrow::Cow;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Memory the CUDA context costs before any tensor is allocated: the primary context with its
/// module images and per-SM local-memory reserve (about 300-450 MiB on Ampere/Ada/Hopper with
/// lazy loading, as `nvidia-smi` shows for an idle process) and the allocator's rounding of many
/// buffers. 512 MiB covers it with a little margin; `lab plan --context-mib` overrides it. The
/// cuBLAS handle and its workspace, where the engine makes one, are counted in the workspace
/// (`bytes::CUBLAS_BYTES`).
pub const CUDA_CONTEXT_BYTES: u64 = 512 * MIB;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Card {
    /// Flag value, e.g. "rtx-4090".
    pub slug: Cow<'static, str>,
    pub name: Cow<'static, str>,
    /// Total memory the driver reports (see the module comment).
    pub memory_bytes: u64,
    /// Spec DRAM bandwidth, GB/s (1e9 bytes/s); 0 for the generic sizes.
    pub bandwidth_gbs: f64,
}

const fn card(slug: &'static str, name: &'static str, mib: u64, gbs: f64) -> Card {
    Card {
        slug: Cow::Borrowed(slug),
        name: Cow::Borrowed(name),
        memory_bytes: mib * MIB,
        bandwidth_gbs: gbs,
    }
}

/// Common cards (spec bandwidth from the vendors' data sheets).
pub static CARDS: &[Card] = &[
    card("rtx-3060", "GeForce RTX 3060 12GB", 12 * 1024, 360.0),
    card("rtx-3070", "GeForce RTX 3070 8GB", 8 * 1024, 448.0),
    card("rtx-3080", "GeForce RTX 3080 10GB", 10 * 1024, 760.0),
    card("rtx-3090", "GeForce RTX 3090 24GB", 24 * 1024, 936.0),
    card("rtx-4060", "GeForce RTX 4060 8GB", 8 * 1024, 272.0),
    card(
        "rtx-4060-ti-16",
        "GeForce RTX 4060 Ti 16GB",
        16 * 1024,
        288.0,
    ),
    card("rtx-4070", "GeForce RTX 4070 12GB", 12 * 1024, 504.0),
    card("rtx-4080", "GeForce RTX 4080 16GB", 16 * 1024, 716.8),
    card("rtx-4090", "GeForce RTX 4090 24GB", 24 * 1024, 1008.0),
    // GDDR6 with ECC on by default: 15/16 of 24 GiB.
    card("a10", "A10 24GB", 23040, 600.0),
    // GDDR6 with ECC on by default: 15/16 of 16 GiB.
    card("t4", "T4 16GB", 15360, 320.0),
    // GDDR6 with ECC on by default: 15/16 of 24 GiB.
    card("l4", "L4 24GB", 23040, 300.0),
    card("a100-80", "A100 80GB SXM", 80 * 1024, 2039.0),
    card("h100-sxm", "H100 SXM 80GB", 80 * 1024, 3350.0),
    // Sold as "141 GB"; the driver reports 143771 MiB.
    card("h200", "H200 141GB", 143_771, 4800.0),
];

/// The sizes `lab plan` answers "does it fit" for: the 6/8/10/12/16/24 GB consumer cards, in GiB.
pub const GENERIC_SIZES_GIB: &[u64] = &[6, 8, 10, 12, 16, 24];

/// A generic "N GB" card (no bandwidth).
pub fn generic(gib: u64) -> Card {
    Card {
        slug: Cow::Owned(format!("{gib}gb")),
        name: Cow::Owned(format!("{gib} GB")),
        memory_bytes: gib * GIB,
        bandwidth_gbs: 0.0,
    }
}

/// A card by slug (case-insensitive, "_" and " " accepted for "-"); the error lists the choices.
pub fn by_slug(slug: &str) -> crate::Result<&'static Card> {
    let want = slug.to_ascii_lowercase().replace(['_', ' '], "-");
    CARDS.iter().find(|c| c.slug == want).ok_or_else(|| {
        let all: Vec<&str> = CARDS.iter().map(|c| c.slug.as_ref()).collect();
        crate::LabError::invalid(
            "--card",
            format!("unknown card '{slug}'; known: {}", all.join(", ")),
        )
    })
}
