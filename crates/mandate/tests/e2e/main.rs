//! End-to-end tests: the real `mandate` binary on loopback, driven over HTTP and through its
//! CLI, as an operator and a client would. All of them compile into this one test binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_api;
mod audit;
mod audit_queries;
mod ciba;
mod code_flow;
mod delegation;
mod federation;
mod gateway;
mod harness;
mod keys_and_config;
mod postgres;
mod registration;
mod spiffe;
mod ssf;
mod token_endpoint;
mod token_lifecycle;
mod transparency;
mod txn_token;
mod workload_api;
