//! The read half of a byte-stream transport (`StreamTransport`'s reader) over a hostile remote:
//! frames with bodies of 0 bytes to 4 MiB, bytes that are not frames, length prefixes with any
//! value, read limits up to 16 MiB, delivered in chunks of any size (at least 1/2048 of the
//! wire), with the application keeping or dropping bodies and the peer letting go of spare
//! buffers between frames.
//!
//! `stream_decoder` covers the codec on a buffer it is handed; this target covers what the
//! reader adds around it: how it sizes its reads from the length prefix the remote sent, grows
//! and takes back its buffer for large frames, and reports the end of the stream.
//!
//! Input layout (read with `arbitrary::Unstructured`): a flags byte (byte order in bits 0-1, the
//! read limit in bits 2-4), a byte whose value mod 4 says how often a read returns `Pending`
//! first, two 8-byte masks (which bodies the application keeps, after which messages the peer
//! releases spare memory), a count and that many chunk sizes (u16: even n is n / 2 bytes, odd n
//! is (n / 2) * 128 bytes; none: reads as large as the buffer's room), then the wire, built by
//! up to 32 opcodes: 0-1 a small frame (a body of up to 255 bytes), 2 a large frame (a size
//! class byte s, then a body of `u32 % 2^s` bytes, s up to 22: up to 4 MiB, cut so that the
//! wire stays within 6 MiB), 3 raw bytes from the input, 4 a length prefix with any value. A
//! frame is a request unless its type byte has its top three bits set; then its type is the
//! byte's low five bits (0-31: some valid, most unknown).
//!
//! Checked, beyond "no panic":
//! - the reader returns the messages, and then the error or the end, that decoding the whole
//!   wire at once gives (a cut frame at the end is `TruncatedFrame` with the bytes buffered);
//! - memory stays within a bound set by what was received, not by what a prefix claims: at most
//!   4 times the bytes delivered plus 4 MiB live, checked before every read (right after the
//!   reader sized its buffer for it) and after every call;
//! - between frames, letting go of spare memory frees it: with no body kept, nothing of the
//!   reader's stays allocated.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use arbitrary::{Result, Unstructured};
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use peerwire::codec::{Endian, LENGTH_PREFIX_LEN, StreamCodec};
use peerwire::transport::{Transport, TransportRead};
use peerwire::{Config, Error, ErrorKind, Message, MessageHeader, MessageType, ProtocolViolation, StreamTransport};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Counts the bytes allocated and not yet freed, and the most there have been.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// Memory live when the reader under test was made: what the bound is measured from.
static BASELINE: AtomicUsize = AtomicUsize::new(0);

/// The bound on the reader's memory after `delivered` bytes.
fn check_bound(delivered: usize) {
	let peak = PEAK.load(Ordering::Relaxed).saturating_sub(BASELINE.load(Ordering::Relaxed));
	assert!(peak <= 4 * delivered + SLACK, "{peak} bytes live after {delivered} bytes delivered");
}

/// Count `size` more bytes live if `pointer` is an allocation (not null); returns `pointer`.
fn counted(pointer: *mut u8, size: usize) -> *mut u8 {
	if !pointer.is_null() {
		let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
		PEAK.fetch_max(live, Ordering::Relaxed);
	}
	pointer
}

// SAFETY: every call is forwarded to the same method of `System`; the counters only observe.
unsafe impl GlobalAlloc for Counting {
	unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
		// SAFETY: the caller's contract for `alloc`, passed on.
		counted(unsafe { System.alloc(layout) }, layout.size())
	}

	unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
		// SAFETY: the caller's contract for `alloc_zeroed`, passed on.
		counted(unsafe { System.alloc_zeroed(layout) }, layout.size())
	}

	unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
		// SAFETY: the caller's contract for `dealloc`, passed on.
		unsafe { System.dealloc(pointer, layout) };
		LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
	}

	unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
		// SAFETY: the caller's contract for `realloc`, passed on.
		let new = unsafe { System.realloc(pointer, layout, new_size) };
		if !new.is_null() {
			LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
		}
		counted(new, new_size)
	}
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const LIMITS: [usize; 8] = [0, 16, 4096, 70_000, 200_000, 1 << 20, 3 << 20, 16 << 20];
const MAX_LARGE_BODY: u32 = 4 << 20;
/// Large bodies stop growing the wire past this.
const MAX_WIRE: usize = 6 << 20;
/// Memory the reader may hold beyond 4 bytes per byte received: its read-ahead (1 MiB), grown
/// by `Vec`'s doubling.
const SLACK: usize = 4 << 20;

/// The remote's side of the stream: the wire, handed out in chunks of the given sizes.
struct Remote {
	wire: Vec<u8>,
	/// How far the reader has read, shared with the harness.
	delivered: Arc<AtomicUsize>,
	chunks: Vec<usize>,
	next_chunk: usize,
	/// 0: never `Pending`; n: every (n + 1)th read returns `Pending` (and wakes at once).
	pending_every: usize,
	reads: usize,
}

impl AsyncRead for Remote {
	fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
		let this = &mut *self;
		this.reads += 1;
		if this.pending_every != 0 && this.reads % (this.pending_every + 1) == 0 {
			cx.waker().wake_by_ref();
			return Poll::Pending;
		}
		let chunk = this.chunks.get(this.next_chunk % this.chunks.len().max(1)).copied().unwrap_or(usize::MAX);
		this.next_chunk += 1;
		let position = this.delivered.load(Ordering::Relaxed);
		// The reader has just sized its buffer for this read: the moment a reservation made
		// from a lying prefix would show, before the bytes that could excuse it arrive.
		check_bound(position);
		// At most about 2,000 reads per input: a few-byte chunk for every read of a 6 MiB wire
		// would make an input take seconds.
		let len = chunk.max(this.wire.len() / 2048).max(1).min(buf.remaining()).min(this.wire.len() - position);
		buf.put_slice(&this.wire[position..position + len]);
		this.delivered.store(position + len, Ordering::Relaxed);
		Poll::Ready(Ok(()))
	}
}

/// The reader never writes; the transport needs a write half all the same.
struct NoWrite;

impl AsyncWrite for NoWrite {
	fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
		Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
	}

	fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
		Poll::Ready(Ok(()))
	}

	fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
		Poll::Ready(Ok(()))
	}
}

/// How a reading ended: its error's kind and violation, or `None` for a clean end.
type End = Option<(ErrorKind, Option<ProtocolViolation>)>;

fn error_key(error: &Error) -> (ErrorKind, Option<ProtocolViolation>) {
	(error.kind(), error.protocol_violation().cloned())
}

/// The wire the opcodes describe.
fn build_wire(input: &mut Unstructured<'_>, endian: Endian) -> Result<Vec<u8>> {
	let mut wire = Vec::new();
	let any_length = StreamCodec::new(endian, usize::MAX, usize::MAX);
	for _ in 0..32 {
		if input.is_empty() {
			break;
		}
		match input.arbitrary::<u8>()? % 5 {
			op @ (0..=2) => {
				let message_type = input.arbitrary::<u8>()?;
				let request_id = u32::from(input.arbitrary::<u8>()?);
				let service_id = i32::from(input.arbitrary::<i8>()?);
				let len = match op {
					// Sizes spread over every power of two up to 4 MiB, so that the band where
					// the reader's reservations and its `grown` flag change (1 KiB-128 KiB) is
					// as likely as the largest frames.
					2 => {
						let class = u32::from(input.arbitrary::<u8>()?) % (MAX_LARGE_BODY.ilog2() + 1);
						input.arbitrary::<u32>()? % (1 << class).max(2)
					},
					_ => u32::from(input.arbitrary::<u8>()?),
				};
				// Large bodies only while the wire is under its cap (a few inputs a second otherwise).
				let len = (len as usize).min(MAX_WIRE.saturating_sub(wire.len()));
				let fill = input.arbitrary::<u8>()?;
				let header = MessageHeader::new(MessageType::Request, request_id, service_id);
				let mut prefix = any_length.encode_prefix(&header, len).expect("any length encodes");
				// One frame in eight gets a type from 0 to 31 in the low byte of its type field:
				// some valid, most unknown, which is the remote's to send.
				if message_type & 0xe0 == 0xe0 {
					let low = match endian.write_u32(1) {
						[1, ..] => LENGTH_PREFIX_LEN,
						_ => LENGTH_PREFIX_LEN + 3,
					};
					prefix[low] = message_type & 0x1f;
				}
				wire.extend_from_slice(&prefix);
				wire.resize(wire.len() + len, fill);
			},
			3 => {
				let len = usize::from(input.arbitrary::<u8>()?);
				wire.extend_from_slice(input.bytes(len.min(input.len()))?);
			},
			_ => wire.extend_from_slice(&endian.write_u32(input.arbitrary::<u32>()?)),
		}
	}
	Ok(wire)
}

/// The messages and the end that decoding the whole wire at once gives.
fn decode_whole(wire: &[u8], endian: Endian, limit: usize) -> (Vec<Message<Bytes>>, End) {
	let codec = StreamCodec::new(endian, limit, usize::MAX);
	let mut whole = BytesMut::from(wire);
	let mut messages = Vec::new();
	loop {
		match codec.decode(&mut whole) {
			Ok(Some(message)) => messages.push(message),
			Ok(None) if whole.is_empty() => return (messages, None),
			Ok(None) => {
				let truncated = Error::from(ProtocolViolation::TruncatedFrame { buffered: whole.len() });
				return (messages, Some(error_key(&truncated)));
			},
			Err(error) => return (messages, Some(error_key(&error))),
		}
	}
}

fn run(data: &[u8]) -> Result<()> {
	let mut input = Unstructured::new(data);
	let flags = input.arbitrary::<u8>()?;
	let reads = input.arbitrary::<u8>()?;
	let keep_mask = input.arbitrary::<u64>()?;
	let release_mask = input.arbitrary::<u64>()?;
	let chunk_count = usize::from(input.arbitrary::<u8>()? % 8);
	let mut chunks = Vec::with_capacity(chunk_count);
	for _ in 0..chunk_count {
		// Small reads, and reads of up to 4 MiB.
		let raw = usize::from(input.arbitrary::<u16>()?);
		chunks.push(if raw & 1 == 0 { raw >> 1 } else { (raw >> 1) << 7 });
	}
	let endian = [Endian::Little, Endian::Big, Endian::Native, Endian::Little][usize::from(flags & 3)];
	let limit = LIMITS[usize::from((flags >> 2) & 7)];
	let wire = build_wire(&mut input, endian)?;
	let (expected, expected_end) = decode_whole(&wire, endian, limit);

	let config = Config::default().with_endian(endian).with_max_body_len_read(limit);
	let delivered = Arc::new(AtomicUsize::new(0));
	let remote = Remote {
		wire,
		delivered: delivered.clone(),
		chunks,
		next_chunk: 0,
		pending_every: usize::from(reads % 4),
		reads: 0,
	};
	let (mut reader, _writer) = StreamTransport::new(remote, NoWrite, &config).split();
	let baseline = LIVE.load(Ordering::Relaxed);
	BASELINE.store(baseline, Ordering::Relaxed);
	PEAK.store(baseline, Ordering::Relaxed);
	let mut cx = Context::from_waker(Waker::noop());
	let mut received = 0;
	let mut kept = Vec::new();
	let end = loop {
		let poll = reader.poll_read_message(&mut cx);
		check_bound(delivered.load(Ordering::Relaxed));
		match poll {
			Poll::Pending => continue,
			Poll::Ready(Ok(Some(message))) => {
				assert_eq!(Some(&message), expected.get(received), "message {received} differs");
				let index = received % 64;
				received += 1;
				// The body is kept, or dropped now (before any release below looks at memory).
				let body = message.body;
				if keep_mask & (1 << index) != 0 {
					kept.push(body);
				} else {
					drop(body);
				}
				if release_mask & (1 << index) != 0 && !reader.mid_frame() {
					let held = reader.holds_spare_memory();
					reader.release_spare_memory();
					assert!(!reader.holds_spare_memory(), "spare memory held after letting go of it between frames");
					// With no body kept, the allocation a large frame grew is freed, not just
					// forgotten: nothing of the reader's is left (a few bytes of the harness may be).
					let live = LIVE.load(Ordering::Relaxed).saturating_sub(baseline);
					assert!(!held || !kept.is_empty() || live <= 4096, "{live} bytes still live after letting go");
				}
			},
			Poll::Ready(Ok(None)) => break None,
			Poll::Ready(Err(error)) => break Some(error_key(&error)),
		}
	};
	assert_eq!(received, expected.len(), "the reader returned fewer messages than the wire holds");
	assert_eq!(end, expected_end, "the reader ended otherwise than decoding the whole wire");
	Ok(())
}

fuzz_target!(|data: &[u8]| {
	let _ = run(data);
});
