//! Models: configs (presets and config.json), checkpoint loading, CPU reference engine,
//! sampling, tokenizer and prompt templates.

#[cfg(test)]
mod attention_emulate;
pub mod checkpoint;
pub mod config;
pub mod cpu_engine;
pub mod decode_bench;
pub mod decode_tune;
pub mod gpu_check;
pub mod gpu_engine;
pub mod gpu_layout;
pub mod gpu_weights;
pub mod layer_source;
pub mod load_progress;
pub mod sampler;
pub mod sentencepiece;
pub mod step_profile;
pub mod template;
pub mod tokenizer;
pub mod vram;
pub mod weights;
