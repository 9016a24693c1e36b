//! Several datagrams per system call: `recvmmsg` and `sendmmsg`, descriptors included.
//!
//! The same contract as [`fd::recv_datagram`] and [`fd::send_datagram`], for a batch:
//!
//! - every descriptor of every datagram a `recvmmsg` returned is an [`OwnedFd`] before this
//!   module returns, whatever happens next: a datagram cut by the kernel in the middle of a batch
//!   is reported through its own [`Received`] flags, and dropping it closes what it carried;
//! - `MSG_TRUNC` and `MSG_CTRUNC` are reported per datagram, never merged over a batch;
//! - a send never raises `SIGPIPE`.
//!
//! Sending needs no `unsafe`: rustix's `sendmmsg` is safe and builds the `SCM_RIGHTS` messages
//! itself. rustix has no `recvmmsg`, so receiving calls libc and parses the control messages
//! here: the crate's only `unsafe` code, each block with a `SAFETY` comment saying which
//! invariant it relies on (enforced by `clippy::undocumented_unsafe_blocks`).
//!
//! `recvmmsg` takes datagrams while they are queued, at most one per slot, and returns the count;
//! one that fails after the first has been taken keeps its error for the next call (the kernel
//! stores it in the socket), so nothing is lost by returning what was received.

#![warn(clippy::undocumented_unsafe_blocks)]

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

use super::fd::{Received, control_space};

/// The most datagrams one call receives or sends.
pub(crate) const MAX_BATCH: usize = 16;

/// Control buffers for a batch of receives: one slot per datagram, each with room for the same
/// number of descriptors, each aligned for a `cmsghdr`.
#[derive(Debug)]
pub(crate) struct RecvControl {
	/// `u64` words: aligned for a `cmsghdr` on every Linux target, and initialized.
	words: Vec<u64>,
	/// Words per slot.
	slot_words: usize,
}

impl RecvControl {
	/// Room for `fds` descriptors in each of `slots` datagrams (at most [`MAX_BATCH`]).
	pub(crate) fn new(fds: usize, slots: usize) -> Self {
		let slot_words = control_space(fds).div_ceil(size_of::<u64>());
		Self { words: vec![0; slot_words * slots.clamp(1, MAX_BATCH)], slot_words }
	}

	/// How many datagrams these buffers serve.
	pub(crate) fn slots(&self) -> usize {
		self.words.len() / self.slot_words.max(1)
	}
}

/// Receive up to `slots.len()` datagrams (at most [`MAX_BATCH`] and at most `control.slots()`)
/// with one `recvmmsg`, datagram `i` into the buffers `slots[i]`, and append them to `received`
/// in the order they arrived. Returns how many were received: at least one, or an error.
///
/// Non-blocking sockets return `WouldBlock` when nothing is queued. `EINTR` is retried.
/// Descriptors arrive close-on-exec.
#[allow(clippy::unnecessary_cast, reason = "msg_controllen is a size_t on glibc, a socklen_t on musl")]
pub(crate) fn recv_datagrams(
	socket: BorrowedFd<'_>,
	slots: &mut [[IoSliceMut<'_>; 2]],
	control: &mut RecvControl,
	received: &mut Vec<Received>,
) -> io::Result<usize> {
	let count = slots.len().min(MAX_BATCH).min(control.slots());
	if count == 0 {
		return Err(io::Error::new(io::ErrorKind::InvalidInput, "no buffers to receive into"));
	}
	let slot_bytes = control.slot_words * size_of::<u64>();
	// SAFETY: `mmsghdr` is a plain C struct of integers and raw pointers; all zeros is a valid
	// value of it (null pointers, zero lengths: a message with no buffers and no name).
	let mut headers: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
	for ((header, buffers), control) in
		headers.iter_mut().zip(slots.iter_mut()).zip(control.words.chunks_exact_mut(control.slot_words)).take(count)
	{
		// `IoSliceMut` is guaranteed ABI-compatible with `iovec` on Unix.
		header.msg_hdr.msg_iov = buffers.as_mut_ptr().cast::<libc::iovec>();
		header.msg_hdr.msg_iovlen = buffers.len() as _;
		header.msg_hdr.msg_control = control.as_mut_ptr().cast::<libc::c_void>();
		header.msg_hdr.msg_controllen = slot_bytes as _;
	}
	let taken = loop {
		// SAFETY: the first `count` headers point at live buffers that nothing else uses while
		// the call runs: their iovecs at the `IoSliceMut`s of `slots` (exclusively borrowed, each
		// describing writable memory of its stated length), their control buffers at disjoint
		// `slot_bytes`-long chunks of `control.words` (exclusively borrowed). `count` is at most
		// `headers.len()`. No name buffer is given (`msg_name` is null) and no timeout.
		let result = unsafe {
			libc::recvmmsg(
				socket.as_raw_fd(),
				headers.as_mut_ptr(),
				count as libc::c_uint,
				libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
				std::ptr::null_mut(),
			)
		};
		match usize::try_from(result) {
			// Never 0 for a count above 0; if it were, waiting for the socket is what is safe.
			Ok(0) => return Err(io::ErrorKind::WouldBlock.into()),
			Ok(taken) => break taken.min(count),
			Err(_) => {
				let error = io::Error::last_os_error();
				if error.kind() != io::ErrorKind::Interrupted {
					return Err(error);
				}
			},
		}
	};
	// Take ownership of every descriptor of every datagram first: nothing before this can fail,
	// and from here on each is closed when dropped.
	received.reserve(taken);
	for header in &mut headers[..taken] {
		// The kernel writes no more than the buffer holds; clamped all the same, since the
		// parsing below relies on it.
		if header.msg_hdr.msg_controllen as usize > slot_bytes {
			header.msg_hdr.msg_controllen = slot_bytes as _;
		}
		let fds = take_descriptors(&header.msg_hdr);
		let flags = header.msg_hdr.msg_flags;
		received.push(Received {
			len: header.msg_len as usize,
			fds,
			truncated: flags & libc::MSG_TRUNC != 0,
			control_truncated: flags & libc::MSG_CTRUNC != 0,
		});
	}
	Ok(taken)
}

/// The descriptors of every `SCM_RIGHTS` message in the control data of `header`, owned.
///
/// `header` must be one that `recvmmsg` has just filled, with `msg_controllen` at most the length
/// of the buffer at `msg_control` (the caller clamps it): the control messages in that range are
/// the ones the kernel wrote, and every descriptor in them was installed in this process for this
/// call alone.
#[allow(clippy::unnecessary_cast, reason = "msg_controllen is a size_t on glibc, a socklen_t on musl")]
fn take_descriptors(header: &libc::msghdr) -> Vec<OwnedFd> {
	let mut fds = Vec::new();
	let end = (header.msg_control as usize).saturating_add(header.msg_controllen as usize);
	// SAFETY: reads `msg_controllen` and returns `msg_control` or null, no dereference; the
	// pointer, if any, is to a whole `cmsghdr` inside the buffer (it checks that the length holds
	// one), aligned since the buffer is made of `u64`s.
	let mut message = unsafe { libc::CMSG_FIRSTHDR(header) };
	while !message.is_null() {
		// SAFETY: a non-null `message` from `CMSG_FIRSTHDR` or `CMSG_NXTHDR` points at a whole,
		// aligned `cmsghdr` inside `msg_control..end` (both check that it fits); the kernel wrote
		// it, and the buffer was initialized before the call in any case.
		let (level, kind, len) = unsafe { ((*message).cmsg_level, (*message).cmsg_type, (*message).cmsg_len as usize) };
		if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
			// SAFETY: `CMSG_DATA` is `message + 1` as a byte pointer, no dereference; the whole
			// header is inside the buffer, so that is at most one past its end.
			let data = unsafe { libc::CMSG_DATA(message) };
			let header_len = data as usize - message as usize;
			// What the message says it holds, and never more than the buffer holds after it.
			let data_len = len.saturating_sub(header_len).min(end.saturating_sub(data as usize));
			for i in 0..data_len / size_of::<libc::c_int>() {
				// SAFETY: descriptor `i` lies inside `data..end`, which is inside the buffer
				// (`data_len` is bounded by both); it may be unaligned, hence `read_unaligned`.
				let fd = unsafe { data.cast::<libc::c_int>().add(i).read_unaligned() };
				if fd >= 0 {
					// SAFETY: the kernel sizes `SCM_RIGHTS` to the descriptors it installed
					// (setting `MSG_CTRUNC` for those that did not fit), each a new descriptor
					// of this process that nothing else owns: wrapped once, it is closed once.
					fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
				}
			}
		}
		// SAFETY: `header` describes the control data (as above) and `message` is a header inside
		// it; `CMSG_NXTHDR` returns the next one only if it lies whole inside the data, else null.
		message = unsafe { libc::CMSG_NXTHDR(header, message) };
	}
	fds
}

/// One datagram to send: the header and the body, and the descriptors to pass with them.
#[derive(Debug)]
pub(crate) struct Outgoing<'a> {
	/// The data, sent as one datagram.
	pub(crate) data: [IoSlice<'a>; 2],
	/// Passed as `SCM_RIGHTS`; this side keeps its copies.
	pub(crate) fds: &'a [OwnedFd],
}

/// Send up to [`MAX_BATCH`] of `datagrams`, in order, with one `sendmmsg`; the control data of
/// the datagrams with descriptors is built in `control`, and the batch stops early at the first
/// datagram whose descriptors no longer fit in what is left of it.
///
/// Returns the length sent of each datagram sent, in `sent` (cleared first): at least one, or an
/// error for the first datagram. A datagram after the first that fails is left unsent, and the
/// next call reports its error.
///
/// `control` must hold at least [`control_space`] of the descriptors of the first datagram.
/// Never raises `SIGPIPE`. `EINTR` is retried.
pub(crate) fn send_datagrams(
	socket: BorrowedFd<'_>,
	datagrams: &[Outgoing<'_>],
	control: &mut [MaybeUninit<u8>],
	sent: &mut Vec<usize>,
) -> io::Result<()> {
	sent.clear();
	// Which datagrams go in this call: as many as fit in `control` (those without descriptors
	// need none of it).
	let mut count = 0;
	let mut control_used = 0;
	for datagram in datagrams.iter().take(MAX_BATCH) {
		let needed = if datagram.fds.is_empty() { 0 } else { control_space(datagram.fds.len()) };
		if control_used + needed > control.len() {
			break;
		}
		control_used += needed;
		count += 1;
	}
	if count == 0 {
		return Err(io::Error::new(io::ErrorKind::InvalidInput, "control buffer too small for the descriptors"));
	}
	let datagrams = &datagrams[..count];
	// One list of borrowed descriptors for the whole batch; it allocates only if there are any.
	let borrowed: Vec<BorrowedFd<'_>> =
		datagrams.iter().flat_map(|datagram| datagram.fds.iter().map(AsFd::as_fd)).collect();
	let mut ancillary: [SendAncillaryBuffer<'_, '_, '_>; MAX_BATCH] = std::array::from_fn(|_| Default::default());
	let mut rest = control;
	let mut fds_at = 0;
	for (datagram, ancillary) in datagrams.iter().zip(ancillary.iter_mut()) {
		if datagram.fds.is_empty() {
			continue;
		}
		let (own, others) = rest.split_at_mut(control_space(datagram.fds.len()));
		rest = others;
		*ancillary = SendAncillaryBuffer::new(own);
		let fds = &borrowed[fds_at..fds_at + datagram.fds.len()];
		fds_at += datagram.fds.len();
		if !ancillary.push(SendAncillaryMessage::ScmRights(fds)) {
			return Err(io::Error::new(io::ErrorKind::InvalidInput, "control buffer too small for the descriptors"));
		}
	}
	// A header for every slot, so that they fit a fixed-size array (no allocation per call);
	// only the first `count` are passed to the kernel.
	let mut messages = ancillary.iter_mut().enumerate().map(|(i, ancillary)| match datagrams.get(i) {
		Some(datagram) => MMsgHdr::new(&datagram.data, ancillary),
		None => MMsgHdr::new(&[], ancillary),
	});
	let mut headers: [MMsgHdr<'_>; MAX_BATCH] =
		std::array::from_fn(|_| messages.next().expect("one header per ancillary buffer"));
	let taken = loop {
		match rustix::net::sendmmsg(socket, &mut headers[..count], SendFlags::NOSIGNAL) {
			Err(rustix::io::Errno::INTR) => continue,
			result => break result?,
		}
	};
	sent.extend(headers[..taken.min(count)].iter().map(MMsgHdr::bytes_sent));
	Ok(())
}

#[cfg(test)]
mod tests {
	use super::*;
	use crate::sys::fd::{control_buffer, send_datagram};
	use std::os::unix::net::UnixDatagram;

	fn devnull() -> OwnedFd {
		std::fs::File::open("/dev/null").unwrap().into()
	}

	fn send(socket: &UnixDatagram, data: &[u8], fds: usize) {
		let fds: Vec<OwnedFd> = (0..fds).map(|_| devnull()).collect();
		let mut control = control_buffer(fds.len());
		send_datagram(socket.as_fd(), &[IoSlice::new(data)], &fds, &mut control).unwrap();
	}

	/// Receive into `slots` buffers of `len` bytes each, with room for `fds` descriptors each.
	fn recv(socket: &UnixDatagram, slots: usize, len: usize, fds: usize) -> io::Result<(Vec<Received>, Vec<Vec<u8>>)> {
		let mut buffers = vec![vec![0; len]; slots];
		let mut control = RecvControl::new(fds, slots);
		let mut received = Vec::new();
		{
			let mut iter = buffers.iter_mut();
			let mut slices: Vec<[IoSliceMut<'_>; 2]> =
				(0..slots).map(|_| [IoSliceMut::new(iter.next().unwrap()), IoSliceMut::new(&mut [])]).collect();
			let count = recv_datagrams(socket.as_fd(), &mut slices, &mut control, &mut received)?;
			assert_eq!(count, received.len());
		}
		Ok((received, buffers))
	}

	#[test]
	fn several_datagrams_arrive_in_one_call_each_with_its_own_descriptors_and_flags() {
		let (a, b) = UnixDatagram::pair().unwrap();
		b.set_nonblocking(true).unwrap();
		send(&a, b"one", 1);
		send(&a, &[7; 32], 2); // longer than a slot: cut
		send(&a, b"three", 0);
		send(&a, b"four", 40); // more descriptors than a slot holds: cut
		send(&a, b"five", 3);
		let (received, buffers) = recv(&b, 8, 16, 3).unwrap();
		assert_eq!(received.len(), 5, "everything queued comes in one call");
		let summary: Vec<_> = received.iter().map(|r| (r.len, r.fds.len(), r.truncated, r.control_truncated)).collect();
		assert_eq!(summary[0], (3, 1, false, false));
		assert_eq!(summary[1], (16, 2, true, false));
		assert_eq!(summary[2], (5, 0, false, false));
		assert_eq!((summary[3].0, summary[3].2, summary[3].3), (4, false, true));
		// As many as fit the slot (its alignment slack may hold a few more than asked for).
		assert!(summary[3].1 < 40, "{} descriptors", summary[3].1);
		assert_eq!(summary[4], (4, 3, false, false));
		assert_eq!(&buffers[0][..3], b"one");
		assert_eq!(&buffers[2][..5], b"three");
		assert_eq!(&buffers[4][..4], b"five");
		// Nothing left: the next call would block.
		assert_eq!(recv(&b, 8, 16, 3).unwrap_err().kind(), io::ErrorKind::WouldBlock);
	}

	#[test]
	fn a_call_takes_no_more_than_its_slots() {
		let (a, b) = UnixDatagram::pair().unwrap();
		b.set_nonblocking(true).unwrap();
		for i in 0..5u8 {
			send(&a, &[i], 0);
		}
		let (received, buffers) = recv(&b, 3, 4, 0).unwrap();
		assert_eq!(received.len(), 3);
		let (received, later) = recv(&b, 3, 4, 0).unwrap();
		assert_eq!(received.len(), 2);
		assert_eq!([buffers[0][0], buffers[2][0], later[0][0], later[1][0]], [0, 2, 3, 4]);
	}

	#[test]
	fn descriptors_received_are_owned_and_usable() {
		let (a, b) = UnixDatagram::pair().unwrap();
		b.set_nonblocking(true).unwrap();
		let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
		let fds: Vec<OwnedFd> = vec![writer.into()];
		let mut control = control_buffer(1);
		send_datagram(a.as_fd(), &[IoSlice::new(b"x")], &fds, &mut control).unwrap();
		drop(fds);
		let (mut received, _) = recv(&b, 2, 4, 1).unwrap();
		let writer = std::os::unix::net::UnixStream::from(received[0].fds.pop().unwrap());
		std::io::Write::write_all(&mut &writer, b"hi").unwrap();
		drop(writer);
		let mut text = String::new();
		std::io::Read::read_to_string(&mut &reader, &mut text).unwrap();
		assert_eq!(text, "hi", "the only copy of the write end was the one received, now closed");
	}

	#[test]
	fn a_batch_of_sends_goes_in_one_call_and_stops_where_the_control_buffer_ends() {
		let (a, b) = UnixDatagram::pair().unwrap();
		b.set_nonblocking(true).unwrap();
		let fds: Vec<Vec<OwnedFd>> = [1, 0, 2, 5].iter().map(|&n| (0..n).map(|_| devnull()).collect()).collect();
		let bodies = [&b"a"[..], b"bb", b"ccc", b"dddd"];
		let datagrams: Vec<Outgoing<'_>> = bodies
			.iter()
			.zip(&fds)
			.map(|(body, fds)| Outgoing { data: [IoSlice::new(b"h:"), IoSlice::new(body)], fds })
			.collect();
		// Room for the first three datagrams' descriptors, not for the fourth's.
		let mut control = vec![MaybeUninit::uninit(); control_space(1) + control_space(2)];
		let mut sent = Vec::new();
		send_datagrams(a.as_fd(), &datagrams, &mut control, &mut sent).unwrap();
		assert_eq!(sent, [3, 4, 5]);
		let (received, buffers) = recv(&b, 8, 16, 8).unwrap();
		assert_eq!(received.iter().map(|r| r.fds.len()).collect::<Vec<_>>(), [1, 0, 2]);
		assert_eq!(&buffers[2][..5], b"h:ccc");
		// The rest goes in the next call.
		send_datagrams(a.as_fd(), &datagrams[3..], &mut control_buffer(5), &mut sent).unwrap();
		assert_eq!(sent, [6]);
		assert_eq!(recv(&b, 8, 16, 8).unwrap().0[0].fds.len(), 5);
		// A first datagram whose descriptors do not fit is refused before anything is sent.
		let error = send_datagrams(a.as_fd(), &datagrams[3..], &mut control_buffer(1), &mut sent).unwrap_err();
		assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
	}
}
