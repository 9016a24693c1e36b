//! The driver of one connection: a task that moves bytes between the transport and the
//! connection state ([`proto::Connection`](crate::proto)), which the handles share with it.
//!
//! Each round it reads a batch of messages (decoding outside the lock), takes the lock once to
//! hand them to the state and take what the handles queued, then writes and flushes outside the
//! lock. Timers (close, frame, idle, letting go of spare buffers) live here, not in the state.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
use crate::error::Error;
use crate::handle::PeerHandle;
use crate::message::{Body, Message, MessageType};
use crate::proto::{Connection, Limits, Outgoing};
use crate::transport::{ConnectionInfo, Transport, TransportRead, TransportWrite};

/// Messages read in one go before the peer looks at its other work again.
const READ_BATCH: usize = 64;
/// Bytes of bodies read in one go before they are handed to the state.
const INBOX_BYTES: usize = 64 * 1024;
/// How long a connection must be quiet before the transport lets go of buffers grown for a large
/// message: long enough that a steady flow of large messages keeps them.
const RELEASE_SPARE_AFTER: Duration = Duration::from_millis(100);
/// Rounds of work before the peer yields to the runtime even if more is ready.
const ROUNDS_BEFORE_YIELD: usize = 32;

/// What the peer task and every handle of one connection share.
pub(crate) struct Shared<B> {
	state: Mutex<Connection<B>>,
	/// The write side. Lock order: `writer`, then `state`; never the other way round.
	writer: Mutex<Writer<B>>,
	/// Cancelled when the peer task has stopped and the transport is dropped.
	pub(crate) stopped: CancellationToken,
	/// Notified when the write queue has room again (or the connection is closing or ended).
	pub(crate) room: Notify,
	/// Notified when more of the queued messages are flushed (or the connection ended).
	pub(crate) flushed: Notify,
	pub(crate) info: ConnectionInfo,
}

impl<B> Shared<B> {
	pub(crate) fn state(&self) -> MutexGuard<'_, Connection<B>> {
		// Every change of the state is made by one method call that cannot panic half-way on
		// remote input; a poisoned lock (a panic in application code cannot happen under it)
		// is safe to keep using.
		self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
	}
}

impl<B: Body> Shared<B> {
	/// The error for an operation on a connection that has ended.
	pub(crate) fn closed_error(&self) -> Error {
		self.state().closed_error()
	}

	fn writer(&self) -> MutexGuard<'_, Writer<B>> {
		// Its fields change one call at a time; a panic (only in a transport) leaves them usable.
		self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
	}

	/// A handle queued a message while the peer task slept with nothing to write: write it from
	/// here, saving the hand-off to the peer task. If the peer task (or another handle) holds the
	/// write side, or the transport cannot take it all now, the peer task is woken to go on; a
	/// flush that must wait for the socket registers the peer task's waker, not this task's.
	pub(crate) fn write_direct(&self) {
		let mut writer = match self.writer.try_lock() {
			Ok(writer) => writer,
			Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
			Err(std::sync::TryLockError::WouldBlock) => return self.state().wake_driver(),
		};
		let Some(driver) = writer.driver.clone() else {
			drop(writer);
			return self.state().wake_driver();
		};
		if writer.transport.is_none() {
			return;
		}
		if writer.batch.is_empty() {
			let writer = &mut *writer;
			self.state().take_outgoing(&mut writer.batch);
		}
		writer.feed(self);
		writer.flush(&mut Context::from_waker(&driver));
		let (notify_room, notify_flushed) = {
			let mut state = self.state();
			let notify = writer.report(&mut state);
			if !writer.batch.is_empty() || writer.error.is_some() || writer.has_queued() {
				state.wake_driver();
			}
			notify
		};
		drop(writer);
		self.notify(notify_room, notify_flushed);
	}

	fn notify(&self, room: bool, flushed: bool) {
		if room {
			self.room.notify_waiters();
		}
		if flushed {
			self.flushed.notify_waiters();
		}
	}
}

/// What the transport has flushed since the state last heard of it.
#[derive(Default)]
struct Flushed {
	cost: usize,
	auto_replies: usize,
	total: u64,
}

/// The write side of a connection: the transport's writer and the messages taken from the state
/// for it. The peer task writes through it, and so does a handle that queues a message while the
/// peer task sleeps with nothing to write.
struct Writer<B> {
	/// `None` once the peer task has stopped (dropping it closes the connection).
	transport: Option<Box<dyn TransportWrite<Body = B>>>,
	/// Taken from the state and not yet given to the transport.
	batch: VecDeque<Outgoing<B>>,
	/// Metered messages given to the transport since the state last heard of it.
	taken_metered: usize,
	/// Messages given to the transport, ever.
	taken_total: u64,
	/// What the transport holds, not yet flushed: bytes of the outgoing budget, automatic
	/// replies.
	written_cost: usize,
	written_auto: usize,
	/// Flushed since the state last heard of it.
	flushed: Option<Flushed>,
	/// The state had nothing more to write when last looked at.
	state_drained: bool,
	/// The peer task's waker, for flushes a handle begins.
	driver: Option<Waker>,
	/// A write error met by a handle's flush, for the peer task to end the connection with.
	error: Option<Error>,
}

impl<B: Body> Writer<B> {
	fn has_queued(&self) -> bool {
		self.transport.as_ref().is_some_and(|transport| transport.has_queued())
	}

	/// Give the batch to the transport while it wants more; whether anything was given.
	fn feed(&mut self, shared: &Shared<B>) -> bool {
		let Some(transport) = self.transport.as_mut() else { return false };
		let mut fed = false;
		while transport.wants_more() {
			let Some(outgoing) = self.batch.pop_front() else { break };
			self.taken_total += 1;
			if outgoing.metered {
				self.taken_metered += 1;
			} else {
				self.written_auto += 1;
			}
			self.written_cost += outgoing.cost;
			let header = outgoing.message.header;
			if let Err(error) = transport.start_send(outgoing.message) {
				// Handles check the limits before queuing, so this is a configuration mismatch.
				tracing::error!(?header, "transport refused a message: {error}");
				if header.message_type == MessageType::Request {
					// Fail the request's handle rather than leave it waiting for a response.
					shared.state().refused_by_transport(header.request_id);
				}
			}
			fed = true;
		}
		fed
	}

	/// Flush what the transport holds; whether anything changed (a flush completed, or an error
	/// was met and kept in `error`).
	fn flush(&mut self, cx: &mut Context<'_>) -> bool {
		let Some(transport) = self.transport.as_mut() else { return false };
		if transport.has_queued() {
			match transport.poll_flush(cx) {
				Poll::Ready(Ok(())) => {},
				Poll::Ready(Err(error)) => {
					self.error.get_or_insert(error);
					return true;
				},
				Poll::Pending => return false,
			}
		} else if self.written_cost == 0 && self.written_auto == 0 {
			return false;
		}
		// Everything given to the transport so far is written.
		let flushed = self.flushed.get_or_insert_with(Flushed::default);
		flushed.cost += std::mem::take(&mut self.written_cost);
		flushed.auto_replies += std::mem::take(&mut self.written_auto);
		flushed.total = self.taken_total;
		true
	}

	/// Tell the state what was taken and flushed; whether senders waiting for room and flushes
	/// waiting must be notified.
	fn report(&mut self, state: &mut Connection<B>) -> (bool, bool) {
		let freed = self.taken_metered > 0 || self.flushed.is_some();
		state.on_taken(std::mem::take(&mut self.taken_metered));
		let flushed = self.flushed.take();
		if let Some(flushed) = &flushed {
			state.on_flushed(flushed.cost, flushed.auto_replies, flushed.total);
		}
		let notify_room = (freed || state.is_closing()) && std::mem::take(&mut state.room_wanted);
		let notify_flushed = flushed.is_some() && std::mem::take(&mut state.flush_wanted);
		(notify_room, notify_flushed)
	}
}

/// The background task of one connection.
///
/// Most users never touch a `Peer`: [`TcpPeer::connect`](crate::TcpPeer), the listeners and
/// [`Peer::spawn`] start it and hand out a [`PeerHandle`]. Use [`Peer::new`] and [`Peer::run`]
/// to run it on a task (or runtime) of your own choosing.
///
/// The peer stops when the remote closes the connection, on the first I/O or protocol error,
/// after [`PeerHandle::close`], or when every handle (peer handles and request handles) is gone.
/// Whatever the reason, every open request handle and every pending receive then fails with
/// [`ErrorKind::ConnectionClosed`](crate::ErrorKind::ConnectionClosed).
pub struct Peer<T: Transport> {
	reader: T::Reader,
	shared: Arc<Shared<T::Body>>,
	/// Read and not yet handed to the state: the first may be waiting for room.
	inbox: VecDeque<Message<T::Body>>,
	/// The transport has reported the remote's end of stream (the state hears of it once the
	/// inbox is handed over).
	eof: bool,
	// Copies of the state's flags from the last round.
	closing: bool,
	remote_done: bool,
	links: usize,
	unanswered: usize,
	auto_replies_full: bool,
	state_idle: bool,
	/// Messages queued by the handles as of the last round (for the idle timeout).
	queued_seen: u64,
	/// How long closing may take, and the deadline once closing has begun.
	close_timeout: Duration,
	close_deadline: Option<Pin<Box<Sleep>>>,
	/// `Config::frame_timeout`, and the deadline of the frame being read, once it has begun.
	frame_timeout: Option<Duration>,
	frame_deadline: Option<Pin<Box<Sleep>>>,
	/// `Config::idle_timeout`, its timer, and the last time a message went either way.
	idle_timeout: Option<Duration>,
	idle_deadline: Option<Pin<Box<Sleep>>>,
	last_activity: Instant,
	/// While the transport holds spare memory: when to look again, and whether the connection
	/// has been quiet since the last look.
	release_deadline: Option<Pin<Box<Sleep>>>,
	quiet_since_look: bool,
}

impl<T: Transport> Peer<T> {
	/// Create the peer task for `transport` and the handle to talk through it.
	///
	/// Nothing happens until [`Peer::run`] is awaited.
	pub fn new(transport: T, config: &Config) -> (Self, PeerHandle<T::Body>) {
		let info = transport.info();
		let (reader, writer) = transport.split();
		let limits = Limits::new(config, writer.max_body_len(), writer.max_fds());
		let writer = Writer {
			transport: Some(Box::new(writer) as Box<dyn TransportWrite<Body = T::Body>>),
			batch: VecDeque::new(),
			taken_metered: 0,
			taken_total: 0,
			written_cost: 0,
			written_auto: 0,
			flushed: None,
			state_drained: false,
			driver: None,
			error: None,
		};
		let shared = Arc::new(Shared {
			state: Mutex::new(Connection::new(limits)),
			writer: Mutex::new(writer),
			stopped: CancellationToken::new(),
			room: Notify::new(),
			flushed: Notify::new(),
			info,
		});
		let handle = PeerHandle::new(shared.clone());
		let peer = Self {
			reader,
			shared,
			inbox: VecDeque::new(),
			eof: false,
			closing: false,
			remote_done: false,
			links: 1,
			unanswered: 0,
			auto_replies_full: false,
			state_idle: false,
			queued_seen: 0,
			close_timeout: config.close_timeout,
			close_deadline: None,
			frame_timeout: config.frame_timeout,
			frame_deadline: None,
			idle_timeout: config.idle_timeout,
			// Made on the first poll: `new` may be called outside a runtime.
			idle_deadline: None,
			last_activity: Instant::now(),
			release_deadline: None,
			quiet_since_look: false,
		};
		(peer, handle)
	}

	/// Spawn the peer task on the current tokio runtime and return its handle.
	///
	/// An error that ends the connection is logged (`tracing`) and reported to every handle.
	pub fn spawn(transport: T, config: &Config) -> PeerHandle<T::Body> {
		let span = crate::transport::connection_span(&transport.info());
		tracing::info!(parent: &span, "peer started");
		Self::spawn_with(transport, config, (), span)
	}

	/// [`spawn`](Self::spawn), in `span` (see `transport::connection_span`; the caller logs the
	/// start of the connection in it), with `guard` dropped when the peer task ends (a listener's
	/// connection count, for example).
	///
	/// The end is logged once in the span: at `info` with who closed it, or at `warn` with the
	/// error that ended it.
	pub(crate) fn spawn_with<G: Send + 'static>(
		transport: T,
		config: &Config,
		guard: G,
		span: tracing::Span,
	) -> PeerHandle<T::Body> {
		let (peer, handle) = Self::new(transport, config);
		let shared = peer.shared.clone();
		tokio::spawn(
			async move {
				match peer.run().await {
					Ok(()) if shared.closed_error().is_closed_locally() => tracing::info!("connection closed locally"),
					Ok(()) => tracing::info!("connection closed by the remote"),
					Err(error) => tracing::warn!("connection closed: {error}"),
				}
				drop(guard);
			}
			.instrument(span),
		);
		handle
	}

	/// What is known about the remote.
	pub fn info(&self) -> &ConnectionInfo {
		&self.shared.info
	}

	/// Drive the connection until it ends.
	///
	/// Returns `Ok` when it ended in an orderly way (closed by either side or all handles
	/// dropped), and the error that ended it otherwise.
	pub async fn run(mut self) -> Result<(), Error> {
		let result = poll_fn(|cx| self.poll_drive(cx)).await;
		let reason = match &result {
			Ok(()) => Error::closed_locally(),
			Err(error) => Error::closed_by(error.clone()),
		};
		// Set before `self` is dropped, which is when the handles learn of the end.
		self.shared.state().set_close_reason(reason);
		match result {
			Err(error) if error.is_closed_by_remote() => Ok(()),
			other => other,
		}
	}

	fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
		for _ in 0..ROUNDS_BEFORE_YIELD {
			let mut progress = false;
			// A message went either way this round (for the idle timeout).
			let mut active = false;

			// Read a batch, outside the lock. Nothing more while the inbox waits for room or
			// replies of our own making wait to be written (reading could make more).
			let mut waiting_for_remote = false;
			let mut read_error = None;
			let mut inbox_bytes = 0;
			if !self.eof && (self.closing || (self.inbox.is_empty() && !self.auto_replies_full)) {
				for _ in 0..READ_BATCH {
					match self.reader.poll_read_message(cx) {
						Poll::Ready(Ok(Some(message))) => {
							progress = true;
							if self.closing {
								// Kept reading only so that a remote that hangs up ends the wait
								// for the flush.
								tracing::debug!(header = ?message.header, "closing: dropped an incoming message");
								continue;
							}
							self.frame_deadline = None;
							inbox_bytes += message.body.len();
							self.inbox.push_back(message);
							active = true;
							if inbox_bytes >= INBOX_BYTES {
								// Handed over before reading more: what the state refuses is
								// let go at once, so reading ahead holds little.
								break;
							}
						},
						Poll::Ready(Ok(None)) => {
							self.eof = true;
							progress = true;
							break;
						},
						Poll::Ready(Err(error)) => {
							if let Some(violation) = error.protocol_violation() {
								tracing::warn!("protocol violation by the remote: {violation}");
							}
							// Handed what came before it first, below.
							read_error = Some(error);
							break;
						},
						Poll::Pending => {
							waiting_for_remote = true;
							break;
						},
					}
				}
			}

			// The write side, then the state (the lock order): hand over what was read, take what
			// the handles queued; then write and flush outside the state's lock.
			let shared = self.shared.clone();
			let mut writer = shared.writer();
			if !writer.driver.as_ref().is_some_and(|driver| driver.will_wake(cx.waker())) {
				writer.driver = Some(cx.waker().clone());
			}
			let (notify_room, notify_flushed) = {
				let mut state = shared.state();
				let notify = writer.report(&mut state);
				let waiting = self.inbox.len();
				while let Some(message) = self.inbox.pop_front() {
					if let Err(message) = state.recv(message) {
						self.inbox.push_front(message);
						break;
					}
				}
				if self.inbox.len() < waiting {
					// Handed over: read again (which also registers for the remote's bytes).
					progress = true;
				}
				if self.eof && !self.remote_done && self.inbox.is_empty() {
					tracing::debug!(
						unanswered = state.unanswered(),
						"the remote closed its side; answering what it asked, then closing"
					);
					state.remote_done();
					progress = true;
				}
				if writer.batch.is_empty() {
					let writer = &mut *writer;
					writer.state_drained = !state.take_outgoing(&mut writer.batch);
				}
				// Woken by the state when something changes that this task waits for; by a
				// queued message only if it has nothing to write (else it is busy writing, and a
				// handle that queues writes it itself).
				state.park_driver(cx.waker(), writer.batch.is_empty());
				if !self.closing && state.is_closing() {
					tracing::debug!("closing on request");
					progress = true;
				}
				self.closing = state.is_closing();
				self.remote_done = state.is_remote_done();
				self.links = state.links();
				self.unanswered = state.unanswered();
				self.auto_replies_full = state.too_many_auto_replies();
				if self.idle_timeout.is_some() {
					self.state_idle = state.is_idle();
					// Handles may have written without this task (`write_direct`).
					if std::mem::replace(&mut self.queued_seen, state.queued_total()) != state.queued_total() {
						active = true;
					}
				}
				notify
			};
			if let Some(error) = read_error {
				return Poll::Ready(Err(error));
			}
			self.shared.notify(notify_room, notify_flushed);

			if writer.feed(&shared) {
				progress = true;
				active = true;
			}
			if writer.taken_metered > 0 {
				// Places of the write queue are free: tell the state (and waiting senders) in
				// another round, even if the flush below has to wait.
				progress = true;
			}
			if writer.flush(cx) {
				progress = true;
			}
			if let Some(error) = writer.error.take() {
				return Poll::Ready(Err(error));
			}

			let done_writing = writer.batch.is_empty() && writer.state_drained && !writer.has_queued();
			if self.closing || self.remote_done || self.links == 0 {
				let timeout = self.close_timeout;
				let deadline = self.close_deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
				if deadline.as_mut().poll(cx).is_ready() {
					if self.remote_done && self.unanswered > 0 {
						tracing::warn!(
							"the remote closed its side and {} of its requests were not answered within {timeout:?}; giving up",
							self.unanswered
						);
					} else {
						tracing::warn!("closing took longer than {timeout:?}: the remote is not reading; giving up");
					}
					return Poll::Ready(Ok(()));
				}
			}
			let settled = done_writing && writer.flushed.is_none() && writer.taken_metered == 0;
			if let Some(transport) = writer.transport.as_mut().filter(|_| settled) {
				if self.closing || self.links == 0 {
					return transport.poll_shutdown(cx);
				}
				if self.remote_done && self.unanswered == 0 {
					// Everything the remote asked is answered and on the wire: close our side too.
					ready!(transport.poll_shutdown(cx))?;
					return Poll::Ready(Err(Error::closed_by_remote()));
				}
			}
			drop(writer);

			if let Some(timeout) = self.frame_timeout {
				if waiting_for_remote && self.reader.mid_frame() {
					let deadline = self.frame_deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
					if deadline.as_mut().poll(cx).is_ready() {
						tracing::warn!("the remote began a frame and did not finish it within {timeout:?}");
						return Poll::Ready(Err(Error::timeout(timeout)));
					}
				} else {
					// Between frames, or not reading because of our own backpressure: the next
					// frame gets the whole timeout.
					self.frame_deadline = None;
				}
			}

			if active && self.idle_timeout.is_some() {
				self.last_activity = Instant::now();
			}
			if self.poll_idle(cx) {
				progress = true;
			}
			if active {
				self.quiet_since_look = false;
			} else if !progress {
				self.poll_release_spare(cx);
			}

			if !progress {
				return Poll::Pending;
			}
		}
		// Plenty more to do: let other tasks run first.
		cx.waker().wake_by_ref();
		Poll::Pending
	}

	/// Let the transport give back buffers grown for a large message once the connection has been
	/// quiet for [`RELEASE_SPARE_AFTER`]. Costs nothing (no timer) while it holds none.
	fn poll_release_spare(&mut self, cx: &mut Context<'_>) {
		let writer_holds = self.shared.writer().transport.as_ref().is_some_and(|writer| writer.holds_spare_memory());
		if !self.reader.holds_spare_memory() && !writer_holds {
			self.release_deadline = None;
			return;
		}
		if self.release_deadline.is_none() {
			// Armed at a quiet moment: this round moved nothing.
			self.quiet_since_look = true;
		}
		let deadline = self.release_deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(RELEASE_SPARE_AFTER)));
		while deadline.as_mut().poll(cx).is_ready() {
			if self.quiet_since_look {
				self.reader.release_spare_memory();
				if let Some(writer) = self.shared.writer().transport.as_mut() {
					writer.release_spare_memory();
				}
				self.release_deadline = None;
				return;
			}
			// Busy since the last look: look again after another quiet period.
			self.quiet_since_look = true;
			deadline.as_mut().reset(Instant::now() + RELEASE_SPARE_AFTER);
		}
	}

	/// Close the connection once it has been idle for `Config::idle_timeout`: no request open
	/// either way, nothing written or read. Returns whether it asked for the close.
	fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
		let Some(timeout) = self.idle_timeout else {
			return false;
		};
		if self.closing || self.remote_done {
			return false;
		}
		let last_activity = self.last_activity;
		let deadline =
			self.idle_deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(last_activity + timeout)));
		if deadline.as_mut().poll(cx).is_pending() {
			return false;
		}
		let now = Instant::now();
		let idle = now.duration_since(self.last_activity) >= timeout
			&& self.state_idle
			&& self.inbox.is_empty()
			&& !self.shared.writer().has_queued()
			&& !self.reader.mid_frame();
		if idle {
			tracing::info!("idle for {timeout:?}: closing the connection");
			self.shared.state().request_close();
			return true;
		}
		// Not idle after all: wait a whole timeout from the last message (or from now, while a
		// request is open), and register for that.
		let next = if now.duration_since(self.last_activity) < timeout { self.last_activity } else { now };
		deadline.as_mut().reset(next + timeout);
		// In the future, so this registers the waker (a paused test clock may say otherwise:
		// then the next round looks again).
		deadline.as_mut().poll(cx).is_ready()
	}
}

impl<T: Transport> Drop for Peer<T> {
	fn drop(&mut self) {
		// Reached at the end of `run`, or when a peer is dropped without running. Every handle
		// is woken and reports the reason set first. Dropping the transport's writer closes the
		// connection, even while handles live on.
		let (transport, batch) = {
			let mut writer = self.shared.writer();
			(writer.transport.take(), std::mem::take(&mut writer.batch))
		};
		drop((transport, batch));
		self.shared.state().end(Error::closed_locally());
		self.shared.stopped.cancel();
		self.shared.room.notify_waiters();
		self.shared.flushed.notify_waiters();
	}
}
