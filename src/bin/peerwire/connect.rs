//! Connecting to an address, with the byte streams watched for progress and malformed frames.
//!
//! Every transport is one arm of [`Connected`]; the commands are generic over the body type
//! ([`CliBody`]), so a transport with another body type (seqpacket, with descriptors) is one
//! more arm here and in `listen`, not a change to the commands.

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use peerwire::message::HEADER_LEN;
use peerwire::transport::seqpacket::UnixSeqpacketTransport;
use peerwire::{
	Body, Config, ConnectionInfo, Credentials, ErrorKind, Peer, PeerHandle, RemoteAddress, StreamTransport,
	TlsClientConfig, TlsIdentity, TlsRoots, UnixBody,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;

use crate::TlsArgs;
use crate::address::Address;
use crate::failure::{Failure, closing_cause, describe, describe_io};
use crate::scan::{FrameScanner, Progress, ScanEvent};

/// A body the command line can build: bytes, plus descriptors where the transport carries them.
pub trait CliBody: Body + Sized {
	/// A body of `bytes` carrying duplicates of `fds`.
	fn build(bytes: Bytes, fds: &[OwnedFd]) -> Result<Self, Failure>;
}

impl CliBody for UnixBody {
	fn build(bytes: Bytes, fds: &[OwnedFd]) -> Result<Self, Failure> {
		let fds = fds.iter().map(OwnedFd::try_clone).collect::<io::Result<Vec<_>>>();
		let fds = fds
			.map_err(|error| Failure::usage(format!("cannot duplicate a --fd descriptor: {}", describe_io(&error))))?;
		Ok(UnixBody::new(bytes, fds))
	}
}

impl CliBody for Bytes {
	fn build(bytes: Bytes, fds: &[OwnedFd]) -> Result<Self, Failure> {
		if !fds.is_empty() {
			return Err(Failure::usage("--fd needs a seqpacket:// address: only seqpacket sockets carry descriptors"));
		}
		Ok(bytes)
	}
}

/// Open the files whose descriptors `--fd` attaches to messages for `address`, read-only.
pub fn open_fds(address: &Address, paths: &[PathBuf]) -> Result<Vec<OwnedFd>, Failure> {
	if !paths.is_empty() && !matches!(address, Address::Seqpacket(_)) {
		return Err(Failure::usage(format!(
			"--fd needs a seqpacket:// address, not {address}: only seqpacket sockets carry descriptors"
		)));
	}
	paths
		.iter()
		.map(|path| match std::fs::File::open(path) {
			Ok(file) => Ok(OwnedFd::from(file)),
			Err(error) => Err(Failure::usage(format!("--fd {}: {}", path.display(), describe_io(&error)))),
		})
		.collect()
}

/// A connection whose peer task runs on a task of ours, so that it can be awaited at the end.
pub struct Running<B: Body> {
	pub peer: PeerHandle<B>,
	task: JoinHandle<Result<(), peerwire::Error>>,
	/// What the watched read side saw, for byte streams.
	pub watch: Option<Watch>,
	/// The largest body the transport can send, where that is below the configured limit (one
	/// seqpacket datagram).
	max_body_len: Option<usize>,
}

impl<B: Body> Running<B> {
	fn spawn<T: peerwire::Transport<Body = B>>(transport: T, config: &Config, watch: Option<Watch>) -> Self {
		let (peer_task, peer) = Peer::new(transport, config);
		Self { peer, task: tokio::spawn(peer_task.run()), watch, max_body_len: None }
	}

	/// Refuse a body the transport cannot send, before the library refuses it with a less
	/// helpful error (a request the transport refuses is dropped and reported as closed).
	pub fn check_body_len(&self, len: usize) -> Result<(), Failure> {
		match self.max_body_len {
			Some(max) if len > max => Err(Failure::usage(format!(
				"a body of {len} bytes does not fit in one seqpacket datagram here (at most {max} bytes); pass large data as a descriptor (--fd) instead"
			))),
			_ => Ok(()),
		}
	}

	/// Flush what is queued and close, waiting up to `grace` (if given) for the peer task.
	///
	/// Returns the error that ended the connection, if it did not end in an orderly way.
	pub async fn finish(self, grace: Option<Duration>) -> Result<(), peerwire::Error> {
		self.peer.close();
		drop(self.peer);
		let joined = match grace {
			Some(grace) => tokio::time::timeout(grace, self.task).await.map_err(|_| peerwire::Error::timeout(grace))?,
			None => self.task.await,
		};
		// A panic in the peer task would be a bug in the library; it has said so on stderr.
		joined.unwrap_or(Ok(()))
	}

	/// A connection error in words, with the byte offset of a malformed frame when known.
	pub fn explain(&self, error: &peerwire::Error) -> String {
		explain(error, self.watch.as_ref())
	}
}

/// A connection error in words, with the byte offset of a malformed frame when known.
pub fn explain(error: &peerwire::Error, watch: Option<&Watch>) -> String {
	// What the remote sent that ended the connection: a malformed frame or too large a body.
	let refused = match (error.protocol_violation(), closing_cause(error)) {
		(Some(violation), _) => Some((violation.to_string(), None)),
		(None, Some(cause)) if cause.kind() == ErrorKind::BodyTooLarge => {
			Some((cause.to_string(), Some("raise the limit with --max-body")))
		},
		_ => None,
	};
	if let (Some((refused, remedy)), Some((offset, hint))) = (refused, watch.and_then(Watch::malformed)) {
		// A hint about the cause beats the generic remedy.
		let advice = hint.or(remedy).map(|advice| format!(" ({advice})")).unwrap_or_default();
		return format!("malformed frame at byte offset {offset}: {refused}{advice}");
	}
	if error.is_closed_by_remote() {
		return "connection closed by the remote".into();
	}
	describe(error)
}

/// A connected peer, by transport.
pub enum Connected {
	/// TCP and Unix stream sockets: bodies are bytes.
	Stream(Running<Bytes>),
	/// Unix seqpacket sockets: bodies are bytes and descriptors.
	Seqpacket(Running<UnixBody>),
}

/// Connect to `address` and start the peer task.
pub async fn connect(address: &Address, config: &Config, quiet: bool, tls: &TlsArgs) -> Result<Connected, Failure> {
	let failed = |error: io::Error| Failure::io(&format!("cannot connect to {address}"), &error);
	let tls_option =
		[("--ca", tls.ca.is_some()), ("--cert", tls.cert.is_some()), ("--server-name", tls.server_name.is_some())]
			.into_iter()
			.find_map(|(option, given)| given.then_some(option));
	if let (Some(option), false) = (tls_option, matches!(address, Address::Tls(_))) {
		return Err(Failure::usage(format!("{option} is for tls:// addresses only, not {address}")));
	}
	match address {
		Address::Tls(host_port) => {
			let client = client_tls(tls)?;
			let server_name = tls.server_name.as_deref().unwrap_or_else(|| crate::address::host_of(host_port));
			let stream = peerwire::transport::tls::connect_stream(host_port.as_str(), server_name, &client)
				.await
				.map_err(|error| Failure::peer(&error, format!("cannot connect to {address}: {}", describe(&error))))?;
			let mut info = ConnectionInfo::default();
			info.remote_address = Some(RemoteAddress::Tls(stream.get_ref().0.get_ref().peer_addr().map_err(failed)?));
			info.peer_certificate = peerwire::transport::tls::peer_certificate(&stream).map_err(failed)?;
			let (read, write) = tokio::io::split(stream);
			Ok(Connected::Stream(watched(read, write, config, info, quiet)))
		},
		Address::Tcp(host_port) => {
			let stream = tokio::net::TcpStream::connect(host_port.as_str()).await.map_err(failed)?;
			// The transport batches its writes; small requests must not wait for an ACK.
			stream.set_nodelay(true).map_err(failed)?;
			let mut info = ConnectionInfo::default();
			info.remote_address = Some(RemoteAddress::Tcp(stream.peer_addr().map_err(failed)?));
			let (read, write) = stream.into_split();
			Ok(Connected::Stream(watched(read, write, config, info, quiet)))
		},
		Address::Unix(path) => {
			let stream = tokio::net::UnixStream::connect(path).await.map_err(failed)?;
			let mut info = ConnectionInfo::default();
			info.remote_address = Some(RemoteAddress::Unix(Some(path.clone())));
			info.credentials = stream.peer_cred().ok().map(Credentials::from);
			let (read, write) = stream.into_split();
			Ok(Connected::Stream(watched(read, write, config, info, quiet)))
		},
		Address::Seqpacket(path) => {
			let transport = UnixSeqpacketTransport::connect(path, config).await.map_err(failed)?;
			let max_body_len = transport.max_datagram_len().saturating_sub(HEADER_LEN);
			// Datagrams arrive whole: there is no byte stream to watch.
			let mut running = Running::spawn(transport, config, None);
			running.max_body_len = Some(max_body_len).filter(|max| *max < config.max_body_len_write);
			Ok(Connected::Seqpacket(running))
		},
	}
}

/// The client side of TLS from the command line: --ca or the system roots, and --cert/--key
/// for mutual TLS.
fn client_tls(tls: &TlsArgs) -> Result<TlsClientConfig, Failure> {
	let bad = |error: peerwire::Error| Failure::usage(describe(&error));
	let roots = match &tls.ca {
		Some(ca) => TlsRoots::from_pem_file(ca).map_err(bad)?,
		None => TlsRoots::system()
			.map_err(|error| Failure::usage(format!("{}; give the CA with --ca", describe(&error))))?,
	};
	match (&tls.cert, &tls.key) {
		(Some(cert), Some(key)) => {
			TlsClientConfig::with_identity(roots, TlsIdentity::from_pem_files(cert, key).map_err(bad)?).map_err(bad)
		},
		_ => TlsClientConfig::new(roots).map_err(bad),
	}
}

fn watched<R, W>(read: R, write: W, config: &Config, info: ConnectionInfo, quiet: bool) -> Running<Bytes>
where
	R: AsyncRead + Send + Unpin + 'static,
	W: AsyncWrite + Send + Unpin + 'static,
{
	let watch = Watch::default();
	let read = Watched::new(read, config, Progress::new(String::new(), "received", quiet), Some(watch.clone()));
	let write = Watched::new(write, config, Progress::new(String::new(), "sent", quiet), None);
	Running::spawn(StreamTransport::with_info(read, write, config, info), config, Some(watch))
}

/// What the scanner of a connection's read side found, shared with the command.
#[derive(Debug, Clone, Default)]
pub struct Watch {
	malformed: Arc<Mutex<Option<Malformed>>>,
}

/// The byte offset of a malformed frame, and a guess at why it is malformed.
type Malformed = (u64, Option<&'static str>);

impl Watch {
	/// The byte offset of the malformed frame that was read, if one was, and a guess at why.
	pub fn malformed(&self) -> Option<Malformed> {
		*self.malformed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
	}
}

/// A byte stream half whose bytes also go through a [`FrameScanner`].
struct Watched<S> {
	inner: S,
	scanner: FrameScanner,
	progress: Progress,
	watch: Option<Watch>,
}

impl<S> Watched<S> {
	fn new(inner: S, config: &Config, progress: Progress, watch: Option<Watch>) -> Self {
		Self { inner, scanner: FrameScanner::new(config.endian, config.max_body_len_read, 0), progress, watch }
	}

	fn observe(&mut self, bytes: &[u8]) {
		let Self { scanner, progress, watch, .. } = self;
		scanner.feed(bytes, &mut |event| {
			progress.observe(&event);
			if let (ScanEvent::Malformed { offset, hint, .. }, Some(watch)) = (&event, &watch) {
				*watch.malformed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((*offset, *hint));
			}
		});
	}
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
	fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
		let before = buf.filled().len();
		ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
		self.observe(&buf.filled()[before..]);
		Poll::Ready(Ok(()))
	}
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
	fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
		let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
		self.observe(&buf[..written]);
		Poll::Ready(Ok(written))
	}

	fn poll_write_vectored(
		mut self: Pin<&mut Self>,
		cx: &mut Context<'_>,
		bufs: &[io::IoSlice<'_>],
	) -> Poll<io::Result<usize>> {
		let written = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
		let mut left = written;
		for buf in bufs {
			let take = left.min(buf.len());
			self.observe(&buf[..take]);
			left -= take;
			if left == 0 {
				break;
			}
		}
		Poll::Ready(Ok(written))
	}

	fn is_write_vectored(&self) -> bool {
		self.inner.is_write_vectored()
	}

	fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
		Pin::new(&mut self.inner).poll_flush(cx)
	}

	fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
		Pin::new(&mut self.inner).poll_shutdown(cx)
	}
}
