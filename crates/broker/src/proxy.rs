//! TODO(proxy): filled in by its owner.
