//! peerwire: binary-framed RPC between peers, wire-compatible with the Fizyr RPC protocol.
//!
//! One connection carries many open requests at once, in both directions. Each request can
//! carry updates from either side while it is open (progress reports, streamed results,
//! cancellation hints) and ends with a response; one-way stream messages travel beside them.
//! A background [`Peer`] task owns the connection; applications hold handles and await what
//! they expect next, in straight-line code:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), peerwire::Error> {
//! use peerwire::{Config, ReceivedMessage, TcpListener, TcpPeer};
//!
//! let mut listener = TcpListener::bind("127.0.0.1:0", &Config::default()).await?;
//! let address = listener.local_addr()?;
//!
//! // A server that reports progress, then echoes the request body.
//! tokio::spawn(async move {
//!     let (mut peer, _info) = listener.accept().await?;
//!     while let ReceivedMessage::Request(request, body) = peer.recv_message().await? {
//!         request.send_update(1, "working").await?;
//!         request.send_response(0, body).await?;
//!     }
//!     Ok::<_, peerwire::Error>(())
//! });
//!
//! let (peer, _info) = TcpPeer::connect(address, &Config::default()).await?;
//! let mut request = peer.send_request(7, "hello").await?;
//! let update = request.recv_update().await?.expect("an update before the response");
//! assert_eq!(&update.body[..], b"working");
//! let response = request.recv_response().await?;
//! assert_eq!(&response.body[..], b"hello");
//! # Ok(())
//! # }
//! ```
//!
//! # Layers
//!
//! - [`message`]: what a message is ([`Message`], [`MessageHeader`], [`MessageType`]).
//! - [`codec`]: pure encoding and decoding of frames over byte buffers, no I/O.
//! - the connection state (`proto`, internal): everything about one connection (open requests
//!   of both directions, queued messages, budgets, automatic replies, close state) in one
//!   sans-I/O type behind one lock, fed decoded messages and handle actions;
//! - [`Peer`], the driver: a task that moves messages between the transport and that state;
//! - the handles: [`PeerHandle`] and the request handles, which lock the state to send and
//!   receive (no channel per request);
//! - [`transport`]: the [`Transport`] trait and its implementations.
//! - [`Listener`] accepts connections for any transport, with an optional admission check
//!   ([`admission`]) over what is known about the remote.
//! - [`Reconnecting`] is a client that reconnects with [`Backoff`]; [`reconnect`] says what
//!   survives a reconnect and what does not.
//!
//! # Porting from fizyr-rpc 0.8
//!
//! The wire is the same; the README has a table of fizyr-rpc 0.8 names, their peerwire names
//! and what differs (bodies take `b"..."`, `&[u8]` and strings on every transport, `Config` is
//! passed as `&Config`, an error response can be read as an `Err` with
//! [`SentRequestHandle::recv_response_ok`], `recv_update` returns a `Result`).
//!
//! # Features
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `tcp` | yes | [`TcpPeer`], [`TcpListener`], [`TcpTransport`] |
//! | `unix-stream` | yes | [`UnixStreamPeer`], [`UnixStreamListener`], [`UnixStreamTransport`] |
//! | `tls` | no | TLS over TCP with rustls (`ring` provider): [`TlsPeer`], [`TlsListener`], [`TlsServerConfig`], [`TlsClientConfig`]; mutual TLS, the verified [`PeerCertificate`] in [`ConnectionInfo`] |
//! | `unix-seqpacket` | no | [`UnixSeqpacketPeer`], [`UnixSeqpacketListener`], [`UnixSeqpacketTransport`], [`UnixBody`]: one datagram per message, file descriptors passed with it |
//! | `typed` | no | typed interfaces: the `interface!` macro and `peerwire::typed` (serde) |
//! | `json` | no | `typed` with JSON bodies (`typed::Json`) |
//! | `msgpack` | no | `typed` with MessagePack bodies (`typed::MsgPack`) |
//! | `metrics` | no | publishes the counters of every connection and listener through the [`metrics`](https://docs.rs/metrics) facade (see [`metrics`](mod@metrics) for the names), for Prometheus or any other exporter |
//! | `cli` | no | the `peerwire` command-line tool (a binary; not needed by the library) |
//!
//! With no feature at all, the generic [`StreamTransport`] works over any tokio `AsyncRead` +
//! `AsyncWrite`, the in-memory [`MemoryTransport`] connects modules
//! of one process, and [`server`] serves connections with a handler and shuts down gracefully.
//!
//! # Failure
//!
//! Input from the network is never trusted: a malformed frame, an oversized length or an unknown
//! message type ends that one connection with an [`ErrorKind::Protocol`] or
//! [`ErrorKind::BodyTooLarge`] error, and every handle of it fails promptly with
//! [`ErrorKind::ConnectionClosed`]. Queues between the handles and the peer task are bounded
//! (see [`Config`]), so a slow reader pushes back on the remote instead of growing memory.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub mod codec;
mod config;
mod error;
mod handle;
mod listener;
pub mod message;
#[cfg(feature = "metrics")]
pub mod metrics;
mod peer;
#[doc(hidden)]
// Hidden (public for the fuzz targets only): its docs are for readers of the source, and link
// to the crate's private items.
#[allow(rustdoc::private_intra_doc_links)]
pub mod proto;
pub mod reconnect;
pub mod server;
pub mod stats;
#[cfg(all(unix, feature = "unix-seqpacket"))]
mod sys;
pub mod transport;
#[cfg(feature = "typed")]
pub mod typed;

pub use config::Config;
pub use error::{Error, ErrorKind, ProtocolViolation};
pub use handle::{
	BUSY_TEXT, DROPPED_REQUEST_TEXT, PeerHandle, PeerReadHandle, PeerWriteHandle, ReceivedMessage,
	ReceivedRequestHandle, ReceivedRequestWriteHandle, SentRequestHandle, SentRequestWriteHandle, WakeupHold,
};
pub use listener::{AcceptError, AcceptRetry, Acceptor, Listener};
pub use message::{Body, CloneBody, IntoBody, Message, MessageHeader, MessageType};
pub use peer::Peer;
pub use reconnect::{Backoff, Connection, Reconnecting};
pub use transport::{
	ConnectionInfo, Credentials, MemoryTransport, PeerCertificate, RemoteAddress, StreamTransport, Transport,
};

/// The body type of the stream transports (TCP, Unix stream, in-memory), from the `bytes` crate,
/// so that naming it needs no dependency of your own.
pub use bytes::Bytes;
/// The byte order of headers and frame lengths ([`Config::endian`]).
pub use codec::Endian;
/// The token that shuts a [`server`] down (from `tokio-util`).
pub use server::CancellationToken;
pub use stats::{ByType, ConnectionStats, ListenerStats, ListenerStatsHandle, Traffic};

#[cfg(all(unix, feature = "unix-seqpacket"))]
pub use transport::seqpacket::{UnixBody, UnixSeqpacketListener, UnixSeqpacketPeer, UnixSeqpacketTransport};
#[cfg(feature = "tcp")]
pub use transport::tcp::{TcpListener, TcpPeer, TcpTransport};
#[cfg(feature = "tls")]
pub use transport::tls::{TlsClientConfig, TlsIdentity, TlsListener, TlsPeer, TlsRoots, TlsServerConfig, TlsTransport};
#[cfg(all(unix, feature = "unix-stream"))]
pub use transport::unix_stream::{UnixStreamListener, UnixStreamPeer, UnixStreamTransport};

/// Socket plumbing that the command-line tool shares with the transports, so that it keeps no
/// copies of its own; not part of the API, and free to change in any release.
#[doc(hidden)]
pub mod __plumbing {
	/// Datagrams with descriptors: one `sendmsg`/`recvmsg` each.
	#[cfg(all(unix, feature = "unix-seqpacket"))]
	pub use crate::sys::fd::{Received, control_buffer, control_space, recv_datagram, send_datagram};
	/// Send-buffer sizing of seqpacket sockets and the kernel's limits on one datagram.
	#[cfg(all(unix, feature = "unix-seqpacket"))]
	pub use crate::transport::seqpacket::{MAX_SEND_DATAGRAM_LEN, SCM_MAX_FD, raise_send_buffer};
	/// The stale-socket check before bind, and the removal of a listener's own socket file.
	#[cfg(all(unix, any(feature = "unix-stream", feature = "unix-seqpacket")))]
	pub use crate::transport::socket_file::{SocketFile, remove_stale_socket};
}

/// Items the macros need from dependencies; not part of the API.
#[doc(hidden)]
pub mod __private {
	pub use crate::error::BoxError;
	pub use bytes::Bytes;
}

/// The README's code blocks, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
