//! Following the frames of a byte stream as it passes by, without holding whole bodies.
//!
//! The tap forwards bytes verbatim and feeds a copy to a [`FrameScanner`]; `call` and `send`
//! feed it what their connection reads and writes. The scanner validates each frame with the
//! library's [`StreamCodec::check_frame`] and decodes its header with [`codec::decode_header`],
//! keeps only the first bytes of a body for display, and knows the byte offset of every frame,
//! so a malformed one is reported where it starts and a large one can show progress.

use std::io::Write;
use std::time::{Duration, Instant};

use peerwire::MessageHeader;
use peerwire::codec::{self, Endian, LENGTH_PREFIX_LEN, StreamCodec};
use peerwire::message::HEADER_LEN;

const PREFIX_AND_HEADER: usize = LENGTH_PREFIX_LEN + HEADER_LEN;

/// A frame whose header has been seen.
#[derive(Debug, Clone)]
pub struct Frame {
	pub header: MessageHeader,
	/// The stream offset of its first byte (the length prefix).
	pub offset: u64,
	pub body_len: usize,
	/// How many body bytes have passed so far.
	pub received: usize,
	/// The first body bytes, up to the scanner's preview limit.
	pub preview: Vec<u8>,
}

/// What the scanner saw in the bytes fed to it.
#[derive(Debug)]
pub enum ScanEvent<'a> {
	/// More of a frame's body passed (not sent for the chunk that completes it).
	Progress(&'a Frame),
	/// A frame is complete.
	Finished(Frame),
	/// The frame at `offset` is malformed; the scanner ignores everything after it. `hint`
	/// guesses why, when the bytes suggest it (another byte order, another protocol).
	Malformed { offset: u64, error: peerwire::Error, hint: Option<&'static str> },
}

#[derive(Debug)]
enum State {
	Head { bytes: [u8; PREFIX_AND_HEADER], filled: usize },
	Body(Frame),
	Broken,
}

/// Follows the frames of one direction of a byte stream.
#[derive(Debug)]
pub struct FrameScanner {
	codec: StreamCodec,
	max_body_len: usize,
	preview: usize,
	offset: u64,
	state: State,
}

impl FrameScanner {
	/// A scanner for frames in byte order `endian` that keeps `preview` bytes of each body and
	/// reports a body over `max_body_len` as malformed (it holds no body either way).
	pub fn new(endian: Endian, max_body_len: usize, preview: usize) -> Self {
		let codec = StreamCodec::new(endian, max_body_len, max_body_len);
		Self {
			codec,
			max_body_len,
			preview,
			offset: 0,
			state: State::Head { bytes: [0; PREFIX_AND_HEADER], filled: 0 },
		}
	}

	/// Take the next bytes of the stream.
	pub fn feed(&mut self, mut data: &[u8], on: &mut impl FnMut(ScanEvent<'_>)) {
		while !data.is_empty() {
			match &mut self.state {
				State::Broken => {
					self.offset += data.len() as u64;
					return;
				},
				State::Head { bytes, filled } => {
					let take = (PREFIX_AND_HEADER - *filled).min(data.len());
					bytes[*filled..*filled + take].copy_from_slice(&data[..take]);
					*filled += take;
					data = &data[take..];
					self.offset += take as u64;
					let start = self.offset - *filled as u64;
					let header = match self.codec.check_frame(&bytes[..*filled]) {
						Err(error) => Err(error),
						Ok(_) if *filled < PREFIX_AND_HEADER => continue,
						Ok(frame_len) => {
							// Both known to be present once 16 bytes have been checked.
							let frame_len = frame_len.expect("the length prefix is complete");
							let header = bytes[LENGTH_PREFIX_LEN..].first_chunk().expect("16 bytes hold a header");
							codec::decode_header(header, self.codec.endian()).map(|header| (header, frame_len))
						},
					};
					match header {
						Err(error) => {
							let hint = hint(&bytes[..*filled], self.codec.endian(), self.max_body_len);
							self.state = State::Broken;
							on(ScanEvent::Malformed { offset: start, error, hint });
						},
						Ok((header, frame_len)) => {
							let body_len = frame_len - PREFIX_AND_HEADER;
							let frame = Frame { header, offset: start, body_len, received: 0, preview: Vec::new() };
							if body_len == 0 {
								self.state = State::Head { bytes: [0; PREFIX_AND_HEADER], filled: 0 };
								on(ScanEvent::Finished(frame));
							} else {
								self.state = State::Body(frame);
							}
						},
					}
				},
				State::Body(frame) => {
					let take = (frame.body_len - frame.received).min(data.len());
					let keep = (self.preview - frame.preview.len().min(self.preview)).min(take);
					frame.preview.extend_from_slice(&data[..keep]);
					frame.received += take;
					data = &data[take..];
					self.offset += take as u64;
					if frame.received == frame.body_len {
						let state = std::mem::replace(
							&mut self.state,
							State::Head { bytes: [0; PREFIX_AND_HEADER], filled: 0 },
						);
						if let State::Body(frame) = state {
							on(ScanEvent::Finished(frame));
						}
					} else {
						on(ScanEvent::Progress(frame));
					}
				},
			}
		}
	}

	/// How many bytes have been fed.
	#[cfg(test)]
	pub fn offset(&self) -> u64 {
		self.offset
	}

	/// If the stream stopped inside a frame: where that frame starts and how much of it arrived.
	pub fn unfinished(&self) -> Option<(u64, u64)> {
		match &self.state {
			State::Head { filled: 0, .. } | State::Broken => None,
			State::Head { filled, .. } => Some((self.offset - *filled as u64, *filled as u64)),
			State::Body(frame) => Some((frame.offset, self.offset - frame.offset)),
		}
	}
}

/// A guess at why `head`, the start of a frame that `codec` refused, is malformed.
fn hint(head: &[u8], endian: Endian, max_body_len: usize) -> Option<&'static str> {
	const HTTP: [&[u8]; 6] = [b"HTTP", b"GET ", b"POST", b"PUT ", b"HEAD", b"SSH-"];
	if HTTP.iter().any(|start| head.starts_with(start)) {
		return Some("it is text, as in HTTP or SSH: is the remote a Fizyr RPC peer?");
	}
	let others = [
		(Endian::Big, "it decodes as big endian: try --endian big"),
		(Endian::Little, "it decodes as little endian: try --endian little"),
	];
	others.into_iter().filter(|(other, _)| *other != endian).find_map(|(other, text)| {
		let other = StreamCodec::new(other, max_body_len, max_body_len);
		matches!(other.check_frame(head), Ok(Some(_))).then_some(text)
	})
}

/// Bodies larger than this get progress lines on standard error.
pub const PROGRESS_THRESHOLD: usize = 1 << 20;
/// At most one progress line per frame this often (and one when it completes).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

/// Progress lines on standard error for the large frames one scanner sees.
#[derive(Debug)]
pub struct Progress {
	/// Put in front of each line, for example "conn=1 client->server ".
	label: String,
	/// What happens to the bytes: "forwarded", "sent", "received".
	verb: &'static str,
	quiet: bool,
	/// The offset of the frame being timed and when it started.
	current: Option<(u64, Instant)>,
	last_line: Option<Instant>,
}

impl Progress {
	pub fn new(label: String, verb: &'static str, quiet: bool) -> Self {
		Self { label, verb, quiet, current: None, last_line: None }
	}

	/// Note a scanner event; prints when a large frame has made progress or is complete.
	pub fn observe(&mut self, event: &ScanEvent<'_>) {
		if self.quiet {
			return;
		}
		match event {
			ScanEvent::Progress(frame) if frame.body_len > PROGRESS_THRESHOLD => {
				let now = Instant::now();
				let started = match self.current {
					Some((offset, started)) if offset == frame.offset => started,
					_ => {
						self.current = Some((frame.offset, now));
						self.last_line = None;
						now
					},
				};
				let due =
					self.last_line.map_or(now - started >= PROGRESS_INTERVAL, |last| now - last >= PROGRESS_INTERVAL);
				if due {
					self.last_line = Some(now);
					let percent = frame.received as f64 * 100.0 / frame.body_len as f64;
					self.line(format_args!(
						"{}: {} of {} {} ({percent:.0}%)",
						describe_frame(&frame.header),
						mebibytes(frame.received),
						mebibytes(frame.body_len),
						self.verb
					));
				}
			},
			ScanEvent::Finished(frame) if frame.body_len > PROGRESS_THRESHOLD => {
				let size = format!("{}: {} {}", describe_frame(&frame.header), mebibytes(frame.body_len), self.verb);
				match self.current.take() {
					Some((offset, started)) if offset == frame.offset => {
						let elapsed = started.elapsed().as_secs_f64();
						let rate = frame.body_len as f64 / (1 << 20) as f64 / elapsed.max(1e-6);
						self.line(format_args!("{size} in {elapsed:.2} s ({rate:.0} MiB/s)"));
					},
					// It came in one piece (a datagram, or one read): no time to tell.
					_ => self.line(format_args!("{size}")),
				}
			},
			_ => {},
		}
	}

	fn line(&self, text: std::fmt::Arguments<'_>) {
		let _ = writeln!(std::io::stderr().lock(), "peerwire: {}{text}", self.label);
	}
}

fn describe_frame(header: &MessageHeader) -> String {
	format!("{} id={} service={}", crate::output::type_name(header.message_type), header.request_id, header.service_id)
}

fn mebibytes(bytes: usize) -> String {
	format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

#[cfg(test)]
mod tests {
	use bytes::{Bytes, BytesMut};
	use peerwire::{ErrorKind, Message};

	use super::*;

	fn wire(messages: &[Message]) -> BytesMut {
		let codec = StreamCodec::new(Endian::Little, 1 << 20, 1 << 20);
		let mut buffer = BytesMut::new();
		for message in messages {
			codec.encode(message, &mut buffer).unwrap();
		}
		buffer
	}

	fn scan(bytes: &[u8], chunk: usize, preview: usize) -> (Vec<Frame>, Option<(u64, peerwire::Error)>) {
		let mut scanner = FrameScanner::new(Endian::Little, 1 << 20, preview);
		let mut frames = Vec::new();
		let mut malformed = None;
		for piece in bytes.chunks(chunk) {
			scanner.feed(piece, &mut |event| match event {
				ScanEvent::Finished(frame) => frames.push(frame),
				ScanEvent::Malformed { offset, error, .. } => malformed = Some((offset, error)),
				ScanEvent::Progress(_) => {},
			});
		}
		assert_eq!(scanner.offset(), bytes.len() as u64);
		(frames, malformed)
	}

	#[test]
	fn frames_are_found_at_any_chunking() {
		let messages = [
			Message::request(1, 7, "hello"),
			Message::stream(0, 3, Bytes::new()),
			Message::responder_update(1, -2, vec![0u8; 300]),
		];
		let bytes = wire(&messages);
		for chunk in [1, 3, 16, 17, 1000] {
			let (frames, malformed) = scan(&bytes, chunk, 8);
			assert!(malformed.is_none());
			let headers: Vec<_> = frames.iter().map(|frame| frame.header).collect();
			assert_eq!(headers, messages.iter().map(|message| message.header).collect::<Vec<_>>());
			assert_eq!(frames[0].preview, b"hello");
			assert_eq!(frames[2].preview, [0; 8]);
			assert_eq!(frames[2].body_len, 300);
			assert_eq!(frames[1].offset, 21);
			assert_eq!(frames[2].offset, 37);
		}
	}

	#[test]
	fn a_malformed_frame_is_reported_at_its_offset() {
		let mut bytes = wire(&[Message::request(1, 7, "hello")]);
		bytes.extend_from_slice(&3u32.to_le_bytes());
		bytes.extend_from_slice(b"trailing garbage");
		let (frames, malformed) = scan(&bytes, 5, 8);
		assert_eq!(frames.len(), 1);
		let (offset, error) = malformed.unwrap();
		assert_eq!(offset, 21);
		assert_eq!(error.kind(), ErrorKind::Protocol);

		let mut bytes = wire(&[]);
		bytes.extend_from_slice(&20u32.to_le_bytes());
		bytes.extend_from_slice(&9u32.to_le_bytes());
		let (_, malformed) = scan(&bytes, 1, 8);
		assert_eq!(malformed.unwrap().0, 0);
	}

	#[test]
	fn malformed_frames_come_with_a_hint_when_one_fits() {
		let mut hints = Vec::new();
		let mut scanner = FrameScanner::new(Endian::Little, 1 << 20, 0);
		let big = {
			let codec = StreamCodec::new(Endian::Big, 1 << 20, 1 << 20);
			let mut buffer = BytesMut::new();
			codec.encode(&Message::request(1, 7, "hello"), &mut buffer).unwrap();
			buffer
		};
		scanner.feed(&big, &mut |event| {
			if let ScanEvent::Malformed { hint, .. } = event {
				hints.push(hint);
			}
		});
		let mut scanner = FrameScanner::new(Endian::Little, 1 << 20, 0);
		scanner.feed(b"HTTP/1.1 400 Bad Request\r\n", &mut |event| {
			if let ScanEvent::Malformed { hint, .. } = event {
				hints.push(hint);
			}
		});
		assert_eq!(hints[0], Some("it decodes as big endian: try --endian big"));
		assert!(hints[1].unwrap().contains("HTTP"));
	}

	#[test]
	fn an_unfinished_frame_is_known() {
		let bytes = wire(&[Message::request(1, 7, "hello")]);
		let mut scanner = FrameScanner::new(Endian::Little, 1 << 20, 0);
		scanner.feed(&bytes[..18], &mut |_| {});
		assert_eq!(scanner.unfinished(), Some((0, 18)));
		scanner.feed(&bytes[18..], &mut |_| {});
		assert_eq!(scanner.unfinished(), None);
	}
}
