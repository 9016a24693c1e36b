//! The seqpacket side of the tap: every datagram forwarded whole, with its descriptors.
//!
//! The library's transport would decode and re-encode; here a datagram is received as bytes and
//! descriptors and sent on unchanged, with the library's own `recvmsg`/`sendmsg` functions
//! (`peerwire::__plumbing`): received descriptors are owned at once and closed on this side once
//! sent (the next process has its own copies).

use std::io::{self, IoSlice, IoSliceMut};

use peerwire::__plumbing::{SCM_MAX_FD, control_buffer, recv_datagram, send_datagram};
use peerwire::codec::{self, Endian};
use peerwire::message::HEADER_LEN;
use tokio::io::Interest;
use tokio_seqpacket::UnixSeqpacket;

use super::{Place, Relayed, Tap};
use crate::failure::describe_io;
use crate::output::{Direction, MessageView};
use crate::scan::{Frame, Progress, ScanEvent};

/// Forward one direction, datagram by datagram, printing each before passing it on.
pub(super) async fn pump(
	tap: &Tap,
	conn: u64,
	direction: Direction,
	from: &UnixSeqpacket,
	to: &UnixSeqpacket,
	relayed: &Relayed,
) -> Result<(), String> {
	// One byte more than the largest datagram --max-body allows, so that a larger one shows as
	// cut. Zeroed pages from the allocator: memory is used only as far as datagrams reach.
	let mut buffer = vec![0; HEADER_LEN.saturating_add(tap.max_body_len).saturating_add(1)];
	let mut recv_control = control_buffer(SCM_MAX_FD);
	let mut send_control = control_buffer(SCM_MAX_FD);
	let mut progress = Progress::new(format!("conn={conn} {} ", direction.human()), "forwarded", tap.quiet);
	let failed = |doing: &str, error: io::Error| format!("{}: {doing}: {}", direction.human(), describe_io(&error));
	for index in 0u64.. {
		let received = from.as_async_fd().async_io(Interest::READABLE, |fd| {
			recv_datagram(fd.as_fd(), &mut [IoSliceMut::new(&mut buffer)], &mut recv_control)
		});
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
		show(tap, relayed, direction, index, datagram, received.fds.len(), &mut progress);
		let sent = to.as_async_fd().async_io(Interest::WRITABLE, |fd| {
			send_datagram(fd.as_fd(), &[IoSlice::new(datagram)], &received.fds, &mut send_control)
		});
		match sent.await {
			Ok(sent) if sent == datagram.len() => {},
			Ok(sent) => {
				return Err(format!("{}: sent {sent} bytes of a {}-byte datagram", direction.human(), datagram.len()));
			},
			Err(error) => return Err(failed("sending", error)),
		}
		relayed.direction(direction).forwarded_bytes += datagram.len() as u64;
		// This side's copies of the descriptors close here.
		drop(received.fds);
	}
	Ok(())
}

/// Print a datagram decoded, or why it cannot be.
fn show(
	tap: &Tap,
	relayed: &Relayed,
	direction: Direction,
	index: u64,
	datagram: &[u8],
	fds: usize,
	progress: &mut Progress,
) {
	let Some(head) = datagram.first_chunk::<HEADER_LEN>() else {
		let text = format!("{} bytes, shorter than the 12-byte header; forwarded all the same", datagram.len());
		return tap.malformed(relayed, relayed.conn, direction, Place::Datagram(index), &text);
	};
	match codec::decode_header(head, tap.endian) {
		Ok(header) => {
			let body = &datagram[HEADER_LEN..];
			crate::stats::count(
				&mut relayed.direction(direction).traffic,
				header.message_type,
				header.service_id,
				body.len(),
			);
			tap.printer.message(&MessageView {
				conn: Some(relayed.conn),
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
			tap.malformed(relayed, relayed.conn, direction, Place::Datagram(index), &text);
		},
	}
}
