//! Model-level GPTQ: calibration data, the true-sequential pass over an fp16 LLaMA checkpoint that
//! writes a GPTQ checkpoint (`lab quantize`), and perplexity on the CPU engine (`lab eval`).
//! The per-layer algorithm lives in `gptq::solver`, the Hessian in `gptq::hessian`.

pub mod calib;
pub mod layer_forward;
pub mod memory;
pub mod output;
pub mod perplexity;
pub mod pipeline;
pub mod source;
pub mod synth;

pub use calib::CalibSource;
pub use output::write_model;
pub use pipeline::{
    quantize_checkpoint, quantize_model, quantize_model_in, LinearStats, Method, QuantizeOptions,
    QuantizeSummary, QuantizedModel,
};
pub use synth::{write_synthetic_checkpoint, SynthOptions, SynthSummary};
