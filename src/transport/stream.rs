//! The byte-stream transport: length-prefixed frames over any `AsyncRead` + `AsyncWrite`.
//!
//! Backs TCP and Unix stream sockets. Reads go into one reusable buffer and every complete frame
//! in it is decoded before the next read, so one syscall can yield many messages. Writes gather
//! queued frames: small ones are copied into one staging buffer, large bodies are written from
//! where they lie (no copy), all with one vectored write when several are waiting.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{ConnectionInfo, Transport, TransportRead, TransportWrite};
use crate::codec::StreamCodec;
use crate::config::Config;
use crate::error::{Error, ProtocolViolation};
use crate::message::Message;

/// The spare room kept in the read buffer for one read: enough for many small frames.
const READ_CHUNK: usize = 64 * 1024;
/// A large frame is read into room reserved at most this far ahead of what has arrived, doubling
/// from there: a hostile length costs memory only in proportion to the bytes actually sent.
const RESERVE_AHEAD: usize = 1 << 20;
/// A read buffer or staging buffer grown past this (by a large message, or a burst) is let go
/// when the connection goes quiet, so that an idle connection costs kilobytes, not its largest
/// message.
const RELEASE_ABOVE: usize = 2 * READ_CHUNK;
/// Bodies up to this size are copied into the staging buffer; larger ones are written in place.
const COPY_THRESHOLD: usize = 4 * 1024;
/// Stop taking messages for a batch once this much is queued.
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// Bytes of small stream messages held back while more keep coming (see
/// `TransportWrite::may_coalesce`): the size of a buffered writer's buffer, so that a steady
/// flow of small messages costs a write per this many bytes, as it would behind a `BufWriter`.
const COALESCE_BYTES: usize = 64 * 1024;
/// The most slices handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// A transport over a byte stream, from its read and write halves.
///
/// Usually reached through [`TcpPeer`](crate::TcpPeer), [`UnixStreamPeer`](crate::UnixStreamPeer)
/// and the listeners; construct one directly to run peerwire over any other byte stream
/// (for example `tokio::io::duplex` in tests).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use peerwire::{Config, Peer, StreamTransport};
///
/// let (a, b) = tokio::io::duplex(64 * 1024);
/// let (a_read, a_write) = tokio::io::split(a);
/// let (b_read, b_write) = tokio::io::split(b);
/// let config = Config::default();
/// let client = Peer::spawn(StreamTransport::new(a_read, a_write, &config), &config);
/// let mut server = Peer::spawn(StreamTransport::new(b_read, b_write, &config), &config);
///
/// client.send_stream(1, "hi").await.unwrap();
/// let message = server.recv_message().await.unwrap();
/// assert_eq!(&message.into_stream().unwrap().body[..], b"hi");
/// # }
/// ```
#[derive(Debug)]
pub struct StreamTransport<R, W> {
	reader: StreamReader<R>,
	writer: StreamWriter<W>,
	info: ConnectionInfo,
}

impl<R, W> StreamTransport<R, W>
where
	R: AsyncRead + Send + Unpin + 'static,
	W: AsyncWrite + Send + Unpin + 'static,
{
	/// A transport over the two halves of a byte stream.
	pub fn new(read: R, write: W, config: &Config) -> Self {
		Self::with_info(read, write, config, ConnectionInfo::default())
	}

	/// A transport that also reports what is known about the remote.
	pub fn with_info(read: R, write: W, config: &Config, info: ConnectionInfo) -> Self {
		let codec = StreamCodec::new(config.endian, config.max_body_len_read, config.max_body_len_write);
		Self { reader: StreamReader::new(read, codec), writer: StreamWriter::new(write, codec), info }
	}

	/// Have the peer task yield before it writes a large message: for a socket whose kernel
	/// buffer takes MiBs at once (TCP). See [`TransportWrite::yields_before_large_writes`].
	#[cfg(any(feature = "tcp", test))]
	pub(crate) fn yielding_before_large_writes(mut self) -> Self {
		self.writer.yields_before_large_writes = true;
		self
	}

	/// The two halves and the connection info back, to drive the byte stream some other way
	/// (the Python binding moves an accepted socket onto its event loop's thread).
	///
	/// Nothing is lost: a transport is read and written only by the [`Peer`](crate::Peer) it
	/// is handed to, so until then its buffers are empty.
	pub fn into_parts(self) -> (R, W, ConnectionInfo) {
		(self.reader.inner, self.writer.inner, self.info)
	}
}

impl<R, W> Transport for StreamTransport<R, W>
where
	R: AsyncRead + Send + Unpin + 'static,
	W: AsyncWrite + Send + Unpin + 'static,
{
	type Body = Bytes;
	type Reader = StreamReader<R>;
	type Writer = StreamWriter<W>;

	fn info(&self) -> ConnectionInfo {
		self.info.clone()
	}

	fn split(self) -> (Self::Reader, Self::Writer) {
		(self.reader, self.writer)
	}
}

/// The read half of a [`StreamTransport`].
#[derive(Debug)]
pub struct StreamReader<R> {
	inner: R,
	codec: StreamCodec,
	buffer: BytesMut,
	/// The buffer's allocation grew past [`RELEASE_ABOVE`]: spare memory to let go of once the
	/// buffer is empty. (Its `capacity()` cannot tell: after a frame is split off, it counts
	/// only what is left of the allocation.)
	grown: bool,
	eof: bool,
}

impl<R: AsyncRead + Send + Unpin + 'static> StreamReader<R> {
	fn new(inner: R, codec: StreamCodec) -> Self {
		Self { inner, codec, buffer: BytesMut::new(), grown: false, eof: false }
	}

	/// Make room for the next read, sized for what the frame at the front still needs.
	fn reserve(&mut self) -> Result<(), Error> {
		if self.grown && self.buffer.is_empty() {
			// Between frames, take back the whole allocation a large frame left (if its body has
			// been dropped), so that the next one is read from its start: into the small tail left
			// after the last frame, a large frame's head would be read and then copied.
			let _ = self.buffer.try_reclaim(self.buffer.capacity() + 1);
		}
		let frame_len = self.codec.check_frame(&self.buffer)?.unwrap_or(0);
		let needed = frame_len.saturating_sub(self.buffer.len());
		let spare = self.buffer.capacity() - self.buffer.len();
		if spare >= needed.clamp(1024, READ_CHUNK) {
			return Ok(());
		}
		let ahead = RESERVE_AHEAD.max(self.buffer.len());
		self.buffer.reserve(needed.clamp(READ_CHUNK, ahead));
		self.grown |= self.buffer.capacity() > RELEASE_ABOVE;
		Ok(())
	}
}

impl<R: AsyncRead + Send + Unpin + 'static> TransportRead for StreamReader<R> {
	type Body = Bytes;

	fn shares_reads(&self) -> bool {
		true
	}

	fn poll_read_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Message<Bytes>>, Error>> {
		loop {
			if let Some(message) = self.codec.decode(&mut self.buffer)? {
				return Poll::Ready(Ok(Some(message)));
			}
			if self.eof {
				if self.buffer.is_empty() {
					return Poll::Ready(Ok(None));
				}
				let buffered = self.buffer.len();
				return Poll::Ready(Err(ProtocolViolation::TruncatedFrame { buffered }.into()));
			}
			self.reserve()?;
			let read = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.inner), cx, &mut self.buffer))?;
			if read == 0 {
				self.eof = true;
			}
		}
	}

	fn mid_frame(&self) -> bool {
		!self.buffer.is_empty()
	}

	fn holds_spare_memory(&self) -> bool {
		self.grown
	}

	fn release_spare_memory(&mut self) {
		if self.grown && self.buffer.is_empty() {
			// The rest of a large allocation: a body split off it shares it, and frees it when
			// dropped only if this buffer lets go too.
			self.buffer = BytesMut::new();
			self.grown = false;
		}
	}
}

/// The write half of a [`StreamTransport`].
#[derive(Debug)]
pub struct StreamWriter<W> {
	inner: W,
	codec: StreamCodec,
	/// Chunks queued ahead of `staging`, in wire order.
	chunks: VecDeque<Bytes>,
	/// Small frames (prefix and body) copied together; written after `chunks`.
	staging: BytesMut,
	queued: usize,
	/// Bytes were handed to `inner` and its `poll_flush` has not yet returned `Ready`. A socket
	/// takes what it accepts for good, but a writer with a buffer of its own (TLS, which holds
	/// encrypted records that did not fit in the socket) must be flushed until it says done, so
	/// the writer counts as having something queued until then.
	unflushed: bool,
	/// [`TransportWrite::yields_before_large_writes`]: set for TCP.
	yields_before_large_writes: bool,
}

impl<W: AsyncWrite + Send + Unpin + 'static> StreamWriter<W> {
	fn new(inner: W, codec: StreamCodec) -> Self {
		Self {
			inner,
			codec,
			chunks: VecDeque::new(),
			staging: BytesMut::new(),
			queued: 0,
			unflushed: false,
			yields_before_large_writes: false,
		}
	}

	/// Drop `written` bytes from the front of the queue.
	fn consume(&mut self, mut written: usize) {
		self.queued -= written;
		while written > 0 {
			let Some(front) = self.chunks.front_mut() else {
				self.staging.advance(written);
				return;
			};
			if written < front.len() {
				front.advance(written);
				return;
			}
			written -= front.len();
			self.chunks.pop_front();
		}
	}

	fn poll_write_queued(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
		while self.queued > 0 {
			// One slice goes through `poll_write`, not a vectored write of one: tokio's sockets
			// take a short `poll_write` as a full buffer and wait for room, but try a short
			// vectored write again and fail (`EAGAIN`). The rest of a large body is one slice,
			// so this saves a failed system call per socket buffer's worth of it.
			let written = if self.chunks.is_empty() {
				ready!(Pin::new(&mut self.inner).poll_write(cx, &self.staging))?
			} else if self.chunks.len() == 1 && self.staging.is_empty() {
				ready!(Pin::new(&mut self.inner).poll_write(cx, &self.chunks[0]))?
			} else {
				let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
				let mut count = 0;
				for chunk in self.chunks.iter().take(MAX_IOVECS - 1) {
					slices[count] = IoSlice::new(chunk);
					count += 1;
				}
				// Staging follows every chunk on the wire: it may only join a batch that holds
				// all of them.
				if count == self.chunks.len() && !self.staging.is_empty() {
					slices[count] = IoSlice::new(&self.staging);
					count += 1;
				}
				ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &slices[..count]))?
			};
			if written == 0 {
				return Poll::Ready(Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()));
			}
			self.unflushed = true;
			self.consume(written);
		}
		// Fully written: let the staging buffer reuse its allocation from the start.
		self.staging.clear();
		Poll::Ready(Ok(()))
	}
}

impl<W: AsyncWrite + Send + Unpin + 'static> TransportWrite for StreamWriter<W> {
	type Body = Bytes;

	fn start_send(&mut self, message: Message<Bytes>) -> Result<(), Error> {
		let len = message.body.len();
		let prefix = self.codec.encode_prefix(&message.header, len)?;
		if len <= COPY_THRESHOLD {
			self.staging.reserve(prefix.len() + len);
			self.staging.extend_from_slice(&prefix);
			self.staging.extend_from_slice(&message.body);
		} else {
			self.staging.extend_from_slice(&prefix);
			// Keep the wire order: what is staged goes before the body, which is not copied.
			self.chunks.push_back(self.staging.split().freeze());
			self.chunks.push_back(message.body);
		}
		self.queued += prefix.len() + len;
		Ok(())
	}

	fn wants_more(&self) -> bool {
		self.queued < WRITE_HIGH_WATER
	}

	fn has_queued(&self) -> bool {
		self.queued > 0 || self.unflushed
	}

	fn yields_before_large_writes(&self) -> bool {
		self.yields_before_large_writes
	}

	fn may_coalesce(&self) -> bool {
		self.queued < COALESCE_BYTES && !self.unflushed
	}

	fn holds_spare_memory(&self) -> bool {
		self.staging.capacity() > RELEASE_ABOVE
	}

	fn release_spare_memory(&mut self) {
		if self.queued == 0 {
			self.staging = BytesMut::new();
		}
	}

	fn max_body_len(&self) -> usize {
		// The frame length is a u32 that also counts the header.
		self.codec.max_body_len_write().min(u32::MAX as usize - crate::message::HEADER_LEN)
	}

	fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
		ready!(self.poll_write_queued(cx))?;
		ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
		self.unflushed = false;
		Poll::Ready(Ok(()))
	}

	fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
		ready!(self.poll_write_queued(cx))?;
		Poll::Ready(ready!(Pin::new(&mut self.inner).poll_shutdown(cx)).map_err(Error::from))
	}
}

#[cfg(test)]
mod tests {
	use super::*;
	use std::future::poll_fn;

	/// `poll_flush` and `poll_shutdown` of a test writer that holds nothing back.
	macro_rules! nothing_to_flush {
		() => {
			fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
				Poll::Ready(Ok(()))
			}
			fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
				Poll::Ready(Ok(()))
			}
		};
	}

	/// A writer that takes at most `limit` bytes per call, to exercise partial writes.
	struct Trickle {
		written: Vec<u8>,
		limit: usize,
	}

	impl AsyncWrite for Trickle {
		fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
			let n = buf.len().min(self.limit);
			self.written.extend_from_slice(&buf[..n]);
			Poll::Ready(Ok(n))
		}
		nothing_to_flush!();
	}

	#[tokio::test]
	async fn into_parts_gives_back_the_stream_and_the_info() {
		let (a, mut b) = tokio::io::duplex(1024);
		let (read, write) = tokio::io::split(a);
		let info = ConnectionInfo::default().with_remote_address(Some(super::super::RemoteAddress::Unix(None)));
		let transport = StreamTransport::with_info(read, write, &Config::default(), info.clone());
		let (read, mut write, back) = transport.into_parts();
		assert_eq!(back, info);
		// The halves still carry the stream, both ways.
		tokio::io::AsyncWriteExt::write_all(&mut write, b"out").await.unwrap();
		let mut out = [0u8; 3];
		tokio::io::AsyncReadExt::read_exact(&mut b, &mut out).await.unwrap();
		assert_eq!(&out, b"out");
		tokio::io::AsyncWriteExt::write_all(&mut b, b"in").await.unwrap();
		let mut stream = read.unsplit(write);
		let mut back_in = [0u8; 2];
		tokio::io::AsyncReadExt::read_exact(&mut stream, &mut back_in).await.unwrap();
		assert_eq!(&back_in, b"in");
	}

	#[tokio::test]
	async fn partial_writes_of_mixed_sizes_keep_every_byte_in_order() {
		let codec = StreamCodec::new(Default::default(), 1 << 20, 1 << 20);
		let messages: Vec<Message<Bytes>> = (0..50u32)
			.map(|i| {
				let len = if i % 3 == 0 { 10_000 + i as usize } else { i as usize };
				Message::stream(i, 1, Bytes::from(vec![i as u8; len]))
			})
			.collect();
		for limit in [1, 7, 4096, usize::MAX] {
			let mut writer = StreamWriter::new(Trickle { written: Vec::new(), limit }, codec);
			for message in &messages {
				writer.start_send(message.clone()).unwrap();
			}
			poll_fn(|cx| writer.poll_flush(cx)).await.unwrap();
			assert!(!writer.has_queued());

			let mut wire = BytesMut::from(&writer.inner.written[..]);
			for message in &messages {
				assert_eq!(codec.decode(&mut wire).unwrap().as_ref(), Some(message));
			}
			assert!(wire.is_empty());
		}
	}

	/// A writer with a buffer of its own, as TLS has: it takes every byte at once and puts it
	/// on the wire only when flushed, and its first flush finds the "socket" full.
	#[derive(Default)]
	struct OwnBuffer {
		buffered: Vec<u8>,
		wire: Vec<u8>,
		full_once: bool,
	}

	impl AsyncWrite for OwnBuffer {
		fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
			self.buffered.extend_from_slice(buf);
			Poll::Ready(Ok(buf.len()))
		}
		fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
			if !self.full_once {
				self.full_once = true;
				cx.waker().wake_by_ref();
				return Poll::Pending;
			}
			let buffered = std::mem::take(&mut self.buffered);
			self.wire.extend_from_slice(&buffered);
			Poll::Ready(Ok(()))
		}
		fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
			Poll::Ready(Ok(()))
		}
	}

	#[test]
	fn bytes_held_by_the_inner_writer_count_as_queued_until_it_is_flushed() {
		let codec = StreamCodec::new(Default::default(), 1 << 20, 1 << 20);
		let mut writer = StreamWriter::new(OwnBuffer::default(), codec);
		writer.start_send(Message::stream(1, 1, Bytes::from_static(b"hello"))).unwrap();
		let mut cx = Context::from_waker(std::task::Waker::noop());
		assert!(writer.poll_flush(&mut cx).is_pending());
		// Every byte is in the inner writer's buffer and none on the wire: the peer must call
		// poll_flush again, which it does only while something is queued.
		assert!(writer.inner.wire.is_empty());
		assert!(writer.has_queued());
		assert!(matches!(writer.poll_flush(&mut cx), Poll::Ready(Ok(()))));
		assert!(!writer.has_queued());
		assert_eq!(writer.inner.wire.len(), 4 + 12 + 5);
	}

	/// A writer that takes every slice of a vectored write, as a socket with room does.
	struct Gather {
		written: Vec<u8>,
	}

	impl AsyncWrite for Gather {
		fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
			self.written.extend_from_slice(buf);
			Poll::Ready(Ok(buf.len()))
		}
		fn poll_write_vectored(
			mut self: Pin<&mut Self>,
			_: &mut Context<'_>,
			bufs: &[IoSlice<'_>],
		) -> Poll<std::io::Result<usize>> {
			let mut total = 0;
			for buf in bufs {
				self.written.extend_from_slice(buf);
				total += buf.len();
			}
			Poll::Ready(Ok(total))
		}
		fn is_write_vectored(&self) -> bool {
			true
		}
		nothing_to_flush!();
	}

	#[tokio::test]
	async fn more_chunks_than_one_vectored_write_takes_stay_in_order() {
		// 40 large bodies make 80 chunks, more than one batch of iovecs; a small frame staged
		// after them must not jump the queue.
		let codec = StreamCodec::new(Default::default(), 1 << 20, 1 << 20);
		let mut messages: Vec<Message<Bytes>> =
			(0..40u32).map(|i| Message::stream(i, 1, Bytes::from(vec![i as u8; 5000]))).collect();
		messages.push(Message::stream(99, 1, "small"));
		let mut writer = StreamWriter::new(Gather { written: Vec::new() }, codec);
		for message in &messages {
			writer.start_send(message.clone()).unwrap();
		}
		poll_fn(|cx| writer.poll_flush(cx)).await.unwrap();
		let mut wire = BytesMut::from(&writer.inner.written[..]);
		for message in &messages {
			assert_eq!(codec.decode(&mut wire).unwrap().as_ref(), Some(message));
		}
		assert!(wire.is_empty());
	}

	/// A socket modelled on tokio's, with a send buffer of `CAPACITY` bytes that a reader drains.
	/// Like tokio's `poll_write`, a short write clears the socket's readiness, so the next write
	/// waits for room without a system call. Like tokio's `poll_write_vectored`, a short vectored
	/// write does not, and the next write is made and fails (`EAGAIN`): `failed` counts those.
	#[derive(Default)]
	struct Modelled {
		room: usize,
		ready: bool,
		waker: Option<std::task::Waker>,
		wire: Vec<u8>,
		failed: usize,
	}

	struct ModelSocket(std::sync::Arc<std::sync::Mutex<Modelled>>);

	impl ModelSocket {
		const CAPACITY: usize = 64 * 1024;

		fn write(
			&self,
			cx: &mut Context<'_>,
			bufs: &[IoSlice<'_>],
			clears_on_short: bool,
		) -> Poll<std::io::Result<usize>> {
			let mut socket = self.0.lock().unwrap();
			if socket.ready && socket.room == 0 {
				socket.failed += 1;
				socket.ready = false;
			}
			if !socket.ready {
				socket.waker = Some(cx.waker().clone());
				return Poll::Pending;
			}
			let total: usize = bufs.iter().map(|buf| buf.len()).sum();
			let mut written = 0;
			for buf in bufs {
				let take = buf.len().min(socket.room);
				socket.wire.extend_from_slice(&buf[..take]);
				socket.room -= take;
				written += take;
			}
			if written < total && clears_on_short {
				socket.ready = false;
			}
			Poll::Ready(Ok(written))
		}

		/// What a reader does: take everything sent, and make the socket writable again.
		fn drain(&self) -> Vec<u8> {
			let mut socket = self.0.lock().unwrap();
			socket.room = Self::CAPACITY;
			socket.ready = true;
			if let Some(waker) = socket.waker.take() {
				waker.wake();
			}
			std::mem::take(&mut socket.wire)
		}
	}

	impl AsyncWrite for ModelSocket {
		fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
			self.write(cx, &[IoSlice::new(buf)], true)
		}
		fn poll_write_vectored(
			self: Pin<&mut Self>,
			cx: &mut Context<'_>,
			bufs: &[IoSlice<'_>],
		) -> Poll<std::io::Result<usize>> {
			self.write(cx, bufs, false)
		}
		fn is_write_vectored(&self) -> bool {
			true
		}
		nothing_to_flush!();
	}

	#[tokio::test]
	async fn the_rest_of_a_large_body_waits_for_room_without_failed_writes() {
		let codec = StreamCodec::new(Default::default(), 4 << 20, 4 << 20);
		let model = std::sync::Arc::new(std::sync::Mutex::new(Modelled::default()));
		let socket = ModelSocket(model.clone());
		socket.drain();
		let mut writer = StreamWriter::new(socket, codec);
		let message = Message::stream(7, 1, Bytes::from(vec![0xa5; 1 << 20]));
		writer.start_send(message.clone()).unwrap();

		let reader = ModelSocket(model.clone());
		let drained = tokio::spawn(async move {
			let mut wire = Vec::new();
			while wire.len() < 16 + (1 << 20) {
				tokio::task::yield_now().await;
				wire.extend(reader.drain());
			}
			wire
		});
		poll_fn(|cx| writer.poll_flush(cx)).await.unwrap();
		let mut wire = BytesMut::from(&drained.await.unwrap()[..]);
		assert_eq!(codec.decode(&mut wire).unwrap(), Some(message));

		// 17 socket buffers' worth: only the write after the first, vectored one (prefix and
		// body) may fail. Writing the rest as one-slice vectored writes failed 16 times.
		let failed = model.lock().unwrap().failed;
		assert!(failed <= 1, "{failed} failed writes");
	}

	#[tokio::test]
	async fn eof_inside_a_frame_is_a_truncated_frame() {
		let codec = StreamCodec::new(Default::default(), 1024, 1024);
		let mut wire = BytesMut::new();
		codec.encode(&Message::stream(0, 0, "abcdef"), &mut wire).unwrap();
		let cut = &wire[..wire.len() - 2];
		let mut reader = StreamReader::new(std::io::Cursor::new(cut.to_vec()), codec);
		let error = poll_fn(|cx| reader.poll_read_message(cx)).await.unwrap_err();
		assert_eq!(error.protocol_violation(), Some(&ProtocolViolation::TruncatedFrame { buffered: 20 }));

		let mut reader = StreamReader::new(std::io::Cursor::new(wire.to_vec()), codec);
		assert!(poll_fn(|cx| reader.poll_read_message(cx)).await.unwrap().is_some());
		assert!(poll_fn(|cx| reader.poll_read_message(cx)).await.unwrap().is_none());
	}

	#[tokio::test]
	async fn the_read_buffer_can_let_go_of_a_large_allocation_once_empty() {
		// Sizes whose last reserve leaves a small tail after the frame is split off: the
		// buffer's capacity then looks small although it holds the whole allocation.
		let codec = StreamCodec::new(Default::default(), 32 << 20, 32 << 20);
		for len in [300_000, 1_500_000, 2_097_152 - 16, 16_649_287 - 16] {
			let mut wire = BytesMut::new();
			codec.encode(&Message::stream(0, 0, Bytes::from(vec![1; len])), &mut wire).unwrap();
			let mut reader = StreamReader::new(std::io::Cursor::new(wire.to_vec()), codec);
			let message = poll_fn(|cx| reader.poll_read_message(cx)).await.unwrap().unwrap();
			assert_eq!(message.body.len(), len);
			assert!(reader.holds_spare_memory(), "{len}: the reader does not know its buffer grew");
			reader.release_spare_memory();
			assert_eq!(reader.buffer.capacity(), 0, "{len}: the reader still holds its allocation");
			assert!(!reader.holds_spare_memory());
		}
	}

	/// A reader that hands over as much as the caller has room for, and counts its reads.
	struct Counted {
		data: std::io::Cursor<Vec<u8>>,
		reads: usize,
	}

	impl tokio::io::AsyncRead for Counted {
		fn poll_read(
			mut self: Pin<&mut Self>,
			cx: &mut Context<'_>,
			buf: &mut tokio::io::ReadBuf<'_>,
		) -> Poll<std::io::Result<()>> {
			self.reads += 1;
			Pin::new(&mut self.data).poll_read(cx, buf)
		}
	}

	#[tokio::test]
	async fn a_large_frame_after_a_large_frame_is_read_into_the_whole_allocation() {
		// Frames arrive one at a time, as echoes do: the buffer is empty between them.
		let codec = StreamCodec::new(Default::default(), 8 << 20, 8 << 20);
		let len = 4 << 20;
		let frame = |i: u8| {
			let mut wire = BytesMut::new();
			codec.encode(&Message::stream(i.into(), 0, Bytes::from(vec![i; len])), &mut wire).unwrap();
			std::io::Cursor::new(wire.to_vec())
		};
		let mut reader = StreamReader::new(Counted { data: frame(0), reads: 0 }, codec);
		let first = poll_fn(|cx| reader.poll_read_message(cx)).await.unwrap().unwrap();
		let start = first.body.as_ptr();
		drop(first);
		for i in 1..3 {
			reader.inner = Counted { data: frame(i), reads: 0 };
			let message = poll_fn(|cx| reader.poll_read_message(cx)).await.unwrap().unwrap();
			assert!(message.body.iter().all(|&byte| byte == i), "frame {i} corrupted");
			// One read, from the start of the allocation: read into the tail the last frame
			// left, the head would take a read of its own and then be copied to the start.
			assert_eq!(reader.inner.reads, 1, "frame {i} took more than one read");
			assert_eq!(message.body.as_ptr(), start, "frame {i} was read elsewhere");
		}
		// A body still held keeps its bytes: the next frame goes to another allocation.
		reader.inner = Counted { data: frame(3), reads: 0 };
		let held = poll_fn(|cx| reader.poll_read_message(cx)).await.unwrap().unwrap();
		reader.inner = Counted { data: frame(4), reads: 0 };
		let next = poll_fn(|cx| reader.poll_read_message(cx)).await.unwrap().unwrap();
		assert!(held.body.iter().all(|&byte| byte == 3) && next.body.iter().all(|&byte| byte == 4));
	}

	#[tokio::test]
	async fn a_hostile_length_reserves_memory_only_as_bytes_arrive() {
		let codec = StreamCodec::new(Default::default(), 1 << 30, 1 << 30);
		// Announce a 512 MiB body, send 100 bytes of it, then end.
		let mut wire = ((512 << 20) as u32 + 12).to_le_bytes().to_vec();
		wire.extend_from_slice(&[0; 112]);
		let mut reader = StreamReader::new(std::io::Cursor::new(wire), codec);
		let error = poll_fn(|cx| reader.poll_read_message(cx)).await.unwrap_err();
		assert!(matches!(error.protocol_violation(), Some(ProtocolViolation::TruncatedFrame { .. })));
		assert!(reader.buffer.capacity() <= 2 * RESERVE_AHEAD, "reserved {}", reader.buffer.capacity());
	}
}
