//! `lab bench`. TODO(skeleton): filled by its owner.

#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("lab bench is not implemented yet")
}
