//! TODO(skeleton): criterion sweep of the GEMV family.
fn main() {}
