//! Shared helpers of the storage integration tests.

pub mod pg;
pub mod suite;
