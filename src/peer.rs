//! The background task of one connection: it owns the transport, writes what the handles queue,
//! reads what the remote sends and routes each message to the handle it belongs to.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, PollSemaphore, PollSender, WaitForCancellationFutureOwned};
use tracing::Instrument;

use crate::config::Config;
use crate::error::{Error, ProtocolViolation};
use crate::handle::{Link, PeerHandle, ReceivedMessage, ReceivedRequestHandle};
use crate::message::{Body, Message, MessageType};
use crate::tracker::{OpenError, ReceivedTable, SentTable};
use crate::transport::{ConnectionInfo, Transport, TransportRead, TransportWrite};

/// Error responses the peer writes on its own (duplicate ids, the open-request limit) may pile up
/// to this many before it stops reading until they are flushed: a remote that floods bad
/// requests and never reads cannot grow our write buffer without limit.
const MAX_AUTO_REPLIES: usize = 1024;
/// What a message is charged against the incoming and outgoing budgets beyond its body.
const MESSAGE_OVERHEAD: usize = 64;
/// Messages read in one go before the peer looks at its other work again.
const READ_BATCH: usize = 64;
/// How long a connection must be quiet before the transport lets go of buffers grown for a large
/// message: long enough that a steady flow of large messages keeps them.
const RELEASE_SPARE_AFTER: Duration = Duration::from_millis(100);
/// Rounds of work before the peer yields to the runtime even if more is ready.
const ROUNDS_BEFORE_YIELD: usize = 32;

/// What the handles ask of the peer task, in the order they asked.
pub(crate) enum Command<B> {
	/// Write a message. `metered` says whether it holds a write-queue permit to give back,
	/// `cost` how many permits of the outgoing byte budget.
	Send { message: Message<B>, metered: bool, cost: u32 },
	/// Say so once everything queued before this has been written to the transport.
	Flush(oneshot::Sender<()>),
}

/// The open requests of both directions, behind the lock that handles and the peer share.
pub(crate) struct Tracker<B> {
	pub(crate) sent: SentTable<RequestSender<B>>,
	pub(crate) received: ReceivedTable<RequestSender<B>>,
	/// Set once the peer has stopped: nothing new may be opened.
	pub(crate) closed: bool,
}

/// State shared by the peer task and every handle of one connection.
pub(crate) struct Shared<B> {
	tracker: Mutex<Tracker<B>>,
	/// Why the connection ended; set before any handle can observe the end.
	close_reason: OnceLock<Error>,
	/// Cancelled when the peer task has stopped and the transport is dropped.
	pub(crate) stopped: CancellationToken,
	/// Cancelled by a handle's `close`.
	pub(crate) close_requested: CancellationToken,
	/// Set when the remote has closed its sending side (end of stream).
	pub(crate) remote_finished: std::sync::atomic::AtomicBool,
	/// Bytes of received messages that may wait in the handles' queues, all queues together.
	incoming_budget: Arc<Semaphore>,
	/// Bytes of received requests not yet answered (`Config::max_unanswered_incoming`).
	unanswered_budget: Arc<Semaphore>,
	unanswered_total: usize,
	/// One permit per message the handles may queue (the write queue's bound).
	pub(crate) write_permits: Semaphore,
	/// One permit per byte the handles may queue for writing (`Config::max_buffered_outgoing`).
	pub(crate) write_bytes: Semaphore,
	write_bytes_total: usize,
	/// Unmetered messages (error responses of dropped requests) queued but not yet taken by the
	/// peer. The peer stops reading while there are too many, so a remote cannot grow the queue.
	pub(crate) unmetered: AtomicUsize,
	pub(crate) info: ConnectionInfo,
	pub(crate) max_body_len_write: usize,
	pub(crate) max_fds_write: usize,
	pub(crate) request_queue: usize,
	max_open_requests: usize,
}

impl<B> Shared<B> {
	pub(crate) fn tracker(&self) -> MutexGuard<'_, Tracker<B>> {
		// A panic while holding this lock cannot leave the tables half-updated (every update
		// is a single call), so a poisoned lock is safe to keep using.
		self.tracker.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
	}

	pub(crate) fn max_open_requests(&self) -> usize {
		self.max_open_requests
	}

	/// What a message with a body of `body_len` bytes costs of the outgoing byte budget: the body
	/// plus a little, so that empty bodies are not free; a message larger than the whole budget
	/// takes all of it and goes alone.
	pub(crate) fn outgoing_cost(&self, body_len: usize) -> u32 {
		body_len.saturating_add(MESSAGE_OVERHEAD).min(self.write_bytes_total).min(u32::MAX as usize) as u32
	}

	/// Refuse new sends at once and ask the peer to flush what is queued and close.
	pub(crate) fn request_close(&self) {
		self.write_permits.close();
		self.write_bytes.close();
		self.close_requested.cancel();
	}

	/// The error for an operation on a connection that has ended.
	pub(crate) fn closed_error(&self) -> Error {
		self.close_reason.get().cloned().unwrap_or_else(Error::closed_locally)
	}
}

/// A received item waiting in a handle's queue, holding its share of the incoming budget until
/// a handle takes it (or the queue is dropped).
pub(crate) struct Charged<T> {
	pub(crate) item: T,
	_budget: OwnedSemaphorePermit,
}

/// The queue of one request's updates (and, for sent requests, its response).
pub(crate) type RequestSender<B> = mpsc::Sender<Charged<Message<B>>>;
/// The receiving end of a [`RequestSender`].
pub(crate) type RequestReceiver<B> = mpsc::Receiver<Charged<Message<B>>>;
/// The queue of incoming requests and stream messages for the read handle.
pub(crate) type IncomingReceiver<B> = mpsc::Receiver<Charged<ReceivedMessage<B>>>;

/// Where a received message goes.
enum Target<B: Body> {
	Incoming(ReceivedMessage<B>),
	Request(RequestSender<B>, Message<B>),
}

impl<B: Body> Target<B> {
	/// Its charge against the incoming budget: the body, plus a little for the rest, so that
	/// empty bodies are not free.
	fn cost(&self, budget: usize) -> u32 {
		let len = match self {
			Target::Incoming(ReceivedMessage::Request(_, body)) => body.len(),
			Target::Incoming(ReceivedMessage::Stream(message)) | Target::Request(_, message) => message.body.len(),
		};
		len.saturating_add(MESSAGE_OVERHEAD).min(budget).min(u32::MAX as usize) as u32
	}
}

/// A message the peer could not hand over yet: the incoming budget is spent, or the receiving
/// queue is full. The peer reads nothing more until it is handed over.
enum Pending<B: Body> {
	Budget(u32, Target<B>),
	Incoming(PollSender<Charged<ReceivedMessage<B>>>, Charged<ReceivedMessage<B>>),
	Request(PollSender<Charged<Message<B>>>, Charged<Message<B>>),
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
	commands: mpsc::UnboundedReceiver<Command<T::Body>>,
	/// Received requests opened and not yet answered: their responses (or the automatic error
	/// response of a dropped handle) are still to come through `commands`.
	unanswered: usize,
	/// The remote has closed its sending side: read nothing more, answer what it asked, then
	/// close (bounded by the close deadline).
	remote_done: bool,
	/// For the handles of requests the remote opens; weak so that the peer alone does not keep
	/// itself alive.
	link: WeakLink<T::Body>,
	/// `None` once the remote has closed its side: the read handle then gets what was queued,
	/// and then the end of the connection.
	incoming: Option<mpsc::Sender<Charged<ReceivedMessage<T::Body>>>>,
	shared: Arc<Shared<T::Body>>,
	pending: Option<Pending<T::Body>>,
	/// Set after a local close: drain the queue, flush, shut down.
	closing: bool,
	/// The command queue is closed and empty: once the writer is flushed, shut down.
	commands_done: bool,
	/// How long closing may take, and the deadline once closing has begun.
	close_timeout: Duration,
	close_deadline: Option<Pin<Box<Sleep>>>,
	close_requested: Pin<Box<WaitForCancellationFutureOwned>>,
	/// The incoming budget, for waiting until a handle has taken enough to make room.
	budget: PollSemaphore,
	budget_total: usize,
	auto_replies: usize,
	/// Bytes of the outgoing budget taken back from the queue and not yet written: given back to
	/// the handles once the writer has flushed.
	written_cost: usize,
	/// Flushes asked for, answered once the writer has nothing queued.
	flush_waiters: Vec<oneshot::Sender<()>>,
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

struct WeakLink<B> {
	commands: mpsc::WeakUnboundedSender<Command<B>>,
	shared: Arc<Shared<B>>,
}

impl<T: Transport> Peer<T> {
	/// Create the peer task for `transport` and the handle to talk through it.
	///
	/// Nothing happens until [`Peer::run`] is awaited.
	pub fn new(transport: T, config: &Config) -> (Self, PeerHandle<T::Body>) {
		let info = transport.info();
		let (reader, writer) = transport.split();
		let (command_tx, commands) = mpsc::unbounded_channel();
		let (incoming, incoming_rx) = mpsc::channel(config.incoming_queue.max(1));
		let budget_total = config.max_buffered_incoming.clamp(1, Semaphore::MAX_PERMITS);
		let write_bytes_total = config.max_buffered_outgoing.clamp(1, Semaphore::MAX_PERMITS);
		let unanswered_total = config.max_unanswered_incoming.clamp(1, Semaphore::MAX_PERMITS);
		let shared = Arc::new(Shared {
			tracker: Mutex::new(Tracker {
				sent: SentTable::new(config.max_open_requests),
				received: ReceivedTable::new(config.max_open_requests),
				closed: false,
			}),
			close_reason: OnceLock::new(),
			stopped: CancellationToken::new(),
			close_requested: CancellationToken::new(),
			remote_finished: std::sync::atomic::AtomicBool::new(false),
			incoming_budget: Arc::new(Semaphore::new(budget_total)),
			unanswered_budget: Arc::new(Semaphore::new(unanswered_total)),
			unanswered_total,
			write_permits: Semaphore::new(config.write_queue.max(1)),
			write_bytes: Semaphore::new(write_bytes_total),
			write_bytes_total,
			unmetered: AtomicUsize::new(0),
			info,
			// The handles check against these, so they must be the tighter of the two limits.
			max_body_len_write: config.max_body_len_write.min(writer.max_body_len()),
			max_fds_write: config.max_fds_write.min(writer.max_fds()),
			request_queue: config.request_queue.max(1),
			max_open_requests: config.max_open_requests,
		});
		let close_requested = shared.close_requested.clone().cancelled_owned();
		let budget = shared.incoming_budget.clone();
		let link = Link::new(command_tx, shared.clone());
		let weak = WeakLink { commands: link.downgrade(), shared: shared.clone() };
		let peer = Self {
			reader,
			writer,
			commands,
			unanswered: 0,
			remote_done: false,
			link: weak,
			incoming: Some(incoming),
			shared,
			pending: None,
			closing: false,
			commands_done: false,
			close_timeout: config.close_timeout,
			close_deadline: None,
			close_requested: Box::pin(close_requested),
			budget: PollSemaphore::new(budget),
			budget_total,
			auto_replies: 0,
			written_cost: 0,
			flush_waiters: Vec::new(),
			frame_timeout: config.frame_timeout,
			frame_deadline: None,
			idle_timeout: config.idle_timeout,
			// Made on the first poll: `new` may be called outside a runtime.
			idle_deadline: None,
			last_activity: Instant::now(),
			release_deadline: None,
			quiet_since_look: false,
		};
		(peer, PeerHandle::new(incoming_rx, link))
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
		let _ = self.shared.close_reason.set(reason);
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

			// Take what the handles queued, as much as the writer wants for one batch.
			// Noticed even while the writer is full, so that the close deadline starts at once.
			if !self.closing && self.close_requested.as_mut().poll(cx).is_ready() {
				tracing::debug!("closing on request");
				// Refuse new messages; what was queued before still drains below.
				self.closing = true;
				self.commands.close();
				progress = true;
			}

			// Permits go back once per batch: each return takes the semaphore's lock.
			let mut permits = 0;
			// The queue was seen empty this round.
			let mut drained = false;
			while self.writer.wants_more() && !self.commands_done {
				match self.commands.poll_recv(cx) {
					Poll::Ready(Some(Command::Flush(done))) => {
						// Flushes given up on (their future dropped) need no answer.
						self.flush_waiters.retain(|waiter| !waiter.is_closed());
						self.flush_waiters.push(done);
						progress = true;
					},
					Poll::Ready(Some(Command::Send { message, metered, cost })) => {
						if metered {
							permits += 1;
						} else {
							self.shared.unmetered.fetch_sub(1, Ordering::Relaxed);
						}
						self.written_cost += cost as usize;
						// This side sends responses only to requests it received: one each.
						if message.header.message_type == MessageType::Response {
							self.unanswered = self.unanswered.saturating_sub(1);
						}
						self.write(message);
						progress = true;
						active = true;
					},
					Poll::Ready(None) => {
						// Every handle is gone, or a close has drained the queue.
						self.closing = true;
						self.commands_done = true;
						drained = true;
						break;
					},
					Poll::Pending => {
						drained = true;
						break;
					},
				}
			}
			if permits > 0 {
				self.shared.write_permits.add_permits(permits);
			}

			if self.writer.has_queued() {
				if let Poll::Ready(result) = self.writer.poll_flush(cx) {
					result?;
					self.auto_replies = 0;
					self.release_written();
					progress = true;
				}
			} else {
				self.release_written();
			}
			if !self.writer.has_queued() {
				// Everything taken so far is written, so everything queued before each of these.
				for done in self.flush_waiters.drain(..) {
					let _ = done.send(());
				}
			}

			if self.closing || self.remote_done {
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

			if self.commands_done && !self.writer.has_queued() {
				return self.writer.poll_shutdown(cx);
			}
			if self.remote_done && self.unanswered == 0 && drained && !self.writer.has_queued() {
				// Everything the remote asked is answered and on the wire: close our side too.
				ready!(self.writer.poll_shutdown(cx))?;
				return Poll::Ready(Err(Error::closed_by_remote()));
			}

			if let Some(Pending::Budget(cost, _)) = &self.pending {
				if let Poll::Ready(permit) = self.budget.poll_acquire_many(cx, *cost) {
					progress = true;
					if let (Some(permit), Some(Pending::Budget(_, target))) = (permit, self.pending.take()) {
						self.hand_over(target, permit);
					}
				}
			}
			let reserved = match &mut self.pending {
				Some(Pending::Incoming(sender, _)) => sender.poll_reserve(cx).map(|result| result.is_ok()),
				Some(Pending::Request(sender, _)) => sender.poll_reserve(cx).map(|result| result.is_ok()),
				Some(Pending::Budget(..)) | None => Poll::Pending,
			};
			if let Poll::Ready(reserved) = reserved {
				progress = true;
				// A failed reservation means the receiver is gone: the message has no one to go
				// to (a request handle among it answers itself when dropped).
				match self.pending.take() {
					Some(Pending::Incoming(mut sender, item)) if reserved => drop(sender.send_item(item)),
					Some(Pending::Request(mut sender, item)) if reserved => drop(sender.send_item(item)),
					_ => tracing::debug!("receiver gone: dropped a delayed message"),
				}
			}

			// Whether the reader is waiting for the remote's bytes (rather than for us).
			let mut waiting_for_remote = false;
			if self.remote_done {
				// Nothing more will come.
			} else if self.closing {
				// Keep reading, so that a remote that hangs up ends the wait for the flush.
				for _ in 0..READ_BATCH {
					match self.reader.poll_read_message(cx) {
						Poll::Ready(Ok(Some(message))) => {
							tracing::debug!(header = ?message.header, "closing: dropped an incoming message");
							progress = true;
						},
						Poll::Ready(Ok(None)) => {
							self.on_remote_done();
							progress = true;
							break;
						},
						Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
						Poll::Pending => break,
					}
				}
			} else if self.pending.is_none() {
				for _ in 0..READ_BATCH {
					// Replies of our own making wait to be written: read no more requests (which
					// could make more) until they are.
					if self.auto_replies + self.shared.unmetered.load(Ordering::Relaxed) >= MAX_AUTO_REPLIES {
						break;
					}
					match self.reader.poll_read_message(cx) {
						Poll::Ready(Ok(Some(message))) => {
							self.frame_deadline = None;
							self.dispatch(message);
							progress = true;
							active = true;
							if self.pending.is_some() {
								break;
							}
						},
						Poll::Ready(Ok(None)) => {
							self.on_remote_done();
							progress = true;
							break;
						},
						Poll::Ready(Err(error)) => {
							if let Some(violation) = error.protocol_violation() {
								tracing::warn!("protocol violation by the remote: {violation}");
							}
							return Poll::Ready(Err(error));
						},
						Poll::Pending => {
							waiting_for_remote = true;
							break;
						},
					}
				}
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

	/// Give the outgoing byte budget of what has been written back to the handles.
	fn release_written(&mut self) {
		if self.written_cost > 0 {
			self.shared.write_bytes.add_permits(std::mem::take(&mut self.written_cost));
		}
	}

	/// The remote has closed its sending side (end of stream, or a 0-byte datagram). Requests
	/// this side sent can no longer be answered: fail them now. Requests it received are still
	/// answered: the connection closes once they are, and what is queued is written.
	fn on_remote_done(&mut self) {
		tracing::debug!(
			unanswered = self.unanswered,
			"the remote closed its side; answering what it asked, then closing"
		);
		self.remote_done = true;
		self.shared.remote_finished.store(true, Ordering::Relaxed);
		// Set first, so that every handle woken below reports it.
		let _ = self.shared.close_reason.set(Error::closed_by(Error::closed_by_remote()));
		// The read handle gets what is queued, then the end of the connection.
		self.incoming = None;
		// No response can come for a sent request, and no requester update for a received one.
		let (sent, received) = {
			let mut tracker = self.shared.tracker();
			tracker.closed = true;
			(tracker.sent.drain(), tracker.received.drain().collect::<Vec<_>>())
		};
		// Dropping the senders fails every sent request's handle and ends the update queues of
		// the received ones (which can still be answered); done outside the lock.
		drop((sent, received));
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
			&& self.unanswered == 0
			&& !self.writer.has_queued()
			&& !self.reader.mid_frame()
			&& self.pending.is_none()
			// Nothing read waits in a queue for the application.
			&& self.shared.incoming_budget.available_permits() == self.budget_total
			&& self.shared.tracker().sent.is_empty();
		if idle {
			tracing::info!("idle for {timeout:?}: closing the connection");
			self.shared.request_close();
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

	/// Queue a message for the writer; a message the transport refuses is dropped with an error
	/// log (handles check the limits before queuing, so this is a configuration mismatch).
	fn write(&mut self, message: Message<T::Body>) -> bool {
		let header = message.header;
		match self.writer.start_send(message) {
			Ok(()) => true,
			Err(error) => {
				tracing::error!(?header, "transport refused a message: {error}");
				if header.message_type == MessageType::Request {
					// Fail the request's handle rather than leave it waiting for a response.
					self.shared.tracker().sent.remove(header.request_id);
				}
				false
			},
		}
	}

	/// An error response the peer sends on its own.
	fn auto_reply(&mut self, request_id: u32, text: &str) {
		// Counted only if queued: a count that no flush will reset would stop reading for good.
		if self.write(Message::error_response(request_id, text)) {
			self.auto_replies += 1;
		}
	}

	/// Route one message from the remote to the handle it belongs to.
	fn dispatch(&mut self, message: Message<T::Body>) {
		let header = message.header;
		let id = header.request_id;
		match header.message_type {
			MessageType::Request => self.open_received(message),
			MessageType::Stream => self.deliver_incoming(ReceivedMessage::Stream(message)),
			MessageType::Response => {
				let sender = self.shared.tracker().sent.remove(id);
				match sender {
					Some(sender) => self.deliver(sender, message),
					None => tracing::debug!(request_id = id, "dropped a response for a request that is not open"),
				}
			},
			MessageType::ResponderUpdate => {
				let sender = self.shared.tracker().sent.get(id).cloned();
				match sender {
					Some(sender) => self.deliver(sender, message),
					None => tracing::debug!(request_id = id, "dropped an update for a request that is not open"),
				}
			},
			MessageType::RequesterUpdate => {
				let sender = self.shared.tracker().received.get(id).cloned();
				match sender {
					Some(sender) => self.deliver(sender, message),
					None => tracing::debug!(request_id = id, "dropped an update for a request that is not open"),
				}
			},
		}
	}

	fn open_received(&mut self, message: Message<T::Body>) {
		let id = message.header.request_id;
		if self.incoming.as_ref().is_none_or(mpsc::Sender::is_closed) {
			// No read handle: answer as a dropped handle would, but here, where the reply counts
			// towards the reading limit.
			self.auto_reply(id, crate::handle::DROPPED_REQUEST_TEXT);
			return;
		}
		let Some(link) = self.link.upgrade() else {
			// Every handle is gone; the peer is about to stop.
			self.auto_reply(id, "peer is shutting down");
			return;
		};
		// Work handed to the application counts until it is answered: past the budget, the remote
		// is told so, as past the open-request limit, and reading goes on (a request held until
		// an update or a response arrives must not stop those from being read).
		let cost = message.body.len().saturating_add(MESSAGE_OVERHEAD).min(self.shared.unanswered_total);
		let Ok(charge) =
			self.shared.unanswered_budget.clone().try_acquire_many_owned(cost.min(u32::MAX as usize) as u32)
		else {
			tracing::warn!(request_id = id, "refused a request: too many bytes of requests unanswered");
			self.auto_reply(id, crate::handle::BUSY_TEXT);
			return;
		};
		let (sender, receiver) = mpsc::channel(self.shared.request_queue);
		let opened = self.shared.tracker().received.insert(id, sender);
		match opened {
			Ok(serial) => {
				self.unanswered += 1;
				let request = ReceivedRequestHandle::new(link, message.header, serial, receiver, charge);
				self.deliver_incoming(ReceivedMessage::Request(request, message.body));
			},
			Err(OpenError::Duplicate) => {
				let violation = ProtocolViolation::DuplicateRequestId { request_id: id };
				tracing::warn!("protocol violation by the remote: {violation}");
				self.auto_reply(id, &violation.to_string());
			},
			Err(OpenError::Full) => {
				tracing::warn!(request_id = id, "refused a request: too many open requests");
				self.auto_reply(id, "too many open requests");
			},
		}
	}

	fn deliver_incoming(&mut self, item: ReceivedMessage<T::Body>) {
		self.deliver_to(Target::Incoming(item));
	}

	fn deliver(&mut self, sender: RequestSender<T::Body>, message: Message<T::Body>) {
		self.deliver_to(Target::Request(sender, message));
	}

	/// Charge a message to the incoming budget and hand it over, or hold it until both the
	/// budget and its queue have room.
	fn deliver_to(&mut self, target: Target<T::Body>) {
		let cost = target.cost(self.budget_total);
		match self.shared.incoming_budget.clone().try_acquire_many_owned(cost) {
			Ok(permit) => self.hand_over(target, permit),
			Err(_) => self.pending = Some(Pending::Budget(cost, target)),
		}
	}

	fn hand_over(&mut self, target: Target<T::Body>, budget: OwnedSemaphorePermit) {
		match target {
			Target::Incoming(item) => {
				match self.incoming.as_ref().map(|incoming| incoming.try_send(Charged { item, _budget: budget })) {
					Some(Ok(())) => {},
					Some(Err(mpsc::error::TrySendError::Full(item))) => {
						let incoming = self.incoming.clone().expect("just used");
						self.pending = Some(Pending::Incoming(PollSender::new(incoming), item));
					},
					// The read handle is gone. A request handle dropped here answers itself with an
					// error response; a stream message has no one to go to.
					Some(Err(mpsc::error::TrySendError::Closed(_))) | None => {
						tracing::debug!("no read handle: dropped an incoming message")
					},
				}
			},
			Target::Request(sender, message) => match sender.try_send(Charged { item: message, _budget: budget }) {
				Ok(()) => {},
				Err(mpsc::error::TrySendError::Full(message)) => {
					self.pending = Some(Pending::Request(PollSender::new(sender), message));
				},
				Err(mpsc::error::TrySendError::Closed(message)) => {
					tracing::debug!(header = ?message.item.header, "request handle dropped: dropped its message");
				},
			},
		}
	}
}

impl<T: Transport> Drop for Peer<T> {
	fn drop(&mut self) {
		// Reached at the end of `run`, or when a peer is dropped without running. The reason is
		// set first so that every handle woken below reports it.
		let _ = self.shared.close_reason.set(Error::closed_locally());
		self.shared.write_permits.close();
		self.shared.write_bytes.close();
		self.commands.close();
		let (sent, received) = {
			let mut tracker = self.shared.tracker();
			tracker.closed = true;
			(tracker.sent.drain(), tracker.received.drain().collect::<Vec<_>>())
		};
		// Dropping the senders wakes every request handle; done outside the lock.
		drop((sent, received));
		self.shared.stopped.cancel();
	}
}

impl<B: Body> WeakLink<B> {
	fn upgrade(&self) -> Option<Link<B>> {
		Some(Link::new(self.commands.upgrade()?, self.shared.clone()))
	}
}
