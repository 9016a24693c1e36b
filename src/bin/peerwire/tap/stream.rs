//! The byte-stream side of the tap (TCP, Unix stream): bytes forwarded as read, frames followed
//! by a [`FrameScanner`] on a copy.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Place, Reader, Tap, Writer};
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
	forwarded: &AtomicU64,
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
				ScanEvent::Finished(frame) => tap.printer.message(&MessageView {
					conn: Some(conn),
					direction: Some(direction),
					header: frame.header,
					body: &frame.preview,
					body_len: frame.body_len,
					fds: 0,
				}),
				ScanEvent::Malformed { offset, error, hint } => {
					let mut text = match error.protocol_violation() {
						Some(violation) => violation.to_string(),
						None => error.to_string(),
					};
					if let Some(hint) = hint {
						text = format!("{text} ({hint})");
					}
					text.push_str("; forwarding the rest undecoded");
					tap.malformed(conn, direction, Place::Offset(offset), &text);
				},
				ScanEvent::Progress(_) => {},
			}
		});
		if let Err(error) = to.write_all(chunk).await {
			return Err(format!("{}: writing: {}", direction.human(), describe_io(&error)));
		}
		forwarded.fetch_add(read as u64, Ordering::Relaxed);
	}
	if let Some((offset, received)) = scanner.unfinished() {
		let text = format!("the stream ended inside this frame, after {received} of its bytes");
		tap.malformed(conn, direction, Place::Offset(offset), &text);
	}
	// Pass the end of stream on; the other direction keeps going until it ends too.
	let _ = to.shutdown().await;
	Ok(())
}
