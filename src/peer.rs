//! The driver of one connection: a task that moves bytes between the transport and the
//! connection state ([`proto::Connection`](crate::proto)), which the handles share with it.
//!
//! Each round it reads a batch of messages (decoding outside the lock), takes the lock once to
//! hand them to the state and take what the handles queued, then writes and flushes outside the
//! lock. Timers (close, frame, idle, letting go of spare buffers) live here, not in the state.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
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
	/// Cancelled when the peer task has stopped and the transport is dropped.
	pub(crate) stopped: CancellationToken,
	/// Notified when the write queue has room again (or the connection is closing or ended).
	pub(crate) room: Notify,
	/// Notified when more of the queued messages are flushed (or the connection ended).
	pub(crate) flushed: Notify,
	pub(crate) info: ConnectionInfo,
	/// Stream messages the read handle has taken ahead and not yet returned (its own queue,
	/// outside the state): the connection is not idle while the application has them to read.
	pub(crate) read_ahead: std::sync::atomic::AtomicUsize,
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
}

/// Small stream messages held back from the transport's flush while more keep coming.
///
/// A sender of many small stream messages (telemetry, a camera's metadata) queues them faster
/// than one write each can carry: written as they come, every few messages cost a system call
/// on each side and a wake-up of the receiver. So while everything given to the transport since
/// its last flush is stream messages, few bytes of them
/// ([`TransportWrite::may_coalesce`]), the peer does not flush at once: it lets every other task
/// ready on its worker thread run first (a deferred wake-up, as `tokio::task::yield_now` makes),
/// and flushes when it is polled again and nothing more has come, or enough has, or it has held
/// them [`HOLDS_AT_MOST`] times or for [`HOLD_AT_MOST`]. A lone stream message waits for one turn
/// of the worker's queue; a sender that sends on every turn, at most 16 of its turns or about
/// 1 ms; requests, responses, updates and closing are never held.
struct Coalesce {
	/// Everything given to the transport since its last flush is a stream message.
	stream_only: bool,
	/// A flush has begun (the socket took part of it): finish it, hold nothing.
	flushing: bool,
	/// Messages given to the transport since its last flush.
	given: u64,
	/// `given` when the peer last held back: if nothing more came by the next look, flush.
	held_at: Option<u64>,
	/// When the peer first held back what it holds now, and how many times since.
	since: Option<std::time::Instant>,
	holds: u32,
}

/// The most looks a hold lasts while more keeps coming: enough for a busy sender's turns to fill
/// a write, and a bound on the wait of a sender that brings one more message every turn.
const HOLDS_AT_MOST: u32 = 16;
/// The longest a hold lasts, for a sender whose turns are slow.
const HOLD_AT_MOST: Duration = Duration::from_millis(1);

impl Coalesce {
	fn new() -> Self {
		Self { stream_only: true, flushing: false, given: 0, held_at: None, since: None, holds: 0 }
	}

	/// A message is given to the transport.
	fn give(&mut self, message_type: MessageType) {
		self.given += 1;
		if message_type != MessageType::Stream {
			self.stream_only = false;
		}
	}

	/// Whether to hold back the flush once more: stream messages only, more given since the last
	/// look, not held [`HOLDS_AT_MOST`] times or for [`HOLD_AT_MOST`] already, and (`ordinary`)
	/// nothing else that wants the flush now.
	fn should_hold(&self, ordinary: bool) -> bool {
		ordinary
			&& self.stream_only
			&& !self.flushing
			&& self.given > 0
			&& self.held_at != Some(self.given)
			&& self.holds < HOLDS_AT_MOST
			&& self.since.is_none_or(|since| since.elapsed() < HOLD_AT_MOST)
	}

	/// Hold back: have this task polled again once the other tasks ready on its worker ran.
	///
	/// `yield_now` registers the wake-up on its first poll and dropping it does not take that
	/// back. Inside a tokio worker the wake-up is deferred until the worker has run what else is
	/// ready (or at its periodic maintenance); outside one (a runtime merely entered, another
	/// executor, `block_in_place`) the task is woken at once and looks again right away, which
	/// ends the hold unless more came meanwhile.
	fn hold(&mut self, cx: &mut Context<'_>) {
		self.held_at = Some(self.given);
		self.holds += 1;
		self.since.get_or_insert_with(std::time::Instant::now);
		// Never ready on its first poll: it only registers the wake-up.
		let _ = std::pin::pin!(tokio::task::yield_now()).poll(cx);
	}

	/// The transport flushed everything given to it.
	fn flushed(&mut self) {
		self.stream_only = true;
		self.flushing = false;
		self.given = 0;
		self.held_at = None;
		self.since = None;
		self.holds = 0;
	}
}

/// What the transport has flushed since the state last heard of it.
#[derive(Default)]
struct Flushed {
	cost: usize,
	auto_replies: usize,
	total: u64,
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
	writer: T::Writer,
	shared: Arc<Shared<T::Body>>,
	/// Read and not yet handed to the state: the first may be waiting for room.
	inbox: VecDeque<Message<T::Body>>,
	/// Taken from the state and not yet given to the transport.
	batch: VecDeque<Outgoing<T::Body>>,
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
	/// Small stream messages held back from the flush while more keep coming.
	coalesce: Coalesce,
	/// A handle waits for the flush or for room (a copy of the state's flags): do not hold back.
	flush_wanted: bool,
	/// The transport has reported the remote's end of stream (the state hears of it once the
	/// inbox is handed over).
	eof: bool,
	/// The transport failed (a protocol violation, a cut frame, an I/O error): the connection ends
	/// with it once what was read before it is handed over.
	read_error: Option<Error>,
	// Copies of the state's flags from the last round.
	closing: bool,
	remote_done: bool,
	links: usize,
	unanswered: usize,
	auto_replies_full: bool,
	state_drained: bool,
	state_idle: bool,
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
	/// The connection's span: the task runs in it, and request spans are its children.
	span: tracing::Span,
	/// What this connection has published through the `metrics` facade, and when it publishes
	/// next.
	#[cfg(feature = "metrics")]
	metrics: crate::metrics::Publisher,
	#[cfg(feature = "metrics")]
	metrics_deadline: Option<Pin<Box<Sleep>>>,
}

impl<T: Transport> Peer<T> {
	/// Create the peer task for `transport` and the handle to talk through it.
	///
	/// Nothing happens until [`Peer::run`] is awaited.
	pub fn new(transport: T, config: &Config) -> (Self, PeerHandle<T::Body>) {
		let span = crate::transport::connection_span(&transport.info());
		Self::with_span(transport, config, span)
	}

	/// [`new`](Self::new), in `span` (see `transport::connection_span`).
	fn with_span(transport: T, config: &Config, span: tracing::Span) -> (Self, PeerHandle<T::Body>) {
		let info = transport.info();
		let (reader, writer) = transport.split();
		let limits = Limits::new(config, writer.max_body_len(), writer.max_fds());
		let mut state = Connection::new(limits);
		state.set_span(span.clone());
		let shared = Arc::new(Shared {
			state: Mutex::new(state),
			stopped: CancellationToken::new(),
			room: Notify::new(),
			flushed: Notify::new(),
			info,
			read_ahead: Default::default(),
		});
		let handle = PeerHandle::new(shared.clone());
		let peer = Self {
			reader,
			writer,
			shared,
			inbox: VecDeque::new(),
			batch: VecDeque::new(),
			taken_metered: 0,
			taken_total: 0,
			written_cost: 0,
			written_auto: 0,
			flushed: None,
			coalesce: Coalesce::new(),
			flush_wanted: false,
			eof: false,
			read_error: None,
			closing: false,
			remote_done: false,
			links: 1,
			unanswered: 0,
			auto_replies_full: false,
			state_drained: false,
			state_idle: false,
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
			span,
			#[cfg(feature = "metrics")]
			metrics: crate::metrics::Publisher::default(),
			#[cfg(feature = "metrics")]
			metrics_deadline: None,
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
		let (peer, handle) = Self::with_span(transport, config, span.clone());
		let shared = peer.shared.clone();
		tokio::spawn(
			async move {
				match peer.run_in_span().await {
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
	///
	/// Runs in the connection's `tracing` span (`peer`, with a connection number and the
	/// remote), the parent of the connection's request spans.
	pub async fn run(self) -> Result<(), Error> {
		let span = self.span.clone();
		self.run_in_span().instrument(span).await
	}

	/// [`run`](Self::run), for a caller that runs it in the connection's span already.
	async fn run_in_span(mut self) -> Result<(), Error> {
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
		#[cfg(feature = "metrics")]
		self.poll_publish(cx);
		// The reader returned `Pending` in an earlier round of this poll: it holds this task's
		// waker, and polling it again before that wakes the task finds nothing (in a round trip
		// that was 6 of the 10 reader polls, each a look at the socket's readiness under tokio's
		// lock, about 400 instructions).
		let mut reader_parked = false;
		for _ in 0..ROUNDS_BEFORE_YIELD {
			let mut progress = false;
			// A message went either way this round (for the idle timeout).
			let mut active = false;

			// Read a batch, outside the lock. Nothing more while the inbox waits for room or
			// replies of our own making wait to be written (reading could make more).
			let may_read = !self.eof
				&& self.read_error.is_none()
				&& (self.closing || (self.inbox.is_empty() && !self.auto_replies_full));
			let mut waiting_for_remote = may_read && reader_parked;
			let mut inbox_bytes = 0;
			// Messages were read this round: another round reads on, unless the reader is
			// registered for the remote's next bytes already.
			let mut read_any = false;
			if may_read && !reader_parked {
				for _ in 0..READ_BATCH {
					match self.reader.poll_read_message(cx) {
						Poll::Ready(Ok(Some(message))) => {
							read_any = true;
							if self.closing {
								// Kept reading only so that a remote that hangs up ends the wait
								// for the flush.
								tracing::debug!(header = ?message.header, "closing: dropped an incoming message");
								self.shared.state().note_dropped_while_closing(&message.header, message.body.len());
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
								self.shared.state().note_protocol_error();
							}
							// Reported once what came before it is handed over (below).
							self.read_error = Some(error);
							break;
						},
						Poll::Pending => {
							waiting_for_remote = true;
							reader_parked = true;
							break;
						},
					}
				}
			}

			// The one lock of the round: hand over what was read, take what the handles queued.
			let (notify_room, notify_flushed) = {
				let mut state = self.shared.state();
				let freed = self.taken_metered > 0 || self.flushed.is_some();
				state.on_taken(std::mem::take(&mut self.taken_metered));
				let flushed = self.flushed.take();
				if let Some(flushed) = &flushed {
					state.on_flushed(flushed.cost, flushed.auto_replies, flushed.total);
				}
				let waiting = self.inbox.len();
				while let Some(message) = self.inbox.pop_front() {
					if let Err(message) = state.recv(message) {
						self.inbox.push_front(message);
						break;
					}
				}
				if (read_any || self.inbox.len() < waiting) && !reader_parked {
					// Handed over: read again (which also registers for the remote's bytes),
					// unless the reader is registered already.
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
				if self.batch.is_empty() {
					self.state_drained = !state.take_outgoing(&mut self.batch);
				}
				// Woken by the state when something changes that this task waits for; by a
				// queued message only if it has nothing to write (else it is busy writing).
				state.park_driver(cx.waker(), self.batch.is_empty());
				if !self.closing && state.is_closing() {
					tracing::debug!("closing on request");
					progress = true;
				}
				self.closing = state.is_closing();
				self.remote_done = state.is_remote_done();
				self.links = state.links();
				self.unanswered = state.unanswered();
				let auto_replies_full = state.too_many_auto_replies();
				if self.auto_replies_full && !auto_replies_full {
					// Reading may resume: another round, which polls the reader.
					progress = true;
				}
				self.auto_replies_full = auto_replies_full;
				// Reading waits for the application (or for automatic replies to be written).
				state.set_read_paused(!self.closing && (!self.inbox.is_empty() || auto_replies_full));
				if self.idle_timeout.is_some() {
					self.state_idle =
						state.is_idle() && self.shared.read_ahead.load(std::sync::atomic::Ordering::Relaxed) == 0;
				}
				let notify_room = (freed || self.closing) && std::mem::take(&mut state.room_wanted);
				let notify_flushed = flushed.is_some() && std::mem::take(&mut state.flush_wanted);
				// Someone waits for the flush (`flush`, or room in the budget): hold nothing back.
				self.flush_wanted = state.flush_wanted || state.room_wanted;
				(notify_room, notify_flushed)
			};
			if self.inbox.is_empty() {
				if let Some(error) = self.read_error.take() {
					return Poll::Ready(Err(error));
				}
			}
			if notify_room {
				self.shared.room.notify_waiters();
			}
			if notify_flushed {
				self.shared.flushed.notify_waiters();
			}

			// Write and flush, outside the lock.
			while self.writer.wants_more() {
				let Some(outgoing) = self.batch.pop_front() else { break };
				self.taken_total += 1;
				if outgoing.metered {
					self.taken_metered += 1;
				} else {
					self.written_auto += 1;
				}
				self.written_cost += outgoing.cost;
				self.coalesce.give(outgoing.message.header.message_type);
				self.write(outgoing.message);
				progress = true;
				active = true;
			}
			if self.taken_metered > 0 {
				// Places of the write queue are free: tell the state (and waiting senders) in
				// another round, even if the flush below has to wait.
				progress = true;
			}
			// Held back: polled again once the other tasks ready on this worker have run.
			let mut held = false;
			if self.writer.has_queued() {
				let ordinary =
					!self.closing && !self.remote_done && !self.flush_wanted && self.links > 0 && self.batch.is_empty();
				if self.coalesce.should_hold(ordinary && self.writer.may_coalesce()) {
					self.coalesce.hold(cx);
					held = true;
				} else {
					self.coalesce.flushing = true;
					if let Poll::Ready(result) = self.writer.poll_flush(cx) {
						result?;
						self.note_flushed();
						progress = true;
					}
				}
			} else if self.written_cost > 0 || self.written_auto > 0 || self.taken_metered > 0 {
				self.note_flushed();
				progress = true;
			}

			let done_writing = self.batch.is_empty() && self.state_drained && !self.writer.has_queued();
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
			if (self.closing || self.links == 0) && done_writing && self.flushed.is_none() {
				return self.writer.poll_shutdown(cx);
			}
			if self.remote_done && self.unanswered == 0 && done_writing && self.flushed.is_none() {
				// Everything the remote asked is answered and on the wire: close our side too.
				ready!(self.writer.poll_shutdown(cx))?;
				return Poll::Ready(Err(Error::closed_by_remote()));
			}

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

			if !progress || held {
				return Poll::Pending;
			}
		}
		// Plenty more to do: let other tasks run first.
		cx.waker().wake_by_ref();
		Poll::Pending
	}

	/// Publish the counters through the `metrics` facade now and then every
	/// [`INTERVAL`](crate::metrics::INTERVAL).
	#[cfg(feature = "metrics")]
	fn poll_publish(&mut self, cx: &mut Context<'_>) {
		let deadline = match &mut self.metrics_deadline {
			Some(deadline) => {
				if deadline.as_mut().poll(cx).is_pending() {
					return;
				}
				deadline
			},
			None => self.metrics_deadline.insert(Box::pin(tokio::time::sleep(crate::metrics::INTERVAL))),
		};
		deadline.as_mut().reset(Instant::now() + crate::metrics::INTERVAL);
		// Registers the waker for the next time.
		let _ = deadline.as_mut().poll(cx);
		let stats = self.shared.state().stats();
		self.metrics.publish(&stats);
	}

	/// Everything given to the transport so far is written: tell the state in the next round.
	fn note_flushed(&mut self) {
		self.coalesce.flushed();
		let flushed = self.flushed.get_or_insert_with(Flushed::default);
		flushed.cost += std::mem::take(&mut self.written_cost);
		flushed.auto_replies += std::mem::take(&mut self.written_auto);
		flushed.total = self.taken_total;
	}

	/// Let the transport give back buffers grown for a large message once the connection has been
	/// quiet for [`RELEASE_SPARE_AFTER`]. Costs nothing (no timer) while it holds none.
	fn poll_release_spare(&mut self, cx: &mut Context<'_>) {
		if !self.reader.holds_spare_memory() && !self.writer.holds_spare_memory() {
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
				self.writer.release_spare_memory();
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
			&& self.batch.is_empty()
			&& self.inbox.is_empty()
			&& !self.writer.has_queued()
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

	/// Give a message to the transport; one it refuses is dropped with an error log (handles
	/// check the limits before queuing, so this is a configuration mismatch).
	fn write(&mut self, message: Message<T::Body>) {
		let header = message.header;
		if let Err(error) = self.writer.start_send(message) {
			tracing::error!(?header, "transport refused a message: {error}");
			if header.message_type == MessageType::Request {
				self.shared.state().refused_by_transport(header.request_id);
			}
		}
	}
}

impl<T: Transport> Drop for Peer<T> {
	fn drop(&mut self) {
		// Reached at the end of `run`, or when a peer is dropped without running. Every handle
		// is woken and reports the reason set first.
		let mut state = self.shared.state();
		state.end(Error::closed_locally());
		#[cfg(feature = "metrics")]
		let stats = state.stats();
		drop(state);
		#[cfg(feature = "metrics")]
		self.metrics.finish(&stats);
		self.shared.stopped.cancel();
		self.shared.room.notify_waiters();
		self.shared.flushed.notify_waiters();
	}
}

#[cfg(test)]
mod tests {
	use std::sync::atomic::{AtomicUsize, Ordering};

	use bytes::Bytes;

	use super::*;
	use crate::transport::memory::{MemoryReader, MemoryTransport, MemoryWriter};

	/// The in-memory transport, counting the looks at its reader.
	struct Counting {
		inner: MemoryTransport<Bytes>,
		polls: Arc<AtomicUsize>,
	}

	struct CountingReader {
		inner: MemoryReader<Bytes>,
		polls: Arc<AtomicUsize>,
	}

	impl Transport for Counting {
		type Body = Bytes;
		type Reader = CountingReader;
		type Writer = MemoryWriter<Bytes>;

		fn info(&self) -> ConnectionInfo {
			ConnectionInfo::default()
		}

		fn split(self) -> (CountingReader, MemoryWriter<Bytes>) {
			let (inner, writer) = self.inner.split();
			(CountingReader { inner, polls: self.polls }, writer)
		}
	}

	impl TransportRead for CountingReader {
		type Body = Bytes;

		fn poll_read_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Message<Bytes>>, Error>> {
			self.polls.fetch_add(1, Ordering::Relaxed);
			self.inner.poll_read_message(cx)
		}
	}

	/// A `Peer` (and so its `run` future) can be held across threads, as before the flush
	/// consolidation: it holds no boxed future.
	#[test]
	fn a_peer_is_send_and_sync() {
		fn check<T: Send + Sync>() {}
		check::<Peer<MemoryTransport<Bytes>>>();
		check::<
			Peer<
				crate::StreamTransport<
					tokio::io::ReadHalf<tokio::io::DuplexStream>,
					tokio::io::WriteHalf<tokio::io::DuplexStream>,
				>,
			>,
		>();
	}

	#[tokio::test]
	async fn a_round_trip_looks_at_each_reader_at_most_three_times() {
		let config = Config::default();
		let (a, b) = MemoryTransport::pair(&config);
		let (client_polls, server_polls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
		let client = Peer::spawn(Counting { inner: a, polls: client_polls.clone() }, &config);
		let mut server = Peer::spawn(Counting { inner: b, polls: server_polls.clone() }, &config);
		tokio::spawn(async move {
			while let Ok(message) = server.recv_message().await {
				if let Some((request, body)) = message.into_request() {
					request.send_response(0, body).await.unwrap();
				}
			}
		});
		const ROUND_TRIPS: usize = 200;
		for i in 0..ROUND_TRIPS {
			let body = Bytes::from(i.to_string());
			let mut request = client.send_request(1, body.clone()).await.unwrap();
			assert_eq!(request.recv_response().await.unwrap().body, body);
		}
		// Each side's peer task is woken twice per round trip: by the handle that queued a
		// message (one look, `Pending`), and by the remote's message (one look that finds it,
		// one that finds nothing more). Looking again in a later round of the same wake-up, as
		// the peer task did before, made it five.
		for (side, polls) in [("client", &client_polls), ("server", &server_polls)] {
			let polls = polls.load(Ordering::Relaxed);
			assert!(polls <= 3 * ROUND_TRIPS + 10, "{side}: {polls} looks at the reader for {ROUND_TRIPS} round trips");
		}
	}
}
