//! Errors of the policy crate: an invalid policy set (with the parser's or validator's text and
//! locations), an unreadable policy file, or a request that cannot be turned into a Cedar request.

use std::path::PathBuf;

/// Why a policy set was not loaded, or a request could not be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy text does not parse, breaks a Mandate rule (ids, annotations, size) or fails
    /// strict validation against [`crate::SCHEMA`]. The message carries the parser's or
    /// validator's text with policy ids and `source:line:column` locations.
    #[error("invalid policy set: {0}")]
    Invalid(String),
    /// A policy file or directory could not be read.
    #[error("cannot read policy source {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The request could not be converted into a Cedar request (e.g. arguments over the bounds).
    #[error("policy request rejected: {0}")]
    Request(String),
}
