//! TODO(skeleton): filled by its owner.
