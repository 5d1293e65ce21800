//! What this binary was built from: version, git revision, kernel-source hash, compiled archs.
//! Every report and tuned config carries these so stale numbers can be recognised.

use serde::Serialize;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_REV: &str = env!("LAB_GIT_REV");
/// sha256 (first 16 hex digits) over every file under kernels/.
pub const KERNEL_HASH: &str = env!("LAB_KERNEL_HASH");
pub const KERNELS_BUILT: bool = const_str_eq(env!("LAB_KERNELS_BUILT"), "1");
/// SASS targets compiled into the fatbins, comma separated ("" when none).
pub const ARCHS: &str = env!("LAB_ARCHS");
/// CUDA release of the nvcc that compiled them ("13.0"; "" when none): cuda::compat holds the
/// driver to it.
pub const NVCC_CUDA: &str = env!("LAB_NVCC_CUDA");
/// Build-time folder of the fatbins and ptxas reports (only meaningful on the build machine).
pub const FATBIN_DIR: &str = env!("LAB_FATBIN_DIR");

const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct BuildInfo {
    pub version: String,
    pub git_rev: String,
    pub kernel_hash: String,
    pub kernels_built: bool,
    pub archs: Vec<u32>,
}

pub fn build_info() -> BuildInfo {
    BuildInfo {
        version: VERSION.into(),
        git_rev: GIT_REV.into(),
        kernel_hash: KERNEL_HASH.into(),
        kernels_built: KERNELS_BUILT,
        archs: ARCHS.split(',').filter_map(|s| s.parse().ok()).collect(),
    }
}
