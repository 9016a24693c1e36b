//! The byte-stream side of the tap (TCP, Unix stream): bytes forwarded as read, frames followed
//! by a [`FrameScanner`] on a copy.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Place, Reader, Relayed, Tap, Writer};
use crate::address::Address;
use crate::failure::describe_io;
use crate::output::{Direction, MessageView};
use crate::scan::{FrameScanner, Progress, ScanEvent};

/// The size of each read, and so the most a direction holds at once.
const CHUNK: usize = 64 * 1024;

/// Connect to a byte-stream upstream.
pub(super) async fn connect(address: &Address) -> io::Result<(Reader, Writer)> {
	match address {
		Address::Tcp(host_port) => {
			let stream = tokio::net::TcpStream::connect(host_port.as_str()).await?;
			stream.set_nodelay(true)?;
			let (read, write) = stream.into_split();
			Ok((Box::new(read), Box::new(write)))
		},
		Address::Unix(path) => {
			let (read, write) = tokio::net::UnixStream::connect(path).await?.into_split();
			Ok((Box::new(read), Box::new(write)))
		},
		Address::Seqpacket(_) => Err(io::Error::new(io::ErrorKind::Unsupported, "not a byte stream")),
		Address::Tls(_) => Err(io::Error::new(io::ErrorKind::Unsupported, "the tap does not speak TLS")),
	}
}

/// Forward one direction: print what each chunk completes, then pass the chunk on unchanged.
///
/// Printing first keeps the output in causal order: a request is printed before the server
/// can have seen it, so before its response.
pub(super) async fn pump(
	tap: &Tap,
	conn: u64,
	direction: Direction,
	mut from: Reader,
	mut to: Writer,
	relayed: &Relayed,
) -> Result<(), String> {
	let mut scanner = FrameScanner::new(tap.endian, tap.max_body_len, tap.preview);
	let mut progress = Progress::new(format!("conn={conn} {} ", direction.human()), "forwarded", tap.quiet);
	let mut buffer = vec![0; CHUNK];
	loop {
		let read = match from.read(&mut buffer).await {
			Ok(0) => break,
			Ok(read) => read,
			Err(error) => return Err(format!("{}: reading: {}", direction.human(), describe_io(&error))),
		};
		let chunk = &buffer[..read];
		scanner.feed(chunk, &mut |event| {
			progress.observe(&event);
			match event {
				ScanEvent::Finished(frame) => {
					let header = frame.header;
					crate::stats::count(
						&mut relayed.direction(direction).traffic,
						header.message_type,
						header.service_id,
						frame.body_len,
					);
					tap.printer.message(&MessageView {
						conn: Some(conn),
						direction: Some(direction),
						header,
						body: &frame.preview,
						body_len: frame.body_len,
						fds: 0,
					});
				},
				ScanEvent::Malformed { offset, error, hint } => {
					let mut text = match error.protocol_violation() {
						Some(violation) => violation.to_string(),
						None => error.to_string(),
					};
					if let Some(hint) = hint {
						text = format!("{text} ({hint})");
					}
					text.push_str("; forwarding the rest undecoded");
					tap.malformed(relayed, conn, direction, Place::Offset(offset), &text);
				},
				ScanEvent::Progress(_) => {},
			}
		});
		if let Err(error) = to.write_all(chunk).await {
			return Err(format!("{}: writing: {}", direction.human(), describe_io(&error)));
		}
		relayed.direction(direction).forwarded_bytes += read as u64;
	}
	if let Some((offset, received)) = scanner.unfinished() {
		let text = format!("the stream ended inside this frame, after {received} of its bytes");
		tap.malformed(relayed, conn, direction, Place::Offset(offset), &text);
	}
	// Pass the end of stream on; the other direction keeps going until it ends too.
	let _ = to.shutdown().await;
	Ok(())
}
