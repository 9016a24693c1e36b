//! The system-call layer under the transports: what needs more than tokio offers.

pub mod fd;
// recvmmsg has no safe wrapper in rustix: the only module with `unsafe`, each block justified.
#[allow(unsafe_code)]
pub(crate) mod batch;
