//! TODO(lifecycle): filled in by its owner.
