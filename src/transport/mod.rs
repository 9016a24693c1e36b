//! The transport abstraction: whatever moves whole messages between two peers.
//!
//! A [`Transport`] splits into a [`TransportRead`] and a [`TransportWrite`] half, which the
//! [`Peer`](crate::Peer) task drives. Both halves are poll-based so that one task can read and
//! write at once without spawning, and so that a transport can batch: the writer takes many
//! queued messages with [`TransportWrite::start_send`] and puts them on the wire in one
//! [`TransportWrite::poll_flush`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use crate::error::Error;
use crate::message::{Body, Message};

pub mod memory;
#[cfg(all(unix, feature = "unix-seqpacket"))]
pub mod seqpacket;
#[cfg(all(unix, any(feature = "unix-stream", feature = "unix-seqpacket")))]
pub(crate) mod socket_file;
pub mod stream;
#[cfg(feature = "tcp")]
pub mod tcp;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(all(unix, feature = "unix-stream"))]
pub mod unix_stream;

pub use memory::MemoryTransport;
#[cfg(all(unix, any(feature = "unix-stream", feature = "unix-seqpacket")))]
pub use socket_file::SocketPermissions;
pub use stream::{StreamReader, StreamTransport, StreamWriter};

/// A connection that carries messages with bodies of type [`Transport::Body`].
pub trait Transport: Send + 'static {
	/// The body type of the messages this transport carries.
	type Body: Body;
	/// The read half.
	type Reader: TransportRead<Body = Self::Body>;
	/// The write half.
	type Writer: TransportWrite<Body = Self::Body>;

	/// What is known about the other side of the connection.
	fn info(&self) -> ConnectionInfo;

	/// Split into the read and write halves.
	fn split(self) -> (Self::Reader, Self::Writer);
}

/// The read half of a transport.
pub trait TransportRead: Send + Unpin + 'static {
	/// The body type of the messages read.
	type Body: Body;

	/// Read the next message.
	///
	/// `Ok(None)` means the remote closed the connection cleanly between messages. An error is
	/// final: the transport must not be read again. Must be cancel-safe: a `Pending` return
	/// loses nothing.
	fn poll_read_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Message<Self::Body>>, Error>>;

	/// Whether part of a message has arrived and the rest has not (for
	/// [`Config::frame_timeout`](crate::Config::frame_timeout)). A transport whose messages
	/// arrive whole keeps the default, `false`.
	fn mid_frame(&self) -> bool {
		false
	}

	/// Whether a task other than the peer task may read through this reader: the read handle,
	/// when it has nothing to return and the peer task sleeps, reads for the peer task on its
	/// own thread, passing the peer task's waker (so the peer task hears of the remote's next
	/// bytes as if it had read all along). In a steady flow the messages it returns then never
	/// cross threads. Only one task reads at a time, and never while awaiting.
	///
	/// The default, `false`, keeps every read on the peer task, for a reader bound to the
	/// thread or context that task runs on. The crate's own readers say `true`.
	fn shares_reads(&self) -> bool {
		false
	}

	/// Whether the reader holds memory grown for a large message that it could let go of. The
	/// peer calls [`release_spare_memory`](Self::release_spare_memory) once the connection has
	/// been quiet for a moment, so that a steady flow of large messages keeps its buffers and
	/// an idle connection costs kilobytes.
	fn holds_spare_memory(&self) -> bool {
		false
	}

	/// Let go of memory grown for a large message, if it is not in use.
	fn release_spare_memory(&mut self) {}
}

/// The write half of a transport.
pub trait TransportWrite: Send + Unpin + 'static {
	/// The body type of the messages written.
	type Body: Body;

	/// Queue a message to be written by the next [`poll_flush`](Self::poll_flush). No I/O.
	///
	/// Fails, for this message only, if it breaks a limit of the transport.
	fn start_send(&mut self, message: Message<Self::Body>) -> Result<(), Error>;

	/// Whether the writer would rather take more messages than be flushed first. The peer stops
	/// taking messages from its queue while this is false, which is how a slow socket pushes back.
	fn wants_more(&self) -> bool;

	/// Whether queued messages are waiting to be written.
	fn has_queued(&self) -> bool;

	/// The largest body this writer can send. A transport whose own limit is below the
	/// configured one (a datagram size) says so here, and the handles refuse a larger body when
	/// it is sent, for that message only.
	fn max_body_len(&self) -> usize {
		usize::MAX
	}

	/// The most file descriptors this writer can send with one message.
	fn max_fds(&self) -> usize {
		usize::MAX
	}

	/// Whether the writer holds memory grown for a large burst that it could let go of. See
	/// [`TransportRead::holds_spare_memory`].
	fn holds_spare_memory(&self) -> bool {
		false
	}

	/// Let go of memory grown for a large burst, if it is not in use.
	fn release_spare_memory(&mut self) {}

	/// Whether what is queued is still small enough to wait for more before it is written.
	///
	/// The peer asks this only while everything queued since the last flush is stream messages
	/// and more keep coming (see [`Peer`](crate::Peer)): on a byte stream, one write of many
	/// small messages costs the sender and the receiver far less than a write each. The default,
	/// `false`, writes every batch at once (a datagram transport writes one message per datagram
	/// anyway).
	fn may_coalesce(&self) -> bool {
		false
	}

	/// Whether the peer task should yield to the runtime once before it writes a large message
	/// (256 KiB or more), so that an idle worker thread polls the I/O driver while it writes.
	///
	/// Worth it where the kernel takes a large write in one system call and the reader, on the
	/// same machine, can read while it is written: loopback TCP, whose send buffer grows to
	/// MiBs. The default, `false`, suits a socket with a small fixed buffer (a Unix stream
	/// socket's is 208 KiB): there a large message moves in many write and read turns, and
	/// those are fastest with both ends on one worker thread, which the yield would undo.
	fn yields_before_large_writes(&self) -> bool {
		false
	}

	/// Write everything queued. An error is final.
	fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>>;

	/// Flush, then close the write direction.
	fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>>;
}

/// What a peer knows about the other side of its connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionInfo {
	/// The remote address, where the transport has one.
	pub remote_address: Option<RemoteAddress>,
	/// The credentials of the process on the other end of a Unix socket, as the kernel saw
	/// them when the connection was made.
	pub credentials: Option<Credentials>,
	/// The certificate the remote presented over TLS, verified against the trusted roots: the
	/// server's for a client, the client's under mutual TLS for a server. `None` on other
	/// transports and for a TLS client that sent no certificate.
	pub peer_certificate: Option<PeerCertificate>,
}

/// Who a verified TLS certificate names: its subject and its subject alternative names.
///
/// Only ever filled in from a certificate that the handshake verified against the trusted roots
/// (and, for a server, checked for the name the client asked for), so an admission check may
/// rely on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerCertificate {
	/// The subject's distinguished name, as text: `CN=robot-1, O=Fizyr`.
	pub subject: String,
	/// The subject's common names (`CN`), in order.
	pub common_names: Vec<String>,
	/// The DNS names of the subject alternative name extension.
	pub dns_names: Vec<String>,
	/// The IP addresses of the subject alternative name extension.
	pub ip_addresses: Vec<std::net::IpAddr>,
	/// The URIs of the subject alternative name extension (SPIFFE identities, for example).
	pub uris: Vec<String>,
}

impl PeerCertificate {
	/// Whether the certificate names `name` as a DNS name, a URI or a common name (exactly,
	/// ASCII case-insensitively for DNS names and common names).
	pub fn names(&self, name: &str) -> bool {
		self.dns_names.iter().chain(&self.common_names).any(|own| own.eq_ignore_ascii_case(name))
			|| self.uris.iter().any(|uri| uri == name)
	}
}

/// The address of the other side of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteAddress {
	/// A TCP peer.
	Tcp(std::net::SocketAddr),
	/// A peer over TLS on TCP.
	Tls(std::net::SocketAddr),
	/// A Unix socket peer; the path it is bound to, if any (clients usually have none).
	Unix(Option<std::path::PathBuf>),
}

impl RemoteAddress {
	/// The IP address and port of a TCP or TLS peer.
	pub fn socket_addr(&self) -> Option<std::net::SocketAddr> {
		match self {
			Self::Tcp(address) | Self::Tls(address) => Some(*address),
			Self::Unix(_) => None,
		}
	}
}

impl std::fmt::Display for RemoteAddress {
	fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
		match self {
			RemoteAddress::Tcp(address) => write!(f, "tcp://{address}"),
			RemoteAddress::Tls(address) => write!(f, "tls://{address}"),
			RemoteAddress::Unix(Some(path)) => write!(f, "unix://{}", path.display()),
			RemoteAddress::Unix(None) => write!(f, "unix://(unnamed)"),
		}
	}
}

/// `tcp://127.0.0.1:37030`, `unix:///run/arm.sock (uid 1000, pid 42)`, `unix (uid 1000, pid 42)`
/// for an unnamed Unix peer (clients usually are), `tls://10.0.0.2:5000 (CN=robot-1)` for a TLS
/// peer with a verified certificate, `in-process` for a transport that knows nothing of its
/// remote (the in-memory pair).
impl std::fmt::Display for ConnectionInfo {
	fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
		match (&self.remote_address, &self.credentials) {
			(Some(RemoteAddress::Unix(None)), Some(_)) => f.write_str("unix")?,
			(Some(address), _) => write!(f, "{address}")?,
			(None, Some(_)) => f.write_str("unknown")?,
			(None, None) => return f.write_str("in-process"),
		}
		if let Some(credentials) = &self.credentials {
			write!(f, " (uid {}", credentials.uid)?;
			if let Some(pid) = credentials.pid {
				write!(f, ", pid {pid}")?;
			}
			f.write_str(")")?;
		}
		if let Some(certificate) = &self.peer_certificate {
			write!(f, " ({})", certificate.subject)?;
		}
		Ok(())
	}
}

/// The number of the next connection in this process, for logs.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// The span of one connection's peer task: `peer{conn=7 remote=tcp://10.0.0.2:5000}`, with a
/// number unique in the process so that the log lines of two connections from one address (or
/// of two unnamed Unix clients) can be told apart. At `info`, so that the connection's
/// `info!`/`warn!` lines carry it under the usual filters.
pub(crate) fn connection_span(info: &ConnectionInfo) -> tracing::Span {
	let number = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
	tracing::info_span!("peer", conn = number, remote = %info)
}

/// Spawn the peer task of a connection this side made, logging it at `info`.
#[cfg(any(feature = "tcp", feature = "tls", all(unix, any(feature = "unix-stream", feature = "unix-seqpacket"))))]
pub(crate) fn spawn_connected<T: Transport>(
	transport: T,
	config: &crate::Config,
) -> (crate::PeerHandle<T::Body>, ConnectionInfo) {
	let info = transport.info();
	let span = connection_span(&info);
	tracing::info!(parent: &span, "connected");
	(crate::Peer::spawn_with(transport, config, (), span), info)
}

/// The credentials of a Unix-socket peer process.
///
/// `#[non_exhaustive]`: made by the transports; [`new`](Self::new) and
/// [`with_pid`](Self::with_pid) make one for a test or a transport of your own.
///
/// ```
/// let credentials = peerwire::Credentials::new(1000, 1000).with_pid(Some(42));
/// assert_eq!((credentials.uid, credentials.gid, credentials.pid), (1000, 1000, Some(42)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Credentials {
	/// User id.
	pub uid: u32,
	/// Group id.
	pub gid: u32,
	/// Process id, where the platform reports it.
	pub pid: Option<i32>,
}

/// Setters, for a transport of your own (the fields are `#[non_exhaustive]`).
impl ConnectionInfo {
	/// Set [`remote_address`](Self::remote_address).
	pub fn with_remote_address(mut self, remote_address: Option<RemoteAddress>) -> Self {
		self.remote_address = remote_address;
		self
	}

	/// Set [`credentials`](Self::credentials).
	pub fn with_credentials(mut self, credentials: Option<Credentials>) -> Self {
		self.credentials = credentials;
		self
	}
}

impl Credentials {
	/// Credentials of user `uid` and group `gid`, with no process id.
	pub fn new(uid: u32, gid: u32) -> Self {
		Self { uid, gid, pid: None }
	}

	/// Set [`pid`](Self::pid).
	pub fn with_pid(mut self, pid: Option<i32>) -> Self {
		self.pid = pid;
		self
	}
}

#[cfg(all(unix, feature = "unix-stream"))]
impl From<tokio::net::unix::UCred> for Credentials {
	fn from(cred: tokio::net::unix::UCred) -> Self {
		Self { uid: cred.uid(), gid: cred.gid(), pid: cred.pid() }
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn connection_info_names_the_remote() {
		let credentials = Some(Credentials { uid: 1000, gid: 1000, pid: Some(42) });
		let info = |remote_address, credentials| ConnectionInfo { remote_address, credentials, peer_certificate: None };
		let tcp = info(Some(RemoteAddress::Tcp("127.0.0.1:37030".parse().unwrap())), None);
		assert_eq!(tcp.to_string(), "tcp://127.0.0.1:37030");
		let named = info(Some(RemoteAddress::Unix(Some("/run/arm.sock".into()))), credentials);
		assert_eq!(named.to_string(), "unix:///run/arm.sock (uid 1000, pid 42)");
		assert_eq!(info(Some(RemoteAddress::Unix(None)), credentials).to_string(), "unix (uid 1000, pid 42)");
		let no_pid = Some(Credentials { uid: 0, gid: 0, pid: None });
		assert_eq!(info(Some(RemoteAddress::Unix(None)), no_pid).to_string(), "unix (uid 0)");
		assert_eq!(info(Some(RemoteAddress::Unix(None)), None).to_string(), "unix://(unnamed)");
		assert_eq!(ConnectionInfo::default().to_string(), "in-process");
		let certificate = PeerCertificate { subject: "CN=robot-1".into(), ..PeerCertificate::default() };
		let tls = ConnectionInfo {
			remote_address: Some(RemoteAddress::Tls("10.0.0.2:5000".parse().unwrap())),
			credentials: None,
			peer_certificate: Some(certificate),
		};
		assert_eq!(tls.to_string(), "tls://10.0.0.2:5000 (CN=robot-1)");
	}
}
