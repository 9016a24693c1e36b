//! The seqpacket side of the tap: every datagram forwarded whole, with its descriptors.
//!
//! The library keeps its `recvmsg`/`sendmsg` code to itself, and its transport would decode and
//! re-encode; here a datagram is received as bytes and descriptors and sent on unchanged, with
//! rustix's safe API as the library does: received descriptors are owned at once and closed on
//! this side once sent (the next process has its own copies).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use peerwire::codec::{self, Endian};
use peerwire::message::HEADER_LEN;
use rustix::net::{
	RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage,
	SendFlags,
};
use tokio::io::Interest;
use tokio_seqpacket::UnixSeqpacket;

use super::{Place, Tap};
use crate::failure::describe_io;
use crate::output::{Direction, MessageView};
use crate::scan::{Frame, Progress, ScanEvent};

/// The most descriptors Linux passes with one message (`SCM_MAX_FD`).
const MAX_FDS: usize = 253;

struct Received {
	len: usize,
	fds: Vec<OwnedFd>,
	truncated: bool,
	control_truncated: bool,
}

fn recv(socket: BorrowedFd<'_>, buffer: &mut [u8], control: &mut [MaybeUninit<u8>]) -> io::Result<Received> {
	let mut ancillary = RecvAncillaryBuffer::new(control);
	let received = loop {
		match rustix::net::recvmsg(socket, &mut [IoSliceMut::new(buffer)], &mut ancillary, RecvFlags::CMSG_CLOEXEC) {
			Err(rustix::io::Errno::INTR) => continue,
			result => break result?,
		}
	};
	// Owned from here on: every path closes them.
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

fn send(
	socket: BorrowedFd<'_>,
	datagram: &[u8],
	fds: &[OwnedFd],
	control: &mut [MaybeUninit<u8>],
) -> io::Result<usize> {
	let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
	let mut ancillary = SendAncillaryBuffer::new(control);
	if !borrowed.is_empty() && !ancillary.push(SendAncillaryMessage::ScmRights(&borrowed)) {
		return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors for one message"));
	}
	loop {
		match rustix::net::sendmsg(socket, &[IoSlice::new(datagram)], &mut ancillary, SendFlags::NOSIGNAL) {
			Err(rustix::io::Errno::INTR) => continue,
			result => return Ok(result?),
		}
	}
}

/// What the kernel keeps of a send buffer for itself (`unix_dgram_sendmsg`).
const KERNEL_SNDBUF_OVERHEAD: usize = 32;
/// Linux sends no larger datagram whatever the send buffer (the library's limit too).
const MAX_SEND_DATAGRAM_LEN: usize = 4 << 20;

/// Raise the send buffer of `socket` so that datagrams up to `max_body_len` (or the kernel's
/// cap) can pass; the default buffer takes only about 200 KiB. Best effort: the system may
/// allow less (`net.core.wmem_max`), and a datagram over what it allows then ends the
/// connection with "message too large".
pub(super) fn raise_send_buffer(socket: &UnixSeqpacket, max_body_len: usize) {
	use rustix::net::sockopt;
	let wanted = HEADER_LEN.saturating_add(max_body_len).min(MAX_SEND_DATAGRAM_LEN) + KERNEL_SNDBUF_OVERHEAD;
	if sockopt::socket_send_buffer_size(socket).is_ok_and(|size| size < wanted) {
		let _ = sockopt::set_socket_send_buffer_size(socket, wanted);
	}
}

/// Forward one direction, datagram by datagram, printing each before passing it on.
pub(super) async fn pump(
	tap: &Tap,
	conn: u64,
	direction: Direction,
	from: &UnixSeqpacket,
	to: &UnixSeqpacket,
	forwarded: &AtomicU64,
) -> Result<(), String> {
	// One byte more than the largest datagram --max-body allows, so that a larger one shows as
	// cut. Zeroed pages from the allocator: memory is used only as far as datagrams reach.
	let mut buffer = vec![0; HEADER_LEN.saturating_add(tap.max_body_len).saturating_add(1)];
	let mut recv_control = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
	let mut send_control = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
	let mut progress = Progress::new(format!("conn={conn} {} ", direction.human()), "forwarded", tap.quiet);
	let failed = |doing: &str, error: io::Error| format!("{}: {doing}: {}", direction.human(), describe_io(&error));
	for index in 0u64.. {
		let received =
			from.as_async_fd().async_io(Interest::READABLE, |fd| recv(fd.as_fd(), &mut buffer, &mut recv_control));
		let received = received.await.map_err(|error| failed("receiving", error))?;
		if received.len == 0 && received.fds.is_empty() {
			// End of stream: pass it on.
			let _ = to.shutdown(std::net::Shutdown::Write);
			return Ok(());
		}
		if received.truncated {
			return Err(format!(
				"{}: datagram #{index} is larger than --max-body allows ({} bytes) and cannot be forwarded whole",
				direction.human(),
				tap.max_body_len
			));
		}
		if received.control_truncated {
			return Err(format!("{}: the kernel cut the descriptors of datagram #{index}", direction.human()));
		}
		let datagram = &buffer[..received.len];
		show(tap, conn, direction, index, datagram, received.fds.len(), &mut progress);
		let sent = to
			.as_async_fd()
			.async_io(Interest::WRITABLE, |fd| send(fd.as_fd(), datagram, &received.fds, &mut send_control));
		match sent.await {
			Ok(sent) if sent == datagram.len() => {},
			Ok(sent) => {
				return Err(format!("{}: sent {sent} bytes of a {}-byte datagram", direction.human(), datagram.len()));
			},
			Err(error) => return Err(failed("sending", error)),
		}
		forwarded.fetch_add(datagram.len() as u64, Ordering::Relaxed);
		// This side's copies of the descriptors close here.
		drop(received.fds);
	}
	Ok(())
}

/// Print a datagram decoded, or why it cannot be.
fn show(tap: &Tap, conn: u64, direction: Direction, index: u64, datagram: &[u8], fds: usize, progress: &mut Progress) {
	let Some(head) = datagram.first_chunk::<HEADER_LEN>() else {
		let text = format!("{} bytes, shorter than the 12-byte header; forwarded all the same", datagram.len());
		return tap.malformed(conn, direction, Place::Datagram(index), &text);
	};
	match codec::decode_header(head, tap.endian) {
		Ok(header) => {
			let body = &datagram[HEADER_LEN..];
			tap.printer.message(&MessageView {
				conn: Some(conn),
				direction: Some(direction),
				header,
				body,
				body_len: body.len(),
				fds,
			});
			let frame =
				Frame { header, offset: index, body_len: body.len(), received: body.len(), preview: Vec::new() };
			progress.observe(&ScanEvent::Finished(frame));
		},
		Err(error) => {
			let other = if tap.endian == Endian::Big { Endian::Little } else { Endian::Big };
			let hint = match codec::decode_header(head, other) {
				Ok(_) if other == Endian::Big => " (it decodes as big endian: try --endian big)",
				Ok(_) => " (it decodes as little endian: try --endian little)",
				Err(_) => "",
			};
			let violation = error.protocol_violation().map_or_else(|| error.to_string(), ToString::to_string);
			let text = format!("{violation}{hint}; forwarded all the same");
			tap.malformed(conn, direction, Place::Datagram(index), &text);
		},
	}
}
