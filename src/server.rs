//! Serving connections with a handler, and shutting down gracefully.
//!
//! [`serve`] accepts connections from a [`Listener`] and [`serve_connection`] runs a handler for
//! every message of one connection (from a listener, `connect`, or an in-memory pair). Both stop
//! on a [`CancellationToken`]: no new connections are accepted, new requests are refused with an
//! error response, requests already being handled get a grace period to finish, and then every
//! connection is closed. A handler still running at the deadline is aborted; the requests it held
//! are answered with the automatic error response of a dropped request, so no remote waits forever.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
pub use tokio_util::sync::CancellationToken;

use crate::handle::{PeerHandle, PeerWriteHandle, ReceivedMessage};
use crate::listener::{Acceptor, Listener};
use crate::message::Body;
use crate::transport::Transport;

/// The error text sent for a request that arrives while the server shuts down.
pub const SHUTTING_DOWN_TEXT: &str = "server is shutting down";

/// How long a closing connection may take to flush its last messages once the grace period is
/// over. A remote that never reads cannot hold the shutdown longer than this (the peer task
/// itself gives up after [`Config::close_timeout`](crate::Config::close_timeout)).
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// The most handlers running at once for one connection. At the limit the connection is not
/// read until one finishes, which pushes back on the remote instead of spawning without bound.
pub const MAX_HANDLERS_PER_CONNECTION: usize = 1024;

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
/// let listener = TcpListener::bind("127.0.0.1:29285", Config::default()).await?;
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
pub async fn serve<A, H, F>(mut listener: Listener<A>, shutdown: CancellationToken, grace: Duration, handler: H)
where
	A: Acceptor,
	H: Fn(ReceivedMessage<<A::Transport as Transport>::Body>, PeerWriteHandle<<A::Transport as Transport>::Body>) -> F
		+ Clone
		+ Send
		+ Sync
		+ 'static,
	F: Future<Output = ()> + Send + 'static,
{
	let mut connections = JoinSet::new();
	loop {
		tokio::select! {
			biased;
			_ = shutdown.cancelled() => break,
			accepted = listener.accept() => match accepted {
				Ok((peer, info)) => {
					tracing::debug!(remote = ?info.remote_address, "accepted a connection");
					connections.spawn(serve_connection(peer, shutdown.clone(), grace, handler.clone()));
				},
				// The listener logged it, and waits before its next try.
				Err(error) => tracing::debug!("accept failed: {error}"),
			},
			Some(_) = connections.join_next(), if !connections.is_empty() => {},
		}
	}
	// Stop accepting at once: the listening socket closes here.
	drop(listener);
	while connections.join_next().await.is_some() {}
}

/// Serve one connection: run `handler` on its own task for every message received (at most
/// [`MAX_HANDLERS_PER_CONNECTION`] at once), until the connection ends or `shutdown` is cancelled.
///
/// On shutdown, requests that arrive are answered with the error response
/// [`SHUTTING_DOWN_TEXT`] and stream messages are dropped; handlers already running have until
/// `grace` has passed to finish, after which they are aborted (their requests get the automatic
/// error response of a dropped request). Then the connection is closed, flushing what was queued.
pub async fn serve_connection<B, H, F>(peer: PeerHandle<B>, shutdown: CancellationToken, grace: Duration, handler: H)
where
	B: Body,
	H: Fn(ReceivedMessage<B>, PeerWriteHandle<B>) -> F + Send + Sync + 'static,
	F: Future<Output = ()> + Send + 'static,
{
	let (mut read, write) = peer.split();
	let mut handlers = JoinSet::new();

	// Serve until the shutdown or the end of the connection.
	let mut ended = loop {
		tokio::select! {
			biased;
			_ = shutdown.cancelled() => break false,
			Some(finished) = handlers.join_next(), if !handlers.is_empty() => log_handler_end(finished),
			// At the handler limit, stop reading: the remote is pushed back through the socket.
			message = read.recv_message(), if handlers.len() < MAX_HANDLERS_PER_CONNECTION => match message {
				Ok(message) => {
					handlers.spawn(handler(message, write.clone()));
				},
				Err(error) => {
					tracing::debug!("connection ended: {error}");
					break true;
				},
			},
		}
	};

	if ended {
		// Nothing more can arrive. Running handlers finish on their own (their sends fail), but a
		// shutdown still bounds how long they may take.
		loop {
			tokio::select! {
				finished = handlers.join_next() => match finished {
					Some(finished) => log_handler_end(finished),
					None => return,
				},
				_ = shutdown.cancelled() => break,
			}
		}
	}

	// Shutting down: refuse new requests, give running handlers until the deadline.
	let deadline = Instant::now() + grace;
	loop {
		tokio::select! {
			biased;
			_ = tokio::time::sleep_until(deadline) => {
				tracing::debug!(running = handlers.len(), "grace period over: aborting handlers");
				handlers.abort_all();
				break;
			},
			finished = handlers.join_next() => match finished {
				Some(finished) => log_handler_end(finished),
				None => break,
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

	write.close();
	drop(read);
	if tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, write.closed()).await.is_err() {
		tracing::warn!("connection did not finish closing in time (the remote is not reading)");
	}
}

fn log_handler_end(finished: Result<(), tokio::task::JoinError>) {
	if let Err(error) = finished {
		if error.is_panic() {
			tracing::error!("a message handler panicked");
		}
	}
}
