//! `lab run`. TODO(skeleton): filled by its owner.

#[derive(clap::Args, Debug)]
pub struct RunArgs {}

pub fn run(_args: RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("lab run is not implemented yet")
}
