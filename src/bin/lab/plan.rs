//! `lab plan`. TODO(skeleton): filled by its owner.

#[derive(clap::Args, Debug)]
pub struct PlanArgs {}

pub fn run(_args: PlanArgs) -> anyhow::Result<()> {
    anyhow::bail!("lab plan is not implemented yet")
}
