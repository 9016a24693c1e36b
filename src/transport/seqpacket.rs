//! Unix seqpacket sockets: one datagram per message, file descriptors beside it.
//!
//! Each message is one datagram, the 12-byte header and the body with no length prefix, and the
//! descriptors of its [`UnixBody`] travel with it as `SCM_RIGHTS` ancillary data. This is the
//! transport for passing buffers between processes without copying them: a camera frame in a
//! memfd, a DMA buffer, a pipe, a socket.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::io::{Read, Seek, Write};
//! use peerwire::{Config, Peer, ReceivedMessage, UnixBody};
//! use peerwire::transport::seqpacket::UnixSeqpacketTransport;
//!
//! let config = Config::default();
//! let (a, b) = UnixSeqpacketTransport::pair(&config)?;
//! let client = Peer::spawn(a, &config);
//! let mut server = Peer::spawn(b, &config);
//!
//! // Hand the server an open file; it reads it and answers with what it found.
//! let mut file = tempfile_in_tmp()?;
//! file.write_all(b"shared through a descriptor")?;
//! let mut request = client.send_request(1, UnixBody::new("read this", [file])).await?;
//!
//! let ReceivedMessage::Request(incoming, body) = server.recv_message().await? else { unreachable!() };
//! let mut file = std::fs::File::from(body.fds.into_iter().next().unwrap());
//! let mut text = String::new();
//! file.rewind()?;
//! file.read_to_string(&mut text)?;
//! incoming.send_response(0, text).await?;
//!
//! let response = request.recv_response().await?;
//! assert_eq!(&response.body.data[..], b"shared through a descriptor");
//! # Ok(())
//! # }
//! # fn tempfile_in_tmp() -> std::io::Result<std::fs::File> {
//! #     let path = std::env::temp_dir().join(format!("peerwire-doctest-{}", std::process::id()));
//! #     let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
//! #     std::fs::remove_file(&path)?;
//! #     Ok(file)
//! # }
//! ```
//!
//! # Descriptors
//!
//! A received descriptor is an [`OwnedFd`] from the instant `recvmmsg` returns, before any check
//! that can fail: a malformed datagram, a message dropped unread, a connection that ends with
//! messages queued all close what they held. Sent descriptors are borrowed for the `sendmmsg`
//! and closed on this side once the datagram is on its way (the remote has its own copies).
//!
//! # Batches
//!
//! One system call moves several datagrams each way when several are waiting: the reader takes up
//! to 16 queued datagrams with one `recvmmsg` and hands them out one per read, and the writer
//! sends up to 16 queued messages with one `sendmmsg` (a message alone goes with `sendmsg`).
//! Every datagram of a batch is checked on its own, as if it had come alone: when one in the
//! middle breaks a rule, the messages before it are read first, then the error, and the
//! descriptors of the bad one and of any behind it in the batch are closed.
//!
//! # Limits and errors
//!
//! The receive side refuses, and ends the connection with:
//!
//! - a datagram shorter than the header: [`ProtocolViolation::DatagramTooShort`];
//! - a datagram longer than the receive buffer, cut by the kernel (`MSG_TRUNC`):
//!   [`ProtocolViolation::DatagramTruncated`];
//! - descriptors that did not fit the control buffer, cut by the kernel (`MSG_CTRUNC`):
//!   [`ProtocolViolation::ControlTruncated`];
//! - a body over [`Config::max_body_len_read`]: [`ErrorKind::BodyTooLarge`](crate::ErrorKind::BodyTooLarge);
//! - more descriptors than [`Config::max_fds_read`]: [`ErrorKind::TooManyFds`](crate::ErrorKind::TooManyFds).
//!
//! The receive buffer holds one byte more than the largest allowed datagram and the control
//! buffer one descriptor more than the limit, so that a message just over a limit is reported as
//! over the limit rather than as cut.
//!
//! Sending a body over [`Config::max_body_len_write`] or more descriptors than
//! [`Config::max_fds_write`] fails for that message only. Linux passes at most 253 descriptors
//! in one message (`SCM_MAX_FD`); larger limits are lowered to that.
//!
//! Linux caps the size of one datagram twice: at the socket's send buffer (`SO_SNDBUF`, less 32
//! bytes), and at about 4 MiB, because the head of a datagram is one block of kernel memory
//! (`KMALLOC_MAX_SIZE`; a larger send fails with `ENOBUFS`). Each connection raises its send
//! buffer towards `max_body_len_write` as far as the system allows (`net.core.wmem_max`, doubled
//! by the kernel), never past 4 MiB, and refuses larger messages, for that message only;
//! [`UnixSeqpacketTransport::max_datagram_len`] says where the limit ended up. Keep
//! `max_body_len_write` below it (the default 16 MiB is beyond what one datagram can carry) so
//! that the handles refuse such bodies before they are queued. For larger payloads, send a
//! descriptor (a memfd) instead of the bytes.
//!
//! # Byte order
//!
//! The reference implementation (fizyr-rpc) defaults to native byte order on seqpacket sockets,
//! where peerwire's [`Config`] defaults to little endian, the protocol's order. The two are the
//! same on x86-64 and aarch64 Linux; on a big-endian machine, set
//! [`Endian::Native`] to talk to a default fizyr-rpc peer.
//!
//! # Buffers
//!
//! The receive buffer is as large as the largest datagram allowed, plus one byte, and is reused
//! for every message; nothing of that size is allocated per message. Datagrams up to 16 KiB land
//! in a 64 KiB arena and are split off it as [`Bytes`] without a copy (a new arena is started
//! when one is used up; a body the application keeps holds its arena). The rest of the receive
//! buffer is an anonymous memory mapping, whose pages cost memory only once a large datagram
//! has touched them: an idle connection costs its arena, not `max_body_len_read`. A larger
//! datagram is copied out of it at its actual size.
//!
//! The other datagrams of a batch land in slots of a second anonymous mapping, each as large as
//! the receive buffer, and are copied out of it: into the arena up to 16 KiB, else at their
//! actual size. These slots take address space, not memory (at most 256 MiB of it: with the
//! default 16 MiB read limit, 15 slots; with a read limit over 256 MiB, none, and one datagram
//! per call); the pages a batch touched are let go, like the overflow's, once the connection is
//! quiet. If the system refuses the mapping, the connection receives one datagram per call.
//!
//! A batch takes no more than the kernel had queued for the connection, and what a remote can
//! have queued is bounded by its send buffer (at most twice `net.core.wmem_max`): the reader
//! holds at most one batch that the peer has not taken yet, in bytes what the socket held before.
//!
//! # Between a parent and a child process
//!
//! [`UnixSeqpacketTransport::pair`] connects two transports in one process. For a child
//! process, create the pair with [`tokio_seqpacket::UnixSeqpacket::pair`] (or `socketpair`),
//! wrap one end with [`UnixSeqpacketTransport::from_socket`], let the child inherit the other
//! (clear its close-on-exec flag) and wrap it there with [`UnixSeqpacketTransport::from_fd`].

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use memmap2::{MmapMut, MmapOptions};
use rustix::net::sockopt;
use tokio_seqpacket::UnixSeqpacket;

use super::socket_file::remove_stale_socket;
use super::{ConnectionInfo, Credentials, RemoteAddress, Transport, TransportRead, TransportWrite};
use crate::codec::{Endian, decode_datagram, encode_header};
use crate::config::Config;
use crate::error::{Error, ProtocolViolation};
use crate::handle::PeerHandle;
use crate::listener::{AcceptError, Acceptor, Listener};
use crate::message::{Body, CloneBody, HEADER_LEN, IntoBody, Message};
use crate::peer::Peer;
use crate::sys::batch::{self, MAX_BATCH, Outgoing, RecvControl};
use crate::sys::fd;

/// Datagrams up to this size are received into the arena and split off it without a copy.
const FAST_LEN: usize = 16 * 1024;
/// The size of a fresh arena.
const ARENA_LEN: usize = 64 * 1024;
/// What the kernel keeps of the send buffer for itself: a datagram may be `SO_SNDBUF - 32` bytes
/// (`unix_dgram_sendmsg` in `net/unix/af_unix.c`).
const KERNEL_SNDBUF_OVERHEAD: usize = 32;
/// No datagram can be larger: the kernel's send buffer size is an `int`.
const MAX_DATAGRAM_LEN: usize = i32::MAX as usize;
/// The largest datagram this side sends. Linux allocates the head of a datagram in one piece
/// (all but 17 pages of it), and `kmalloc` stops at 4 MiB on x86-64 and on aarch64 with 4 KiB
/// pages: past about 4 MiB + 68 KiB a send fails with `ENOBUFS` whatever `SO_SNDBUF` says.
pub const MAX_SEND_DATAGRAM_LEN: usize = 4 << 20;
/// The most descriptors Linux passes in one message (`SCM_MAX_FD`); `sendmsg` fails beyond it.
pub const SCM_MAX_FD: usize = 253;
/// The address space the receive slots of a batch may take beyond the first: each slot holds the
/// largest datagram allowed, so a connection with a large read limit batches fewer datagrams per
/// call (none beyond the first past 256 MiB). Pages of it cost memory only once written.
const LANDING_SPACE: usize = 256 << 20;
/// The control buffer for one batch of sends has room for at least this many descriptors (about
/// 4 KiB), so that several datagrams with descriptors go in one call.
const SEND_CONTROL_FDS: usize = 1000;
/// Stop taking messages for a batch once this many bytes are queued...
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// ...or this many messages.
const WRITE_MAX_QUEUED: usize = 64;

/// A peer on a Unix seqpacket connection.
pub type UnixSeqpacketPeer = Peer<UnixSeqpacketTransport>;
/// A listener for Unix seqpacket connections.
pub type UnixSeqpacketListener = Listener<tokio_seqpacket::UnixSeqpacketListener>;

/// The body of a message on a seqpacket connection: bytes, and the file descriptors that travel
/// with them.
///
/// Descriptors are owned: dropping the body closes them. Sending a body hands its descriptors to
/// the transport, which closes this side's copies once the datagram is sent.
///
/// Its bytes are given in any form a [`Bytes`] body takes (see [`IntoBody`]), and a send
/// method takes those forms directly for a body without descriptors.
///
/// ```
/// use peerwire::{Body, UnixBody};
///
/// let file = std::fs::File::open("/dev/null").unwrap();
/// let body = UnixBody::new(b"frame 7", [file]);
/// assert_eq!(body.as_bytes(), b"frame 7");
/// assert_eq!(body.fd_count(), 1);
///
/// let plain = UnixBody::from("no descriptors");
/// assert!(plain.fds.is_empty());
/// ```
#[derive(Debug, Default)]
pub struct UnixBody {
	/// The bytes of the body.
	pub data: Bytes,
	/// The descriptors sent or received with the body, in order.
	pub fds: Vec<OwnedFd>,
}

impl UnixBody {
	/// A body with descriptors, as in fizyr-rpc: the bytes in any form [`IntoBody`] takes, and
	/// anything that converts into an [`OwnedFd`] ([`File`](std::fs::File), a socket, an
	/// [`OwnedFd`] itself), as an array, a `Vec` or any iterator. For no descriptors, use
	/// [`UnixBody::from`] (or pass the bytes to the send method as they are).
	pub fn new<F: Into<OwnedFd>>(data: impl IntoBody<Bytes>, fds: impl IntoIterator<Item = F>) -> Self {
		Self { data: data.into_body(), fds: fds.into_iter().map(Into::into).collect() }
	}

	/// A copy of the body whose descriptors are duplicates (`dup`) of these, for sending the same
	/// descriptors more than once.
	pub fn try_clone(&self) -> io::Result<Self> {
		let fds = self.fds.iter().map(OwnedFd::try_clone).collect::<io::Result<_>>()?;
		Ok(Self { data: self.data.clone(), fds })
	}

	/// The body without descriptors, for bytes already converted.
	fn data_only(data: Bytes) -> Self {
		Self { data, fds: Vec::new() }
	}
}

impl Body for UnixBody {
	fn from_error_text(text: &str) -> Self {
		Self::from(text)
	}

	fn as_bytes(&self) -> &[u8] {
		&self.data
	}

	fn fd_count(&self) -> usize {
		self.fds.len()
	}
}

/// Duplicates the descriptors ([`UnixBody::try_clone`]), so that
/// [`Reconnecting`](crate::Reconnecting) can send a body again on a new connection.
impl CloneBody for UnixBody {
	fn clone_body(&self) -> Result<Self, Error> {
		Ok(self.try_clone()?)
	}
}

impl IntoBody<UnixBody> for Bytes {
	fn into_body(self) -> UnixBody {
		UnixBody::data_only(self)
	}
}

impl From<Bytes> for UnixBody {
	fn from(data: Bytes) -> Self {
		Self::data_only(data)
	}
}

impl From<Vec<u8>> for UnixBody {
	fn from(data: Vec<u8>) -> Self {
		Self::data_only(data.into())
	}
}

impl From<String> for UnixBody {
	fn from(data: String) -> Self {
		Self::data_only(data.into())
	}
}

/// Copied.
impl From<&[u8]> for UnixBody {
	fn from(data: &[u8]) -> Self {
		Self::data_only(Bytes::copy_from_slice(data))
	}
}

/// Copied: a `b"..."` literal.
impl<const N: usize> From<&[u8; N]> for UnixBody {
	fn from(data: &[u8; N]) -> Self {
		Self::data_only(Bytes::copy_from_slice(data))
	}
}

/// Copied.
impl From<&str> for UnixBody {
	fn from(data: &str) -> Self {
		Self::from(data.as_bytes())
	}
}

/// The transport of a Unix seqpacket connection.
///
/// Usually reached through [`UnixSeqpacketPeer::connect`], [`UnixSeqpacketListener`] and
/// [`pair`](Self::pair); see the [module documentation](self) for framing, limits and buffers.
#[derive(Debug)]
pub struct UnixSeqpacketTransport {
	reader: UnixSeqpacketReader,
	writer: UnixSeqpacketWriter,
	info: ConnectionInfo,
}

impl UnixSeqpacketTransport {
	/// Wrap a connected seqpacket socket, recording the remote's credentials.
	///
	/// Raises the socket's send buffer towards `config.max_body_len_write` (see
	/// [`max_datagram_len`](Self::max_datagram_len)).
	pub fn from_socket(socket: UnixSeqpacket, config: &Config) -> io::Result<Self> {
		let info = ConnectionInfo {
			remote_address: Some(RemoteAddress::Unix(peer_path(&socket))),
			credentials: Some(Credentials::from(socket.peer_cred()?)),
			peer_certificate: None,
		};
		let socket = Arc::new(socket);
		let writer = UnixSeqpacketWriter::new(socket.clone(), config)?;
		let reader = UnixSeqpacketReader::new(socket, config)?;
		Ok(Self { reader, writer, info })
	}

	/// Wrap a connected seqpacket socket given as a descriptor, typically one a child process
	/// inherited from its parent. The socket is switched to non-blocking mode.
	///
	/// Fails with `InvalidInput` if `fd` is not a seqpacket socket.
	pub fn from_fd(fd: OwnedFd, config: &Config) -> io::Result<Self> {
		let socket_type = match sockopt::socket_type(&fd) {
			Ok(socket_type) => Some(socket_type),
			Err(rustix::io::Errno::NOTSOCK) => None,
			Err(error) => return Err(error.into()),
		};
		if socket_type != Some(rustix::net::SocketType::SEQPACKET) {
			return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a seqpacket socket"));
		}
		rustix::io::ioctl_fionbio(&fd, true)?;
		Self::from_socket(UnixSeqpacket::try_from(fd)?, config)
	}

	/// A connected pair inside one process (`socketpair`).
	pub fn pair(config: &Config) -> io::Result<(Self, Self)> {
		let (a, b) = UnixSeqpacket::pair()?;
		Ok((Self::from_socket(a, config)?, Self::from_socket(b, config)?))
	}

	/// Connect to a seqpacket socket at `path`.
	pub async fn connect(path: impl AsRef<Path>, config: &Config) -> io::Result<Self> {
		Self::from_socket(UnixSeqpacket::connect(path).await?, config)
	}

	/// The largest datagram (header and body) this connection sends: what the socket's send
	/// buffer allows, and at most 4 MiB (see the [module documentation](self)).
	///
	/// Messages larger than this fail to send (for that message only) even when they are within
	/// [`Config::max_body_len_write`].
	pub fn max_datagram_len(&self) -> usize {
		self.writer.max_datagram_len
	}
}

impl Transport for UnixSeqpacketTransport {
	type Body = UnixBody;
	type Reader = UnixSeqpacketReader;
	type Writer = UnixSeqpacketWriter;

	fn info(&self) -> ConnectionInfo {
		self.info.clone()
	}

	fn split(self) -> (Self::Reader, Self::Writer) {
		(self.reader, self.writer)
	}
}

/// The path the remote is bound to, if any (a client usually is not).
fn peer_path(socket: &UnixSeqpacket) -> Option<PathBuf> {
	use std::os::unix::ffi::OsStrExt;
	let address = rustix::net::getpeername(socket).ok()??;
	let address = rustix::net::SocketAddrUnix::try_from(address).ok()?;
	Some(PathBuf::from(std::ffi::OsStr::from_bytes(address.path_bytes()?)))
}

impl From<tokio_seqpacket::UCred> for Credentials {
	fn from(cred: tokio_seqpacket::UCred) -> Self {
		Self { uid: cred.uid(), gid: cred.gid(), pid: cred.pid() }
	}
}

/// The read half of a [`UnixSeqpacketTransport`].
#[derive(Debug)]
pub struct UnixSeqpacketReader {
	socket: Arc<UnixSeqpacket>,
	endian: Endian,
	max_body_len: usize,
	max_fds: usize,
	/// Initialized bytes the next datagram is received into; datagrams up to `fast_len` are
	/// split off its front.
	arena: BytesMut,
	/// How much of the arena one receive uses: `FAST_LEN`, or less if no datagram can be larger.
	fast_len: usize,
	/// Where the rest of a datagram larger than `fast_len` goes, up to the receive size: an
	/// anonymous mapping, so that untouched pages cost nothing (`None` if nothing goes there).
	overflow: Option<MmapMut>,
	/// A datagram has used `overflow` since it was last mapped.
	overflow_touched: bool,
	/// The receive slots of a batch after the first, `receive_len` bytes each, in an anonymous
	/// mapping (`None` if one datagram per call is all the limits allow).
	landing: Option<MmapMut>,
	/// The size of a slot of `landing`: the largest datagram allowed, plus one byte.
	receive_len: usize,
	/// A datagram has used `landing` since it was last mapped.
	landing_touched: bool,
	/// For each slot, room for one descriptor more than the limit.
	control: RecvControl,
	/// How many datagrams the next call asks for (at least two, if there are slots for them):
	/// twice as many as the last call if it found all it asked for (more may be waiting), and
	/// after the socket ran dry, as many as came since it last did (the size of the last burst).
	/// A call that finds fewer than it asked for has seen the socket run dry, and the reader then
	/// waits for the socket's next readiness: a connection with one datagram waiting per wakeup
	/// (a round trip) makes one system call per datagram, not a second one that finds nothing.
	batch_len: usize,
	/// Datagrams received since the socket last ran dry.
	burst: usize,
	/// What the last call received, before it is checked (kept for its allocation).
	received: Vec<fd::Received>,
	/// Messages received and checked, not yet read.
	ready: VecDeque<Message<UnixBody>>,
	/// What comes after `ready`: the remote's end of the connection, or an error.
	end: Option<ReadEnd>,
}

/// How reading ended, after the messages received before it are read.
#[derive(Debug)]
enum ReadEnd {
	/// The remote closed its side (or sent an empty datagram): read as `Ok(None)`, every time.
	Closed,
	/// A datagram broke a rule: read as that error.
	Failed(Error),
}

impl UnixSeqpacketReader {
	fn new(socket: Arc<UnixSeqpacket>, config: &Config) -> io::Result<Self> {
		// One byte more than the largest allowed datagram: a body one byte over the limit arrives
		// whole and is reported as too large, anything longer is cut and reported as truncated.
		let receive_len = HEADER_LEN.saturating_add(config.max_body_len_read).saturating_add(1).min(MAX_DATAGRAM_LEN);
		let fast_len = receive_len.min(FAST_LEN);
		let overflow = match receive_len - fast_len {
			0 => None,
			// Not from the heap: an allocator may hand out recycled memory and zero it with memset,
			// making every connection pay for the largest datagram it might ever receive.
			len => Some(MmapOptions::new().len(len).no_reserve_swap().map_anon()?),
		};
		let landing_slots = (LANDING_SPACE / receive_len).min(MAX_BATCH - 1);
		let landing = match landing_slots {
			0 => None,
			slots => match MmapOptions::new().len(slots * receive_len).no_reserve_swap().map_anon() {
				Ok(mapping) => Some(mapping),
				Err(error) => {
					tracing::debug!("receiving one datagram per call: no room for the batch slots: {error}");
					None
				},
			},
		};
		let slots = 1 + landing.as_ref().map_or(0, |landing| landing.len() / receive_len);
		Ok(Self {
			socket,
			endian: config.endian,
			max_body_len: config.max_body_len_read,
			max_fds: config.max_fds_read,
			arena: BytesMut::new(),
			fast_len,
			overflow,
			overflow_touched: false,
			landing,
			receive_len,
			landing_touched: false,
			control: RecvControl::new(config.max_fds_read.min(SCM_MAX_FD) + 1, slots),
			batch_len: slots,
			burst: 0,
			received: Vec::new(),
			ready: VecDeque::new(),
			end: None,
		})
	}

	/// Receive what is queued on the socket, up to one batch, into `ready` and `end`.
	fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
		if self.arena.len() < self.fast_len {
			// Used up (what was split off lives on in the messages); start a fresh one.
			self.arena = BytesMut::zeroed(ARENA_LEN.max(self.fast_len));
		}
		// Taken out for the call and always put back, so that its allocation is kept.
		let mut received = std::mem::take(&mut self.received);
		let result = self.poll_recv_datagrams(cx, &mut received);
		if let Poll::Ready(Ok(())) = result {
			// Check each datagram in the order received. Those after an end or an error are
			// dropped unread, which closes their descriptors.
			for (slot, datagram) in received.drain(..).enumerate() {
				if self.end.is_some() {
					continue;
				}
				let checked = match slot {
					0 => self.finish(datagram),
					_ => self.finish_landed(slot - 1, datagram),
				};
				match checked {
					Ok(Some(message)) => self.ready.push_back(message),
					Ok(None) => self.end = Some(ReadEnd::Closed),
					Err(error) => self.end = Some(ReadEnd::Failed(error)),
				}
			}
		}
		self.received = received;
		result
	}

	/// One `recvmmsg` once the socket is readable: datagram 0 into the arena and the overflow,
	/// the others into the slots of `landing`.
	fn poll_recv_datagrams(&mut self, cx: &mut Context<'_>, received: &mut Vec<fd::Received>) -> Poll<io::Result<()>> {
		let Self { socket, arena, fast_len, overflow, landing, receive_len, control, batch_len, burst, .. } = self;
		loop {
			let mut guard = ready!(socket.as_async_fd().poll_read_ready(cx))?;
			let overflow = overflow.as_deref_mut().unwrap_or_default();
			let mut first = Some([IoSliceMut::new(&mut arena[..*fast_len]), IoSliceMut::new(overflow)]);
			let mut rest = landing.as_deref_mut().unwrap_or_default().chunks_exact_mut(*receive_len);
			let mut slots: [[IoSliceMut<'_>; 2]; MAX_BATCH] = std::array::from_fn(|_| {
				first
					.take()
					.unwrap_or_else(|| [IoSliceMut::new(rest.next().unwrap_or_default()), IoSliceMut::new(&mut [])])
			});
			// At least two: one more than is queued tells that the socket ran dry.
			let asked = (*batch_len).max(2).min(control.slots());
			let result = guard
				.try_io(|inner| batch::recv_datagrams(inner.get_ref().as_fd(), &mut slots[..asked], control, received));
			match result {
				Ok(Ok(taken)) => {
					*burst += taken;
					if taken == asked {
						*batch_len = asked * 2;
					} else {
						// The kernel found no more inside the call: the socket was dry then. Wait
						// for its next readiness event rather than ask again and be told
						// `EAGAIN` (a system call per wakeup). tokio does the same after a short
						// read of a stream; it keeps the closed state, and an event that came
						// after the readiness this call used is not cleared.
						guard.clear_ready();
						*batch_len = std::mem::take(burst);
					}
					return Poll::Ready(Ok(()));
				},
				Ok(Err(error)) => return Poll::Ready(Err(error)),
				Err(_would_block) => {
					*batch_len = std::mem::take(burst).max(1);
					continue;
				},
			}
		}
	}

	/// Check what the kernel said about a received datagram: its length and descriptors if it
	/// is whole and within the limits, `None` for the end of the connection. Its descriptors are
	/// owned already: every error return closes them.
	fn check(&self, received: fd::Received) -> Result<Option<(usize, Vec<OwnedFd>)>, Error> {
		let fd::Received { len, fds, truncated, control_truncated } = received;
		if control_truncated {
			return Err(ProtocolViolation::ControlTruncated.into());
		}
		if truncated {
			return Err(ProtocolViolation::DatagramTruncated.into());
		}
		if fds.len() > self.max_fds {
			return Err(Error::too_many_fds(fds.len(), self.max_fds));
		}
		if len == 0 && fds.is_empty() {
			// The kernel reports the remote's shutdown or close and a 0-byte datagram alike.
			// No valid message is empty (the header alone is 12 bytes), so both end reading.
			tracing::debug!(
				"received 0 bytes: the remote closed its side, or sent an empty datagram; reading ends here"
			);
			return Ok(None);
		}
		Ok(Some((len, fds)))
	}

	/// Check the first datagram of a batch, received into the arena and the overflow, and turn it
	/// into a message.
	fn finish(&mut self, received: fd::Received) -> Result<Option<Message<UnixBody>>, Error> {
		let Some((len, fds)) = self.check(received)? else { return Ok(None) };
		let datagram = if len <= self.fast_len {
			self.arena.split_to(len).freeze()
		} else {
			let mut datagram = BytesMut::with_capacity(len);
			datagram.extend_from_slice(&self.arena[..self.fast_len]);
			let overflow = self.overflow.as_deref().unwrap_or_default();
			datagram.extend_from_slice(&overflow[..len - self.fast_len]);
			// The pages this datagram touched stay resident for as long as the mapping lives:
			// once the connection is quiet, it is mapped afresh (`release_spare_memory`).
			self.overflow_touched = true;
			datagram.freeze()
		};
		self.decode(datagram, fds)
	}

	/// Check a later datagram of a batch, received into slot `slot` of `landing`, and turn it
	/// into a message: copied into the arena if it is small, else into a buffer of its size.
	fn finish_landed(&mut self, slot: usize, received: fd::Received) -> Result<Option<Message<UnixBody>>, Error> {
		let Some((len, fds)) = self.check(received)? else { return Ok(None) };
		// Like the overflow: let go of the pages once the connection is quiet.
		self.landing_touched = true;
		let landing = self.landing.as_deref().unwrap_or_default();
		let Some(data) = landing.get(slot * self.receive_len..).and_then(|rest| rest.get(..len)) else {
			// The kernel writes no more than the slot holds; this would be a bug here.
			return Err(io::Error::other(format!("datagram of {len} bytes outside receive slot {slot}")).into());
		};
		let datagram = if len <= self.fast_len {
			if self.arena.len() < len {
				self.arena = BytesMut::zeroed(ARENA_LEN.max(self.fast_len));
			}
			self.arena[..len].copy_from_slice(data);
			self.arena.split_to(len).freeze()
		} else {
			Bytes::copy_from_slice(data)
		};
		self.decode(datagram, fds)
	}

	fn decode(&self, datagram: Bytes, fds: Vec<OwnedFd>) -> Result<Option<Message<UnixBody>>, Error> {
		let message = decode_datagram(datagram, self.endian, self.max_body_len)?;
		Ok(Some(Message { header: message.header, body: UnixBody { data: message.body, fds } }))
	}
}

impl TransportRead for UnixSeqpacketReader {
	type Body = UnixBody;

	fn shares_reads(&self) -> bool {
		true
	}

	fn poll_read_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Message<UnixBody>>, Error>> {
		loop {
			if let Some(message) = self.ready.pop_front() {
				return Poll::Ready(Ok(Some(message)));
			}
			match self.end.take() {
				Some(ReadEnd::Closed) => {
					self.end = Some(ReadEnd::Closed);
					return Poll::Ready(Ok(None));
				},
				Some(ReadEnd::Failed(error)) => return Poll::Ready(Err(error)),
				None => {},
			}
			ready!(self.poll_receive(cx))?;
		}
	}

	fn holds_spare_memory(&self) -> bool {
		self.overflow_touched || self.landing_touched
	}

	/// Map the overflow area and the batch slots afresh, so that an idle connection does not keep
	/// the pages of its largest datagrams.
	fn release_spare_memory(&mut self) {
		for (mapping, touched) in
			[(&mut self.overflow, &mut self.overflow_touched), (&mut self.landing, &mut self.landing_touched)]
		{
			if !std::mem::take(touched) {
				continue;
			}
			if let Some(old) = mapping {
				match MmapOptions::new().len(old.len()).no_reserve_swap().map_anon() {
					Ok(fresh) => *mapping = Some(fresh),
					Err(error) => tracing::debug!("kept a receive mapping: {error}"),
				}
			}
		}
	}
}

/// The write half of a [`UnixSeqpacketTransport`].
#[derive(Debug)]
pub struct UnixSeqpacketWriter {
	socket: Arc<UnixSeqpacket>,
	endian: Endian,
	max_body_len: usize,
	max_fds: usize,
	/// The kernel's limit on one datagram for this socket.
	max_datagram_len: usize,
	queue: VecDeque<Queued>,
	queued_bytes: usize,
	/// The control data of one batch: room for the most descriptors one message may carry, and
	/// for several messages with a few.
	control: Vec<MaybeUninit<u8>>,
	/// The lengths sent by the last call, one per datagram (kept for its allocation).
	sent: Vec<usize>,
}

/// A message waiting for its `sendmsg`.
#[derive(Debug)]
struct Queued {
	header: [u8; HEADER_LEN],
	body: UnixBody,
}

impl UnixSeqpacketWriter {
	fn new(socket: Arc<UnixSeqpacket>, config: &Config) -> io::Result<Self> {
		let max_datagram_len = raise_send_buffer(&socket, HEADER_LEN.saturating_add(config.max_body_len_write))?;
		Ok(Self {
			socket,
			endian: config.endian,
			max_body_len: config.max_body_len_write,
			max_fds: config.max_fds_write.min(SCM_MAX_FD),
			max_datagram_len,
			queue: VecDeque::new(),
			queued_bytes: 0,
			control: fd::control_buffer(config.max_fds_write.min(SCM_MAX_FD).max(SEND_CONTROL_FDS)),
			sent: Vec::new(),
		})
	}
}

/// Raise the send buffer so that a datagram of `wanted` bytes fits, as far as the system allows,
/// and return the largest datagram this side will send. Never lowers the buffer.
pub fn raise_send_buffer(socket: &UnixSeqpacket, wanted: usize) -> io::Result<usize> {
	let needed = wanted.min(MAX_SEND_DATAGRAM_LEN) + KERNEL_SNDBUF_OVERHEAD;
	if sockopt::socket_send_buffer_size(socket)? < needed {
		// The kernel caps the value at net.core.wmem_max, then doubles it.
		if let Err(error) = sockopt::set_socket_send_buffer_size(socket, needed) {
			tracing::debug!("could not raise the send buffer to {needed} bytes: {error}");
		}
	}
	let allowed = sockopt::socket_send_buffer_size(socket)?.saturating_sub(KERNEL_SNDBUF_OVERHEAD);
	Ok(allowed.min(MAX_SEND_DATAGRAM_LEN))
}

impl TransportWrite for UnixSeqpacketWriter {
	type Body = UnixBody;

	fn start_send(&mut self, message: Message<UnixBody>) -> Result<(), Error> {
		let Message { header, body } = message;
		let len = body.data.len();
		if len > self.max_body_len {
			return Err(Error::body_too_large(len, self.max_body_len));
		}
		if body.fds.len() > self.max_fds {
			return Err(Error::too_many_fds(body.fds.len(), self.max_fds));
		}
		if HEADER_LEN + len > self.max_datagram_len {
			tracing::debug!(max_datagram_len = self.max_datagram_len, "datagram larger than the kernel takes");
			return Err(Error::body_too_large(len, self.max_datagram_len.saturating_sub(HEADER_LEN)));
		}
		self.queued_bytes += HEADER_LEN + len;
		self.queue.push_back(Queued { header: encode_header(&header, self.endian), body });
		Ok(())
	}

	fn wants_more(&self) -> bool {
		self.queue.len() < WRITE_MAX_QUEUED && self.queued_bytes < WRITE_HIGH_WATER
	}

	fn has_queued(&self) -> bool {
		!self.queue.is_empty()
	}

	fn max_body_len(&self) -> usize {
		self.max_body_len.min(self.max_datagram_len.saturating_sub(HEADER_LEN))
	}

	fn max_fds(&self) -> usize {
		self.max_fds
	}

	fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
		let Self { socket, queue, queued_bytes, control, sent, .. } = self;
		while !queue.is_empty() {
			let mut guard = ready!(socket.as_async_fd().poll_write_ready(cx))?;
			// Up to one batch from the front of the queue, sent with one `sendmmsg` (one alone
			// with a plain `sendmsg`).
			let result = guard.try_io(|inner| {
				let socket = inner.get_ref().as_fd();
				if let (Some(only), 1) = (queue.front(), queue.len()) {
					let buffers = [IoSlice::new(&only.header), IoSlice::new(&only.body.data)];
					sent.clear();
					return fd::send_datagram(socket, &buffers, &only.body.fds, control).map(|len| sent.push(len));
				}
				let mut queued = queue.iter();
				let datagrams: [Outgoing<'_>; MAX_BATCH] = std::array::from_fn(|_| match queued.next() {
					Some(queued) => Outgoing {
						data: [IoSlice::new(&queued.header), IoSlice::new(&queued.body.data)],
						fds: &queued.body.fds,
					},
					None => Outgoing { data: [IoSlice::new(&[]); 2], fds: &[] },
				});
				batch::send_datagrams(socket, &datagrams[..queue.len().min(MAX_BATCH)], control, sent)
			});
			match result {
				Ok(Ok(())) => {},
				Err(_would_block) => continue,
				// Too large for the kernel after all (the send buffer shrank since it was checked):
				// this message is lost, the connection is fine. (A later datagram of a batch that
				// fails is not sent, and fails again as the first of the next call.)
				Ok(Err(error)) if error.raw_os_error() == Some(rustix::io::Errno::MSGSIZE.raw_os_error()) => {
					let len = queue.front().map_or(0, |front| HEADER_LEN + front.body.data.len());
					tracing::error!(len, "dropped a message too large for the socket: {error}");
					*queued_bytes -= len;
					queue.pop_front();
					continue;
				},
				Ok(Err(error)) => return Poll::Ready(Err(error.into())),
			}
			for &sent in sent.iter() {
				let Some(front) = queue.pop_front() else { break };
				let len = HEADER_LEN + front.body.data.len();
				// A datagram goes whole or not at all.
				if sent != len {
					let message = format!("sent {sent} bytes of a {len}-byte datagram");
					return Poll::Ready(Err(io::Error::new(io::ErrorKind::WriteZero, message).into()));
				}
				*queued_bytes -= len;
				// `front` is dropped here, which closes this side's copies of the descriptors;
				// the remote has its own.
			}
		}
		Poll::Ready(Ok(()))
	}

	fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
		ready!(self.poll_flush(cx))?;
		match self.socket.shutdown(std::net::Shutdown::Write) {
			Err(error) if error.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(error.into())),
			_ => Poll::Ready(Ok(())),
		}
	}
}

impl Peer<UnixSeqpacketTransport> {
	/// Connect to a Unix seqpacket socket at `path` and spawn the peer task.
	pub async fn connect(
		path: impl AsRef<Path>,
		config: &Config,
	) -> Result<(PeerHandle<UnixBody>, ConnectionInfo), Error> {
		let transport = UnixSeqpacketTransport::connect(path, config).await?;
		Ok(super::spawn_connected(transport, config))
	}
}

impl Acceptor for tokio_seqpacket::UnixSeqpacketListener {
	type Transport = UnixSeqpacketTransport;

	fn poll_accept(
		&mut self,
		cx: &mut Context<'_>,
		config: &Config,
	) -> Poll<Result<UnixSeqpacketTransport, AcceptError>> {
		let socket =
			ready!(tokio_seqpacket::UnixSeqpacketListener::poll_accept(self, cx)).map_err(AcceptError::from_accept)?;
		// Reading the credentials or sizing the buffers fails for this connection only.
		Poll::Ready(UnixSeqpacketTransport::from_socket(socket, config).map_err(AcceptError::Connection))
	}
}

impl Listener<tokio_seqpacket::UnixSeqpacketListener> {
	/// Bind a Unix seqpacket listener at `path`.
	///
	/// A stale socket file left by a process that is gone is removed first. If another process
	/// is still accepting on `path`, binding fails with `AddrInUse` instead of stealing it.
	///
	/// The socket file is removed when the listener is dropped (at the end of
	/// [`serve`](crate::server::serve), for example), unless it is no longer the file this
	/// listener bound: a newer server's socket at the same path is left alone. A listener made
	/// with [`Listener::new`] over a socket bound elsewhere leaves its file to whoever bound it.
	pub async fn bind(path: impl AsRef<Path>, config: &Config) -> Result<Self, Error> {
		let path = path.as_ref();
		remove_stale_socket(path).await?;
		Ok(Self::new(tokio_seqpacket::UnixSeqpacketListener::bind(path)?, config).remove_on_drop(path))
	}

	/// [`bind`](Self::bind), giving the socket file the mode and group of `permissions`.
	///
	/// The file has them from the first moment it exists at `path`: it is bound in a private
	/// directory beside `path` (mode `0o700`), its mode and group set there, then linked to
	/// `path`. So `path`'s directory must be writable, and `path` short enough to leave about 14
	/// bytes of the 107 a socket path may have. Connecting peers that ask for this socket's
	/// address see that temporary path; [`local_addr`](Self::local_addr) reports `path`.
	pub async fn bind_with_permissions(
		path: impl AsRef<Path>,
		permissions: super::SocketPermissions,
		config: &Config,
	) -> Result<Self, Error> {
		let path = path.as_ref();
		remove_stale_socket(path).await?;
		let listener = super::socket_file::bind_with_permissions(path, permissions, |path| {
			tokio_seqpacket::UnixSeqpacketListener::bind(path)
		})?;
		Ok(Self::new(listener, config).remove_on_drop(path))
	}

	/// The path this listener is bound to (`None` for an unnamed socket).
	pub fn local_addr(&self) -> Result<Option<PathBuf>, Error> {
		if let Some(path) = self.bound_path() {
			return Ok(Some(path.to_path_buf()));
		}
		let path = self.get_ref().local_addr()?;
		Ok((!path.as_os_str().is_empty()).then_some(path))
	}
}

#[cfg(test)]
mod tests {
	use super::*;
	use crate::message::{MessageHeader, MessageType};
	use std::future::poll_fn;

	fn config(max_body: usize, max_fds: usize) -> Config {
		Config::default()
			.with_max_body_len_read(max_body)
			.with_max_body_len_write(max_body)
			.with_max_fds_read(max_fds)
			.with_max_fds_write(max_fds)
	}

	fn devnull() -> OwnedFd {
		std::fs::File::open("/dev/null").unwrap().into()
	}

	async fn send(writer: &mut UnixSeqpacketWriter, message: Message<UnixBody>) {
		writer.start_send(message).unwrap();
		poll_fn(|cx| writer.poll_flush(cx)).await.unwrap();
	}

	async fn read(reader: &mut UnixSeqpacketReader) -> Result<Option<Message<UnixBody>>, Error> {
		poll_fn(|cx| reader.poll_read_message(cx)).await
	}

	#[tokio::test]
	async fn small_and_large_datagrams_round_trip() {
		let config = config(200_000, 4);
		let (a, b) = UnixSeqpacketTransport::pair(&config).unwrap();
		let (_, mut writer) = a.split();
		let (mut reader, _) = b.split();
		for len in [0, 1, FAST_LEN - HEADER_LEN, FAST_LEN - HEADER_LEN + 1, 100_000, 200_000] {
			let data = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<_>>());
			send(&mut writer, Message::stream(len as u32, 3, UnixBody::new(data.clone(), [devnull()]))).await;
			let message = read(&mut reader).await.unwrap().unwrap();
			assert_eq!(message.header, MessageHeader::new(MessageType::Stream, len as u32, 3));
			assert_eq!(message.body.data, data, "len {len}");
			assert_eq!(message.body.fds.len(), 1);
		}
	}

	#[tokio::test]
	async fn the_arena_is_replaced_when_used_up_and_bodies_stay_intact() {
		let config = config(1000, 0);
		let (a, b) = UnixSeqpacketTransport::pair(&config).unwrap();
		let (_, mut writer) = a.split();
		let (mut reader, _) = b.split();
		let mut kept = Vec::new();
		for i in 0..2000u32 {
			let data = Bytes::from(vec![i as u8; 500]);
			send(&mut writer, Message::stream(i, 0, UnixBody::from(data))).await;
			kept.push(read(&mut reader).await.unwrap().unwrap());
		}
		for (i, message) in kept.iter().enumerate() {
			assert_eq!(&message.body.data[..], &vec![i as u8; 500][..]);
		}
	}

	#[tokio::test]
	async fn over_the_limits_is_refused_for_that_message_only() {
		let config = config(16, 1);
		let (a, _b) = UnixSeqpacketTransport::pair(&config).unwrap();
		let (_, mut writer) = a.split();
		let error = writer.start_send(Message::stream(0, 0, UnixBody::from(vec![0; 17]))).unwrap_err();
		assert_eq!(error.kind(), crate::ErrorKind::BodyTooLarge);
		let error = writer.start_send(Message::stream(0, 0, UnixBody::new("x", [devnull(), devnull()]))).unwrap_err();
		assert_eq!(error.kind(), crate::ErrorKind::TooManyFds);
		assert!(!writer.has_queued());
		writer.start_send(Message::stream(0, 0, UnixBody::new(vec![0; 16], [devnull()]))).unwrap();
	}

	#[tokio::test]
	async fn no_more_descriptors_than_the_kernel_passes_are_queued() {
		let (a, _b) = UnixSeqpacketTransport::pair(&config(16, 1000)).unwrap();
		let (_, mut writer) = a.split();
		let too_many = (0..SCM_MAX_FD + 1).map(|_| devnull());
		let error = writer.start_send(Message::stream(0, 0, UnixBody::new("", too_many))).unwrap_err();
		assert_eq!(error.kind(), crate::ErrorKind::TooManyFds);
		let fds: Vec<OwnedFd> = (0..SCM_MAX_FD).map(|_| devnull()).collect();
		send(&mut writer, Message::stream(0, 0, UnixBody::new("", fds))).await;
	}

	#[tokio::test]
	async fn what_is_queued_is_taken_in_one_call_and_the_batch_slots_are_let_go_when_quiet() {
		let config = config(100_000, 1);
		let (a, b) = UnixSeqpacketTransport::pair(&config).unwrap();
		let (_, mut writer) = a.split();
		let (mut reader, _) = b.split();
		assert_eq!(reader.control.slots(), MAX_BATCH);
		for i in 0..MAX_BATCH as u32 + 4 {
			let len = if i == 3 { 50_000 } else { 10 };
			writer.start_send(Message::stream(i, 0, UnixBody::new(vec![i as u8; len], [devnull()]))).unwrap();
		}
		poll_fn(|cx| writer.poll_flush(cx)).await.unwrap();
		let first = read(&mut reader).await.unwrap().unwrap();
		assert_eq!(first.header.request_id, 0);
		// One call took a whole batch; the rest waits in the socket.
		assert_eq!(reader.ready.len(), MAX_BATCH - 1);
		assert!(reader.holds_spare_memory());
		for i in 1..MAX_BATCH as u32 + 4 {
			let message = read(&mut reader).await.unwrap().unwrap();
			assert_eq!(message.header.request_id, i);
			assert_eq!(message.body.data.len(), if i == 3 { 50_000 } else { 10 });
			assert!(message.body.data.iter().all(|&byte| byte == i as u8));
			assert_eq!(message.body.fds.len(), 1);
		}
		reader.release_spare_memory();
		assert!(!reader.holds_spare_memory());
	}

	#[tokio::test]
	async fn a_call_asks_for_twice_what_the_last_found_and_after_a_dry_socket_for_the_last_burst() {
		let config = config(1000, 1);
		let (a, b) = UnixSeqpacketTransport::pair(&config).unwrap();
		let (_, mut writer) = a.split();
		let (mut reader, _) = b.split();
		let mut send = async |count: u32| {
			for i in 0..count {
				writer.start_send(Message::stream(i, 0, UnixBody::from("x"))).unwrap();
			}
			poll_fn(|cx| writer.poll_flush(cx)).await.unwrap();
		};
		// Read what is queued, then once more, which finds the socket dry.
		async fn drain(reader: &mut UnixSeqpacketReader, count: usize) {
			for _ in 0..count {
				read(reader).await.unwrap().unwrap();
			}
			assert!(poll_fn(|cx| Poll::Ready(reader.poll_read_message(cx))).await.is_pending());
		}
		// One at a time, as in a round trip: after each, the burst was one (two are asked for,
		// so that the call sees the socket run dry).
		for _ in 0..3 {
			send(1).await;
			drain(&mut reader, 1).await;
			assert_eq!(reader.batch_len, 1);
		}
		// A burst of 15: 2, 4 and 8 are asked for and found, then 16, of which one is there.
		send(15).await;
		drain(&mut reader, 15).await;
		assert_eq!(reader.batch_len, 15);
		// The next burst of 15 comes in one call.
		send(15).await;
		read(&mut reader).await.unwrap().unwrap();
		assert_eq!(reader.ready.len(), 14);
	}

	/// A call that finds fewer datagrams than it asked for leaves the reader waiting for the
	/// socket's next readiness event rather than asking again: what comes later, and the
	/// remote's close, still wake it.
	#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
	async fn a_reader_that_saw_the_socket_run_dry_is_woken_by_what_comes_next() {
		let config = config(1000, 1);
		let (a, b) = UnixSeqpacketTransport::pair(&config).unwrap();
		let (_, mut writer) = a.split();
		let (mut reader, _) = b.split();
		let reading = tokio::spawn(async move {
			let mut ids = Vec::new();
			while let Some(message) = read(&mut reader).await.unwrap() {
				ids.push(message.header.request_id);
			}
			ids
		});
		for i in 0..20 {
			// One at a time, each after the reader has seen the socket dry and waits.
			tokio::time::sleep(std::time::Duration::from_millis(2)).await;
			writer.start_send(Message::stream(i, 0, UnixBody::from("x"))).unwrap();
			poll_fn(|cx| writer.poll_flush(cx)).await.unwrap();
		}
		tokio::time::sleep(std::time::Duration::from_millis(2)).await;
		drop(writer);
		let ids = tokio::time::timeout(std::time::Duration::from_secs(5), reading)
			.await
			.expect("the reader missed a datagram or the close")
			.unwrap();
		assert_eq!(ids, (0..20).collect::<Vec<_>>());
	}

	#[tokio::test]
	async fn limits_too_large_for_batch_slots_receive_one_datagram_per_call() {
		let (_, b) = UnixSeqpacketTransport::pair(&config(LANDING_SPACE, 1)).unwrap();
		let (reader, _) = b.split();
		assert!(reader.landing.is_none());
		assert_eq!(reader.control.slots(), 1);
	}

	#[tokio::test]
	async fn the_send_buffer_is_raised_but_never_lowered() {
		let small = UnixSeqpacketTransport::pair(&config(16, 1)).unwrap().0;
		assert!(small.max_datagram_len() >= 100_000, "{}", small.max_datagram_len());
		let large = UnixSeqpacketTransport::pair(&config(300_000, 1)).unwrap().0;
		// Unless net.core.wmem_max is below 150 KiB, which no distribution ships.
		assert!(large.max_datagram_len() >= 300_012, "{}", large.max_datagram_len());
	}
}
