//! The library's one error type. The binary wraps it in anyhow; nothing here panics on user input.

use std::path::PathBuf;

pub type Result<T, E = LabError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// No usable CUDA driver or device; the message says which.
    #[error("no CUDA device: {0}")]
    NoDevice(String),

    /// The binary was built without nvcc, so there is nothing to launch.
    #[error("CUDA kernels were not built into this binary (nvcc was not found at build time); run scripts/setup and rebuild")]
    KernelsNotBuilt,

    /// The embedded kernels cannot run on this device or under this driver (cuda::compat).
    #[error("the embedded CUDA kernels cannot run here: {0}")]
    KernelsIncompatible(String),

    #[error("CUDA driver error in {context}: {source}")]
    Driver {
        context: String,
        #[source]
        source: cudarc::driver::DriverError,
    },

    #[error("cuBLAS error in {context}: {source}")]
    Cublas {
        context: String,
        #[source]
        source: cudarc::cublas::result::CublasError,
    },

    /// libcublas could not be loaded (the cuBLAS baselines need it); the message says where to look.
    #[error("cuBLAS unavailable: {0}")]
    CublasUnavailable(String),

    /// A launch whose shape or parameters the variant does not support.
    #[error("variant {variant}: unsupported shape {shape}: {reason}")]
    UnsupportedShape {
        variant: String,
        shape: String,
        reason: String,
    },

    /// A checkpoint file or tensor that is not what the GPTQ contract says.
    #[error("{}: {reason}", path.display())]
    BadCheckpoint { path: PathBuf, reason: String },

    /// A bad command-line value or config entry.
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A kernel result that disagrees with the reference beyond tolerance.
    #[error("check failed: {0}")]
    CheckFailed(String),
}

impl LabError {
    pub fn bad_checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        LabError::BadCheckpoint {
            path: path.into(),
            reason: reason.into(),
        }
    }
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        LabError::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LabError::Io {
            path: path.into(),
            source,
        }
    }
    /// The CUDA driver's result code, where the driver is what failed.
    pub fn driver_code(&self) -> Option<cudarc::driver::sys::cudaError_enum> {
        match self {
            LabError::Driver { source, .. } => Some(source.0),
            _ => None,
        }
    }
}

/// Attach a context string to driver errors: `stream.synchronize().ctx("gemv v2")?`.
pub trait DriverCtx<T> {
    fn ctx(self, context: &str) -> Result<T>;
}

impl<T> DriverCtx<T> for std::result::Result<T, cudarc::driver::DriverError> {
    fn ctx(self, context: &str) -> Result<T> {
        self.map_err(|source| LabError::Driver {
            context: context.to_string(),
            source,
        })
    }
}

impl<T> DriverCtx<T> for std::result::Result<T, cudarc::cublas::result::CublasError> {
    fn ctx(self, context: &str) -> Result<T> {
        self.map_err(|source| LabError::Cublas {
            context: context.to_string(),
            source,
        })
    }
}
