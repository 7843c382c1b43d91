//! TODO(vault): filled in by its owner.
