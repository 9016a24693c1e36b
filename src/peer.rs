//! The driver of one connection: a task that moves bytes between the transport and the
//! connection state ([`proto::Connection`](crate::proto)), which the handles share with it.
//!
//! Each round it reads a batch of messages (decoding outside the lock), takes the lock once to
//! hand them to the state and take what the handles queued, then writes and flushes outside the
//! lock. Timers (close, frame, idle, letting go of spare buffers) live here, not in the state.
//!
//! The transport's read half is shared with the read handle (`Shared::reading`): while this
//! task sleeps, a read handle with nothing to return reads for it, on its own thread and with
//! this task's waker ([`Shared::read_for_driver`]), and while stream messages wait for the read
//! handle and no request is open this task leaves the reading to it
//! ([`Peer::poll_leave_reading`]). Both sides only `try_lock` the read half; the lock order is
//! the read half, then the state.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
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
/// How long the peer task leaves reading to a read handle that has stream messages to take
/// before it looks whether the handle took any (see `Peer::poll_leave_reading`).
const LEAVE_READING_FOR: Duration = Duration::from_millis(2);
/// Rounds of work before the peer yields to the runtime even if more is ready.
const ROUNDS_BEFORE_YIELD: usize = 32;
/// A message at least this large (bytes of the outgoing budget) is more than a socket takes at
/// its default buffer size (208 KiB on Linux): before it is written, the peer task yields once
/// if the transport asks for it, so that an idle worker thread wakes and watches the sockets
/// while this one writes (see the field `Peer::yield_before_flush`).
const YIELD_BEFORE_WRITING: usize = 256 * 1024;

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
	/// The transport's read half, shared with the read handle, which reads through it for the
	/// peer task while that task sleeps ([`read_for_driver`](Self::read_for_driver)). Never
	/// waited for: both sides only `try_lock` it, and hold it for one batch of reads without
	/// awaiting. Lock order: this, then `state`.
	reading: Mutex<ReadSide<B>>,
	/// The peer task found `reading` taken: whoever holds it wakes the task when done.
	read_missed: AtomicBool,
	/// Messages read by the read handle for the peer task, ever (activity, for the idle timeout).
	read_by_handles: AtomicU64,
	/// The connection's span, which the read handle enters when it reads for the peer task, so
	/// that what the transport logs then is the connection's, as when the peer task reads.
	span: tracing::Span,
	/// The waker every read of the transport registers, made of `read_wake`: it tells the peer
	/// task whether the transport woke it.
	read_wake: Arc<ReadWake>,
	read_waker: Waker,
}

/// Who hears that the transport has something to read: the peer task, through this, which
/// notes that the wake-up came from the transport.
///
/// The peer task is woken for many reasons (a handle queued a message, a hold of the flush
/// ended, a timer). Polling the transport's reader when it has not woken since it last returned
/// `Pending` finds nothing, and costs a look at the socket's readiness (about 400 instructions).
/// With this flag the peer task polls the reader only when it may have something: every read
/// registers the same waker, which sets the flag before it wakes the task.
struct ReadWake {
	/// The transport woke the task, or a read handle read for it, since the peer task last looked.
	woken: AtomicBool,
	/// The peer task's waker, as of its last poll.
	task: Mutex<Option<Waker>>,
}

impl std::task::Wake for ReadWake {
	fn wake(self: Arc<Self>) {
		self.wake_by_ref();
	}

	fn wake_by_ref(self: &Arc<Self>) {
		self.woken.store(true, AtomicOrdering::SeqCst);
		// Woken outside the lock: an executor may poll the task in `wake`.
		let task = self.task.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
		if let Some(task) = task {
			task.wake();
		}
	}
}

impl ReadWake {
	/// The peer task is polled with a new `waker`: keep it for the transport's wake-ups.
	fn set_task(&self, waker: &Waker) {
		*self.task.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(waker.clone());
	}

	/// Whether the reader may have something since the peer task last looked (and look now).
	fn take_woken(&self) -> bool {
		self.woken.swap(false, AtomicOrdering::SeqCst)
	}
}

/// The read half of a transport that was dropped with its peer task: closes the socket even
/// while handles keep the shared state.
struct ReaderGone<B>(std::marker::PhantomData<fn() -> B>);

impl<B: Body> TransportRead for ReaderGone<B> {
	type Body = B;

	fn poll_read_message(&mut self, _: &mut Context<'_>) -> Poll<Result<Option<Message<B>>, Error>> {
		Poll::Ready(Ok(None))
	}
}

/// Why a batch of reads ([`Shared::read_batch`]) stopped.
enum Stopped {
	/// A whole batch, or enough bytes, was read.
	Enough,
	/// Nothing more has arrived: the reader holds the waker it was given.
	Pending,
	/// The remote closed its side.
	Eof,
	/// The transport failed.
	Error,
}

/// The read half of the transport and what was read from it and not yet handed to the state.
pub(crate) struct ReadSide<B> {
	reader: Box<dyn TransportRead<Body = B>>,
	/// Read and not yet handed to the state: the first may be waiting for room.
	inbox: VecDeque<Message<B>>,
	/// Whether handles may read through `reader` ([`TransportRead::shares_reads`]).
	shares_reads: bool,
	/// The transport has reported the remote's end of stream (the state hears of it once the
	/// inbox is handed over).
	eof: bool,
	/// The transport failed (a protocol violation, a cut frame, an I/O error): the connection ends
	/// with it once what was read before it is handed over.
	error: Option<Error>,
	/// The read handle found the reader holding spare memory after reading for the peer task,
	/// and woke the task, which times its release (told again once it is released).
	spare_told: bool,
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

	/// The read side, for the peer task, unless the read handle is reading through it: then
	/// `None`, and the handle wakes the task when it is done.
	fn try_read_side(&self) -> Option<MutexGuard<'_, ReadSide<B>>> {
		let attempt = || match self.reading.try_lock() {
			Ok(side) => Some(side),
			Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
			Err(TryLockError::WouldBlock) => None,
		};
		if let Some(side) = attempt() {
			return Some(side);
		}
		// Said before looking again, so that a holder that lets go in between either is seen
		// letting go or sees the flag.
		self.read_missed.store(true, AtomicOrdering::SeqCst);
		let side = attempt()?;
		self.read_missed.store(false, AtomicOrdering::Relaxed);
		Some(side)
	}

	/// Read up to [`READ_BATCH`] messages through `side` into its inbox, stopping once
	/// [`INBOX_BYTES`] of bodies are read (handed over before reading more: what the state
	/// refuses is let go at once, so reading ahead holds little), at the end of the stream or an
	/// error (noted in `side`; a protocol violation is logged and counted), or when nothing more
	/// has arrived. For the peer task and for the read handle reading for it alike.
	///
	/// The reader registers [`read_waker`](Self::read_waker): whoever reads, the transport's
	/// wake-up goes to the peer task.
	fn read_batch(&self, side: &mut ReadSide<B>) -> Stopped {
		let mut cx = Context::from_waker(&self.read_waker);
		let mut bytes = 0;
		for _ in 0..READ_BATCH {
			match side.reader.poll_read_message(&mut cx) {
				Poll::Ready(Ok(Some(message))) => {
					bytes += message.body.len();
					side.inbox.push_back(message);
					if bytes >= INBOX_BYTES {
						return Stopped::Enough;
					}
				},
				Poll::Ready(Ok(None)) => {
					side.eof = true;
					return Stopped::Eof;
				},
				Poll::Ready(Err(error)) => {
					if let Some(violation) = error.protocol_violation() {
						let mut state = self.state();
						tracing::warn!(parent: state.span(), "protocol violation by the remote: {violation}");
						state.note_protocol_error();
					}
					side.error = Some(error);
					return Stopped::Error;
				},
				Poll::Pending => return Stopped::Pending,
			}
		}
		Stopped::Enough
	}

	/// Read from the transport for the peer task while it sleeps, and hand what was read to the
	/// state, on the caller's thread: the read handle does this when it has nothing to return,
	/// so that in a steady flow the messages it returns were read by its own task, not by the
	/// peer task on another thread and handed over (which costs a wake-up and moves every
	/// message between processor caches). The transport registers the peer task's waker
	/// ([`ReadWake`]) when it has nothing more, so the peer task, not the handle, hears of the
	/// remote's next bytes, as if it had read all along. `driver` is the peer task's waker, for
	/// what this meets that is the task's to handle.
	///
	/// Reads only in the plain case (the transport allows it, nothing read is waiting for room,
	/// no end of stream or error noted); wakes the peer task for anything else it meets (the
	/// end of stream, an error, a message without room, a frame begun and not finished, a look
	/// of the task's own that found the read side taken). Returns whether it handed anything
	/// over.
	pub(crate) fn read_for_driver(&self, driver: &Waker) -> bool {
		let mut guard = match self.reading.try_lock() {
			Ok(side) => side,
			Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
			Err(TryLockError::WouldBlock) => return false,
		};
		let side = &mut *guard;
		if !side.shares_reads || side.eof || side.error.is_some() || !side.inbox.is_empty() {
			return false;
		}
		let _entered = self.span.enter();
		let mut wake = match self.read_batch(side) {
			Stopped::Eof | Stopped::Error => true,
			// The peer task times a frame begun (`Config::frame_timeout`).
			Stopped::Pending => side.reader.mid_frame(),
			Stopped::Enough => {
				// More may be there and the reader is not registered: the peer task's next look
				// reads (the read handle is back first, as a rule).
				self.read_wake.woken.store(true, AtomicOrdering::SeqCst);
				false
			},
		};
		// The reader grew its buffers for a large message: the peer task times their release.
		if side.reader.holds_spare_memory() && !std::mem::replace(&mut side.spare_told, true) {
			wake = true;
		}
		let read = side.inbox.len();
		if read > 0 {
			let mut state = self.state();
			// The caller is the read handle, and looks at its queue again next.
			state.forget_reader_waker();
			while let Some(message) = side.inbox.pop_front() {
				if let Err(message) = state.recv(message) {
					side.inbox.push_front(message);
					// The peer task takes it from here, and pauses reading.
					wake = true;
					break;
				}
			}
			drop(state);
			self.read_by_handles.fetch_add(read as u64, AtomicOrdering::Relaxed);
		}
		drop(guard);
		if self.read_missed.swap(false, AtomicOrdering::SeqCst) {
			wake = true;
		}
		if wake {
			driver.wake_by_ref();
		}
		read > 0
	}
}

/// Small stream messages held back from the transport's flush while more keep coming.
///
/// A sender of many small stream messages (telemetry, a camera's metadata) queues them faster
/// than one write each can carry: written as they come, every few messages cost a system call
/// on each side and a wake-up of the receiver. So while everything given to the transport since
/// its last flush is stream messages, few bytes of them
/// ([`TransportWrite::may_coalesce`]), the peer does not flush at once.
///
/// - The first hold lets every other task ready on its worker thread run first (a deferred
///   wake-up, as `tokio::task::yield_now` makes). If nothing more has come when the peer is
///   polled again, it flushes: a lone stream message, or a burst sent in one turn, waits for one
///   turn of the worker's queue (two on a current-thread runtime; see `Coalesce::look_twice`).
/// - If more came, the sender is sending on turn after turn, and its next message wakes the peer
///   (a wake-up from the running sender, which keeps the peer on the sender's worker). The peer
///   flushes when [`HOLDS_AT_MOST`] such looks found more, when the transport holds enough, or
///   at a deadline of [`HOLD_AT_MOST`] after the first hold (the runtime's timer rounds it up to
///   its next millisecond tick), which is also when the tail of such a run goes out if nothing
///   else flushes it first. A round that has more to read holds for a turn instead, so that
///   reading goes on.
///
/// A hold is a deferred wake-up only once per flush, not at every turn of a steady sender. With
/// one at every turn, the sender's own deferred wake-up (its yield) and the peer's meet when the
/// worker wakes deferred tasks: one of them lands in the worker's run queue, which the other
/// worker steals from, and the sender, the peer and the receiver migrate between the cores all
/// the time (BENCHMARKS.md, the eighth and ninth passes).
///
/// Requests, responses, updates, closing, [`PeerWriteHandle::flush`](crate::PeerWriteHandle::flush)
/// and a sender waiting for room in the write budget are never held: each wakes the peer, which
/// then flushes at once.
struct Coalesce {
	/// Everything given to the transport since its last flush is a stream message.
	stream_only: bool,
	/// A flush has begun (the socket took part of it): finish it, hold nothing.
	flushing: bool,
	/// Messages given to the transport since its last flush.
	given: u64,
	/// `given` when the peer last held back: if nothing more came by the next look, flush (but
	/// see `look_twice`).
	held_at: Option<u64>,
	/// On a current-thread runtime, a first hold whose look found nothing more holds for a
	/// second turn (once: the second hold makes `holds` 2). That scheduler runs the peer's
	/// deferred look before the sender's next turn (every such look found nothing, and a steady
	/// sender cost a write per turn): the second look comes after it. A multi-thread worker runs
	/// the sender first.
	look_twice: bool,
	/// When the peer first held back what it holds now, and how many times since.
	since: Option<Instant>,
	holds: u32,
}

/// The most looks a hold lasts while more keeps coming: enough for a busy sender's turns (16
/// messages each in the benchmark) to fill most of a 64 KiB write, and a bound on the wait of a
/// sender that brings one more message every turn (beside [`HOLD_AT_MOST`]). At 16, a write
/// carried about 18 KiB of 64-byte messages, and 64-byte stream messages ran 5-15 % slower
/// (BENCHMARKS.md, ninth pass).
const HOLDS_AT_MOST: u32 = 64;
/// The longest a hold lasts, for a sender whose turns are slow.
const HOLD_AT_MOST: Duration = Duration::from_millis(1);

impl Coalesce {
	fn new() -> Self {
		Self { stream_only: true, flushing: false, given: 0, held_at: None, look_twice: false, since: None, holds: 0 }
	}

	/// A message is given to the transport.
	fn give(&mut self, message_type: MessageType) {
		self.given += 1;
		if message_type != MessageType::Stream {
			self.stream_only = false;
		}
	}

	/// Whether to hold back the flush once more: stream messages only, more given since the last
	/// look (or, on a current-thread runtime, this is the first hold's look), not held
	/// [`HOLDS_AT_MOST`] times or for [`HOLD_AT_MOST`] already, and (`ordinary`) nothing else
	/// that wants the flush now.
	fn should_hold(&self, ordinary: bool) -> bool {
		ordinary
			&& self.stream_only
			&& !self.flushing
			&& self.given > 0
			&& (self.more_came() || (self.look_twice && self.holds == 1))
			&& self.holds < HOLDS_AT_MOST
			// The clock is read at every fourth look only (a read costs about as much as the
			// rest of the look).
			&& (self.holds % 4 != 0 || self.since.is_none_or(|since| since.elapsed() < HOLD_AT_MOST))
	}

	/// More was given since the last hold.
	fn more_came(&self) -> bool {
		self.held_at != Some(self.given)
	}

	/// Whether the next hold waits for the sender's next message (or the deadline) instead of a
	/// turn of the worker's queue: this run held already, and more came since.
	fn waits_for_sender(&self) -> bool {
		self.holds > 0 && self.more_came()
	}

	/// When a hold that waits for the sender ends anyway: [`HOLD_AT_MOST`] after the first hold.
	fn deadline(&self) -> Option<Instant> {
		self.since.map(|since| since + HOLD_AT_MOST)
	}

	/// Hold back until the sender's next message (the caller has the state wake this task then).
	fn hold_for_sender(&mut self) {
		self.held_at = Some(self.given);
		self.holds += 1;
	}

	/// Hold back: have this task polled again once the other tasks ready on its worker ran.
	///
	/// `yield_now` registers the wake-up on its first poll and dropping it does not take that
	/// back. Inside a tokio worker the wake-up is deferred until the worker has run what else is
	/// ready (or at its periodic maintenance); outside one (a runtime merely entered, another
	/// executor, `block_in_place`) the task is woken at once and looks again right away, which
	/// ends the hold unless more came meanwhile (or a current-thread runtime's second look is
	/// due).
	fn hold(&mut self, cx: &mut Context<'_>) {
		self.held_at = Some(self.given);
		self.holds += 1;
		self.since.get_or_insert_with(Instant::now);
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
	writer: T::Writer,
	shared: Arc<Shared<T::Body>>,
	/// `Shared::read_by_handles` when this task last looked.
	seen_read_by_handles: u64,
	/// The reader returned `Pending` when this task last polled it (see [`ReadWake`]).
	reader_parked: bool,
	/// The waker of this task's last poll, as `ReadWake` holds it (compared here, without its
	/// lock).
	polled_with: Option<Waker>,
	/// Stream messages wait for the read handle and no request is open: reading is left to
	/// the read handle (as of the last round; see `Connection::may_leave_reading`).
	leave_reading: bool,
	/// `Connection::reader_takes` as of the last round, and when reading was left to the read
	/// handle (or last found it taking).
	reader_takes: u64,
	leave_seen_takes: u64,
	/// While reading is left to the read handle: when to look whether it still takes messages.
	leave_deadline: Option<Pin<Box<Sleep>>>,
	/// What was read waits for room, a frame has begun, or the read handle holds the read side
	/// (as of the last round): not idle.
	read_busy: bool,
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
	/// The task runs on a runtime with other worker threads (as of the last new waker), and the
	/// transport asks for a yield before a large write
	/// ([`TransportWrite::yields_before_large_writes`]).
	yields_before_large_writes: bool,
	/// A large message was given to the transport since the last flush, and the task has not
	/// yielded for it yet.
	///
	/// A worker thread that finds nothing to do parks, and only one parked worker polls the I/O
	/// driver; the others sleep until a worker has queued tasks to share. So when this task is
	/// woken by the driver and writes a message of several MiB in one system call, often no
	/// worker polls the driver meanwhile: the remote's peer task, on the other end of the
	/// socket, is woken only once the write has returned, and reads the whole message then, as
	/// a copy of memory that has left the cache. Over loopback TCP that made the 4 MiB echo
	/// 0.71-1.13x raw tokio, whose receiver reads while its sender writes. A task that wakes
	/// itself and returns `Pending` is queued at the back, and tokio wakes a sleeping worker for
	/// it: that worker finds nothing to take, parks, and polls the driver while this one
	/// writes (1.27-1.34x raw tokio, BENCHMARKS.md). Over a Unix stream the same wake-up costs:
	/// the message moves in turns of one socket buffer, which run fastest on one worker thread,
	/// so that transport does not ask for it.
	yield_before_flush: bool,
	/// The deadline of a hold that waits for the sender (`Coalesce::deadline`), and whether it is
	/// set for the present run. Kept between runs, to reset rather than allocate again.
	hold_deadline: Option<Pin<Box<Sleep>>>,
	hold_deadline_set: bool,
	/// A handle waits for the flush or for room (a copy of the state's flags): do not hold back.
	flush_wanted: bool,
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
	/// While the transport holds spare memory: when to let it go, unless a message moves first
	/// (see `Peer::poll_release_spare`).
	release_deadline: Option<Pin<Box<Sleep>>>,
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
		let read_wake = Arc::new(ReadWake { woken: AtomicBool::new(false), task: Mutex::new(None) });
		let shared = Arc::new(Shared {
			state: Mutex::new(state),
			stopped: CancellationToken::new(),
			room: Notify::new(),
			flushed: Notify::new(),
			info,
			read_ahead: Default::default(),
			reading: Mutex::new(ReadSide {
				shares_reads: reader.shares_reads(),
				reader: Box::new(reader),
				inbox: VecDeque::new(),
				eof: false,
				error: None,
				spare_told: false,
			}),
			read_missed: AtomicBool::new(false),
			read_by_handles: AtomicU64::new(0),
			span: span.clone(),
			read_waker: Waker::from(read_wake.clone()),
			read_wake,
		});
		let handle = PeerHandle::new(shared.clone());
		let peer = Self {
			writer,
			shared,
			seen_read_by_handles: 0,
			reader_parked: false,
			polled_with: None,
			leave_reading: false,
			reader_takes: 0,
			leave_seen_takes: 0,
			leave_deadline: None,
			read_busy: false,
			batch: VecDeque::new(),
			taken_metered: 0,
			taken_total: 0,
			written_cost: 0,
			written_auto: 0,
			flushed: None,
			coalesce: Coalesce::new(),
			yields_before_large_writes: false,
			yield_before_flush: false,
			hold_deadline: None,
			hold_deadline_set: false,
			flush_wanted: false,
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
		// The reader returned `Pending` when last polled and has not woken this task since: it
		// holds the task's waker ([`ReadWake`]), and polling it again finds nothing (in a round
		// trip that was 6 of the 10 reader polls, and in a flow of stream messages sent, one in
		// every poll, each a look at the socket's readiness under tokio's lock, about 400
		// instructions).
		// Polled with another waker (another executor, or an event loop that took the connection
		// over): the reader's registration may belong to the old one, so look again.
		let new_waker = !self.polled_with.as_ref().is_some_and(|last| last.will_wake(cx.waker()));
		if new_waker {
			self.shared.read_wake.set_task(cx.waker());
			self.polled_with = Some(cx.waker().clone());
			let flavor = tokio::runtime::Handle::try_current().ok().map(|runtime| runtime.runtime_flavor());
			self.coalesce.look_twice = flavor == Some(tokio::runtime::RuntimeFlavor::CurrentThread);
			self.yields_before_large_writes =
				flavor == Some(tokio::runtime::RuntimeFlavor::MultiThread) && self.writer.yields_before_large_writes();
		}
		if self.shared.read_wake.take_woken() || new_waker {
			// Kept until the reader is polled: this poll may not read (the read handle holds the
			// read side, reading is left to it, the inbox waits for room).
			self.reader_parked = false;
		}
		let mut reader_parked = self.reader_parked;
		for _ in 0..ROUNDS_BEFORE_YIELD {
			let mut progress = false;
			// A message went either way this round (for the idle timeout).
			let mut active = false;

			// Messages the read handle read for this task since its last look.
			let by_handles = self.shared.read_by_handles.load(AtomicOrdering::Relaxed);
			let read_by_handles = by_handles != self.seen_read_by_handles;
			if read_by_handles {
				self.seen_read_by_handles = by_handles;
				active = true;
			}
			// The read side, unless the read handle is reading through it: then this round
			// neither reads nor hands over, and the handle wakes this task when it is done.
			let leaving = self.leave_reading && self.poll_leave_reading(cx);
			let mut side = self.shared.try_read_side();
			// Read a batch, outside the state's lock. Nothing more while the inbox waits for room
			// or replies of our own making wait to be written (reading could make more).
			let may_read = side.as_ref().is_some_and(|side| {
				!leaving
					&& !side.eof && side.error.is_none()
					&& (self.closing || (side.inbox.is_empty() && !self.auto_replies_full))
			});
			let mut waiting_for_remote = may_read && reader_parked;
			// Messages were read this round: another round reads on, unless the reader is
			// registered for the remote's next bytes already.
			let mut read_any = false;
			// Reading has more to do in another round, and the reader is not registered for the
			// remote's next bytes: a hold must not park this task on the sender alone.
			let mut read_on = false;
			if let Some(side) = side.as_deref_mut().filter(|_| may_read && !reader_parked) {
				let before = side.inbox.len();
				let stopped = self.shared.read_batch(side);
				if side.inbox.len() > before {
					read_any = true;
					if self.closing {
						// Kept reading only so that a remote that hangs up ends the wait for the
						// flush.
						let mut state = self.shared.state();
						for message in side.inbox.drain(before..) {
							tracing::debug!(header = ?message.header, "closing: dropped an incoming message");
							state.note_dropped_while_closing(&message.header, message.body.len());
						}
					} else {
						self.frame_deadline = None;
						active = true;
					}
				}
				match stopped {
					Stopped::Eof => {
						progress = true;
						read_on = true;
					},
					Stopped::Pending => {
						waiting_for_remote = true;
						reader_parked = true;
					},
					// An error is reported once what came before it is handed over (below).
					Stopped::Error | Stopped::Enough => {},
				}
				self.reader_parked = reader_parked;
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
				if let Some(side) = side.as_deref_mut() {
					let waiting = side.inbox.len();
					while let Some(message) = side.inbox.pop_front() {
						if let Err(message) = state.recv(message) {
							side.inbox.push_front(message);
							break;
						}
					}
					if (read_any || side.inbox.len() < waiting) && !reader_parked {
						// Handed over: read again (which also registers for the remote's bytes),
						// unless the reader is registered already.
						progress = true;
						read_on = true;
					}
					if side.eof && !self.remote_done && side.inbox.is_empty() {
						tracing::debug!(
							unanswered = state.unanswered(),
							"the remote closed its side; answering what it asked, then closing"
						);
						state.remote_done();
						progress = true;
					}
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
					read_on = true;
				}
				self.auto_replies_full = auto_replies_full;
				self.reader_takes = state.reader_takes();
				let leave_reading = state.may_leave_reading();
				if self.leave_reading && !leave_reading {
					// Reading is this task's again: another round, which polls the reader.
					progress = true;
					read_on = true;
				}
				self.leave_reading = leave_reading;
				if !leave_reading {
					self.leave_deadline = None;
				}
				if let Some(side) = side.as_deref() {
					// Reading waits for the application (or for automatic replies to be written).
					state.set_read_paused(!self.closing && (!side.inbox.is_empty() || auto_replies_full));
				}
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
			// What the idle timeout and the frame timeout need to know of the read side; while
			// the read handle holds it, it is busy.
			let mid_frame = side.as_ref().is_none_or(|side| side.reader.mid_frame());
			self.read_busy = side.as_ref().is_none_or(|side| !side.inbox.is_empty()) || mid_frame;
			if let Some(side) = side.as_deref_mut() {
				if side.inbox.is_empty() {
					if let Some(error) = side.error.take() {
						return Poll::Ready(Err(error));
					}
				}
			}
			let side_held = side.is_some();
			drop(side);
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
				self.yield_before_flush |= self.yields_before_large_writes && outgoing.cost >= YIELD_BEFORE_WRITING;
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
			// Held back: polled again after a turn of the worker's queue or, for a steady sender,
			// at its next message.
			let mut held = false;
			if self.writer.has_queued() {
				let ordinary =
					!self.closing && !self.remote_done && !self.flush_wanted && self.links > 0 && self.batch.is_empty();
				let mut hold = self.coalesce.should_hold(ordinary && self.writer.may_coalesce());
				// Reading goes on in another round: hold for a turn, as the first hold does, so
				// that the round comes.
				if hold && self.coalesce.waits_for_sender() && !read_on {
					if self.poll_hold_deadline(cx).is_ready() {
						hold = false;
					} else {
						self.coalesce.hold_for_sender();
						// Woken by the sender's next message, unless it came meanwhile.
						let mut state = self.shared.state();
						if state.has_outgoing() {
							progress = true;
						} else {
							state.park_driver(cx.waker(), true);
							held = true;
						}
					}
				} else if hold {
					self.coalesce.hold(cx);
					held = true;
				}
				if !hold && std::mem::take(&mut self.yield_before_flush) {
					// Polled again at once, unless other tasks were queued first; the rounds'
					// other work (timers, closing) is looked at then.
					cx.waker().wake_by_ref();
					return Poll::Pending;
				}
				if !hold {
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
				if waiting_for_remote && mid_frame {
					let deadline = self.frame_deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
					if deadline.as_mut().poll(cx).is_ready() {
						tracing::warn!("the remote began a frame and did not finish it within {timeout:?}");
						return Poll::Ready(Err(Error::timeout(timeout)));
					}
				} else if side_held {
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
			if !progress && !active {
				self.poll_release_spare(cx, false);
			} else if read_by_handles {
				// The read handle read for this task, perhaps a large message: the release is
				// timed from here, as it is after a round of this task's own reading.
				self.poll_release_spare(cx, true);
			} else if active {
				self.put_off_release();
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

	/// Whether to leave reading to the read handle this round (`leave_reading` holds): while it
	/// keeps taking messages, checked every [`LEAVE_READING_FOR`]. Once it took nothing for that
	/// long (an application that does not read now), this task reads again, so that what the
	/// remote sends behind (an error, the end of the stream) is not left unread.
	fn poll_leave_reading(&mut self, cx: &mut Context<'_>) -> bool {
		let takes = self.reader_takes;
		let deadline = match &mut self.leave_deadline {
			Some(deadline) => deadline,
			None => {
				self.leave_seen_takes = takes;
				self.leave_deadline.insert(Box::pin(tokio::time::sleep(LEAVE_READING_FOR)))
			},
		};
		if deadline.as_mut().poll(cx).is_pending() {
			return true;
		}
		if takes != self.leave_seen_takes {
			// Still taking: leave it for another while.
			self.leave_seen_takes = takes;
			deadline.as_mut().reset(Instant::now() + LEAVE_READING_FOR);
			if deadline.as_mut().poll(cx).is_pending() {
				return true;
			}
		}
		self.leave_deadline = None;
		false
	}

	/// The deadline of a hold that waits for the sender, set when the run's first such hold
	/// polls it.
	fn poll_hold_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
		let Some(deadline) = self.coalesce.deadline() else { return Poll::Ready(()) };
		let timer = match &mut self.hold_deadline {
			Some(timer) => {
				if !self.hold_deadline_set {
					timer.as_mut().reset(deadline);
				}
				timer
			},
			None => self.hold_deadline.insert(Box::pin(tokio::time::sleep_until(deadline))),
		};
		self.hold_deadline_set = true;
		timer.as_mut().poll(cx)
	}

	/// Everything given to the transport so far is written: tell the state in the next round.
	fn note_flushed(&mut self) {
		self.hold_deadline_set = false;
		self.coalesce.flushed();
		let flushed = self.flushed.get_or_insert_with(Flushed::default);
		flushed.cost += std::mem::take(&mut self.written_cost);
		flushed.auto_replies += std::mem::take(&mut self.written_auto);
		flushed.total = self.taken_total;
	}

	/// Let the transport give back buffers grown for a large message once no message has moved
	/// for [`RELEASE_SPARE_AFTER`] (up to twice that). Costs nothing (no timer) while it holds
	/// none. `active`: this round moved messages.
	///
	/// The timer is armed at a quiet round (or after the read handle read), and a round that
	/// moves a message puts it off ([`put_off_release`](Self::put_off_release)), so it never
	/// fires while messages keep moving. It used to fire every period and look whether the
	/// connection had been quiet: a timer that fires in the same turn of the I/O driver as a
	/// socket's readiness wakes two tasks at once, and tokio then wakes a second worker thread.
	/// Over a Unix stream, the two ends of a 4 MiB echo went on taking turns across two threads
	/// instead of one, at 0.84-0.96x raw tokio; with no timer firing they stay on one, as raw
	/// tokio's do, and are level with it (BENCHMARKS.md).
	fn poll_release_spare(&mut self, cx: &mut Context<'_>, active: bool) {
		// The read side is busy while the read handle reads through it: it may hold spare memory
		// (the timer stays armed, and the release looks again).
		let reader_holds = self.shared.reading.try_lock().map(|side| side.reader.holds_spare_memory()).unwrap_or(true);
		if !reader_holds && !self.writer.holds_spare_memory() {
			self.release_deadline = None;
			return;
		}
		if active {
			self.put_off_release();
		}
		let deadline = self.release_deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(RELEASE_SPARE_AFTER)));
		if deadline.as_mut().poll(cx).is_ready() {
			if let Ok(mut side) = self.shared.reading.try_lock() {
				side.reader.release_spare_memory();
				side.spare_told = false;
			}
			self.writer.release_spare_memory();
			self.release_deadline = None;
		}
	}

	/// A message moved: keep the release timer, if armed, at least [`RELEASE_SPARE_AFTER`] away.
	/// It is moved to twice that only when less is left, so a busy connection resets it about
	/// once a period, not at every message (each reset takes the timer wheel's lock).
	fn put_off_release(&mut self) {
		if let Some(deadline) = &mut self.release_deadline {
			let now = Instant::now();
			if deadline.deadline() < now + RELEASE_SPARE_AFTER {
				deadline.as_mut().reset(now + 2 * RELEASE_SPARE_AFTER);
			}
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
			&& !self.writer.has_queued()
			&& !self.read_busy;
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
		// The transport goes with the peer task, also its read half, which the handles share
		// (what was read and not handed over, descriptors included, goes with it).
		{
			let mut side = self.shared.reading.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
			side.reader = Box::new(ReaderGone(std::marker::PhantomData));
			side.shares_reads = false;
			side.inbox.clear();
		}
		*self.shared.read_wake.task.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
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

	/// The in-memory transport, counting the looks at its reader. A `forgetful` reader's
	/// registration wakes nobody, as one with an event loop that has closed.
	struct Counting {
		inner: MemoryTransport<Bytes>,
		polls: Arc<AtomicUsize>,
		forgetful: bool,
	}

	struct CountingReader {
		inner: MemoryReader<Bytes>,
		polls: Arc<AtomicUsize>,
		forgetful: bool,
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
			(CountingReader { inner, polls: self.polls, forgetful: self.forgetful }, writer)
		}
	}

	impl TransportRead for CountingReader {
		type Body = Bytes;

		fn poll_read_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Message<Bytes>>, Error>> {
			self.polls.fetch_add(1, Ordering::Relaxed);
			if self.forgetful {
				return self.inner.poll_read_message(&mut Context::from_waker(Waker::noop()));
			}
			self.inner.poll_read_message(cx)
		}
	}

	struct Nothing;

	impl std::task::Wake for Nothing {
		fn wake(self: Arc<Self>) {}
	}

	/// The peer task polls its reader only once the reader woke it, unless it is polled with
	/// another waker: then the reader's registration may belong to the executor (or event loop)
	/// it left, and it looks again.
	#[tokio::test]
	async fn a_peer_polled_with_another_waker_looks_at_its_reader_again() {
		let config = Config::default();
		let (ours, theirs) = MemoryTransport::<Bytes>::pair(&config);
		let polls = Arc::new(AtomicUsize::new(0));
		let (peer, handle) = Peer::new(Counting { inner: ours, polls: polls.clone(), forgetful: true }, &config);
		let (_, mut remote) = theirs.split();
		let mut run = Box::pin(peer.run());
		let first = Waker::from(Arc::new(Nothing));
		assert!(run.as_mut().poll(&mut Context::from_waker(&first)).is_pending());
		let looked = polls.load(Ordering::Relaxed);
		assert!(looked > 0);

		remote.start_send(Message::stream(0, 1, Bytes::from_static(b"hello"))).unwrap();
		assert!(remote.poll_flush(&mut Context::from_waker(Waker::noop())).is_ready());
		// Same waker, and the reader woke nobody: no look.
		assert!(run.as_mut().poll(&mut Context::from_waker(&first)).is_pending());
		assert_eq!(polls.load(Ordering::Relaxed), looked);
		// Another waker: a look, which finds the message.
		let second = Waker::from(Arc::new(Nothing));
		assert!(run.as_mut().poll(&mut Context::from_waker(&second)).is_pending());
		assert!(polls.load(Ordering::Relaxed) > looked);
		assert_eq!(handle.stats().received.messages.stream, 1);
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

	/// A large message that the read handle reads for the peer task grows the reader's buffer
	/// like one the peer task reads: the buffer is let go once the connection is quiet.
	#[tokio::test]
	async fn a_large_message_read_by_the_read_handle_lets_its_buffer_go() {
		use tokio::io::AsyncWriteExt;

		const LEN: usize = 4 << 20;
		let config = Config::default().with_max_body_len_read(2 * LEN);
		let (ours, mut theirs) = tokio::io::duplex(2 * LEN);
		let (read, write) = tokio::io::split(ours);
		let (peer, mut handle) = Peer::new(crate::StreamTransport::new(read, write, &config), &config);
		let shared = peer.shared.clone();
		tokio::spawn(peer.run());
		// The peer task looks at the reader once and sleeps.
		tokio::task::yield_now().await;
		let mut frame = bytes::BytesMut::new();
		crate::codec::StreamCodec::new(config.endian, LEN, LEN)
			.encode(&Message::stream(0, 1, Bytes::from(vec![7; LEN])), &mut frame)
			.unwrap();
		theirs.write_all(&frame).await.unwrap();
		// On this one thread the peer task has not run since: the read handle reads for it.
		let message = handle.recv_message().await.unwrap().into_stream().unwrap();
		assert_eq!(message.body.len(), LEN);
		drop(message);
		assert!(shared.read_by_handles.load(Ordering::Relaxed) > 0, "the read handle did not read the message");
		tokio::time::sleep(RELEASE_SPARE_AFTER * 4).await;
		let holds = shared.reading.lock().unwrap().reader.holds_spare_memory();
		assert!(
			!holds,
			"the reader still holds the buffer grown for the message, {:?} after it",
			RELEASE_SPARE_AFTER * 4
		);
	}

	/// Counts its wake-ups.
	#[derive(Default)]
	struct Wakes(AtomicUsize);

	impl std::task::Wake for Wakes {
		fn wake(self: Arc<Self>) {
			self.0.fetch_add(1, Ordering::Relaxed);
		}
	}

	/// Polls a peer task over a byte stream (yielding before large writes, as TCP does, if
	/// `yields`) whose handle queued a stream message of `len` bytes. The result: how many polls
	/// it took until the remote could read the message, and how often the task was woken after
	/// the message was queued (by itself: nothing else happens meanwhile).
	fn polls_until_written(len: usize, yields: bool) -> (usize, usize) {
		let config = Config::default().with_max_body_len_write(len).with_max_body_len_read(len);
		let (ours, theirs) = tokio::io::duplex(2 * len);
		let (read, write) = tokio::io::split(ours);
		let mut transport = crate::StreamTransport::new(read, write, &config);
		if yields {
			transport = transport.yielding_before_large_writes();
		}
		let (peer, handle) = Peer::new(transport, &config);
		let (read, write) = tokio::io::split(theirs);
		let (mut remote, _writer) = crate::StreamTransport::new(read, write, &config).split();
		let mut run = Box::pin(peer.run());
		let wakes = Arc::new(Wakes::default());
		let waker = Waker::from(wakes.clone());
		let mut cx = Context::from_waker(&waker);
		// The peer task looks at the reader once and sleeps.
		assert!(run.as_mut().poll(&mut cx).is_pending());
		let send = std::pin::pin!(handle.send_stream(1, Bytes::from(vec![7; len])));
		assert!(matches!(send.poll(&mut cx), Poll::Ready(Ok(()))));
		let before = wakes.0.load(Ordering::Relaxed);
		for polls in 1..=4 {
			assert!(run.as_mut().poll(&mut cx).is_pending());
			if let Poll::Ready(message) = remote.poll_read_message(&mut Context::from_waker(Waker::noop())) {
				assert_eq!(message.unwrap().unwrap().body.len(), len);
				return (polls, wakes.0.load(Ordering::Relaxed) - before);
			}
		}
		panic!("a {len}-byte message was not written in 4 polls");
	}

	/// On a runtime with other worker threads, over a transport that asks for it (TCP), the
	/// peer task yields once before it writes a large message, so that another worker polls the
	/// I/O driver while it writes; a small message is written at the first poll.
	#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
	async fn a_large_message_is_written_after_one_yield_when_other_workers_can_watch_the_sockets() {
		assert_eq!(polls_until_written(YIELD_BEFORE_WRITING, true), (2, 1));
		assert_eq!(polls_until_written(YIELD_BEFORE_WRITING - 1024, true), (1, 0));
	}

	/// A transport that does not ask for the yield (a Unix stream), or a runtime without other
	/// workers: written at the first poll.
	#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
	async fn a_large_message_is_written_at_once_over_a_transport_that_keeps_to_one_worker() {
		assert_eq!(polls_until_written(YIELD_BEFORE_WRITING, false), (1, 0));
	}

	#[tokio::test(flavor = "current_thread")]
	async fn a_large_message_is_written_at_once_on_a_current_thread_runtime() {
		assert_eq!(polls_until_written(YIELD_BEFORE_WRITING, true), (1, 0));
	}

	/// The timer that lets go of a large message's buffer does not fire while messages keep
	/// coming (a timer firing among the socket's events wakes a second worker thread), and the
	/// buffer goes once they stop.
	#[tokio::test(start_paused = true)]
	async fn the_release_timer_stays_quiet_while_messages_keep_coming() {
		use tokio::io::AsyncWriteExt;

		const LEN: usize = 4 << 20;
		let config = Config::default().with_max_body_len_read(LEN);
		let (ours, mut theirs) = tokio::io::duplex(2 * LEN);
		let (read, write) = tokio::io::split(ours);
		let (peer, mut handle) = Peer::new(crate::StreamTransport::new(read, write, &config), &config);
		let shared = peer.shared.clone();
		let mut run = Box::pin(peer.run());
		let wakes = Arc::new(Wakes::default());
		let waker = Waker::from(wakes.clone());
		let mut cx = Context::from_waker(&waker);
		let codec = crate::codec::StreamCodec::new(config.endian, LEN, LEN);
		let mut send = async |len: usize| {
			let mut frame = bytes::BytesMut::new();
			codec.encode(&Message::stream(0, 1, Bytes::from(vec![7; len])), &mut frame).unwrap();
			theirs.write_all(&frame).await.unwrap();
		};
		// Polls the peer task, then takes what it read, as an application would.
		let mut step = |handle: &mut PeerHandle<Bytes>| {
			assert!(run.as_mut().poll(&mut cx).is_pending());
			let mut taken = 0;
			while let Poll::Ready(message) = std::pin::pin!(handle.recv_message()).poll(&mut cx) {
				message.unwrap();
				taken += 1;
			}
			assert!(run.as_mut().poll(&mut cx).is_pending());
			taken
		};
		let holds = || shared.reading.lock().unwrap().reader.holds_spare_memory();

		send(LEN).await;
		assert_eq!(step(&mut handle), 1);
		assert!(holds(), "the reader did not grow its buffer for the large message");
		// A small message every 30 ms for a second, 10 periods of the timer.
		for _ in 0..33 {
			wakes.0.store(0, Ordering::Relaxed);
			tokio::time::advance(Duration::from_millis(30)).await;
			assert_eq!(wakes.0.load(Ordering::Relaxed), 0, "a timer woke the peer task while messages kept coming");
			send(64).await;
			assert_eq!(step(&mut handle), 1);
		}
		assert!(holds(), "the buffer was let go while messages kept coming");
		// Quiet: let go within two periods.
		tokio::time::advance(RELEASE_SPARE_AFTER * 2).await;
		assert!(wakes.0.load(Ordering::Relaxed) > 0, "the release timer did not fire");
		step(&mut handle);
		assert!(!holds(), "the buffer was kept after the connection went quiet");
	}

	#[tokio::test]
	async fn a_round_trip_looks_at_each_reader_at_most_twice() {
		let config = Config::default();
		let (a, b) = MemoryTransport::pair(&config);
		let (client_polls, server_polls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
		let client = Peer::spawn(Counting { inner: a, polls: client_polls.clone(), forgetful: false }, &config);
		let mut server = Peer::spawn(Counting { inner: b, polls: server_polls.clone(), forgetful: false }, &config);
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
		// message, and by the remote's message. Only the second looks at the reader (one look
		// that finds the message, one that finds nothing more): the reader has not woken the
		// task for the first (`ReadWake`). Looking whenever the task was woken made it three,
		// and looking again in a later round of the same wake-up, as the peer task did before
		// that, five.
		for (side, polls) in [("client", &client_polls), ("server", &server_polls)] {
			let polls = polls.load(Ordering::Relaxed);
			assert!(polls <= 2 * ROUND_TRIPS + 10, "{side}: {polls} looks at the reader for {ROUND_TRIPS} round trips");
		}
	}
}
