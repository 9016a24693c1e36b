//! The baselines: the same frames over plain sockets with no library in between.
//!
//! On a byte stream each end has a buffered reader and writer (64 KiB each) and writes a frame as
//! its 16-byte prefix (length and header) followed by its body; it flushes only when it is about
//! to wait for a frame that is not already buffered, so a burst of frames costs one write. On
//! seqpacket each frame is one datagram. Two flavours share that code:
//!
//! - raw tokio: tokio sockets on the same 2-worker runtime as the libraries (the floor for
//!   throughput under tokio);
//! - raw blocking: std sockets, the client on its own thread and the server on another (the
//!   operating system's floor for a round trip). Its futures never wait; they only block.
//!
//! For a spawning server (a task per request), raw tokio splits the server's socket: its read
//! loop spawns a task per request, which sends its answer through a channel to a writer task
//! that owns the write half and writes what is queued before it flushes ([`serve_spawning`]).

use std::future::Future;
use std::io::{self, Read as _, Write as _};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::contender::{Client, Contender, Either, Result, Server};
use crate::transport::{StdPair, TokioPair, Transport};

const REQUEST: u32 = 0;
const RESPONSE: u32 = 1;
const STREAM: u32 = 4;
const HEADER_LEN: usize = 12;
const BUFFER: usize = 64 * 1024;

pub struct Frame {
	kind: u32,
	request_id: u32,
	body: Bytes,
}

fn header(kind: u32, request_id: u32) -> [u8; HEADER_LEN] {
	let mut header = [0; HEADER_LEN];
	for (field, value) in header.chunks_exact_mut(4).zip([kind, request_id, 0]) {
		field.copy_from_slice(&value.to_le_bytes());
	}
	header
}

fn field(bytes: &[u8], index: usize) -> u32 {
	u32::from_le_bytes(bytes[index * 4..index * 4 + 4].try_into().unwrap())
}

/// Sending and receiving whole frames.
pub trait FrameIo: Send + 'static {
	/// Send a frame, or queue it to go with the next flush.
	fn send(&mut self, kind: u32, request_id: u32, body: &[u8]) -> impl Future<Output = io::Result<()>> + Send;

	/// The next frame, or `None` when the remote closed the connection. Flushes first when no
	/// whole frame is waiting: the remote may be waiting for what is queued.
	fn recv(&mut self) -> impl Future<Output = io::Result<Option<Frame>>> + Send;

	/// Write what `send` queued.
	fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

/// The answers of spawned request tasks on their way to the writer task: (request id, body).
const ANSWER_QUEUE: usize = 1024;

/// The server end with a task per request: the read loop (`reader`) spawns a task for each
/// request, which sends the answer through a bounded channel to a writer task that owns
/// `writer`, the usual tokio layout when a socket has one writer. The writer takes everything
/// queued before it flushes, so a burst of answers costs one write. Stream messages are counted
/// in the read loop, as in [`serve`].
async fn serve_spawning<R: FrameIo, W: FrameIo>(mut reader: R, mut writer: W, server: Server) -> io::Result<()> {
	let (answers, mut queued) = tokio::sync::mpsc::channel::<(u32, Bytes)>(ANSWER_QUEUE);
	let writing = tokio::spawn(async move {
		while let Some((request_id, body)) = queued.recv().await {
			writer.send(RESPONSE, request_id, &body).await?;
			while let Ok((request_id, body)) = queued.try_recv() {
				writer.send(RESPONSE, request_id, &body).await?;
			}
			writer.flush().await?;
		}
		io::Result::Ok(())
	});
	while let Some(frame) = reader.recv().await? {
		match frame.kind {
			REQUEST => {
				let answers = answers.clone();
				tokio::spawn(async move {
					let _ = answers.send((frame.request_id, frame.body)).await;
				});
			},
			STREAM => server.on_stream().await,
			_ => {},
		}
	}
	drop(answers);
	writing.await.map_err(io::Error::other)?
}

/// The server end: echo requests, count stream messages.
async fn serve(mut frames: impl FrameIo, server: Server) -> io::Result<()> {
	while let Some(frame) = frames.recv().await? {
		match frame.kind {
			REQUEST => frames.send(RESPONSE, frame.request_id, &frame.body).await?,
			STREAM => server.on_stream().await,
			_ => {},
		}
	}
	Ok(())
}

pub struct RawClient<F> {
	frames: F,
	next_id: u32,
}

impl<F: FrameIo> Client for RawClient<F> {
	async fn start(&mut self, body: Bytes) -> Result<()> {
		self.next_id = self.next_id.wrapping_add(1);
		Ok(self.frames.send(REQUEST, self.next_id, &body).await?)
	}

	async fn finish(&mut self) -> Result<Bytes> {
		// The server answers in order, so the next response is the oldest request's.
		loop {
			match self.frames.recv().await? {
				Some(frame) if frame.kind == RESPONSE => return Ok(frame.body),
				Some(_) => continue,
				None => return Err("connection closed".into()),
			}
		}
	}

	async fn send_stream(&mut self, body: Bytes) -> Result<()> {
		Ok(self.frames.send(STREAM, 0, &body).await?)
	}
}

/// A byte stream behind a buffered reader and writer.
pub trait Buffered: Send + 'static {
	fn read_exact(&mut self, buf: &mut [u8]) -> impl Future<Output = io::Result<()>> + Send;
	/// Read `len` bytes into a new body, without zeroing it first.
	fn read_body(&mut self, len: usize) -> impl Future<Output = io::Result<Bytes>> + Send;
	fn write_all(&mut self, buf: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
	fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send;
	/// What the reader holds and has not handed out yet.
	fn buffered(&self) -> &[u8];
}

/// Frames over a byte stream.
pub struct Frames<B>(B);

impl<B: Buffered> Frames<B> {
	fn has_frame(&self) -> bool {
		let buffered = self.0.buffered();
		buffered.len() >= 4 && buffered.len() >= 4 + field(buffered, 0) as usize
	}
}

impl<B: Buffered> FrameIo for Frames<B> {
	async fn send(&mut self, kind: u32, request_id: u32, body: &[u8]) -> io::Result<()> {
		let length = u32::try_from(HEADER_LEN + body.len()).map_err(io::Error::other)?;
		self.0.write_all(&length.to_le_bytes()).await?;
		self.0.write_all(&header(kind, request_id)).await?;
		self.0.write_all(body).await
	}

	async fn recv(&mut self) -> io::Result<Option<Frame>> {
		if !self.has_frame() {
			self.0.flush().await?;
		}
		let mut prefix = [0; 4 + HEADER_LEN];
		match self.0.read_exact(&mut prefix).await {
			Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
			other => other?,
		}
		let body_len =
			(field(&prefix, 0) as usize).checked_sub(HEADER_LEN).ok_or_else(|| io::Error::other("frame too short"))?;
		let body = self.0.read_body(body_len).await?;
		Ok(Some(Frame { kind: field(&prefix, 1), request_id: field(&prefix, 2), body }))
	}

	async fn flush(&mut self) -> io::Result<()> {
		self.0.flush().await
	}
}

type TokioRead = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
type TokioWrite = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

pub struct TokioBuffered {
	reader: tokio::io::BufReader<TokioRead>,
	writer: tokio::io::BufWriter<TokioWrite>,
}

/// Frames over the two halves of a tokio stream.
fn tokio_frames(
	read: impl tokio::io::AsyncRead + Send + Unpin + 'static,
	write: impl tokio::io::AsyncWrite + Send + Unpin + 'static,
) -> Frames<TokioBuffered> {
	let (read, write): (TokioRead, TokioWrite) = (Box::new(read), Box::new(write));
	Frames(TokioBuffered {
		reader: tokio::io::BufReader::with_capacity(BUFFER, read),
		writer: tokio::io::BufWriter::with_capacity(BUFFER, write),
	})
}

impl Buffered for TokioBuffered {
	async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
		self.reader.read_exact(buf).await.map(drop)
	}

	async fn read_body(&mut self, len: usize) -> io::Result<Bytes> {
		let mut body = BytesMut::with_capacity(len);
		while body.len() < len {
			let remaining = len - body.len();
			if self.reader.read_buf(&mut (&mut body).limit(remaining)).await? == 0 {
				return Err(io::ErrorKind::UnexpectedEof.into());
			}
		}
		Ok(body.freeze())
	}

	async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
		self.writer.write_all(buf).await
	}

	async fn flush(&mut self) -> io::Result<()> {
		self.writer.flush().await
	}

	fn buffered(&self) -> &[u8] {
		self.reader.buffer()
	}
}

type StdRead = Box<dyn io::Read + Send>;
type StdWrite = Box<dyn io::Write + Send>;

pub struct StdBuffered {
	reader: io::BufReader<StdRead>,
	writer: io::BufWriter<StdWrite>,
}

/// Frames over a blocking stream, given twice (two handles to one socket).
fn std_frames(read: impl io::Read + Send + 'static, write: impl io::Write + Send + 'static) -> Frames<StdBuffered> {
	let (read, write): (StdRead, StdWrite) = (Box::new(read), Box::new(write));
	Frames(StdBuffered {
		reader: io::BufReader::with_capacity(BUFFER, read),
		writer: io::BufWriter::with_capacity(BUFFER, write),
	})
}

impl Buffered for StdBuffered {
	async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
		self.reader.read_exact(buf)
	}

	async fn read_body(&mut self, len: usize) -> io::Result<Bytes> {
		let mut body = Vec::with_capacity(len);
		(&mut self.reader).take(len as u64).read_to_end(&mut body)?;
		if body.len() < len {
			return Err(io::ErrorKind::UnexpectedEof.into());
		}
		Ok(body.into())
	}

	async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
		self.writer.write_all(buf)
	}

	async fn flush(&mut self) -> io::Result<()> {
		self.writer.flush()
	}

	fn buffered(&self) -> &[u8] {
		self.reader.buffer()
	}
}

/// A seqpacket socket.
#[cfg(feature = "unix-seqpacket")]
pub trait DatagramSocket: Send + Sync + 'static {
	fn send(&self, datagram: &[u8]) -> impl Future<Output = io::Result<usize>> + Send;
	fn recv(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<usize>> + Send;
}

#[cfg(feature = "unix-seqpacket")]
impl DatagramSocket for tokio_seqpacket::UnixSeqpacket {
	async fn send(&self, datagram: &[u8]) -> io::Result<usize> {
		tokio_seqpacket::UnixSeqpacket::send(self, datagram).await
	}

	async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
		tokio_seqpacket::UnixSeqpacket::recv(self, buf).await
	}
}

#[cfg(feature = "unix-seqpacket")]
impl DatagramSocket for std::os::fd::OwnedFd {
	async fn send(&self, datagram: &[u8]) -> io::Result<usize> {
		Ok(rustix::net::send(self, datagram, rustix::net::SendFlags::empty())?)
	}

	async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
		Ok(rustix::net::recv(self, buf, rustix::net::RecvFlags::empty())?.0)
	}
}

/// Frames over a seqpacket socket: one datagram each, the 12-byte header then the body.
#[cfg(feature = "unix-seqpacket")]
pub struct Datagrams<S> {
	socket: S,
	outgoing: Vec<u8>,
	incoming: Vec<u8>,
}

#[cfg(feature = "unix-seqpacket")]
impl<S: DatagramSocket> Datagrams<S> {
	fn new(socket: S) -> Self {
		Self { socket, outgoing: Vec::new(), incoming: vec![0; BUFFER] }
	}
}

#[cfg(feature = "unix-seqpacket")]
impl<S: DatagramSocket> FrameIo for Datagrams<S> {
	async fn send(&mut self, kind: u32, request_id: u32, body: &[u8]) -> io::Result<()> {
		self.outgoing.clear();
		self.outgoing.extend_from_slice(&header(kind, request_id));
		self.outgoing.extend_from_slice(body);
		self.socket.send(&self.outgoing).await.map(drop)
	}

	async fn recv(&mut self) -> io::Result<Option<Frame>> {
		let len = self.socket.recv(&mut self.incoming).await?;
		if len == 0 {
			return Ok(None);
		}
		let datagram = self
			.incoming
			.get(..len)
			.filter(|datagram| datagram.len() >= HEADER_LEN)
			.ok_or_else(|| io::Error::other("datagram too short"))?;
		let body = Bytes::copy_from_slice(&datagram[HEADER_LEN..]);
		Ok(Some(Frame { kind: field(datagram, 0), request_id: field(datagram, 1), body }))
	}

	async fn flush(&mut self) -> io::Result<()> {
		// Every datagram went out when it was sent.
		Ok(())
	}
}

/// One seqpacket socket shared by a spawning server's read loop and writer task.
#[cfg(feature = "unix-seqpacket")]
impl DatagramSocket for std::sync::Arc<tokio_seqpacket::UnixSeqpacket> {
	async fn send(&self, datagram: &[u8]) -> io::Result<usize> {
		tokio_seqpacket::UnixSeqpacket::send(self, datagram).await
	}

	async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
		tokio_seqpacket::UnixSeqpacket::recv(self, buf).await
	}
}

/// The datagram flavour of each baseline (without seqpacket, a stand-in that is never used).
#[cfg(feature = "unix-seqpacket")]
type TokioDatagrams = Datagrams<tokio_seqpacket::UnixSeqpacket>;
#[cfg(not(feature = "unix-seqpacket"))]
type TokioDatagrams = Frames<TokioBuffered>;
#[cfg(feature = "unix-seqpacket")]
type StdDatagrams = Datagrams<std::os::fd::OwnedFd>;
#[cfg(not(feature = "unix-seqpacket"))]
type StdDatagrams = Frames<StdBuffered>;

pub struct RawTokio;

impl Contender for RawTokio {
	const NAME: &'static str = "raw tokio";
	type Client = Either<RawClient<Frames<TokioBuffered>>, RawClient<TokioDatagrams>>;

	async fn connect(transport: Transport, server: Server) -> Result<Self::Client> {
		#[cfg_attr(not(feature = "unix-seqpacket"), allow(dead_code, reason = "only seqpacket serves unsplit"))]
		fn start<F: FrameIo>(client: F, remote: F, server: Server) -> RawClient<F> {
			tokio::spawn(serve(remote, server));
			RawClient { frames: client, next_id: 0 }
		}
		/// A server on a stream split in two: one loop over both halves, or a read loop that
		/// spawns a task per request and a writer task.
		fn serve_stream(
			read: impl tokio::io::AsyncRead + Send + Unpin + 'static,
			write: impl tokio::io::AsyncWrite + Send + Unpin + 'static,
			server: Server,
		) {
			if server.spawn {
				let reader = tokio_frames(read, tokio::io::sink());
				tokio::spawn(serve_spawning(reader, tokio_frames(tokio::io::empty(), write), server));
			} else {
				tokio::spawn(serve(tokio_frames(read, write), server));
			}
		}
		Ok(match transport.tokio_pair()? {
			TokioPair::Tcp(a, b) => {
				let ((read, write), remote) = (a.into_split(), b.into_split());
				serve_stream(remote.0, remote.1, server);
				Either::Left(RawClient { frames: tokio_frames(read, write), next_id: 0 })
			},
			TokioPair::Unix(a, b) => {
				let ((read, write), remote) = (a.into_split(), b.into_split());
				serve_stream(remote.0, remote.1, server);
				Either::Left(RawClient { frames: tokio_frames(read, write), next_id: 0 })
			},
			#[cfg(feature = "unix-seqpacket")]
			TokioPair::Seqpacket(a, b) if server.spawn => {
				let remote = std::sync::Arc::new(b);
				tokio::spawn(serve_spawning(Datagrams::new(remote.clone()), Datagrams::new(remote), server));
				Either::Right(RawClient { frames: Datagrams::new(a), next_id: 0 })
			},
			#[cfg(feature = "unix-seqpacket")]
			TokioPair::Seqpacket(a, b) => Either::Right(start(Datagrams::new(a), Datagrams::new(b), server)),
		})
	}
}

pub struct RawBlocking;

impl Contender for RawBlocking {
	const NAME: &'static str = "raw blocking";
	type Client = Either<RawClient<Frames<StdBuffered>>, RawClient<StdDatagrams>>;

	async fn connect(transport: Transport, server: Server) -> Result<Self::Client> {
		/// The server on a thread of its own; a current-thread runtime only to poll `serve`,
		/// which blocks instead of waiting (except for the slow server's sleeps).
		fn start<F: FrameIo>(client: F, remote: F, server: Server) -> io::Result<RawClient<F>> {
			let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
			std::thread::spawn(move || runtime.block_on(serve(remote, server)));
			Ok(RawClient { frames: client, next_id: 0 })
		}
		Ok(match transport.std_pair()? {
			StdPair::Tcp(a, b) => {
				Either::Left(start(std_frames(a.try_clone()?, a), std_frames(b.try_clone()?, b), server)?)
			},
			StdPair::Unix(a, b) => {
				Either::Left(start(std_frames(a.try_clone()?, a), std_frames(b.try_clone()?, b), server)?)
			},
			#[cfg(feature = "unix-seqpacket")]
			StdPair::Seqpacket(a, b) => Either::Right(start(Datagrams::new(a), Datagrams::new(b), server)?),
		})
	}
}
