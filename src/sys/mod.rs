//! The system-call layer under the transports: what needs more than tokio offers.

pub mod fd;
