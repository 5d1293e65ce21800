//! Memory sizes and spec bandwidths of the cards people run Vicuna on.
//!
//! Memory convention: the "GB" on a card's box is a binary size (GDDR/HBM chips come in powers of
//! two): an "8 GB" RTX 3070 has 8 GiB = 8192 MiB, and `nvidia-smi` reports that as its total. So
//! `memory_bytes` is the total the driver reports: nominal GiB, minus ECC's 1/16 on the GDDR6
//! data-centre cards that ship with ECC on (T4, A10, L4, L40S: 16384 -> 15360 MiB, 24576 -> 23040 MiB).
//! HBM cards keep ECC out of band. A program cannot allocate all of it: the total CUDA itself
//! reports (`cuMemGetInfo`) is smaller by `driver_reserve_bytes`, and the plans fit against
//! what is left (`Card::usable_bytes`). What the CUDA context then takes is
//! `CUDA_CONTEXT_BYTES`, counted in every plan's total.
//!
//! Bandwidth: the vendor's spec figure in GB/s (1e9 bytes/s). It is not reachable; every roofline
//! from it is an estimate and labelled so (measure the card's ceiling with `lab bench`).

use serde::Serialize;
use std::borrow::Cow;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Memory the CUDA context costs before any tensor is allocated: the primary context with its
/// module images and per-SM local-memory reserve, and the allocator's rounding of many buffers.
/// Measured on the H100 (132 SMs, the lab's fatbin): 529-533 MiB (`vram.context_bytes` of run
/// 17's decode.json), which the 512 MiB used until 2026-11-28 undercounted (every planned total
/// 34-51 MB under the measured peak). 544 MiB covers it; a card with fewer SMs reserves less,
/// so this errs towards "does not fit". `lab plan --context-mib` overrides it. The cuBLAS
/// handle and its workspace, where the engine makes one, are counted in the workspace
/// (`bytes::CUBLAS_BYTES`).
pub const CUDA_CONTEXT_BYTES: u64 = 544 * MIB;

/// What the driver keeps of a card's memory before any program allocates: the total below is
/// `cuMemGetInfo`'s (and PyTorch's "total capacity"), not the size on the box. Rule: 200 MiB +
/// 1/128 of the memory. Against readings: the lab's H100 80GB reports 81079 MiB of 81920
/// (841 reserved; the rule 840), and public reports of PyTorch's total put an RTX 4090 at
/// 23.61-23.68 GiB of 24 (0.32-0.39 GiB reserved; the rule 0.38), an RTX 3070 at 7.77 of 8
/// (0.23; rule 0.26), an RTX 3080 10GB at 9.78 of 10 (0.22; rule 0.27), an A100 80GB at 79.25
/// of 80 (0.75; rule 0.82), a T4 at 14.75 of 15 (0.25; rule 0.31): within 0.1 GiB, on the side
/// of "does not fit". A desktop's own use of a GeForce card (compositor, browser) comes on top
/// and is not counted: the tables print what is left free.
pub fn driver_reserve_bytes(memory_bytes: u64) -> u64 {
    200 * MIB + memory_bytes / 128
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Card {
    /// Flag value, e.g. "rtx-4090".
    pub slug: Cow<'static, str>,
    pub name: Cow<'static, str>,
    /// Total memory the driver reports (see the module comment).
    pub memory_bytes: u64,
    /// Spec DRAM bandwidth, GB/s (1e9 bytes/s); 0 for the generic sizes.
    pub bandwidth_gbs: f64,
    /// Compute capability x 10 (86 = sm_86); 0 for the generic sizes. From sm_90 the engine
    /// decodes with programmatic dependent launch, so the estimate scales PDL steps there.
    pub sm: u32,
    /// What the driver reported allocatable on this very device (`--card this`: cuMemGetInfo's
    /// total); the plans fit against it instead of `driver_reserve_bytes`' rule. None for the
    /// table's cards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usable_measured_bytes: Option<u64>,
}

impl Card {
    /// What a program can allocate: `memory_bytes` less `driver_reserve_bytes`. Plans fit here.
    pub fn usable_bytes(&self) -> u64 {
        self.usable_measured_bytes.unwrap_or_else(|| {
            self.memory_bytes
                .saturating_sub(driver_reserve_bytes(self.memory_bytes))
        })
    }

    /// The card a CUDA device is (`lab plan --card this`): its name, the memory its driver lets
    /// a program allocate, the spec bandwidth from its memory clock and bus width, its compute
    /// capability. Exact for any card, the table's or not.
    /// A MIG slice's bandwidth is its share of the whole GPU's (`MigSlice`).
    pub fn from_device(d: &crate::cuda::DeviceInfo) -> Card {
        let whole = d.spec_bandwidth() / 1e9;
        let share = MigSlice::of(&d.name).and_then(|m| m.bandwidth_share());
        Card {
            slug: Cow::Owned(d.slug.clone()),
            name: Cow::Owned(d.name.clone()),
            memory_bytes: d.memory_bytes,
            bandwidth_gbs: whole * share.unwrap_or(1.0),
            sm: d.sm(),
            usable_measured_bytes: Some(d.memory_bytes),
        }
    }
}

/// A MIG instance as CUDA names it: the whole GPU's name, then "MIG", then the profile
/// ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", "NVIDIA H100 80GB HBM3 MIG 3g.40gb"). The driver's
/// memory clock and bus width are the whole GPU's, but an instance owns only its memory slices
/// (their controllers and L2 with them), and every profile's memory is that share of the
/// GPU's: A100 40GB 1g.5gb is 1 of 8 slices, H100 80GB 3g.40gb 4 of 8. So its bandwidth is
/// read as the whole GPU's times profile memory / GPU memory, both from the name.
#[derive(Debug, Clone, PartialEq)]
pub struct MigSlice {
    /// "1g.5gb".
    pub profile: String,
    /// The profile's memory, GB (5 for 1g.5gb).
    pub slice_gb: u32,
    /// The GPU's memory from its name ("40GB" in A100-SXM4-40GB), when the name gives it.
    pub gpu_gb: Option<u32>,
}

impl MigSlice {
    /// None for a name without " MIG <c>g.<m>gb".
    pub fn of(name: &str) -> Option<MigSlice> {
        let (gpu, profile) = name.split_once(" MIG ")?;
        let profile = profile.split_whitespace().next()?.to_string();
        let lower = profile.to_ascii_lowercase();
        let (compute, mem) = lower.split_once('.')?;
        compute.strip_suffix('g')?.parse::<u32>().ok()?;
        let slice_gb = mem.strip_suffix("gb")?.parse::<u32>().ok()?;
        // The GPU's memory: a "<n>GB" token or "-<n>GB" suffix in its name.
        let gpu_gb = gpu
            .split([' ', '-'])
            .filter_map(|t| {
                t.to_ascii_lowercase()
                    .strip_suffix("gb")?
                    .parse::<u32>()
                    .ok()
            })
            .next_back();
        Some(MigSlice {
            profile,
            slice_gb,
            gpu_gb,
        })
    }

    /// profile memory / GPU memory, when both are known and the profile is a part (0, 1].
    pub fn bandwidth_share(&self) -> Option<f64> {
        match self.gpu_gb {
            Some(g) if g > 0 && self.slice_gb > 0 && self.slice_gb <= g => {
                Some(self.slice_gb as f64 / g as f64)
            }
            _ => None,
        }
    }
}

const fn card(slug: &'static str, name: &'static str, mib: u64, gbs: f64, sm: u32) -> Card {
    Card {
        slug: Cow::Borrowed(slug),
        name: Cow::Borrowed(name),
        memory_bytes: mib * MIB,
        bandwidth_gbs: gbs,
        sm,
        usable_measured_bytes: None,
    }
}

/// Common cards (spec bandwidth from the vendors' data sheets: bus width / 8 x data rate; sm_120,
/// the RTX 50 series, runs the sm_90 PTX through the driver's JIT).
pub static CARDS: &[Card] = &[
    card(
        "rtx-2080-ti",
        "GeForce RTX 2080 Ti 11GB",
        11 * 1024,
        616.0,
        75,
    ),
    card("rtx-3060", "GeForce RTX 3060 12GB", 12 * 1024, 360.0, 86),
    card(
        "rtx-3060-ti",
        "GeForce RTX 3060 Ti 8GB",
        8 * 1024,
        448.0,
        86,
    ),
    card("rtx-3070", "GeForce RTX 3070 8GB", 8 * 1024, 448.0, 86),
    card(
        "rtx-3070-ti",
        "GeForce RTX 3070 Ti 8GB",
        8 * 1024,
        608.0,
        86,
    ),
    card("rtx-3080", "GeForce RTX 3080 10GB", 10 * 1024, 760.0, 86),
    card("rtx-3080-12", "GeForce RTX 3080 12GB", 12 * 1024, 912.0, 86),
    card(
        "rtx-3080-ti",
        "GeForce RTX 3080 Ti 12GB",
        12 * 1024,
        912.0,
        86,
    ),
    card("rtx-3090", "GeForce RTX 3090 24GB", 24 * 1024, 936.0, 86),
    card(
        "rtx-3090-ti",
        "GeForce RTX 3090 Ti 24GB",
        24 * 1024,
        1008.0,
        86,
    ),
    card("rtx-4060", "GeForce RTX 4060 8GB", 8 * 1024, 272.0, 89),
    card(
        "rtx-4060-ti-8",
        "GeForce RTX 4060 Ti 8GB",
        8 * 1024,
        288.0,
        89,
    ),
    card(
        "rtx-4060-ti-16",
        "GeForce RTX 4060 Ti 16GB",
        16 * 1024,
        288.0,
        89,
    ),
    card("rtx-4070", "GeForce RTX 4070 12GB", 12 * 1024, 504.0, 89),
    card(
        "rtx-4070-super",
        "GeForce RTX 4070 SUPER 12GB",
        12 * 1024,
        504.0,
        89,
    ),
    card(
        "rtx-4070-ti",
        "GeForce RTX 4070 Ti 12GB",
        12 * 1024,
        504.0,
        89,
    ),
    card(
        "rtx-4070-ti-super",
        "GeForce RTX 4070 Ti SUPER 16GB",
        16 * 1024,
        672.0,
        89,
    ),
    card("rtx-4080", "GeForce RTX 4080 16GB", 16 * 1024, 716.8, 89),
    card(
        "rtx-4080-super",
        "GeForce RTX 4080 SUPER 16GB",
        16 * 1024,
        736.0,
        89,
    ),
    card("rtx-4090", "GeForce RTX 4090 24GB", 24 * 1024, 1008.0, 89),
    card(
        "rtx-5060-ti-16",
        "GeForce RTX 5060 Ti 16GB",
        16 * 1024,
        448.0,
        120,
    ),
    card("rtx-5070", "GeForce RTX 5070 12GB", 12 * 1024, 672.0, 120),
    card(
        "rtx-5070-ti",
        "GeForce RTX 5070 Ti 16GB",
        16 * 1024,
        896.0,
        120,
    ),
    card("rtx-5080", "GeForce RTX 5080 16GB", 16 * 1024, 960.0, 120),
    card("rtx-5090", "GeForce RTX 5090 32GB", 32 * 1024, 1792.0, 120),
    // Workstation cards ship with ECC off: the whole 48 GiB.
    card("rtx-a6000", "RTX A6000 48GB", 48 * 1024, 768.0, 86),
    card("rtx-6000-ada", "RTX 6000 Ada 48GB", 48 * 1024, 960.0, 89),
    // GDDR6 with ECC on by default: 15/16 of 24 GiB.
    card("a10", "A10 24GB", 23040, 600.0, 86),
    // GDDR6 with ECC on by default: 15/16 of 16 GiB.
    card("t4", "T4 16GB", 15360, 320.0, 75),
    // GDDR6 with ECC on by default: 15/16 of 24 GiB.
    card("l4", "L4 24GB", 23040, 300.0, 89),
    // GDDR6 with ECC on by default: 15/16 of 48 GiB.
    card("l40s", "L40S 48GB", 46080, 864.0, 89),
    card("a100-40", "A100 40GB", 40 * 1024, 1555.0, 80),
    card("a100-80", "A100 80GB SXM", 80 * 1024, 2039.0, 80),
    card("h100-sxm", "H100 SXM 80GB", 80 * 1024, 3350.0, 90),
    // Sold as "141 GB"; the driver reports 143771 MiB.
    card("h200", "H200 141GB", 143_771, 4800.0, 90),
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
        sm: 0,
        usable_measured_bytes: None,
    }
}

/// `s` lower-cased with only its letters and digits, and a leading "nvidia" / "geforce" / "tesla" dropped:
/// "GeForce RTX 4090", "rtx_4090" and "RTX-4090" all read "rtx4090".
fn normalized(s: &str) -> String {
    let mut n: String = s
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    for prefix in ["nvidia", "geforce", "tesla"] {
        if let Some(rest) = n.strip_prefix(prefix) {
            n = rest.to_string();
        }
    }
    n
}

/// Names `nvidia-smi` prints (normalized) that are neither a slug nor a table name.
pub(crate) const SMI_NAMES: &[(&str, &str)] = &[
    ("a100sxm440gb", "a100-40"),
    ("a100pcie40gb", "a100-40"),
    ("a100sxm480gb", "a100-80"),
    ("h10080gbhbm3", "h100-sxm"),
    ("rtx6000adageneration", "rtx-6000-ada"),
];

/// A variant segment of a slug after its model number: "ti", "super", "ada" (the RTX 6000 Ada is
/// not the Quadro RTX 6000) or a memory size ("rtx-4060-ti-16").
fn is_variant(segment: &str) -> bool {
    ["ti", "super", "ada"].contains(&segment) || is_memory_size(segment)
}

/// A slug segment that is a memory size in GB ("16" in rtx-4060-ti-16).
fn is_memory_size(segment: &str) -> bool {
    !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit())
}

/// A card by slug or name, as people write it: case, spaces, "-" / "_" and a leading "NVIDIA" /
/// "GeForce" do not matter ("rtx4090", "GeForce RTX 4090", the table's "GeForce RTX 3080 12GB",
/// nvidia-smi's "NVIDIA A100-SXM4-40GB"), "RTX" may be left out ("4070" is the RTX 4070), and the
/// start of a slug up to one of its "-" is enough where the rest is no variant ("h100" for
/// h100-sxm). A name that the table continues only with a variant ("5060": rtx-5060-ti-16) is
/// refused, not read as that variant: the RTX 5060 is another card. The error lists the choices.
pub fn by_slug(slug: &str) -> crate::Result<&'static Card> {
    let want = normalized(slug);
    let rtx = format!("rtx{want}");
    let exact = |c: &Card| {
        let (k, n) = (normalized(&c.slug), normalized(&c.name));
        k == want
            || k == rtx
            || n == want
            || n == rtx
            || SMI_NAMES.iter().any(|&(m, s)| m == want && s == c.slug)
    };
    if let Some(c) = CARDS.iter().find(|c| exact(c)) {
        return Ok(c);
    }
    // Slug starts at a "-": (card, whether the rest begins with a variant). A start without a
    // digit names no model ("rtx" would be every GeForce card).
    let mut starts: Vec<(&Card, bool)> = Vec::new();
    let has_number = want.bytes().any(|b| b.is_ascii_digit());
    for c in CARDS.iter().filter(|_| has_number) {
        let segs: Vec<&str> = c.slug.split('-').collect();
        let from = if segs[0] == "rtx" { 0..2 } else { 0..1 };
        let hit = from.into_iter().find_map(|skip| {
            (skip + 1..segs.len())
                .find(|&j| segs[skip..j].concat() == want)
                .map(|j| is_variant(segs[j]))
        });
        if let Some(variant) = hit {
            starts.push((c, variant));
        }
    }
    let names = |v: &[&Card]| {
        v.iter()
            .map(|c| c.slug.as_ref())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let plain: Vec<&Card> = starts.iter().filter(|s| !s.1).map(|s| s.0).collect();
    let variants: Vec<&Card> = starts.iter().filter(|s| s.1).map(|s| s.0).collect();
    match (plain.as_slice(), variants.as_slice()) {
        ([one], _) => Ok(one),
        ([], []) => {
            let all: Vec<&Card> = CARDS.iter().collect();
            Err(crate::LabError::invalid(
                "--card",
                format!(
                    "unknown card '{slug}'; known: {} (a PCIe form of an SXM card is another \
                     card: other bandwidth. For a card not listed: --card this on that machine \
                     plans its GPU 0 from the driver's facts; else plan against a generic size in \
                     the table, or pass --efficiency with the nearest card of the same bandwidth)",
                    names(&all)
                ),
            ))
        }
        ([], v) => Err(crate::LabError::invalid(
            "--card",
            format!(
                "'{slug}' names no card in the table exactly; these continue its name, each a \
                 different card: {}; name one",
                names(v)
            ),
        )),
        (many, _) => Err(crate::LabError::invalid(
            "--card",
            format!("'{slug}' could be any of {}; name one", names(many)),
        )),
    }
}

/// Other cards sold under `card`'s name with another memory size (rtx-3080-12 for rtx-3080):
/// nvidia-smi names them alike, so a plan says which one it took.
pub fn memory_variants(card: &Card) -> Vec<&'static Card> {
    CARDS
        .iter()
        .filter(|c| {
            c.slug
                .strip_prefix(card.slug.as_ref())
                .and_then(|r| r.strip_prefix('-'))
                .is_some_and(is_memory_size)
        })
        .collect()
}
