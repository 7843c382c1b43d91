//! End-to-end tests: the real `mandate` binary on loopback, driven over HTTP and through its
//! CLI, as an operator and a client would. All of them compile into this one test binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_api;
mod audit;
mod audit_queries;
mod broker_proxy;
mod broker_vault;
mod ciba;
mod code_flow;
mod console;
mod delegation;
mod demo;
mod federation;
mod gateway;
mod governance;
mod harness;
mod keys_and_config;
mod operator;
mod policy;
mod postgres;
mod registration;
mod spiffe;
mod ssf;
mod token_endpoint;
mod token_lifecycle;
mod transparency;
mod txn_token;
mod workload_api;
