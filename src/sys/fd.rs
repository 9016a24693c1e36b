//! Datagrams with descriptors: one `sendmsg`/`recvmsg` each, file descriptors as `SCM_RIGHTS`.
//!
//! This is the only place that touches ancillary data. It needs no `unsafe` of its own: rustix's
//! safe `recvmsg` parses the control messages, and the descriptors it yields are [`OwnedFd`]s.
//! Any it is not asked for are closed when the [`RecvAncillaryBuffer`] is dropped, so from the
//! moment `recvmsg` returns every received descriptor has an owner and no path can leak one.
//!
//! The kernel's two truncation flags are returned as they are: `MSG_TRUNC` (the datagram did not
//! fit the data buffers) and `MSG_CTRUNC` (the descriptors did not fit the control buffer; the
//! kernel closed the ones it could not deliver). The caller decides what they mean.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
	RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage,
	SendFlags,
};

/// The bytes of control buffer that hold `fds` descriptors in one `SCM_RIGHTS` message,
/// including the slack needed to align the buffer.
pub fn control_space(fds: usize) -> usize {
	rustix::cmsg_space!(ScmRights(fds))
}

/// A control buffer for `fds` descriptors.
pub fn control_buffer(fds: usize) -> Vec<MaybeUninit<u8>> {
	vec![MaybeUninit::uninit(); control_space(fds)]
}

/// One received datagram.
#[derive(Debug)]
pub struct Received {
	/// The bytes written into the data buffers (at most their total length).
	pub len: usize,
	/// Every descriptor that arrived with the datagram, owned.
	pub fds: Vec<OwnedFd>,
	/// `MSG_TRUNC`: the datagram was longer than the data buffers and was cut.
	pub truncated: bool,
	/// `MSG_CTRUNC`: ancillary data did not fit the control buffer and was cut.
	pub control_truncated: bool,
}

/// Receive one datagram into `buffers`, with its descriptors.
///
/// Non-blocking sockets return `WouldBlock` as usual. `EINTR` is retried.
pub fn recv_datagram(
	socket: BorrowedFd<'_>,
	buffers: &mut [IoSliceMut<'_>],
	control: &mut [MaybeUninit<u8>],
) -> io::Result<Received> {
	let mut ancillary = RecvAncillaryBuffer::new(control);
	let received = loop {
		match rustix::net::recvmsg(socket, buffers, &mut ancillary, RecvFlags::CMSG_CLOEXEC) {
			Err(rustix::io::Errno::INTR) => continue,
			result => break result?,
		}
	};
	// Take ownership before anything else: from here on every descriptor is closed when dropped.
	let mut fds = Vec::new();
	for message in ancillary.drain() {
		if let RecvAncillaryMessage::ScmRights(descriptors) = message {
			fds.extend(descriptors);
		}
	}
	Ok(Received {
		len: received.bytes,
		fds,
		truncated: received.flags.contains(ReturnFlags::TRUNC),
		control_truncated: received.flags.contains(ReturnFlags::CTRUNC),
	})
}

/// Send one datagram made of `buffers`, with `fds` as `SCM_RIGHTS`.
///
/// On a seqpacket socket the datagram goes whole or not at all; the return value is its length.
/// `control` must hold [`control_space`]`(fds.len())` bytes. Never raises `SIGPIPE`.
pub fn send_datagram(
	socket: BorrowedFd<'_>,
	buffers: &[IoSlice<'_>],
	fds: &[OwnedFd],
	control: &mut [MaybeUninit<u8>],
) -> io::Result<usize> {
	let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
	let mut ancillary = SendAncillaryBuffer::new(control);
	if !borrowed.is_empty() && !ancillary.push(SendAncillaryMessage::ScmRights(&borrowed)) {
		return Err(io::Error::new(io::ErrorKind::InvalidInput, "control buffer too small for the descriptors"));
	}
	loop {
		match rustix::net::sendmsg(socket, buffers, &mut ancillary, SendFlags::NOSIGNAL) {
			Err(rustix::io::Errno::INTR) => continue,
			result => return Ok(result?),
		}
	}
}

#[cfg(test)]
mod tests {
	use super::*;
	use std::os::unix::net::UnixDatagram;

	fn devnull() -> OwnedFd {
		std::fs::File::open("/dev/null").unwrap().into()
	}

	fn recv(socket: &UnixDatagram, data: usize, fds: usize) -> Received {
		let mut buffer = vec![0; data];
		let mut control = control_buffer(fds);
		recv_datagram(socket.as_fd(), &mut [IoSliceMut::new(&mut buffer)], &mut control).unwrap()
	}

	fn send(socket: &UnixDatagram, data: &[u8], fds: &[OwnedFd]) {
		let mut control = control_buffer(fds.len());
		let sent = send_datagram(socket.as_fd(), &[IoSlice::new(data)], fds, &mut control).unwrap();
		assert_eq!(sent, data.len());
	}

	#[test]
	fn descriptors_arrive_owned_and_whole() {
		let (a, b) = UnixDatagram::pair().unwrap();
		send(&a, b"hello", &[devnull(), devnull()]);
		let received = recv(&b, 16, 2);
		assert_eq!(received.len, 5);
		assert_eq!(received.fds.len(), 2);
		assert!(!received.truncated && !received.control_truncated);
	}

	#[test]
	fn truncation_is_reported() {
		let (a, b) = UnixDatagram::pair().unwrap();
		send(&a, &[1; 32], &[]);
		let received = recv(&b, 8, 0);
		assert_eq!(received.len, 8);
		assert!(received.truncated);

		let many: Vec<OwnedFd> = (0..32).map(|_| devnull()).collect();
		send(&a, b"x", &many);
		let received = recv(&b, 8, 1);
		assert!(received.control_truncated);
		assert!(received.fds.len() < 32, "{} descriptors", received.fds.len());
	}

	#[test]
	fn a_control_buffer_too_small_refuses_before_sending() {
		let (a, _b) = UnixDatagram::pair().unwrap();
		let mut control = Vec::new();
		let error = send_datagram(a.as_fd(), &[IoSlice::new(b"x")], &[devnull()], &mut control).unwrap_err();
		assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
	}
}
