//! Models: configs (presets and config.json), checkpoint loading, CPU reference engine,
//! sampling, tokenizer and prompt templates.

pub mod checkpoint;
pub mod config;
