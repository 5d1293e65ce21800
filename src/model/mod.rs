//! Models: configs (presets and config.json), checkpoint loading, CPU reference engine,
//! sampling, tokenizer and prompt templates.

pub mod config;
pub mod gpu_check;
pub mod gpu_engine;
pub mod gpu_weights;
pub mod vram;
