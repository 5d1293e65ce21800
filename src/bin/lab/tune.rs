//! `lab tune`. TODO(skeleton): filled by its owner.

#[derive(clap::Args, Debug)]
pub struct TuneArgs {}

pub fn run(_args: TuneArgs) -> anyhow::Result<()> {
    anyhow::bail!("lab tune is not implemented yet")
}
