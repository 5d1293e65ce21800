//! `lab report`. TODO(skeleton): filled by its owner.

#[derive(clap::Args, Debug)]
pub struct ReportArgs {}

pub fn run(_args: ReportArgs) -> anyhow::Result<()> {
    anyhow::bail!("lab report is not implemented yet")
}
