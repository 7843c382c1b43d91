//! Workload identity (leg C): the SPIFFE CA and the SVIDs it issues (`ca`, `svid`, `bundle`),
//! attestation of callers on the Workload API socket (`attest`), and the SPIFFE Workload API
//! itself, served with tonic over a unix socket (`api`).

pub mod api;
pub mod attest;
pub mod bundle;
pub mod ca;
pub mod svid;
