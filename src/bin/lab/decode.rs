//! `lab decode`. TODO(skeleton): filled by its owner.

#[derive(clap::Args, Debug)]
pub struct DecodeArgs {}

pub fn run(_args: DecodeArgs) -> anyhow::Result<()> {
    anyhow::bail!("lab decode is not implemented yet")
}
