//! The fatbins embedded by build.rs, one per kernel family, loaded lazily into a context.

use super::compat::Image;
use crate::error::DriverCtx;
use crate::{LabError, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/kernels_embedded.rs"));
}

/// (family, fatbin image) of every compiled family; empty when built without nvcc.
pub fn fatbins() -> &'static [(&'static str, &'static [u8])] {
    embedded::FATBINS
}

/// Which family's fatbin defines `symbol` (searched in the image's string table: a kernel's name
/// appears verbatim in its ELF symbol table, compressed fatbins aside). Used by the CPU test that
/// every registry symbol is present.
pub fn family_of(symbol: &str) -> Option<&'static str> {
    let needle = symbol.as_bytes();
    fatbins()
        .iter()
        .find(|(_, img)| {
            img.windows(needle.len() + 1)
                .any(|w| &w[..needle.len()] == needle && w[needle.len()] == 0)
        })
        .map(|(fam, _)| *fam)
}

pub(crate) struct Modules {
    ctx: Arc<CudaContext>,
    /// Which image the driver will load for this device, or why none runs (cuda::compat),
    /// decided when the GPU was opened and reported at the first kernel lookup; None when the
    /// binary has no kernels.
    image: std::result::Result<Option<Image>, String>,
    loaded: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    /// Functions already looked up. Finding a symbol scans the fatbins (megabytes): measured at
    /// ~9.5 ms per launch on the H100 run of 2026-11-26 before this cache, which swamped every
    /// event-timed kernel. After the first lookup a launch costs a hash-map hit.
    functions: Mutex<HashMap<String, CudaFunction>>,
}

impl Modules {
    pub(crate) fn new(
        ctx: Arc<CudaContext>,
        image: std::result::Result<Option<Image>, String>,
    ) -> Self {
        Modules {
            ctx,
            image,
            loaded: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        }
    }

    /// The image the driver loads here, None without kernels, or why none can run.
    pub(crate) fn verdict(&self) -> std::result::Result<Option<Image>, String> {
        self.image.clone()
    }

    pub(crate) fn function(&self, symbol: &str) -> Result<CudaFunction> {
        if let Some(f) = self.functions.lock().unwrap().get(symbol) {
            return Ok(f.clone());
        }
        let f = self.lookup(symbol)?;
        self.functions
            .lock()
            .unwrap()
            .insert(symbol.to_string(), f.clone());
        Ok(f)
    }

    fn lookup(&self, symbol: &str) -> Result<CudaFunction> {
        if fatbins().is_empty() {
            return Err(LabError::KernelsNotBuilt);
        }
        let image = self.image.clone().map_err(LabError::KernelsIncompatible)?;
        let fam = family_of(symbol).ok_or_else(|| {
            LabError::invalid(
                "kernel symbol",
                format!("'{symbol}' is in no embedded fatbin"),
            )
        })?;
        let module = {
            let mut loaded = self.loaded.lock().unwrap();
            match loaded.get(fam) {
                Some(m) => m.clone(),
                None => {
                    if let (true, Some(Image::Ptx(p))) = (loaded.is_empty(), image) {
                        eprintln!("note: this build has no native code for this GPU; its kernels are JIT-compiled from the sm_{p} PTX at each family's first load (seconds each; LAB_CUDA_ARCHS with this card's arch builds native code)");
                    }
                    let img = fatbins().iter().find(|(f, _)| *f == fam).unwrap().1;
                    let m = self
                        .ctx
                        .load_module(cudarc::nvrtc::Ptx::from_binary(img.to_vec()))
                        .ctx(&format!("loading kernel family '{fam}'"))?;
                    loaded.insert(fam, m.clone());
                    m
                }
            }
        };
        module
            .load_function(symbol)
            .ctx(&format!("loading kernel '{symbol}' from family '{fam}'"))
    }
}
