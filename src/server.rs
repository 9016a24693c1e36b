//! Serving connections with a handler, and shutting down gracefully.
//!
//! [`serve`] accepts connections from a [`Listener`] and [`serve_connection`] runs a handler for
//! every message of one connection (from a listener, `connect`, or an in-memory pair). Both stop
//! on a [`CancellationToken`]: no new connections are accepted, new requests are refused with an
//! error response, requests already being handled get a grace period to finish, and then every
//! connection is closed. A handler still running at the deadline is aborted; the requests it held
//! are answered with the automatic error response of a dropped request, so no remote waits forever.
//!
//! # Order
//!
//! Within one connection:
//!
//! - **Stream messages are handled in order, one at a time.** The handler of a stream message
//!   starts only once the handler of the one before it has returned, so a `set_speed` followed
//!   by a `stop` is never run as `stop`, then `set_speed`. A stream handler that awaits holds up
//!   the stream messages behind it; a long job should be spawned by the handler if later stream
//!   messages must not wait for it. **A stream handler must not wait for something the same
//!   connection has to deliver** (the response to a request it sends, an update): once the
//!   stream messages behind it fill their queue the connection is no longer read (see
//!   Backpressure), so that response would never be read. Spawn such work instead.
//! - **Requests are handled concurrently**: each on a task of its own, started in the order the
//!   requests arrived, finishing in any order (at most [`MAX_HANDLERS_PER_CONNECTION`] at once).
//!   A remote that needs one request done before the next starts waits for the response.
//! - **Between requests and stream messages there is no order**: a request handler may run
//!   before, after or while a stream message that arrived earlier is handled.
//!
//! Different connections are served independently, with no order between them.
//!
//! # Backpressure
//!
//! A connection is read only while there is room for what it may bring: fewer than
//! [`MAX_HANDLERS_PER_CONNECTION`] request handlers running, and fewer than
//! [`MAX_QUEUED_STREAM_MESSAGES`] stream messages (and [`MAX_QUEUED_STREAM_BYTES`] of their
//! bodies) waiting for the stream handler. Otherwise the connection is not read until a handler
//! finishes: the remote is pushed back through the socket, and its requests wait behind its
//! stream messages too, since the next message cannot be looked at without reading it.
//!
//! On shutdown, the stream messages already taken into the connection's queue (at most
//! [`MAX_QUEUED_STREAM_MESSAGES`]) are still handled, in order, within the grace period; at the
//! deadline the running stream handler is aborted and those still waiting are dropped. Stream
//! messages not yet read from the connection when the shutdown comes are dropped, even if the
//! remote sent them before it. What is handled is always a prefix of what was sent, in order: a
//! command that must not be lost at shutdown should be a request, whose sender learns whether
//! it was handled.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
pub use tokio_util::sync::CancellationToken;

use crate::handle::{PeerHandle, PeerWriteHandle, ReceivedMessage};
use crate::listener::{Acceptor, Listener};
use crate::message::{Body, Message};
use crate::transport::{ConnectionInfo, Transport};

/// The error text sent for a request that arrives while the server shuts down.
pub const SHUTTING_DOWN_TEXT: &str = "server is shutting down";

/// How long a closing connection may take to flush its last messages once the grace period is
/// over. A remote that never reads cannot hold the shutdown longer than this (the peer task
/// itself gives up after [`Config::close_timeout`](crate::Config::close_timeout)).
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// The most request handlers running at once for one connection. At the limit the connection is
/// not read until one finishes, which pushes back on the remote instead of spawning without bound.
pub const MAX_HANDLERS_PER_CONNECTION: usize = 1024;

/// The most stream messages of one connection waiting for the one being handled. With the queue
/// full the connection is not read until the stream handler catches up.
pub const MAX_QUEUED_STREAM_MESSAGES: usize = 64;

/// The most body bytes of stream messages of one connection waiting for the one being handled
/// (a single larger message still waits alone). Once taken from the connection, a stream message
/// no longer counts against [`Config::max_buffered_incoming`](crate::Config::max_buffered_incoming),
/// so this bounds the memory the queue can hold.
pub const MAX_QUEUED_STREAM_BYTES: usize = 1 << 20;

/// Accept connections from `listener` and serve each with `handler` until `shutdown` is
/// cancelled, then shut down gracefully within `grace` (see [`serve_connection`]).
///
/// Accept errors never stop the server: a connection that fails while being accepted is skipped,
/// and the listener backs off by itself when it runs out of descriptors (see
/// [`Listener::accept`]). The listener's connection limit, if set, applies. Returns once every
/// connection is closed.
///
/// ```no_run
/// # async fn demo() -> Result<(), peerwire::Error> {
/// use std::time::Duration;
/// use peerwire::server::{CancellationToken, serve};
/// use peerwire::{Config, ReceivedMessage, TcpListener};
///
/// let listener = TcpListener::bind("127.0.0.1:29285", &Config::default()).await?;
/// let shutdown = CancellationToken::new();
/// let server = tokio::spawn(serve(listener, shutdown.clone(), Duration::from_secs(5), |message, _peer| async move {
///     if let ReceivedMessage::Request(request, body) = message {
///         let _ = request.send_response(0, body).await;
///     }
/// }));
/// // ... later, on SIGTERM:
/// shutdown.cancel();
/// server.await.unwrap();
/// # Ok(())
/// # }
/// ```
pub async fn serve<A, H, F>(listener: Listener<A>, shutdown: CancellationToken, grace: Duration, handler: H)
where
	A: Acceptor,
	H: Fn(ReceivedMessage<<A::Transport as Transport>::Body>, PeerWriteHandle<<A::Transport as Transport>::Body>) -> F
		+ Clone
		+ Send
		+ Sync
		+ 'static,
	F: Future<Output = ()> + Send + 'static,
{
	let token = shutdown.clone();
	serve_with(listener, shutdown, move |peer, _info| serve_connection(peer, token.clone(), grace, handler.clone()))
		.await
}

/// Accept connections from `listener` until `shutdown` is cancelled, and run `on_connection` for
/// each, in a task of its own, with the connection's handle and what is known about the remote:
/// for a server that drives its connections itself instead of with a message handler
/// ([`serve`] is this with [`serve_connection`] as the hook).
///
/// Accept errors never stop the server, as for [`serve`]. Once `shutdown` is cancelled, no more
/// connections are accepted (the listening socket closes at once), and this returns when every
/// connection task has ended: a hook should watch `shutdown` too (clone it into the hook) and
/// end, or close its connection, when it is cancelled.
///
/// ```no_run
/// # async fn demo() -> Result<(), peerwire::Error> {
/// use peerwire::server::serve_with;
/// use peerwire::{CancellationToken, Config, TcpListener};
///
/// let listener = TcpListener::bind("127.0.0.1:29285", &Config::default()).await?;
/// let shutdown = CancellationToken::new();
/// let token = shutdown.clone();
/// serve_with(listener, shutdown, move |mut peer, info| {
///     let token = token.clone();
///     async move {
///         println!("connection from {info}");
///         loop {
///             tokio::select! {
///                 message = peer.recv_message() => match message {
///                     Ok(message) => println!("{message:?}"),
///                     Err(_) => break,
///                 },
///                 () = token.cancelled() => break,
///             }
///         }
///     }
/// })
/// .await;
/// # Ok(())
/// # }
/// ```
pub async fn serve_with<A, H, F>(mut listener: Listener<A>, shutdown: CancellationToken, mut on_connection: H)
where
	A: Acceptor,
	H: FnMut(PeerHandle<<A::Transport as Transport>::Body>, ConnectionInfo) -> F,
	F: Future<Output = ()> + Send + 'static,
{
	let mut connections = JoinSet::new();
	loop {
		tokio::select! {
			biased;
			_ = shutdown.cancelled() => break,
			// Before accepting: under a flood of new connections, finished ones are still reaped.
			Some(_) = connections.join_next(), if !connections.is_empty() => {},
			accepted = listener.accept() => match accepted {
				// The listener logged it, in the connection's span.
				Ok((peer, info)) => {
					connections.spawn(on_connection(peer, info));
				},
				// The listener logged it, and waits before its next try.
				Err(error) => tracing::debug!("accept failed: {error}"),
			},
		}
	}
	// Stop accepting at once: the listening socket closes here.
	drop(listener);
	while connections.join_next().await.is_some() {}
}

/// Serve one connection: run `handler` for every message received, until the connection ends
/// or `shutdown` is cancelled.
///
/// Stream messages are handled one after another, in the order they arrived; each request gets a
/// task of its own (at most [`MAX_HANDLERS_PER_CONNECTION`] at once). See the [module
/// docs](self) for the ordering guarantees and for how the remote is pushed back.
///
/// On shutdown, requests that arrive are answered with the error response
/// [`SHUTTING_DOWN_TEXT`] and stream messages are dropped; handlers already running, and stream
/// messages that arrived before the shutdown, have until `grace` has passed to finish, after which
/// running handlers are aborted (their requests get the automatic error response of a dropped
/// request) and stream messages still waiting are dropped. Then the connection is closed,
/// flushing what was queued.
pub async fn serve_connection<B, H, F>(peer: PeerHandle<B>, shutdown: CancellationToken, grace: Duration, handler: H)
where
	B: Body,
	H: Fn(ReceivedMessage<B>, PeerWriteHandle<B>) -> F + Send + Sync + 'static,
	F: Future<Output = ()> + Send + 'static,
{
	let (mut read, write) = peer.split();
	let mut handlers = JoinSet::new();
	let mut streams = OrderedStreams::new();

	// Serve until the shutdown or the end of the connection.
	let mut ended = loop {
		tokio::select! {
			biased;
			_ = shutdown.cancelled() => break false,
			Some(finished) = handlers.join_next(), if !handlers.is_empty() => log_handler_end(finished),
			Some(finished) = streams.join_next(), if streams.is_running() => {
				log_handler_end(finished);
				streams.start_next(&handler, &write);
			},
			// At the handler limit, or with the stream queue full, stop reading: the remote is
			// pushed back through the socket.
			message = read.recv_message(), if handlers.len() < MAX_HANDLERS_PER_CONNECTION && streams.has_room() => match message {
				Ok(ReceivedMessage::Stream(message)) => streams.push(message, &handler, &write),
				Ok(request) => {
					handlers.spawn(handler(request, write.clone()));
				},
				Err(error) => {
					tracing::debug!("connection ended: {error}");
					break true;
				},
			},
		}
	};

	if ended {
		// Nothing more can arrive. Running handlers and the stream messages already received
		// finish on their own (their sends fail), but a shutdown still bounds how long they take.
		while !handlers.is_empty() || streams.is_running() {
			tokio::select! {
				Some(finished) = handlers.join_next(), if !handlers.is_empty() => log_handler_end(finished),
				Some(finished) = streams.join_next(), if streams.is_running() => {
					log_handler_end(finished);
					streams.start_next(&handler, &write);
				},
				_ = shutdown.cancelled() => break,
			}
		}
		if !shutdown.is_cancelled() {
			return;
		}
	}

	// Shutting down: refuse new requests, give running handlers and the stream messages already
	// received until the deadline.
	let deadline = Instant::now() + grace;
	// Until every handler is done: nothing that arrives now starts another.
	while !handlers.is_empty() || streams.is_running() {
		tokio::select! {
			biased;
			_ = tokio::time::sleep_until(deadline) => {
				tracing::debug!(
					running = handlers.len() + usize::from(streams.is_running()),
					queued_streams = streams.queue.len(),
					"grace period over: aborting handlers, dropping queued stream messages"
				);
				handlers.abort_all();
				streams.abort();
				break;
			},
			Some(finished) = handlers.join_next(), if !handlers.is_empty() => log_handler_end(finished),
			Some(finished) = streams.join_next(), if streams.is_running() => {
				log_handler_end(finished);
				streams.start_next(&handler, &write);
			},
			message = read.recv_message(), if !ended => match message {
				Ok(ReceivedMessage::Request(request, _)) => {
					// A remote that does not read could make this wait for room forever: the
					// deadline bounds it, and a request dropped then still gets an answer.
					tokio::select! {
						_ = request.send_error_response(SHUTTING_DOWN_TEXT) => {},
						_ = tokio::time::sleep_until(deadline) => {},
					}
				},
				Ok(ReceivedMessage::Stream(message)) => {
					tracing::debug!(service_id = message.header.service_id, "shutting down: dropped a stream message");
				},
				Err(_) => ended = true,
			},
		}
	}
	while handlers.join_next().await.is_some() {}
	while streams.join_next().await.is_some() {}

	write.close();
	drop(read);
	if tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, write.closed()).await.is_err() {
		tracing::warn!("connection did not finish closing in time (the remote is not reading)");
	}
}

/// The stream messages of one connection: handled one at a time, in arrival order, each on a task
/// of its own (so that a panicking handler loses only its own message), with the messages that
/// wait behind the running one bounded in count and bytes.
struct OrderedStreams<B> {
	/// Holds the one running stream handler, if any: a `JoinSet` so that it is aborted when the
	/// connection's future is dropped.
	running: JoinSet<()>,
	queue: VecDeque<Message<B>>,
	/// Body bytes in `queue`.
	queued_bytes: usize,
}

impl<B: Body> OrderedStreams<B> {
	fn new() -> Self {
		Self { running: JoinSet::new(), queue: VecDeque::new(), queued_bytes: 0 }
	}

	fn is_running(&self) -> bool {
		!self.running.is_empty()
	}

	/// Whether another stream message may be read. A message larger than the byte bound is still
	/// taken when the queue is empty: it waits alone.
	fn has_room(&self) -> bool {
		self.queue.is_empty()
			|| (self.queue.len() < MAX_QUEUED_STREAM_MESSAGES && self.queued_bytes < MAX_QUEUED_STREAM_BYTES)
	}

	/// Handle `message` now if no stream handler runs, or after those that arrived before it.
	fn push<H, F>(&mut self, message: Message<B>, handler: &H, write: &PeerWriteHandle<B>)
	where
		H: Fn(ReceivedMessage<B>, PeerWriteHandle<B>) -> F,
		F: Future<Output = ()> + Send + 'static,
	{
		self.queued_bytes += message.body.len();
		self.queue.push_back(message);
		if !self.is_running() {
			self.start_next(handler, write);
		}
	}

	/// Start the handler of the oldest waiting message, if any; called when none runs.
	fn start_next<H, F>(&mut self, handler: &H, write: &PeerWriteHandle<B>)
	where
		H: Fn(ReceivedMessage<B>, PeerWriteHandle<B>) -> F,
		F: Future<Output = ()> + Send + 'static,
	{
		if let Some(message) = self.queue.pop_front() {
			self.queued_bytes -= message.body.len();
			self.running.spawn(handler(ReceivedMessage::Stream(message), write.clone()));
		}
	}

	/// Wait for the running handler to end (cancel-safe). `None` if none runs.
	async fn join_next(&mut self) -> Option<Result<(), tokio::task::JoinError>> {
		self.running.join_next().await
	}

	/// Abort the running handler and drop the waiting messages.
	fn abort(&mut self) {
		self.running.abort_all();
		self.queue.clear();
		self.queued_bytes = 0;
	}
}

fn log_handler_end(finished: Result<(), tokio::task::JoinError>) {
	if let Err(error) = finished {
		if error.is_panic() {
			tracing::error!("a message handler panicked");
		}
	}
}
