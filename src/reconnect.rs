//! A client that reconnects: it makes connections with a caller's connect function, waits
//! between failed attempts by a [`Backoff`] policy, and hands out the live connection.
//!
//! # What survives a reconnect, and what does not
//!
//! A connection that ends takes its state with it, and no library can give that back:
//!
//! - **Not recoverable: open requests.** Every request open on the old connection, in either
//!   direction, fails with [`ErrorKind::ConnectionClosed`](crate::ErrorKind::ConnectionClosed).
//!   Nothing is replayed: the remote may or may not have acted on a request before the
//!   connection broke, and only the application knows whether doing it twice is harmless.
//! - **Not recoverable: messages in flight.** Updates, responses and stream messages queued on
//!   either side but not yet delivered are gone.
//! - **Not recoverable: state on the remote.** Subscriptions, sessions and anything else the
//!   remote kept for the old connection are gone with it (a restarted server remembers nothing);
//!   open them again on the new connection.
//! - **Recoverable: the ability to send new requests.** [`Reconnecting::send_request`] uses the
//!   live connection, and if that turns out to be closed before the request was queued, it
//!   reconnects (waiting by the backoff policy) and sends on the new one. That retry is safe: a
//!   request that failed to queue never reached the wire.
//! - **Recoverable: incoming messages, per connection.** [`Reconnecting::next_connection`]
//!   hands out each new connection's read half once, so a loop over it receives what every
//!   connection brings and knows when to open its subscriptions again.
//!
//! ```no_run
//! # async fn demo() -> Result<(), peerwire::Error> {
//! use peerwire::{Backoff, Config, ReceivedMessage, Reconnecting};
//!
//! let client = Reconnecting::tcp("127.0.0.1:1337", &Config::default(), Backoff::default());
//!
//! // Sending: connects on first use, and again after the connection is lost.
//! let mut request = client.send_request(1, "hello").await?;
//! let response = request.recv_response().await?;
//! # let _ = response;
//!
//! // Receiving: one read half per connection, in a loop that outlives connections.
//! loop {
//!     let mut connection = client.next_connection().await?;
//!     // A fresh connection: open subscriptions here.
//!     while let Ok(message) = connection.recv_message().await {
//!         if let ReceivedMessage::Stream(message) = message {
//!             println!("stream message: {:?}", message.body);
//!         }
//!     }
//!     // The connection is gone; its open requests have failed. Loop to reconnect.
//! }
//! # }
//! ```

use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::Error;
use crate::handle::{PeerHandle, PeerReadHandle, PeerWriteHandle, ReceivedMessage, SentRequestHandle};
use crate::message::{Body, CloneBody, IntoBody};
use crate::transport::ConnectionInfo;

/// How long to wait between failed connection attempts, and when to give up.
///
/// After the `n`th failed attempt in a row the client waits
/// `min(initial_delay * factor^(n-1), max_delay)` before the next one, less up to half of that
/// when `jitter` is on (so that many clients of one restarted server do not all knock at the
/// same instant). The first attempt is made at once, and a successful connection starts the
/// count again.
///
/// Build one from the default with the `with_*` setters (the type is `#[non_exhaustive]`):
///
/// ```
/// use std::time::Duration;
///
/// let backoff = peerwire::Backoff::default()
///     .with_initial_delay(Duration::from_millis(100))
///     .with_factor(2)
///     .with_max_delay(Duration::from_secs(1))
///     .with_max_attempts(Some(10))
///     .with_jitter(false);
/// assert_eq!(backoff.delay_after(1), Duration::from_millis(100));
/// assert_eq!(backoff.delay_after(3), Duration::from_millis(400));
/// assert_eq!(backoff.delay_after(9), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backoff {
	/// The wait after the first failed attempt.
	///
	/// Default: 100 ms.
	pub initial_delay: Duration,

	/// What each further failure multiplies the wait by (1 for a constant wait).
	///
	/// Default: 2.
	pub factor: u32,

	/// The longest wait between two attempts.
	///
	/// Default: 10 s.
	pub max_delay: Duration,

	/// How many attempts in a row may fail before the call that is connecting gives up with the
	/// last attempt's error (one attempt at least is always made); `None` to try for ever (bound
	/// the wait with a timeout of your own). A later call starts a new round of attempts.
	///
	/// Default: `None`.
	pub max_attempts: Option<u32>,

	/// Wait a random duration between half the delay and the full delay.
	///
	/// Default: on.
	pub jitter: bool,
}

impl Default for Backoff {
	fn default() -> Self {
		Self {
			initial_delay: Duration::from_millis(100),
			factor: 2,
			max_delay: Duration::from_secs(10),
			max_attempts: None,
			jitter: true,
		}
	}
}

/// Setters, one per field, for building a `Backoff` from the default.
impl Backoff {
	/// Set [`initial_delay`](Self::initial_delay).
	pub fn with_initial_delay(mut self, initial_delay: Duration) -> Self {
		self.initial_delay = initial_delay;
		self
	}

	/// Set [`factor`](Self::factor).
	pub fn with_factor(mut self, factor: u32) -> Self {
		self.factor = factor;
		self
	}

	/// Set [`max_delay`](Self::max_delay).
	pub fn with_max_delay(mut self, max_delay: Duration) -> Self {
		self.max_delay = max_delay;
		self
	}

	/// Set [`max_attempts`](Self::max_attempts).
	pub fn with_max_attempts(mut self, max_attempts: Option<u32>) -> Self {
		self.max_attempts = max_attempts;
		self
	}

	/// Set [`jitter`](Self::jitter).
	pub fn with_jitter(mut self, jitter: bool) -> Self {
		self.jitter = jitter;
		self
	}
}

impl Backoff {
	/// The wait before the next attempt after `failures` failed attempts in a row (at least 1),
	/// before jitter.
	pub fn delay_after(&self, failures: u32) -> Duration {
		let growth = self.factor.saturating_pow(failures.saturating_sub(1));
		self.initial_delay.saturating_mul(growth).min(self.max_delay)
	}

	/// The wait actually used: [`delay_after`](Self::delay_after), with jitter if it is on.
	fn wait_after(&self, failures: u32) -> Duration {
		let delay = self.delay_after(failures);
		if !self.jitter {
			return delay;
		}
		// Not cryptographic, and needs no dependency: std seeds every `RandomState` randomly.
		let random = std::collections::hash_map::RandomState::new().hash_one(failures);
		let half = delay / 2;
		let spread = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
		half + Duration::from_nanos(random % spread.saturating_add(1))
	}
}

type ConnectFuture<B> = Pin<Box<dyn Future<Output = Result<PeerHandle<B>, Error>> + Send>>;
type ConnectFn<B> = Box<dyn Fn() -> ConnectFuture<B> + Send + Sync>;

/// A client that reconnects with backoff and hands out the live connection.
///
/// Built from a connect function (any async closure that returns a [`PeerHandle`], so any
/// transport and any [`Config`](crate::Config) will do) and a [`Backoff`] policy; the
/// [`tcp`](Self::tcp), [`unix_stream`](Self::unix_stream), (feature `tls`) `tls` and
/// `unix_seqpacket` (feature `unix-seqpacket`) constructors cover the common cases. Clone it
/// freely: clones share the connection.
///
/// Nothing connects until it is first needed. Then one caller at a time makes attempts, and
/// everyone else asking for the connection meanwhile waits for the outcome (a failed round that
/// gives up by [`Backoff::max_attempts`] fails them all).
///
/// **Requests open when a connection ends fail** with
/// [`ErrorKind::ConnectionClosed`](crate::ErrorKind::ConnectionClosed) and are not sent again;
/// see [the module docs](crate::reconnect) for what is and is not recoverable.
///
/// The client sees by itself when a connection ends ([`PeerWriteHandle::is_closed`]) and makes
/// a new one when next asked; it does not connect in the background. To drop a connection that
/// is up but no good (a heartbeat went unanswered, say), [`close`](PeerWriteHandle::close) it.
pub struct Reconnecting<B: Body = bytes::Bytes> {
	inner: Arc<Inner<B>>,
}

struct Inner<B: Body> {
	connect: ConnectFn<B>,
	backoff: Backoff,
	/// Drop the read half of each connection at once (see [`Reconnecting::send_only`]).
	send_only: AtomicBool,
	state: Mutex<State<B>>,
	/// Held by the one caller making attempts; the backoff count lives inside so that a caller
	/// cancelled while waiting does not reset the schedule for the next one.
	attempts: tokio::sync::Mutex<Attempts>,
	/// Woken when a connection is made or lost.
	changed: Notify,
	/// The oldest connection on which something was queued since the last [`Reconnecting::flush`]
	/// (its generation and write handle): a flush must account for it even once a newer
	/// connection has replaced it.
	unflushed: Mutex<Option<(u64, PeerWriteHandle<B>)>>,
}

struct State<B: Body> {
	current: Option<Current<B>>,
	/// Connections made so far; the current one's number.
	generation: u64,
	/// Rounds of attempts that gave up, and the error of the last one.
	rounds_failed: u64,
	last_error: Option<Error>,
}

struct Current<B: Body> {
	generation: u64,
	write: PeerWriteHandle<B>,
	/// Until [`Reconnecting::next_connection`] takes it.
	read: Option<PeerReadHandle<B>>,
}

#[derive(Default)]
struct Attempts {
	/// Failed attempts since the last success or the last round that gave up.
	failures: u32,
	/// No attempt before this.
	not_before: Option<Instant>,
}

impl<B: Body> Clone for Reconnecting<B> {
	fn clone(&self) -> Self {
		Self { inner: self.inner.clone() }
	}
}

impl<B: Body> std::fmt::Debug for Reconnecting<B> {
	fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
		f.debug_struct("Reconnecting")
			.field("backoff", &self.inner.backoff)
			.field("generation", &self.generation())
			.field("connected", &self.inner.state().current.is_some())
			.finish_non_exhaustive()
	}
}

impl<B: Body> Reconnecting<B> {
	/// A client that makes each connection with `connect`, waiting between failed attempts as
	/// `backoff` says.
	///
	/// ```
	/// use peerwire::{Backoff, Config, Reconnecting, TcpPeer};
	///
	/// let address = "127.0.0.1:1337";
	/// let client = Reconnecting::new(Backoff::default(), move || async move {
	///     let config = Config::default().with_max_body_len_read(64 << 20);
	///     let (peer, _info) = TcpPeer::connect(address, &config).await?;
	///     Ok(peer)
	/// });
	/// # let _ = client;
	/// ```
	pub fn new<F, Fut>(backoff: Backoff, connect: F) -> Self
	where
		F: Fn() -> Fut + Send + Sync + 'static,
		Fut: Future<Output = Result<PeerHandle<B>, Error>> + Send + 'static,
	{
		let connect: ConnectFn<B> = Box::new(move || Box::pin(connect()));
		let state = State { current: None, generation: 0, rounds_failed: 0, last_error: None };
		let inner = Inner {
			connect,
			backoff,
			send_only: AtomicBool::new(false),
			state: Mutex::new(state),
			attempts: tokio::sync::Mutex::new(Attempts::default()),
			changed: Notify::new(),
			unflushed: Mutex::new(None),
		};
		Self { inner: Arc::new(inner) }
	}

	/// For a client that only sends: drop the read half of every connection as soon as it is
	/// made, so that a request from the remote gets an error response at once and a stream
	/// message is discarded, instead of waiting for a [`next_connection`](Self::next_connection)
	/// that never comes. `next_connection` then fails.
	///
	/// Call it before the client is first used: a connection already made keeps its read half.
	pub fn send_only(self) -> Self {
		self.inner.send_only.store(true, Ordering::Relaxed);
		self
	}

	/// The policy between failed attempts.
	pub fn backoff(&self) -> &Backoff {
		&self.inner.backoff
	}

	/// How many connections have been made so far (the current one's number, from 1).
	pub fn generation(&self) -> u64 {
		self.inner.state().generation
	}

	/// The write handle of the live connection, connecting first if there is none (waiting by
	/// the backoff policy between failed attempts).
	///
	/// The connection may end at any moment after, and a send through the handle then fails with
	/// a connection error; ask again for a handle of the new connection, or use
	/// [`send_request`](Self::send_request), which does that for you.
	pub async fn write_handle(&self) -> Result<PeerWriteHandle<B>, Error> {
		Ok(self.connected().await?.1)
	}

	/// Open a request on the live connection, connecting first if needed.
	///
	/// If the connection turns out to be closed before the request could be queued, the client
	/// reconnects and sends it on the new connection (once): nothing of it reached the wire, so
	/// this cannot do anything twice. A request that was queued stays on its connection, and
	/// fails with [`ErrorKind::ConnectionClosed`](crate::ErrorKind::ConnectionClosed) if that
	/// ends before the response.
	pub async fn send_request(&self, service_id: i32, body: impl IntoBody<B>) -> Result<SentRequestHandle<B>, Error>
	where
		B: CloneBody,
	{
		let body = body.into_body();
		let (generation, write) = self.connected().await?;
		match write.send_request(service_id, body.clone_body()?).await {
			Err(error) if error.is_connection_closed() => {
				self.inner.lost(generation);
				let (generation, write) = self.connected().await?;
				let result = write.send_request(service_id, body).await;
				self.check(generation, result)
			},
			other => other,
		}
	}

	/// Send a stream message on the live connection, connecting first if needed; like
	/// [`send_request`](Self::send_request), a message that could not be queued because the
	/// connection was closed is sent once more on a new connection.
	pub async fn send_stream(&self, service_id: i32, body: impl IntoBody<B>) -> Result<(), Error>
	where
		B: CloneBody,
	{
		let body = body.into_body();
		let (generation, write) = self.connected().await?;
		match write.send_stream(service_id, body.clone_body()?).await {
			Err(error) if error.is_connection_closed() => {
				self.inner.lost(generation);
				let (generation, write) = self.connected().await?;
				let result = write.send_stream(service_id, body).await;
				self.queued(generation, &write, &result);
				self.check(generation, result)
			},
			other => {
				self.queued(generation, &write, &other);
				other
			},
		}
	}

	/// Note that a stream message was queued on connection `generation` (if `result` says so),
	/// for [`flush`](Self::flush). (A request's handle tells its fate: its response, or the
	/// connection's end.)
	fn queued<T>(&self, generation: u64, write: &PeerWriteHandle<B>, result: &Result<T, Error>) {
		if result.is_ok() {
			let mut unflushed = self.inner.unflushed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
			if unflushed.is_none() {
				*unflushed = Some((generation, write.clone()));
			}
		}
	}

	/// Wait until everything queued so far through this client has been written to the
	/// transport (see [`PeerWriteHandle::flush`]). It does not connect.
	///
	/// `send_*` return once a message is queued: await this before the process exits, so that
	/// a last command is not lost. Fails with a connection error if a connection that a stream
	/// message was queued on since the last flush ended first, even if a newer connection has
	/// replaced it: what was queued on it may be lost (this cannot tell whether it was written
	/// before the end). Such a loss is reported once; the next flush looks at what was queued
	/// since. Requests are not counted: each one's handle reports its fate.
	pub async fn flush(&self) -> Result<(), Error> {
		let current = self.inner.state().current.as_ref().map(|current| (current.generation, current.write.clone()));
		let unflushed = self.inner.unflushed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
		if let Some((generation, write)) = unflushed {
			if current.as_ref().is_none_or(|(live, _)| *live != generation) {
				// Queued on a connection that is no longer the live one: it had to be written
				// before that connection ended.
				write.flush().await?;
			}
		}
		match current {
			Some((_, write)) => write.flush().await,
			None => Ok(()),
		}
	}

	/// Flush what is queued on the live connection, then close it (see
	/// [`PeerWriteHandle::close`]). The client is still usable: the next send connects again.
	pub fn close(&self) {
		if let Some(current) = &self.inner.state().current {
			current.write.close();
		}
	}

	/// Wait until the live connection has ended; at once if there is none. After
	/// [`close`](Self::close), this returns once what was queued is written and the connection
	/// is shut down.
	pub async fn closed(&self) {
		let write = self.inner.state().current.as_ref().map(|current| current.write.clone());
		if let Some(write) = write {
			write.closed().await;
		}
	}

	/// The next connection whose read half no one has taken yet: the live connection if its read
	/// half is still here, otherwise a new one once the current connection is lost (connecting
	/// as needed, with backoff).
	///
	/// Each connection's read half is handed out once, so a loop around this call sees every
	/// connection in turn; a new connection is the moment to open subscriptions again. When
	/// [`Connection::recv_message`] fails with a connection error the client knows the
	/// connection is lost, and the next call makes a new one.
	///
	/// Fails if a round of attempts gives up ([`Backoff::max_attempts`]), and at once with an
	/// error of kind [`Io`](crate::ErrorKind::Io) (`Unsupported`) on a
	/// [`send_only`](Self::send_only) client.
	pub async fn next_connection(&self) -> Result<Connection<B>, Error> {
		if self.inner.send_only.load(Ordering::Relaxed) {
			let text = "next_connection on a send-only Reconnecting client";
			return Err(std::io::Error::new(std::io::ErrorKind::Unsupported, text).into());
		}
		loop {
			// Registered before the state is looked at, so that no change is missed.
			let changed = self.inner.changed.notified();
			tokio::pin!(changed);
			changed.as_mut().enable();
			let taken = {
				let mut state = self.inner.state();
				match &mut state.current {
					Some(current) => match current.read.take() {
						Some(read) => {
							return Ok(Connection {
								generation: current.generation,
								read: Some(read),
								write: current.write.clone(),
								client: self.inner.clone(),
							});
						},
						// Someone has this connection's read half: wait for the connection to end.
						None => Some((current.generation, current.write.clone())),
					},
					None => None,
				}
			};
			match taken {
				Some((generation, write)) => {
					tokio::select! {
						() = &mut changed => {},
						() = write.closed() => self.inner.lost(generation),
					}
				},
				None => {
					self.connected().await?;
				},
			}
		}
	}

	/// Note a connection error from an operation on connection `generation`.
	fn check<T>(&self, generation: u64, result: Result<T, Error>) -> Result<T, Error> {
		if let Err(error) = &result {
			if error.is_connection_closed() {
				self.inner.lost(generation);
			}
		}
		result
	}

	/// The live connection's number and write handle, connecting first if there is none.
	async fn connected(&self) -> Result<(u64, PeerWriteHandle<B>), Error> {
		let rounds_failed = match self.inner.live() {
			Ok(live) => return Ok(live),
			Err(rounds_failed) => rounds_failed,
		};
		let mut attempts = self.inner.attempts.lock().await;
		// Another caller may have connected, or given up, while this one waited its turn.
		match self.inner.live() {
			Ok(live) => return Ok(live),
			Err(now_failed) if now_failed != rounds_failed => {
				if let Some(error) = self.inner.state().last_error.clone() {
					return Err(error);
				}
			},
			Err(_) => {},
		}
		self.inner.connect_round(&mut attempts).await
	}
}

impl Reconnecting<bytes::Bytes> {
	/// A client of a TCP server at `address`, with `config` for every connection.
	///
	/// Each attempt waits as long as the operating system takes to refuse or time out; for a
	/// deadline per attempt, use [`Reconnecting::new`] with a connect function that puts a
	/// timeout around [`TcpPeer::connect`](crate::TcpPeer).
	#[cfg(feature = "tcp")]
	pub fn tcp<A>(address: A, config: &crate::Config, backoff: Backoff) -> Self
	where
		A: tokio::net::ToSocketAddrs + Clone + Send + Sync + 'static,
	{
		let config = config.clone();
		Self::new(backoff, move || {
			let address = address.clone();
			let config = config.clone();
			async move { Ok(crate::TcpPeer::connect(address, &config).await?.0) }
		})
	}

	/// A client of a TLS server at `address`, checked against `tls` and `server_name` on every
	/// connection (see [`TlsPeer::connect`](crate::TlsPeer)), with `config` for every connection.
	///
	/// A failed handshake (the server's certificate does not verify) counts as a failed attempt
	/// and is retried with the backoff like a refused connection: the certificate may be
	/// replaced in the meantime.
	#[cfg(feature = "tls")]
	pub fn tls<A>(
		address: A,
		server_name: impl Into<String>,
		tls: crate::TlsClientConfig,
		config: &crate::Config,
		backoff: Backoff,
	) -> Self
	where
		A: tokio::net::ToSocketAddrs + Clone + Send + Sync + 'static,
	{
		let server_name = server_name.into();
		let config = config.clone();
		Self::new(backoff, move || {
			let address = address.clone();
			let server_name = server_name.clone();
			let tls = tls.clone();
			let config = config.clone();
			async move { Ok(crate::TlsPeer::connect(address, &server_name, &tls, &config).await?.0) }
		})
	}

	/// A client of a Unix stream socket server at `path`, with `config` for every connection.
	#[cfg(all(unix, feature = "unix-stream"))]
	pub fn unix_stream(path: impl Into<std::path::PathBuf>, config: &crate::Config, backoff: Backoff) -> Self {
		let path = path.into();
		let config = config.clone();
		Self::new(backoff, move || {
			let path = path.clone();
			let config = config.clone();
			async move { Ok(crate::UnixStreamPeer::connect(path, &config).await?.0) }
		})
	}
}

#[cfg(all(unix, feature = "unix-seqpacket"))]
impl Reconnecting<crate::UnixBody> {
	/// A client of a Unix seqpacket socket server at `path`, with `config` for every connection.
	///
	/// A request or stream message sent again on a new connection (see
	/// [`send_request`](Self::send_request)) carries duplicates of its descriptors
	/// ([`UnixBody::try_clone`](crate::UnixBody::try_clone)).
	pub fn unix_seqpacket(path: impl Into<std::path::PathBuf>, config: &crate::Config, backoff: Backoff) -> Self {
		let path = path.into();
		let config = config.clone();
		Self::new(backoff, move || {
			let path = path.clone();
			let config = config.clone();
			async move { Ok(crate::UnixSeqpacketPeer::connect(path, &config).await?.0) }
		})
	}
}

impl<B: Body> Inner<B> {
	fn state(&self) -> MutexGuard<'_, State<B>> {
		// Every update under this lock is a single assignment, so a poisoned lock holds whole
		// values and is safe to keep using.
		self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
	}

	/// The current connection if it is still up; otherwise (forgetting one that has ended) the
	/// number of rounds of attempts that have given up so far.
	fn live(&self) -> Result<(u64, PeerWriteHandle<B>), u64> {
		let (ended, rounds_failed) = {
			let mut state = self.state();
			match &state.current {
				Some(current) if !current.write.is_closed() => return Ok((current.generation, current.write.clone())),
				Some(_) => (state.current.take(), state.rounds_failed),
				None => (None, state.rounds_failed),
			}
		};
		if let Some(ended) = ended {
			tracing::debug!(generation = ended.generation, "connection lost");
			self.changed.notify_waiters();
		}
		Err(rounds_failed)
	}

	/// Forget connection `generation` if it is still the current one.
	fn lost(&self, generation: u64) {
		let forgotten = {
			let mut state = self.state();
			match &state.current {
				Some(current) if current.generation == generation => state.current.take(),
				_ => None,
			}
		};
		if forgotten.is_some() {
			tracing::debug!(generation, "connection lost");
			self.changed.notify_waiters();
		}
		// Dropped here, outside the lock: an unclaimed read half answers its queued requests.
		drop(forgotten);
	}

	/// Make attempts until one succeeds or the policy gives up. Cancel-safe: the count of
	/// failures and the time of the next attempt stay in `attempts`.
	async fn connect_round(&self, attempts: &mut Attempts) -> Result<(u64, PeerWriteHandle<B>), Error> {
		loop {
			if let Some(not_before) = attempts.not_before {
				tokio::time::sleep_until(not_before).await;
			}
			let error = match (self.connect)().await {
				Ok(peer) => {
					*attempts = Attempts::default();
					return Ok(self.install(peer));
				},
				Err(error) => error,
			};
			attempts.failures = attempts.failures.saturating_add(1);
			let failures = attempts.failures;
			if self.backoff.max_attempts.is_some_and(|max| failures >= max) {
				*attempts = Attempts::default();
				let error = gave_up(failures, error);
				tracing::warn!("{error}");
				let mut state = self.state();
				state.rounds_failed += 1;
				state.last_error = Some(error.clone());
				return Err(error);
			}
			let wait = self.backoff.wait_after(failures);
			tracing::debug!(failures, ?wait, "connection attempt failed: {error}");
			// A wait too long for the clock (an extreme `max_delay`) is a year, not a panic.
			let now = Instant::now();
			attempts.not_before = Some(now.checked_add(wait).unwrap_or(now + Duration::from_secs(365 * 24 * 3600)));
		}
	}

	/// Make `peer` the current connection.
	fn install(&self, peer: PeerHandle<B>) -> (u64, PeerWriteHandle<B>) {
		let (read, write) = peer.split();
		let read = if self.send_only.load(Ordering::Relaxed) { None } else { Some(read) };
		let generation = {
			let mut state = self.state();
			state.generation += 1;
			let generation = state.generation;
			state.current = Some(Current { generation, write: write.clone(), read });
			generation
		};
		tracing::debug!(generation, "connected");
		self.changed.notify_waiters();
		(generation, write)
	}
}

/// The error of a round of attempts that gave up: for an I/O error, one of the same
/// [`std::io::ErrorKind`] that says how many attempts failed; any other error as it is.
fn gave_up(attempts: u32, last: Error) -> Error {
	match last.io_error() {
		Some(io) if last.kind() == crate::ErrorKind::Io => {
			std::io::Error::new(io.kind(), GaveUp { attempts, last: last.clone() }).into()
		},
		_ => last,
	}
}

/// The text and source of the error of a round that gave up.
#[derive(Debug, thiserror::Error)]
#[error("gave up after {attempts} failed connection attempts, the last: {last}")]
struct GaveUp {
	attempts: u32,
	#[source]
	last: Error,
}

/// One connection made by a [`Reconnecting`] client, as handed out by
/// [`Reconnecting::next_connection`]: its read half, a write handle, and its number.
#[derive(Debug)]
pub struct Connection<B: Body = bytes::Bytes> {
	generation: u64,
	/// `Some` until the connection is dropped, which hands it back to the client.
	read: Option<PeerReadHandle<B>>,
	write: PeerWriteHandle<B>,
	client: Arc<Inner<B>>,
}

impl<B: Body> Connection<B> {
	/// The connection's number: 1 for the client's first, counting up.
	pub fn generation(&self) -> u64 {
		self.generation
	}

	/// Receive the next request or stream message from the remote.
	///
	/// Cancel-safe. A connection error means the connection has ended: the client then knows
	/// it is lost, and [`Reconnecting::next_connection`] makes a new one.
	pub async fn recv_message(&mut self) -> Result<ReceivedMessage<B>, Error> {
		let read = self.read.as_mut().expect("the read half is taken only on drop");
		let result = read.recv_message().await;
		if let Err(error) = &result {
			if error.is_connection_closed() {
				self.client.lost(self.generation);
			}
		}
		result
	}

	/// A write handle of this connection (not of whichever connection is live later: requests
	/// that belong with what this connection received go here).
	pub fn write_handle(&self) -> PeerWriteHandle<B> {
		self.write.clone()
	}

	/// What is known about the remote.
	pub fn info(&self) -> &ConnectionInfo {
		self.write.info()
	}

	/// Flush what is queued, then close this connection. The client reconnects when next asked.
	pub fn close(&self) {
		self.write.close();
		self.client.lost(self.generation);
	}
}

/// Hands the read half back to the client while the connection is still its live one, so that
/// the next [`Reconnecting::next_connection`] returns this connection again instead of waiting
/// for a new one, and requests from the remote wait for it instead of being answered with an
/// error. A connection that has ended, or that the client has replaced, is let go.
impl<B: Body> Drop for Connection<B> {
	fn drop(&mut self) {
		let Some(read) = self.read.take() else {
			return;
		};
		let unclaimed = {
			let mut state = self.client.state();
			match &mut state.current {
				Some(current) if current.generation == self.generation && current.read.is_none() => {
					if current.write.is_closed() {
						Some(read)
					} else {
						current.read = Some(read);
						None
					}
				},
				_ => Some(read),
			}
		};
		if unclaimed.is_none() {
			tracing::debug!(generation = self.generation, "read half handed back");
			self.client.changed.notify_waiters();
		}
		// Dropped here, outside the lock: an unclaimed read half answers its queued requests.
		drop(unclaimed);
	}
}

impl<B: Body> std::fmt::Debug for Inner<B> {
	fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
		f.debug_struct("Reconnecting").field("backoff", &self.backoff).finish_non_exhaustive()
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn delays_grow_by_the_factor_and_stop_at_the_cap() {
		let backoff = Backoff::default()
			.with_initial_delay(Duration::from_millis(10))
			.with_factor(3)
			.with_max_delay(Duration::from_millis(500))
			.with_max_attempts(None)
			.with_jitter(false);
		let delays: Vec<_> = (1..=6).map(|n| backoff.delay_after(n).as_millis()).collect();
		assert_eq!(delays, [10, 30, 90, 270, 500, 500]);
		// No overflow however long the outage.
		assert_eq!(backoff.delay_after(u32::MAX), Duration::from_millis(500));
		assert_eq!(backoff.wait_after(2), Duration::from_millis(30));
	}

	#[test]
	fn jitter_stays_between_half_and_the_full_delay() {
		let backoff = Backoff::default().with_jitter(true);
		for failures in 1..12 {
			let full = backoff.delay_after(failures);
			for _ in 0..50 {
				let wait = backoff.wait_after(failures);
				assert!(wait >= full / 2 && wait <= full, "{wait:?} outside [{:?}, {full:?}]", full / 2);
			}
		}
		let zero = backoff.with_initial_delay(Duration::ZERO);
		assert_eq!(zero.wait_after(1), Duration::ZERO);
	}
}
