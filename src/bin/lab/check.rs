//! `lab check`. TODO(skeleton): filled by its owner.

#[derive(clap::Args, Debug)]
pub struct CheckArgs {}

pub fn run(_args: CheckArgs) -> anyhow::Result<()> {
    anyhow::bail!("lab check is not implemented yet")
}
