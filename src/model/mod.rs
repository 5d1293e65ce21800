//! Models: configs (presets and config.json), checkpoint loading, CPU reference engine,
//! sampling, tokenizer and prompt templates.

pub mod checkpoint;
pub mod config;
pub mod cpu_engine;
pub mod sampler;
pub mod template;
pub mod tokenizer;
pub mod weights;
