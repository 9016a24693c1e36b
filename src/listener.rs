//! Accepting connections: one generic [`Listener`] over every transport's listening socket, and
//! the accept policy ([`AcceptRetry`]) that every accept loop of the crate and its command-line
//! tool shares.
//!
//! What can go wrong while accepting falls in two kinds, and they are handled apart:
//!
//! - One incoming connection fails (the client reset it before it was accepted, a firewall
//!   refused it, its credentials could not be read): that connection is skipped with a `debug!`
//!   log and the next one is accepted at once. A client cannot slow the listener down for others
//!   by resetting connections.
//! - The listening socket fails (the process is out of descriptors or memory): accepting again at
//!   once would spin, so the next try waits, from 10 ms doubling up to 1 s. One `warn!` marks the
//!   start of such a burst and one `info!` its end, however many errors it holds.
//!
//! An [admission check](Listener::set_admission) then decides, from what is known about the
//! remote ([`ConnectionInfo`]: its credentials, address, verified certificate), whether the
//! connection may stay. A refused connection is closed before anything is read from it.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::config::Config;
use crate::error::Error;
use crate::handle::PeerHandle;
use crate::peer::Peer;
use crate::stats::{ListenerCounters, ListenerStats, ListenerStatsHandle};
use crate::transport::{ConnectionInfo, Transport};

/// The first wait after the listening socket fails; it doubles with every failure in a row.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// The longest wait between two tries while the listening socket keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A listening socket that yields transports.
pub trait Acceptor: Send + 'static {
	/// The transport of an accepted connection.
	type Transport: Transport;

	/// Accept the next connection.
	///
	/// An error of the `accept` call itself is classified with [`AcceptError::from_accept`]; an
	/// error while setting up the accepted connection (socket options, credentials, addresses)
	/// is [`AcceptError::Connection`]: it concerns that connection only.
	fn poll_accept(&mut self, cx: &mut Context<'_>, config: &Config) -> Poll<Result<Self::Transport, AcceptError>>;
}

/// Why accepting a connection failed, and so whether the listener is still fine.
#[derive(Debug)]
pub enum AcceptError {
	/// One incoming connection failed (reset or aborted before it was accepted, refused by a
	/// firewall, its details could not be read). The listener is fine: skip it, accept the next.
	Connection(io::Error),
	/// The listening socket failed (out of descriptors or memory, or not listening at all).
	Listener(io::Error),
}

impl AcceptError {
	/// Classify an error of the `accept` system call by its error number: the errors `accept(2)`
	/// documents as belonging to the pending connection (`ECONNABORTED`, `EPROTO`, `EPERM`, the
	/// network errors of TCP, ...) are [`Connection`](Self::Connection), the rest
	/// [`Listener`](Self::Listener).
	pub fn from_accept(error: io::Error) -> Self {
		if concerns_one_connection(&error) { Self::Connection(error) } else { Self::Listener(error) }
	}

	/// The underlying I/O error.
	pub fn io_error(&self) -> &io::Error {
		match self {
			Self::Connection(error) | Self::Listener(error) => error,
		}
	}
}

/// Errors of `accept` that the pending connection caused: `accept(2)` says to treat them like
/// `EAGAIN` and accept again. `EINTR` is there too: nothing is wrong, the call was interrupted.
fn concerns_one_connection(error: &io::Error) -> bool {
	matches!(
		error.raw_os_error(),
		Some(
			libc::ECONNABORTED
				| libc::ECONNRESET
				| libc::ENOTCONN
				| libc::EPROTO
				| libc::EPERM
				| libc::EINTR
				| libc::EPIPE
				| libc::ETIMEDOUT
				| libc::ENETDOWN
				| libc::ENETUNREACH
				| libc::ENOPROTOOPT
				| libc::EHOSTDOWN
				| libc::EHOSTUNREACH
				| libc::EOPNOTSUPP
		)
	) || matches!(error.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock)
}

/// The listener is out of a resource that frees up with time (descriptors, memory, buffers):
/// worth waiting for rather than reporting.
fn is_exhaustion(error: &io::Error) -> bool {
	matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// The accept policy shared by [`Listener`] and any hand-written accept loop over a raw
/// listening socket (the command-line tool's tap uses it): skip failed connections, wait out
/// resource exhaustion with a growing backoff, log each burst of listener errors once.
///
/// Cancel-safe: a pending backoff is kept in the value, so dropping the future of an accept (in
/// a `select!`) and accepting again neither loses the wait nor spins.
#[derive(Debug, Default)]
pub struct AcceptRetry {
	/// The wait before the next try, after the listening socket failed.
	backoff: Option<Pin<Box<Sleep>>>,
	/// The current burst of listener errors, if one is going on.
	burst: Option<Burst>,
}

/// Listener errors in a row, for the one log line that ends them.
#[derive(Debug)]
struct Burst {
	since: Instant,
	errors: u64,
	delay: Duration,
}

impl AcceptRetry {
	/// No backoff pending.
	pub fn new() -> Self {
		Self::default()
	}

	/// Poll `attempt` (one accept) until it yields a connection.
	///
	/// [`AcceptError::Connection`] is logged at `debug` and the next connection is accepted at
	/// once. [`AcceptError::Listener`] arms the backoff: for exhaustion (`EMFILE`, `ENFILE`,
	/// `ENOBUFS`, `ENOMEM`) the next try follows it and the error is not returned; any other
	/// listener error is returned, and the next call waits out the backoff before it tries.
	pub fn poll_accept<T>(
		&mut self,
		cx: &mut Context<'_>,
		mut attempt: impl FnMut(&mut Context<'_>) -> Poll<Result<T, AcceptError>>,
	) -> Poll<io::Result<T>> {
		loop {
			if let Some(backoff) = &mut self.backoff {
				ready!(backoff.as_mut().poll(cx));
				self.backoff = None;
			}
			match ready!(attempt(cx)) {
				Ok(accepted) => {
					self.end_burst();
					return Poll::Ready(Ok(accepted));
				},
				Err(AcceptError::Connection(error)) => {
					tracing::debug!("skipped a connection that failed while being accepted: {error}");
				},
				Err(AcceptError::Listener(error)) => {
					self.back_off(&error);
					if !is_exhaustion(&error) {
						return Poll::Ready(Err(error));
					}
				},
			}
		}
	}

	/// [`poll_accept`](Self::poll_accept) as a future.
	pub async fn accept<T>(
		&mut self,
		mut attempt: impl FnMut(&mut Context<'_>) -> Poll<Result<T, AcceptError>>,
	) -> io::Result<T> {
		poll_fn(|cx| self.poll_accept(cx, &mut attempt)).await
	}

	/// [`accept`](Self::accept) until `shutdown` is cancelled: `None` once it is, at once and
	/// without a connection, so that an accept loop over a raw listening socket is
	/// `while let Some(accepted) = retry.accept_until(&shutdown, ...).await`. Cancel-safe.
	pub async fn accept_until<T>(
		&mut self,
		shutdown: &tokio_util::sync::CancellationToken,
		attempt: impl FnMut(&mut Context<'_>) -> Poll<Result<T, AcceptError>>,
	) -> Option<io::Result<T>> {
		tokio::select! {
			biased;
			() = shutdown.cancelled() => None,
			accepted = self.accept(attempt) => Some(accepted),
		}
	}

	fn back_off(&mut self, error: &io::Error) {
		let delay = match &mut self.burst {
			Some(burst) => {
				burst.errors += 1;
				burst.delay = (burst.delay * 2).min(MAX_BACKOFF);
				burst.delay
			},
			None => {
				tracing::warn!("accepting connections failed: {error}; retrying in {MIN_BACKOFF:?}, then less often");
				self.burst = Some(Burst { since: Instant::now(), errors: 1, delay: MIN_BACKOFF });
				MIN_BACKOFF
			},
		};
		self.backoff = Some(Box::pin(tokio::time::sleep(delay)));
	}

	fn end_burst(&mut self) {
		if let Some(burst) = self.burst.take() {
			tracing::info!(
				errors = burst.errors,
				"accepting connections works again after {:?} of errors",
				burst.since.elapsed()
			);
		}
	}
}

/// Counts the connections a [`Listener`] spawned that are still running, and closes new ones
/// past the maximum.
#[derive(Debug, Default)]
struct ConnectionLimit {
	max: Option<usize>,
	open: Arc<AtomicUsize>,
	/// Connections closed since the limit was last reached.
	refused: u64,
}

/// One running connection of a [`Listener`]; dropped when its peer task ends.
#[derive(Debug)]
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
	fn drop(&mut self) {
		self.0.fetch_sub(1, Ordering::AcqRel);
	}
}

impl ConnectionLimit {
	/// Count one more connection, or `None` at the limit.
	fn admit(&mut self, info: &ConnectionInfo) -> Option<OpenConnection> {
		// Only the listener adds, under `&mut self`: the count can only have gone down since.
		let open = self.open.load(Ordering::Acquire);
		if self.max.is_some_and(|max| open >= max) {
			if self.refused == 0 {
				tracing::warn!(max = self.max, "connection limit reached: closing new connections until one ends");
			}
			self.refused += 1;
			tracing::debug!(remote = %info, "closed a connection past the limit");
			return None;
		}
		if self.refused > 0 {
			tracing::info!(refused = self.refused, "below the connection limit again: accepting connections");
			self.refused = 0;
		}
		self.open.fetch_add(1, Ordering::AcqRel);
		Some(OpenConnection(self.open.clone()))
	}
}

/// The admission check of a [`Listener`]: a closure over what is known about the remote.
#[derive(Clone)]
struct Admission(Arc<dyn Fn(&ConnectionInfo) -> bool + Send + Sync>);

impl std::fmt::Debug for Admission {
	fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
		f.write_str("Admission(..)")
	}
}

impl Admission {
	/// Whether the check lets `info` in; a refusal is logged at `warn` with what identifies the
	/// remote.
	fn admits(&self, info: &ConnectionInfo) -> bool {
		if (self.0)(info) {
			return true;
		}
		let credentials = info.credentials.as_ref();
		let certificate = info.peer_certificate.as_ref().map(|certificate| certificate.subject.as_str());
		tracing::warn!(
			remote = %info,
			uid = credentials.map(|credentials| credentials.uid),
			gid = credentials.map(|credentials| credentials.gid),
			pid = credentials.and_then(|credentials| credentials.pid),
			certificate,
			"refused a connection: the admission check does not allow it"
		);
		false
	}
}

/// What [`Listener::accept`] yields: the handle of the spawned peer and what is known about the
/// remote.
type Accepted<A> = (PeerHandle<<<A as Acceptor>::Transport as Transport>::Body>, ConnectionInfo);

/// Accepts connections and starts a [`Peer`] for each.
///
/// ```no_run
/// # async fn demo() -> Result<(), peerwire::Error> {
/// use peerwire::{Config, ReceivedMessage, TcpListener};
///
/// let mut listener = TcpListener::bind("127.0.0.1:1337", &Config::default()).await?.with_max_connections(1000);
/// loop {
///     let (mut peer, info) = listener.accept().await?;
///     tokio::spawn(async move {
///         while let Ok(message) = peer.recv_message().await {
///             if let ReceivedMessage::Request(request, body) = message {
///                 let _ = request.send_response(0, body).await;
///             }
///         }
///     });
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Listener<A: Acceptor> {
	/// The socket file this listener bound, removed when it is dropped. Declared (so dropped)
	/// before the socket: while the socket is still bound, no new server can take the path and
	/// the file's inode cannot be reused, so the removal can only hit this listener's own file.
	#[cfg(all(unix, any(feature = "unix-stream", feature = "unix-seqpacket")))]
	socket_file: Option<crate::transport::socket_file::SocketFile>,
	acceptor: A,
	config: Config,
	retry: AcceptRetry,
	limit: ConnectionLimit,
	admission: Option<Admission>,
	/// The counters of [`stats`](Self::stats) (`open` is the limit's count), shared with every
	/// [`ListenerStatsHandle`].
	counters: Arc<ListenerCounters>,
	/// The path the socket file was bound at, as given.
	#[cfg(all(unix, any(feature = "unix-stream", feature = "unix-seqpacket")))]
	path: Option<std::path::PathBuf>,
}

impl<A: Acceptor> Listener<A> {
	/// A listener over an already bound socket, with no connection limit.
	pub fn new(acceptor: A, config: &Config) -> Self {
		Self {
			acceptor,
			config: config.clone(),
			retry: AcceptRetry::new(),
			limit: ConnectionLimit::default(),
			admission: None,
			counters: Arc::default(),
			#[cfg(all(unix, any(feature = "unix-stream", feature = "unix-seqpacket")))]
			socket_file: None,
			#[cfg(all(unix, any(feature = "unix-stream", feature = "unix-seqpacket")))]
			path: None,
		}
	}

	/// Remove the socket file at `path` when this listener is dropped, if it is still the file
	/// there now.
	#[cfg(all(unix, any(feature = "unix-stream", feature = "unix-seqpacket")))]
	pub(crate) fn remove_on_drop(mut self, path: &std::path::Path) -> Self {
		self.socket_file = crate::transport::socket_file::SocketFile::bound(path);
		self.path = Some(path.to_path_buf());
		self
	}

	/// The path the socket file was bound at, if this listener bound it.
	#[cfg(all(unix, any(feature = "unix-stream", feature = "unix-seqpacket")))]
	pub(crate) fn bound_path(&self) -> Option<&std::path::Path> {
		self.path.as_deref()
	}

	/// Admit only the connections that `check` returns `true` for (see
	/// [`set_admission`](Self::set_admission)).
	pub fn with_admission(mut self, check: impl Fn(&ConnectionInfo) -> bool + Send + Sync + 'static) -> Self {
		self.set_admission(check);
		self
	}

	/// Admit only the connections that `check` returns `true` for, replacing any earlier check.
	///
	/// `check` sees what is known about the remote when the connection is accepted: the
	/// credentials of a Unix socket peer (uid, gid, pid, as the kernel saw them at connect), the
	/// address of a TCP peer, the verified certificate of a TLS peer under mutual TLS.
	/// [`crate::admission`] has ready-made checks (allow lists of uids, gids, addresses,
	/// certificate names); combine them in a closure of your own.
	///
	/// A refused connection is closed at once, before any message is read from it, and logged
	/// at `warn` with its address, credentials and certificate subject. It never reaches
	/// [`accept`](Self::accept) nor [`accept_transport`](Self::accept_transport), and does not
	/// count against the [connection limit](Self::set_max_connections). The remote sees its
	/// connection closed; requests it sent in the meantime are never answered.
	pub fn set_admission(&mut self, check: impl Fn(&ConnectionInfo) -> bool + Send + Sync + 'static) {
		self.admission = Some(Admission(Arc::new(check)));
	}

	/// Remove the admission check: admit every connection.
	pub fn clear_admission(&mut self) {
		self.admission = None;
	}

	/// Whether an admission check is set.
	pub fn has_admission(&self) -> bool {
		self.admission.is_some()
	}

	/// Limit the connections [`accept`](Self::accept) keeps open at once to `max` (see
	/// [`set_max_connections`](Self::set_max_connections)).
	pub fn with_max_connections(mut self, max: usize) -> Self {
		self.set_max_connections(Some(max));
		self
	}

	/// Limit the connections [`accept`](Self::accept) keeps open at once, or `None` for no limit
	/// (the default).
	///
	/// A connection counts from its accept until its peer task ends (closed by either side, or
	/// every handle dropped). At the limit, new connections are still accepted, then closed at
	/// once, so the remote sees a prompt close instead of waiting in the backlog, and the
	/// listener keeps draining its queue. A `warn!` log marks the start of each such burst.
	///
	/// Lowering the limit below the connections open closes none of them; it only refuses new
	/// ones until enough have ended.
	pub fn set_max_connections(&mut self, max: Option<usize>) {
		self.limit.max = max;
	}

	/// The connection limit, if any.
	pub fn max_connections(&self) -> Option<usize> {
		self.limit.max
	}

	/// How many connections spawned by [`accept`](Self::accept) are still running.
	pub fn open_connections(&self) -> usize {
		self.limit.open.load(Ordering::Acquire)
	}

	/// A snapshot of the listener's counters: connections accepted, refused by the admission
	/// check or the connection limit, and open now.
	///
	/// ```
	/// # #[tokio::main(flavor = "current_thread")]
	/// # async fn main() -> Result<(), peerwire::Error> {
	/// use peerwire::{Config, TcpListener, TcpPeer};
	///
	/// let mut listener = TcpListener::bind("127.0.0.1:0", &Config::default()).await?;
	/// let address = listener.local_addr()?;
	/// let (_client, _) = TcpPeer::connect(address, &Config::default()).await?;
	/// let (_server, _) = listener.accept().await?;
	/// let stats = listener.stats();
	/// assert_eq!((stats.accepted, stats.open), (1, 1));
	/// # Ok(())
	/// # }
	/// ```
	pub fn stats(&self) -> ListenerStats {
		self.stats_handle().get()
	}

	/// A cloneable, read-only handle on the listener's counters, to read them while the listener
	/// has moved elsewhere (into [`server::serve_with`](crate::server::serve_with), say). See
	/// [`ListenerStatsHandle`].
	pub fn stats_handle(&self) -> ListenerStatsHandle {
		ListenerStatsHandle::new(self.counters.clone(), self.limit.open.clone())
	}

	/// Accept the next connection, spawn its peer task, and return its handle and what is known
	/// about the remote.
	///
	/// Failures that belong to one incoming connection (reset or aborted before it was
	/// accepted, its address or credentials unreadable) never reach the caller: the connection
	/// is skipped and the next one accepted at once. Past the [connection
	/// limit](Self::set_max_connections), connections are closed as soon as accepted and this
	/// keeps waiting for one it may keep.
	///
	/// When the listening socket runs out of a resource (`EMFILE`, `ENFILE`, `ENOBUFS`,
	/// `ENOMEM`), this does not return either: it retries after a backoff growing from 10 ms to
	/// 1 s (logged once per burst) and returns once a connection is accepted, so a server loop
	/// needs no backoff of its own. Any other error of the listening socket (it is not
	/// listening, say) is returned; the listener stays usable and the next call waits out the
	/// backoff before it tries again.
	///
	/// Cancel-safe: dropping the future loses no connection and no backoff.
	pub async fn accept(&mut self) -> Result<(PeerHandle<<A::Transport as Transport>::Body>, ConnectionInfo), Error> {
		poll_fn(|cx| self.poll_accept(cx)).await
	}

	fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Result<Accepted<A>, Error>> {
		loop {
			let transport = ready!(self.poll_accept_transport(cx))?;
			let info = transport.info();
			// Past the limit the transport is dropped here, which closes the connection.
			let Some(open) = self.limit.admit(&info) else {
				ListenerCounters::add(&self.counters.refused_by_limit);
				#[cfg(feature = "metrics")]
				crate::metrics::refused("limit");
				continue;
			};
			ListenerCounters::add(&self.counters.accepted);
			#[cfg(feature = "metrics")]
			crate::metrics::accepted();
			let span = crate::transport::connection_span(&info);
			tracing::info!(parent: &span, "accepted a connection");
			return Poll::Ready(Ok((Peer::spawn_with(transport, &self.config, open, span), info)));
		}
	}

	/// Accept the next connection as a bare transport, to run its [`Peer`] yourself.
	///
	/// Errors as for [`accept`](Self::accept); the [admission check](Self::set_admission)
	/// applies. The [connection limit](Self::set_max_connections)
	/// does not apply: the listener cannot know when a transport it handed over ends, so it
	/// neither counts nor refuses these connections. Count them yourself if you need a limit.
	pub async fn accept_transport(&mut self) -> Result<A::Transport, Error> {
		let transport = poll_fn(|cx| self.poll_accept_transport(cx)).await?;
		ListenerCounters::add(&self.counters.accepted);
		#[cfg(feature = "metrics")]
		crate::metrics::accepted();
		Ok(transport)
	}

	fn poll_accept_transport(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<A::Transport>> {
		loop {
			let Self { acceptor, config, retry, .. } = self;
			let transport = ready!(retry.poll_accept(cx, |cx| acceptor.poll_accept(cx, config)))?;
			match &self.admission {
				// A refused transport is dropped here, unread, which closes the connection.
				Some(admission) if !admission.admits(&transport.info()) => {
					ListenerCounters::add(&self.counters.refused_by_admission);
					#[cfg(feature = "metrics")]
					crate::metrics::refused("admission");
					continue;
				},
				_ => return Poll::Ready(Ok(transport)),
			}
		}
	}

	/// The configuration every accepted connection gets.
	pub fn config(&self) -> &Config {
		&self.config
	}

	/// The listening socket.
	pub fn get_ref(&self) -> &A {
		&self.acceptor
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	fn classify(errno: i32) -> &'static str {
		match AcceptError::from_accept(io::Error::from_raw_os_error(errno)) {
			AcceptError::Connection(_) => "connection",
			AcceptError::Listener(error) if is_exhaustion(&error) => "exhaustion",
			AcceptError::Listener(_) => "listener",
		}
	}

	#[tokio::test]
	async fn accept_until_ends_on_shutdown_and_otherwise_accepts() {
		let shutdown = tokio_util::sync::CancellationToken::new();
		let mut retry = AcceptRetry::new();
		let accepted = retry.accept_until(&shutdown, |_| Poll::Ready(Ok::<_, AcceptError>(7))).await;
		assert_eq!(accepted.map(Result::unwrap), Some(7));
		// A failed connection is skipped, not returned.
		let mut failures = 0;
		let accepted = retry
			.accept_until(&shutdown, |_| {
				failures += 1;
				if failures == 1 {
					Poll::Ready(Err(AcceptError::Connection(io::Error::from_raw_os_error(libc::ECONNABORTED))))
				} else {
					Poll::Ready(Ok(failures))
				}
			})
			.await;
		assert_eq!(accepted.map(Result::unwrap), Some(2));
		shutdown.cancel();
		let never = retry.accept_until(&shutdown, |_| Poll::<Result<(), AcceptError>>::Pending).await;
		assert!(never.is_none());
	}

	#[test]
	fn accept_errors_are_told_apart_by_errno() {
		for errno in [libc::ECONNABORTED, libc::ECONNRESET, libc::ENOTCONN, libc::EPROTO, libc::EPERM, libc::EINTR] {
			assert_eq!(classify(errno), "connection", "errno {errno}");
		}
		for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
			assert_eq!(classify(errno), "exhaustion", "errno {errno}");
		}
		for errno in [libc::EBADF, libc::EINVAL, libc::ENOTSOCK] {
			assert_eq!(classify(errno), "listener", "errno {errno}");
		}
	}
}
