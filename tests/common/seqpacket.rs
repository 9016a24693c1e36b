//! For tests that send raw datagrams to a seqpacket peer.

use std::io::IoSlice;
use std::os::fd::{AsFd, OwnedFd};

use tokio_seqpacket::UnixSeqpacket;
use tokio_seqpacket::ancillary::AncillaryMessageWriter;

use super::within;

/// No descriptors, for [`raw_send`].
pub const NO_FDS: &[OwnedFd] = &[];

/// Send one datagram with descriptors through tokio-seqpacket's own API, not peerwire's. Fails
/// if the socket refuses it (the remote may be gone) or takes only part of it.
pub async fn raw_send(socket: &UnixSeqpacket, data: &[u8], fds: &[impl AsFd]) -> std::io::Result<()> {
	let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
	let mut space = vec![0; 64 + 8 * fds.len()];
	let mut ancillary = AncillaryMessageWriter::new(&mut space);
	if !borrowed.is_empty() {
		ancillary.add_fds(&borrowed).unwrap();
	}
	let sent = within(socket.send_vectored_with_ancillary(&[IoSlice::new(data)], &mut ancillary)).await?;
	if sent != data.len() {
		let message = format!("sent {sent} bytes of a {}-byte datagram", data.len());
		return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, message));
	}
	Ok(())
}
