//! The state of one connection, without I/O: a [`Connection`] is fed decoded messages from the
//! remote and actions of the local handles, and says what to transmit and whom to wake.
//!
//! # Who holds what
//!
//! Everything about one connection lives in one `Connection`, behind one lock
//! ([`Shared::state`](crate::peer::Shared)) that the peer task and every handle share (as in
//! h2's `proto::streams`):
//!
//! - the open requests of both directions, in one slab (`requests`); the id tables map the
//!   wire's request ids to slab keys, and a handle holds the key of its request. Ids of sent
//!   requests are allocated in [`tables::SentTable`] and freed there when the response arrives
//!   or the last handle goes; ids of received requests are the remote's, freed when answered;
//! - the messages received for each request and not yet taken, as linked lists in one
//!   [`Store`], and the incoming requests and stream messages for the read handle;
//! - the outgoing queue, which handles push to and the peer task empties into the transport;
//! - the limits and budgets as plain counters: messages and bytes queued for writing, bytes
//!   received and not yet taken, bytes of received requests not yet answered, open requests;
//! - the automatic replies (a dropped request, a duplicate id, a limit reached), and the close
//!   state: closing locally, the remote finished, ended, and why.
//!
//! It uses no runtime, no socket and no lock: [`Waker`]s of the waiting handles and of the peer
//! task are stored in it and woken when what they wait for happens. Unit tests and the `proto`
//! fuzz target drive it directly.
//!
//! # Hand-offs per round trip
//!
//! A request's round trip takes four task hand-offs at most, each a waker call: the requester
//! queues the request and wakes its peer task (only if that task sleeps); the responder's peer
//! task reads it and wakes the read handle's task; the response wakes the responder's peer
//! task; the requester's peer task reads the response and wakes the requester. No channel is
//! made per request and nothing is allocated for one beyond amortised growth of the slabs and
//! queues.
//!
//! # Who reads
//!
//! The peer task reads the transport, except when the read handle has nothing to return and the
//! peer task sleeps: then the read handle reads for it, on its own thread, with the peer task's
//! waker, and hands what it read to this state as the peer task would (`Shared::read_for_driver`
//! in `peer`). While stream messages wait for the read handle and no request is open
//! ([`Connection::may_leave_reading`]), the peer task leaves the reading to it, looking every
//! 2 ms whether it still takes messages. So a steady flow of stream messages is read, routed and
//! returned by one task on one thread, with no hand-off, as a hand-written read loop would; a
//! request, a response or an update still takes the hand-offs above.

pub(crate) mod store;
pub(crate) mod tables;

use std::collections::VecDeque;
use std::task::{Poll, Waker};

use slab::Slab;

use crate::config::Config;
use crate::error::{Error, ProtocolViolation};
use crate::message::{Body, Message, MessageHeader, MessageType};
use crate::stats::{ConnectionStats, TrafficCounts};
use store::{Queue, Store};
use tables::{OpenError, ReceivedTable, SentTable, Serial};

/// What a message is charged against the budgets beyond its body, so that empty bodies are not
/// free.
pub const MESSAGE_OVERHEAD: usize = 64;

/// Error responses the connection writes on its own (duplicate ids, limits, dropped requests)
/// may pile up to this many, written or not yet flushed, before reading stops until they are
/// flushed: a remote that floods bad requests and never reads cannot grow the write buffer.
pub const MAX_AUTO_REPLIES: usize = 1024;

/// Bodies of stream messages the read handle may take ahead under one lock
/// ([`Connection::poll_recv_incoming_ahead`]): a steady flow of small messages costs a lock per
/// batch, not one each, while what the handle holds outside the budget stays small.
pub const READ_AHEAD_BYTES: usize = 64 * 1024;
/// Stream messages the read handle may take ahead under one lock.
pub const READ_AHEAD_MESSAGES: usize = 64;

/// The key of an open request in the connection's slab.
pub type Key = usize;

/// The limits of one connection, from [`Config`] and the transport.
#[derive(Debug, Clone)]
pub struct Limits {
	pub max_open_requests: usize,
	pub request_queue: usize,
	pub incoming_queue: usize,
	pub incoming_bytes: usize,
	pub unanswered_bytes: usize,
	pub write_queue: usize,
	pub outgoing_bytes: usize,
	pub max_body_len_write: usize,
	pub max_fds_write: usize,
}

impl Limits {
	/// The limits of `config`, for a transport that writes bodies up to `max_body_len` bytes
	/// with up to `max_fds` descriptors.
	pub fn new(config: &Config, max_body_len: usize, max_fds: usize) -> Self {
		Self {
			max_open_requests: config.max_open_requests.max(1),
			request_queue: config.request_queue.max(1),
			incoming_queue: config.incoming_queue.max(1),
			incoming_bytes: config.max_buffered_incoming.max(1),
			unanswered_bytes: config.max_unanswered_incoming.max(1),
			write_queue: config.write_queue.max(1),
			outgoing_bytes: config.max_buffered_outgoing.max(1),
			// The handles check against these, so they are the tighter of the two limits.
			max_body_len_write: config.max_body_len_write.min(max_body_len),
			max_fds_write: config.max_fds_write.min(max_fds),
		}
	}
}

/// What a body costs against a budget of `total` bytes: a message larger than the whole budget
/// takes all of it and goes alone.
fn cost(body_len: usize, total: usize) -> usize {
	body_len.saturating_add(MESSAGE_OVERHEAD).min(total)
}

/// An incoming request or stream message for the read handle.
#[derive(Debug)]
pub enum Incoming<B> {
	/// The remote opened a request, now open under `key`.
	Request { key: Key, header: MessageHeader, body: B },
	/// A stream message.
	Stream(Message<B>),
}

/// A message queued for writing, with what it holds of the write budgets.
#[derive(Debug)]
pub struct Outgoing<B> {
	pub message: Message<B>,
	/// Bytes of the outgoing budget, given back once it is flushed.
	pub cost: usize,
	/// Whether it holds a place of the write queue (given back once the transport takes it);
	/// automatic replies do not, and count towards [`MAX_AUTO_REPLIES`] instead.
	pub metered: bool,
}

/// Why a local send did not happen.
#[derive(Debug)]
pub enum Refused<B> {
	/// The write queue is full: wait for room and try again with the body given back.
	Full(B),
	/// The send failed for good.
	Failed(Error),
}

impl<B> From<Error> for Refused<B> {
	fn from(error: Error) -> Self {
		Self::Failed(error)
	}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
	Sent,
	Received,
}

/// What [`Connection::route`] did with a message, for the counters.
#[derive(Clone, Copy)]
struct Routed {
	header: MessageHeader,
	body_len: usize,
	/// Dropped: nothing could take it.
	stray: bool,
}

/// One open request, of either direction.
#[derive(Debug)]
struct Request {
	direction: Direction,
	request_id: u32,
	serial: Serial,
	/// Messages received for it and not yet taken: responder updates and the response of a sent
	/// request, requester updates of a received one.
	queue: Queue,
	/// The task waiting for the next of them.
	waker: Option<Waker>,
	/// Parts that refer to it: the handle, its write handles, or the incoming queue before the
	/// read handle takes it. The request is forgotten when the last goes.
	parts: usize,
	/// Sent: in the id table, so messages may still come (no response yet, connection up).
	/// Received: not yet answered.
	open: bool,
	/// Received: nothing more will come from the remote (it finished, or the connection ended).
	updates_ended: bool,
	/// Received: the handle that reads its updates is gone, so they are dropped on arrival.
	reader_gone: bool,
	/// Received: its share of the unanswered-bytes budget.
	charge: usize,
	/// Its `debug` span, child of the connection's, and when it opened; only while a subscriber
	/// wants the span (boxed: a request without one stays small, and nothing is timed).
	span: Option<Box<RequestSpan>>,
}

impl Request {
	/// A request of `direction` with id `request_id`, open, held by one part.
	fn new(direction: Direction, request_id: u32, serial: Serial, span: Option<Box<RequestSpan>>) -> Self {
		Self {
			direction,
			request_id,
			serial,
			queue: Queue::default(),
			waker: None,
			parts: 1,
			open: true,
			updates_ended: false,
			reader_gone: false,
			charge: 0,
			span,
		}
	}

	/// Record how the request ended on its span, and close the span; only the first outcome
	/// counts.
	#[inline]
	fn finish(&mut self, outcome: &'static str) {
		if let Some(span) = self.span.take() {
			span.finish(outcome);
		}
	}
}

/// The span of a request, and when it opened.
#[derive(Debug)]
struct RequestSpan {
	span: tracing::Span,
	started: std::time::Instant,
}

impl RequestSpan {
	fn finish(self, outcome: &'static str) {
		self.span.record("outcome", outcome);
		self.span.record("duration_us", u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX));
	}
}

/// The outcomes a request span records.
mod outcome {
	pub const RESPONSE: &str = "response";
	pub const ERROR_RESPONSE: &str = "error response";
	/// A sent request forgotten (every handle dropped) before its response.
	pub const DROPPED: &str = "dropped";
	/// A received request whose handles were dropped without a response: the automatic error
	/// response went out.
	pub const AUTO_ANSWERED: &str = "dropped, answered automatically";
	pub const CONNECTION_CLOSED: &str = "connection closed";
	/// The transport refused to write the request (a limit mismatch).
	pub const REFUSED: &str = "refused by the transport";
}

fn response_outcome(service_id: i32) -> &'static str {
	if service_id < 0 { outcome::ERROR_RESPONSE } else { outcome::RESPONSE }
}

/// The state of one connection. See the [module documentation](self).
#[derive(Debug)]
pub struct Connection<B> {
	limits: Limits,
	requests: Slab<Request>,
	sent: SentTable<Key>,
	received: ReceivedTable<Key>,
	store: Store<Message<B>>,
	/// Requests and stream messages for the read handle.
	incoming: VecDeque<Incoming<B>>,
	reader_waker: Option<Waker>,
	reader_gone: bool,
	/// How many times the read handle took something, ever (whether it is busy reading).
	reader_takes: u64,
	/// Bytes received and not yet taken by a handle, all queues together.
	buffered: usize,
	/// Bytes of received requests not yet answered.
	unanswered_bytes: usize,
	outgoing: VecDeque<Outgoing<B>>,
	/// Metered messages queued and not yet taken by the transport.
	write_queued: usize,
	/// Bytes of the outgoing budget held by messages not yet flushed.
	write_bytes: usize,
	/// Automatic replies queued or written and not yet flushed.
	auto_replies: usize,
	/// Messages ever queued, and how many of the first of them are known to be flushed.
	queued_total: u64,
	flushed_total: u64,
	/// A handle waits for room in the write queue, or for a flush: the peer task notifies them.
	pub room_wanted: bool,
	pub flush_wanted: bool,
	/// The peer task, when it sleeps, and whether it sleeps waiting for something to write
	/// (else a queued message need not wake it: it is busy writing).
	driver_waker: Option<Waker>,
	driver_wants_outgoing: bool,
	/// Holds on the wake-up for queued messages (`hold_wakeups`): while any is taken, queueing
	/// does not wake the peer task; releasing the last one does, if something waits.
	wakeups_held: usize,
	/// The peer task holds a message it could not hand over (a queue or the budget is full):
	/// wake it when a handle takes something.
	driver_blocked: bool,
	/// Live handles of every kind; the connection closes when none is left.
	links: usize,
	/// A local close was asked for: no new sends, drain the queue, close.
	closing: bool,
	/// The remote finished sending (end of stream).
	remote_done: bool,
	/// The peer task has stopped.
	ended: bool,
	close_reason: Option<Error>,
	/// The counters (open requests are read from the tables when a snapshot is taken, the
	/// traffic from its own counts).
	stats: ConnectionStats,
	received_counts: TrafficCounts,
	sent_counts: TrafficCounts,
	/// The connection's span: the parent of the request spans.
	span: tracing::Span,
	/// Since when reading has been paused, while it is.
	read_paused_since: Option<std::time::Instant>,
}

impl<B: Body> Connection<B> {
	/// The state of a new connection with `limits`, and no handles yet.
	pub fn new(limits: Limits) -> Self {
		Self {
			sent: SentTable::new(limits.max_open_requests),
			received: ReceivedTable::new(limits.max_open_requests),
			limits,
			requests: Slab::new(),
			store: Store::new(),
			incoming: VecDeque::new(),
			reader_waker: None,
			reader_gone: false,
			reader_takes: 0,
			buffered: 0,
			unanswered_bytes: 0,
			outgoing: VecDeque::new(),
			write_queued: 0,
			write_bytes: 0,
			auto_replies: 0,
			queued_total: 0,
			flushed_total: 0,
			room_wanted: false,
			flush_wanted: false,
			driver_waker: None,
			driver_wants_outgoing: false,
			wakeups_held: 0,
			driver_blocked: false,
			links: 0,
			closing: false,
			remote_done: false,
			ended: false,
			close_reason: None,
			stats: ConnectionStats::default(),
			received_counts: TrafficCounts::default(),
			sent_counts: TrafficCounts::default(),
			span: tracing::Span::none(),
			read_paused_since: None,
		}
	}

	/// Make `span` (the connection's) the parent of the request spans.
	pub fn set_span(&mut self, span: tracing::Span) {
		self.span = span;
	}

	/// The connection's span.
	pub fn span(&self) -> &tracing::Span {
		&self.span
	}

	/// The span of a new request, at `debug`, if a subscriber wants it.
	#[inline]
	fn request_span(&self, direction: &'static str, request_id: u32, service_id: i32) -> Option<Box<RequestSpan>> {
		// The cheapest test first: one load of the global maximum level.
		if !tracing::level_enabled!(tracing::Level::DEBUG) {
			return None;
		}
		self.request_span_slow(direction, request_id, service_id)
	}

	#[cold]
	fn request_span_slow(&self, direction: &'static str, request_id: u32, service_id: i32) -> Option<Box<RequestSpan>> {
		let span = tracing::debug_span!(
			parent: &self.span,
			"request",
			direction,
			request_id,
			service_id,
			outcome = tracing::field::Empty,
			duration_us = tracing::field::Empty,
		);
		if span.is_disabled() {
			return None;
		}
		Some(Box::new(RequestSpan { span, started: std::time::Instant::now() }))
	}

	// ---- Counters ----

	/// A snapshot of the counters.
	pub fn stats(&self) -> ConnectionStats {
		let paused_now = self.read_paused_since.map(|since| since.elapsed()).unwrap_or_default();
		ConnectionStats {
			open_sent_requests: self.sent.len(),
			open_received_requests: self.received.len(),
			read_paused: self.stats.read_paused + paused_now,
			received: self.received_counts.traffic(),
			sent: self.sent_counts.traffic(),
			..self.stats.clone()
		}
	}

	/// A local send waited `waited` for room in the write queue.
	pub fn note_send_blocked(&mut self, waited: std::time::Duration) {
		self.stats.send_blocked += waited;
	}

	/// Whether reading is paused now because the application has not taken what came (or
	/// automatic replies wait to be written); the clock is read only when that changes.
	pub fn set_read_paused(&mut self, paused: bool) {
		match (paused, self.read_paused_since) {
			(true, None) => self.read_paused_since = Some(std::time::Instant::now()),
			(false, Some(since)) => {
				self.stats.read_paused += since.elapsed();
				self.read_paused_since = None;
			},
			_ => {},
		}
	}

	/// The remote broke the protocol in a way that ends the connection (a malformed frame).
	pub fn note_protocol_error(&mut self) {
		self.stats.protocol_errors += 1;
	}

	/// A message arrived while closing and was dropped unread.
	pub fn note_dropped_while_closing(&mut self, header: &MessageHeader, body_len: usize) {
		self.received_counts.count(header.message_type, header.service_id, body_len);
		self.stats.stray_messages += 1;
	}

	// ---- The close state ----

	/// The error for an operation on a connection that has ended (or is closing).
	pub fn closed_error(&self) -> Error {
		self.close_reason.clone().unwrap_or_else(Error::closed_locally)
	}

	/// Whether the remote has finished sending, or the connection has ended.
	pub fn is_remote_finished(&self) -> bool {
		self.remote_done || self.ended
	}

	/// Whether a local close was asked for.
	pub fn is_closing(&self) -> bool {
		self.closing
	}

	/// Whether the remote has finished sending.
	pub fn is_remote_done(&self) -> bool {
		self.remote_done
	}

	/// Received requests not yet answered.
	pub fn unanswered(&self) -> usize {
		self.received.len()
	}

	/// Live handles.
	pub fn links(&self) -> usize {
		self.links
	}

	/// Whether nothing is open or waiting: no request either way, nothing received waits for a
	/// handle, nothing queued to write.
	pub fn is_idle(&self) -> bool {
		self.received.is_empty() && self.sent.is_empty() && self.buffered == 0 && self.outgoing.is_empty()
	}

	/// Ask for a local close: sends fail from now on, what is queued is still written.
	pub fn request_close(&mut self) {
		if !self.closing {
			self.closing = true;
			self.room_wanted = true;
			self.wake_driver();
		}
	}

	/// Record why the connection is ending, unless a reason is known already.
	pub fn set_close_reason(&mut self, reason: Error) {
		if self.close_reason.is_none() {
			self.close_reason = Some(reason);
		}
	}

	/// The remote closed its sending side: requests this side sent can no longer be answered
	/// and fail now; received ones can still be answered, but get no more updates; the read
	/// handle gets what is queued, then the end.
	pub fn remote_done(&mut self) {
		if self.remote_done {
			return;
		}
		self.remote_done = true;
		self.set_close_reason(Error::closed_by(Error::closed_by_remote()));
		self.end_requests();
		if let Some(waker) = self.reader_waker.take() {
			waker.wake();
		}
	}

	/// The peer task has stopped: everything fails, and what was queued to write is dropped.
	pub fn end(&mut self, reason: Error) {
		self.set_close_reason(reason);
		if self.ended {
			return;
		}
		self.ended = true;
		self.set_read_paused(false);
		self.end_requests();
		for (_, request) in self.requests.iter_mut() {
			// Received requests not answered by now never will be.
			request.finish(outcome::CONNECTION_CLOSED);
		}
		for outgoing in self.outgoing.drain(..) {
			drop(outgoing);
		}
		self.write_queued = 0;
		self.room_wanted = true;
		self.flush_wanted = true;
		if let Some(waker) = self.reader_waker.take() {
			waker.wake();
		}
		self.driver_waker = None;
	}

	/// No more messages come for any request: fail the sent ones, end the updates of the
	/// received ones.
	fn end_requests(&mut self) {
		for id_key in self.sent.drain() {
			let request = &mut self.requests[id_key];
			request.open = false;
			request.finish(outcome::CONNECTION_CLOSED);
			if let Some(waker) = request.waker.take() {
				waker.wake();
			}
		}
		for (_, request) in self.requests.iter_mut() {
			if request.direction == Direction::Received {
				request.updates_ended = true;
				if let Some(waker) = request.waker.take() {
					waker.wake();
				}
			}
		}
	}

	fn wake_driver(&mut self) {
		self.driver_wants_outgoing = false;
		if let Some(waker) = self.driver_waker.take() {
			waker.wake();
		}
	}

	// ---- Handles: links ----

	/// A handle was made.
	pub fn add_link(&mut self) {
		self.links += 1;
	}

	/// A handle was dropped; the last one closes the connection.
	pub fn drop_link(&mut self) {
		self.links -= 1;
		if self.links == 0 {
			self.wake_driver();
		}
	}

	// ---- Handles: sending ----

	/// Whether a message may be queued now: not closing, not ended.
	fn check_open(&self) -> Result<(), Error> {
		if self.closing || self.ended { Err(self.closed_error()) } else { Ok(()) }
	}

	/// Check a body against the write limits.
	pub fn check_body(&self, body: &B) -> Result<(), Error> {
		if body.len() > self.limits.max_body_len_write {
			return Err(Error::body_too_large(body.len(), self.limits.max_body_len_write));
		}
		if body.fd_count() > self.limits.max_fds_write {
			return Err(Error::too_many_fds(body.fd_count(), self.limits.max_fds_write));
		}
		Ok(())
	}

	/// What a body of `len` bytes costs of the outgoing budget, if there is room for it now.
	fn room(&mut self, len: usize) -> Option<usize> {
		let cost = cost(len, self.limits.outgoing_bytes);
		if self.write_queued < self.limits.write_queue && self.write_bytes + cost <= self.limits.outgoing_bytes {
			Some(cost)
		} else {
			self.room_wanted = true;
			self.wake_driver();
			None
		}
	}

	fn enqueue(&mut self, message: Message<B>, cost: usize, metered: bool) {
		if metered {
			self.write_queued += 1;
		} else {
			self.auto_replies += 1;
		}
		self.write_bytes += cost;
		self.queued_total += 1;
		self.outgoing.push_back(Outgoing { message, cost, metered });
		if self.driver_wants_outgoing && self.wakeups_held == 0 {
			self.wake_driver();
		}
	}

	/// Hold back the peer task's wake-up for messages queued from now on, until the matching
	/// [`release_wakeups`](Self::release_wakeups): a burst of sends then costs one wake-up, not
	/// one per message. Other wake-ups (close, the last handle gone, room) are not held.
	pub fn hold_wakeups(&mut self) {
		self.wakeups_held += 1;
	}

	/// Release a hold taken by [`hold_wakeups`](Self::hold_wakeups); the last one wakes the peer
	/// task if it sleeps while messages are queued.
	pub fn release_wakeups(&mut self) {
		self.wakeups_held = self.wakeups_held.saturating_sub(1);
		if self.wakeups_held == 0 && self.driver_wants_outgoing && !self.outgoing.is_empty() {
			self.wake_driver();
		}
	}

	/// Queue a stream message.
	pub fn send_stream(&mut self, service_id: i32, body: B) -> Result<(), Refused<B>> {
		self.check_open()?;
		self.check_body(&body)?;
		let Some(cost) = self.room(body.len()) else { return Err(Refused::Full(body)) };
		self.enqueue(Message::stream(0, service_id, body), cost, true);
		Ok(())
	}

	/// Open a request and queue it: returns its key and id. The caller holds the key as one
	/// part (and one link).
	pub fn open_request(&mut self, service_id: i32, body: B) -> Result<(Key, u32), Refused<B>> {
		self.check_open()?;
		if self.remote_done {
			return Err(Refused::Failed(self.closed_error()));
		}
		self.check_body(&body)?;
		let Some(cost) = self.room(body.len()) else { return Err(Refused::Full(body)) };
		let key = self.requests.vacant_key();
		let Some((request_id, serial)) = self.sent.insert(key) else {
			return Err(Refused::Failed(Error::too_many_requests(self.limits.max_open_requests)));
		};
		let span = self.request_span("sent", request_id, service_id);
		self.requests.insert(Request::new(Direction::Sent, request_id, serial, span));
		self.stats.peak_sent_requests = self.stats.peak_sent_requests.max(self.sent.len());
		self.links += 1;
		self.enqueue(Message::request(request_id, service_id, body), cost, true);
		Ok((key, request_id))
	}

	/// Queue a requester update for the sent request `key`.
	pub fn send_requester_update(&mut self, key: Key, service_id: i32, body: B) -> Result<(), Refused<B>> {
		self.check_open()?;
		self.check_body(&body)?;
		let request = &self.requests[key];
		if !request.open {
			return Err(Refused::Failed(if self.remote_done || self.ended {
				self.closed_error()
			} else {
				Error::request_closed(request.request_id)
			}));
		}
		let request_id = request.request_id;
		let Some(cost) = self.room(body.len()) else { return Err(Refused::Full(body)) };
		self.enqueue(Message::requester_update(request_id, service_id, body), cost, true);
		Ok(())
	}

	/// Queue a responder update for the received request `key`.
	pub fn send_responder_update(&mut self, key: Key, service_id: i32, body: B) -> Result<(), Refused<B>> {
		self.send_on_received(key, body, None, |id, body| Message::responder_update(id, service_id, body))
	}

	/// Queue the response to the received request `key`, closing it.
	pub fn send_response(&mut self, key: Key, service_id: i32, body: B) -> Result<(), Refused<B>> {
		let answers = Some(response_outcome(service_id));
		self.send_on_received(key, body, answers, |id, body| Message::response(id, service_id, body))
	}

	/// Queue a message of the received request `key`, made by `message` from its id and `body`;
	/// `answers` (with the outcome for its span) closes the request.
	fn send_on_received(
		&mut self,
		key: Key,
		body: B,
		answers: Option<&'static str>,
		message: impl FnOnce(u32, B) -> Message<B>,
	) -> Result<(), Refused<B>> {
		self.check_open()?;
		self.check_body(&body)?;
		let request = &self.requests[key];
		if !request.open {
			return Err(Refused::Failed(Error::request_closed(request.request_id)));
		}
		let request_id = request.request_id;
		let Some(cost) = self.room(body.len()) else { return Err(Refused::Full(body)) };
		if let Some(outcome) = answers {
			self.requests[key].finish(outcome);
			self.answer(key);
		}
		self.enqueue(message(request_id, body), cost, true);
		Ok(())
	}

	/// Close the received request `key`: free its id (before the response is queued, since the
	/// remote may reuse the id as soon as it has the response), drop its queued updates and give
	/// back its share of the unanswered budget.
	fn answer(&mut self, key: Key) {
		let request = &mut self.requests[key];
		request.open = false;
		request.updates_ended = true;
		self.unanswered_bytes -= std::mem::take(&mut request.charge);
		let (id, serial) = (request.request_id, request.serial);
		self.received.remove_if(id, serial);
		self.clear_queue(key);
		if let Some(waker) = self.requests[key].waker.take() {
			waker.wake();
		}
	}

	/// Drop the messages queued for request `key`, giving their bytes back.
	fn clear_queue(&mut self, key: Key) {
		let mut queue = std::mem::take(&mut self.requests[key].queue);
		let budget = self.limits.incoming_bytes;
		let mut freed = 0;
		queue.clear(&mut self.store, |message| freed += cost(message.body.len(), budget));
		self.release_buffered(freed);
	}

	fn release_buffered(&mut self, bytes: usize) {
		self.buffered -= bytes;
		// Woken even if nothing was freed: the message the peer task holds may have lost its
		// target (a request answered or dropped, the read handle gone) and can now be let go.
		if std::mem::take(&mut self.driver_blocked) {
			self.wake_driver();
		}
	}

	/// Wait for room in the write queue (after [`Refused::Full`]): `true` if there is room now,
	/// or the connection can take no more (the retry then fails).
	pub fn has_room_for(&mut self, len: usize) -> bool {
		self.closing || self.ended || self.room(len).is_some()
	}

	/// How many messages are queued so far: a flush waits until that many are flushed. Fails
	/// once the connection is closing or ended.
	pub fn flush_target(&self) -> Result<u64, Error> {
		self.check_open()?;
		Ok(self.queued_total)
	}

	/// Whether the first `target` messages are flushed; an error if the connection ended first.
	pub fn poll_flushed(&mut self, target: u64) -> Poll<Result<(), Error>> {
		if self.flushed_total >= target {
			Poll::Ready(Ok(()))
		} else if self.ended {
			Poll::Ready(Err(self.closed_error()))
		} else {
			self.flush_wanted = true;
			self.wake_driver();
			Poll::Pending
		}
	}

	// ---- Handles: receiving ----

	/// The next message for the sent request `key`: responder updates, then the response.
	pub fn poll_recv_sent(&mut self, key: Key, waker: &Waker) -> Poll<Result<Message<B>, Error>> {
		if let Some(message) = self.take(key) {
			return Poll::Ready(Ok(message));
		}
		let request = &mut self.requests[key];
		if request.open {
			set_waker(&mut request.waker, waker);
			Poll::Pending
		} else {
			Poll::Ready(Err(self.closed_error()))
		}
	}

	/// The next requester update of the received request `key`: `None` once it is answered.
	pub fn poll_recv_received(&mut self, key: Key, waker: &Waker) -> Poll<Result<Option<Message<B>>, Error>> {
		if let Some(message) = self.take(key) {
			return Poll::Ready(Ok(Some(message)));
		}
		let request = &mut self.requests[key];
		if !request.open {
			Poll::Ready(Ok(None))
		} else if request.updates_ended {
			Poll::Ready(Err(self.closed_error()))
		} else {
			set_waker(&mut request.waker, waker);
			Poll::Pending
		}
	}

	fn take(&mut self, key: Key) -> Option<Message<B>> {
		let message = self.requests[key].queue.pop_front(&mut self.store)?;
		self.release_buffered(cost(message.body.len(), self.limits.incoming_bytes));
		Some(message)
	}

	/// The next request or stream message for the read handle. A request comes with its key,
	/// which the caller now holds as one part (and one link).
	pub fn poll_recv_incoming(&mut self, waker: &Waker) -> Poll<Result<Incoming<B>, Error>> {
		if let Some(incoming) = self.incoming.pop_front() {
			let len = match &incoming {
				Incoming::Request { body, .. } => body.len(),
				Incoming::Stream(message) => message.body.len(),
			};
			if let Incoming::Request { .. } = incoming {
				self.links += 1;
			}
			self.reader_takes += 1;
			self.release_buffered(cost(len, self.limits.incoming_bytes));
			return Poll::Ready(Ok(incoming));
		}
		if self.remote_done || self.ended {
			return Poll::Ready(Err(self.closed_error()));
		}
		set_waker(&mut self.reader_waker, waker);
		Poll::Pending
	}

	/// [`poll_recv_incoming`](Self::poll_recv_incoming), and if that gives a stream message, also
	/// the stream messages queued right behind it, into `ahead`: up to [`READ_AHEAD_BYTES`] of
	/// bodies and [`READ_AHEAD_MESSAGES`] messages, stopping at the first request. Their budget is
	/// given back now, as if the application had taken them one by one: what the read handle
	/// holds ahead is bounded by those two limits, outside the connection's budget.
	pub fn poll_recv_incoming_ahead(
		&mut self,
		waker: &Waker,
		ahead: &mut VecDeque<Message<B>>,
	) -> Poll<Result<Incoming<B>, Error>> {
		let first = self.poll_recv_incoming(waker);
		if let Poll::Ready(Ok(Incoming::Stream(message))) = &first {
			let mut bytes = message.body.len();
			let mut freed = 0;
			while ahead.len() < READ_AHEAD_MESSAGES && bytes < READ_AHEAD_BYTES {
				let Some(Incoming::Stream(next)) = self.incoming.front() else { break };
				let len = next.body.len();
				if bytes + len > READ_AHEAD_BYTES {
					break;
				}
				let Some(Incoming::Stream(next)) = self.incoming.pop_front() else { break };
				bytes += len;
				freed += cost(len, self.limits.incoming_bytes);
				ahead.push_back(next);
			}
			if freed > 0 {
				self.release_buffered(freed);
			}
		}
		first
	}

	/// The peer task's waker, if the read handle may read from the transport for it now
	/// (`Shared::read_for_driver`): the task sleeps, and the connection is open and reading,
	/// with nothing waiting for room.
	pub fn driver_waker_for_reading(&self) -> Option<Waker> {
		if self.closing
			|| self.remote_done
			|| self.ended
			|| self.driver_blocked
			|| self.read_paused_since.is_some()
			|| self.too_many_auto_replies()
		{
			return None;
		}
		self.driver_waker.clone()
	}

	/// Whether the peer task may leave reading to the read handle for now: stream messages wait
	/// for it (so it will be back, and reads for the peer task once it has taken them all, see
	/// `Shared::read_for_driver`), and no request is open, so no other handle waits for what
	/// the remote sends. Opening a request ends it (the peer task is woken for the request).
	pub fn may_leave_reading(&self) -> bool {
		!self.incoming.is_empty()
			&& self.requests.is_empty()
			&& !self.reader_gone
			&& !self.closing
			&& !self.remote_done
			&& !self.ended
	}

	/// How many times the read handle took something, ever.
	pub fn reader_takes(&self) -> u64 {
		self.reader_takes
	}

	/// Forget the read handle's waker: it looks at its queue again without being woken.
	pub fn forget_reader_waker(&mut self) {
		self.reader_waker = None;
	}

	/// The read handle was dropped: refuse what the remote opens from now on, and answer what
	/// waits in its queue as dropped.
	pub fn drop_reader(&mut self) {
		self.reader_gone = true;
		self.reader_waker = None;
		let budget = self.limits.incoming_bytes;
		let mut freed = 0;
		while let Some(incoming) = self.incoming.pop_front() {
			match incoming {
				Incoming::Request { key, body, .. } => {
					freed += cost(body.len(), budget);
					self.release_part(key, true);
				},
				Incoming::Stream(message) => freed += cost(message.body.len(), budget),
			}
		}
		self.release_buffered(freed);
	}

	// ---- Handles: parts of a request ----

	/// Another handle of request `key` was made (a write handle).
	pub fn add_part(&mut self, key: Key) {
		self.requests[key].parts += 1;
		self.links += 1;
	}

	/// A handle of request `key` was dropped; `reader` says whether it is the one that reads.
	pub fn drop_part(&mut self, key: Key, reader: bool) {
		self.release_part(key, reader);
		self.drop_link();
	}

	fn release_part(&mut self, key: Key, reader: bool) {
		let request = &mut self.requests[key];
		request.parts -= 1;
		if reader {
			// Nobody can read its updates any more: drop them, now and on arrival, so that a
			// write handle kept to answer later does not hold the connection's budget.
			request.reader_gone = true;
			request.waker = None;
			self.clear_queue(key);
		}
		if self.requests[key].parts > 0 {
			return;
		}
		let mut request = self.requests.remove(key);
		let mut queue = std::mem::take(&mut request.queue);
		let budget = self.limits.incoming_bytes;
		let mut freed = 0;
		queue.clear(&mut self.store, |message| freed += cost(message.body.len(), budget));
		self.release_buffered(freed);
		match request.direction {
			Direction::Sent => {
				if request.open && self.sent.remove_if(request.request_id, request.serial).is_some() {
					// On the dropping handle's task: logged in the connection's span, entered (an
					// explicit parent would drop the caller's span when the connection's is off).
					self.span.in_scope(|| {
						tracing::debug!(request_id = request.request_id, "sent request dropped before its response");
					});
				}
				request.finish(outcome::DROPPED);
			},
			Direction::Received if request.open => {
				self.span.in_scope(|| {
					tracing::debug!(request_id = request.request_id, "received request dropped without a response");
				});
				self.unanswered_bytes -= request.charge;
				self.received.remove_if(request.request_id, request.serial);
				if !self.closing && !self.ended {
					let text = crate::handle::DROPPED_REQUEST_TEXT;
					self.enqueue(Message::error_response(request.request_id, text), 0, false);
					request.finish(outcome::AUTO_ANSWERED);
				} else {
					request.finish(outcome::CONNECTION_CLOSED);
				}
			},
			Direction::Received => {},
		}
		if self.requests.is_empty() {
			self.store.shrink_if_idle();
		}
	}

	// ---- The peer task ----

	/// Whether reading must pause until the automatic replies are flushed.
	pub fn too_many_auto_replies(&self) -> bool {
		self.auto_replies >= MAX_AUTO_REPLIES
	}

	/// Route one message from the remote. `Err` gives it back when it cannot be handed over yet
	/// (its queue or the incoming budget is full): the peer task reads nothing more and offers
	/// it again once a handle has taken something (it is woken for that).
	pub fn recv(&mut self, message: Message<B>) -> Result<(), Message<B>> {
		// Counted once handed over: a message given back is offered again later.
		let routed = self.route(message)?;
		let header = routed.header;
		self.received_counts.count(header.message_type, header.service_id, routed.body_len);
		if routed.stray {
			self.stats.stray_messages += 1;
		}
		Ok(())
	}

	fn route(&mut self, message: Message<B>) -> Result<Routed, Message<B>> {
		let id = message.header.request_id;
		let routed = Routed { header: message.header, body_len: message.body.len(), stray: false };
		let stray = Routed { stray: true, ..routed };
		match message.header.message_type {
			MessageType::Request => return self.recv_request(message).map(|()| routed),
			MessageType::Stream => {
				if self.reader_gone || self.links == 0 {
					tracing::debug!("no read handle: dropped a stream message");
					return Ok(stray);
				}
				let cost = self.incoming_room(message.body.len(), self.incoming.len() < self.limits.incoming_queue);
				let Some(cost) = cost else { return Err(message) };
				self.buffered += cost;
				self.incoming.push_back(Incoming::Stream(message));
				if let Some(waker) = self.reader_waker.take() {
					waker.wake();
				}
			},
			MessageType::Response | MessageType::ResponderUpdate => {
				let Some(&key) = self.sent.get(id) else {
					tracing::debug!(request_id = id, "dropped a message for a request that is not open");
					return Ok(stray);
				};
				if self.requests[key].reader_gone {
					// Only write handles are left: nobody reads it (as the old closed channel did).
					if message.header.message_type == MessageType::Response {
						self.sent.remove(id);
						let request = &mut self.requests[key];
						request.open = false;
						request.finish(response_outcome(message.header.service_id));
					}
					tracing::debug!(request_id = id, "request handle dropped: dropped its message");
					return Ok(stray);
				}
				let fits = self.requests[key].queue.len() < self.limits.request_queue;
				let Some(cost) = self.incoming_room(message.body.len(), fits) else { return Err(message) };
				if message.header.message_type == MessageType::Response {
					self.sent.remove(id);
					let request = &mut self.requests[key];
					request.open = false;
					request.finish(response_outcome(message.header.service_id));
				}
				self.deliver(key, cost, message);
			},
			MessageType::RequesterUpdate => {
				let Some(&key) = self.received.get(id) else {
					tracing::debug!(request_id = id, "dropped an update for a request that is not open");
					return Ok(stray);
				};
				let request = &self.requests[key];
				if request.reader_gone || request.updates_ended {
					tracing::debug!(request_id = id, "request handle dropped: dropped its update");
					return Ok(stray);
				}
				let fits = request.queue.len() < self.limits.request_queue;
				let Some(cost) = self.incoming_room(message.body.len(), fits) else { return Err(message) };
				self.deliver(key, cost, message);
			},
		}
		Ok(routed)
	}

	/// What a received body of `len` bytes costs of the incoming budget, if it and its queue
	/// (`fits`) have room; otherwise the peer task is marked blocked.
	fn incoming_room(&mut self, len: usize, fits: bool) -> Option<usize> {
		let cost = cost(len, self.limits.incoming_bytes);
		if fits && self.buffered + cost <= self.limits.incoming_bytes {
			Some(cost)
		} else {
			self.driver_blocked = true;
			None
		}
	}

	fn deliver(&mut self, key: Key, cost: usize, message: Message<B>) {
		self.buffered += cost;
		let request = &mut self.requests[key];
		request.queue.push_back(&mut self.store, message);
		if let Some(waker) = request.waker.take() {
			waker.wake();
		}
	}

	fn recv_request(&mut self, message: Message<B>) -> Result<(), Message<B>> {
		let id = message.header.request_id;
		if self.reader_gone {
			// No read handle: answer as a dropped handle would.
			self.auto_reply(id, crate::handle::DROPPED_REQUEST_TEXT);
			return Ok(());
		}
		if self.links == 0 {
			self.auto_reply(id, "peer is shutting down");
			return Ok(());
		}
		// Work handed to the application counts until it is answered: past the budget, the
		// remote is told so, and reading goes on (a request held until an update or a response
		// arrives must not stop those from being read).
		let charge = cost(message.body.len(), self.limits.unanswered_bytes);
		if self.unanswered_bytes + charge > self.limits.unanswered_bytes {
			tracing::warn!(request_id = id, "refused a request: too many bytes of requests unanswered");
			self.auto_reply(id, crate::handle::BUSY_TEXT);
			return Ok(());
		}
		let fits = self.incoming.len() < self.limits.incoming_queue;
		match self.received.check(id) {
			Err(OpenError::Duplicate) => {
				self.stats.protocol_errors += 1;
				let violation = ProtocolViolation::DuplicateRequestId { request_id: id };
				tracing::warn!("protocol violation by the remote: {violation}");
				self.auto_reply(id, &violation.to_string());
				return Ok(());
			},
			Err(OpenError::Full) => {
				tracing::warn!(request_id = id, "refused a request: too many open requests");
				self.auto_reply(id, "too many open requests");
				return Ok(());
			},
			Ok(()) => {},
		}
		let Some(cost) = self.incoming_room(message.body.len(), fits) else { return Err(message) };
		let key = self.requests.vacant_key();
		let Ok(serial) = self.received.insert(id, key) else {
			// Checked above; answered rather than trusted, should that ever change.
			self.auto_reply(id, "too many open requests");
			return Ok(());
		};
		let span = self.request_span("received", id, message.header.service_id);
		let mut request = Request::new(Direction::Received, id, serial, span);
		request.updates_ended = self.remote_done;
		request.charge = charge;
		self.requests.insert(request);
		self.stats.peak_received_requests = self.stats.peak_received_requests.max(self.received.len());
		self.unanswered_bytes += charge;
		self.buffered += cost;
		self.incoming.push_back(Incoming::Request { key, header: message.header, body: message.body });
		if let Some(waker) = self.reader_waker.take() {
			waker.wake();
		}
		Ok(())
	}

	/// An error response the connection sends on its own.
	fn auto_reply(&mut self, request_id: u32, text: &str) {
		self.enqueue(Message::error_response(request_id, text), 0, false);
	}

	/// Whether messages wait in the outgoing queue.
	pub fn has_outgoing(&self) -> bool {
		!self.outgoing.is_empty()
	}

	/// Move what is queued for writing into `batch` (empty), and say whether there was any.
	pub fn take_outgoing(&mut self, batch: &mut VecDeque<Outgoing<B>>) -> bool {
		debug_assert!(batch.is_empty());
		if self.outgoing.is_empty() {
			return false;
		}
		std::mem::swap(&mut self.outgoing, batch);
		for outgoing in batch.iter() {
			let header = &outgoing.message.header;
			self.sent_counts.count(header.message_type, header.service_id, outgoing.message.body.len());
			if !outgoing.metered {
				self.stats.auto_replies += 1;
			}
		}
		true
	}

	/// The transport refused the request `request_id` this side sent (a limit mismatch): fail
	/// its handle rather than leave it waiting for a response.
	pub fn refused_by_transport(&mut self, request_id: u32) {
		if let Some(key) = self.sent.remove(request_id) {
			let request = &mut self.requests[key];
			request.open = false;
			request.finish(outcome::REFUSED);
			if let Some(waker) = request.waker.take() {
				waker.wake();
			}
		}
	}

	/// The peer task may sleep: wake it on a close, on the last handle going, when a handle
	/// takes what it could not hand over, and, if it `wants_outgoing`, when a message is queued.
	pub fn park_driver(&mut self, waker: &Waker, wants_outgoing: bool) {
		set_waker(&mut self.driver_waker, waker);
		self.driver_wants_outgoing = wants_outgoing;
	}

	/// The transport took `metered` messages of the write queue: their places are free.
	pub fn on_taken(&mut self, metered: usize) {
		if metered > 0 {
			self.write_queued -= metered;
		}
	}

	/// The transport flushed everything taken so far: `cost` bytes of the outgoing budget and
	/// `auto_replies` automatic replies are given back, and the first `taken_total` messages
	/// ever queued are on the wire.
	pub fn on_flushed(&mut self, cost: usize, auto_replies: usize, taken_total: u64) {
		if self.ended {
			return;
		}
		self.write_bytes -= cost;
		self.auto_replies -= auto_replies;
		self.flushed_total = self.flushed_total.max(taken_total);
	}
}

impl<B: Body> Connection<B> {
	/// Check that the counters agree with what they count; for tests and the fuzz target.
	#[doc(hidden)]
	pub fn check_invariants(&self) -> Result<(), String> {
		let budget = self.limits.incoming_bytes;
		let mut buffered = 0;
		let mut unanswered_bytes = 0;
		let mut open_received = 0;
		let mut open_sent = 0;
		let mut parts = 0;
		for (_, request) in self.requests.iter() {
			let mut queue_bytes = 0;
			let mut count = 0;
			for message in request.queue.iter(&self.store) {
				queue_bytes += cost(message.body.len(), budget);
				count += 1;
			}
			if count != request.queue.len() {
				return Err(format!("queue of {} counts {} for {count}", request.request_id, request.queue.len()));
			}
			buffered += queue_bytes;
			parts += request.parts;
			match request.direction {
				Direction::Received => {
					unanswered_bytes += request.charge;
					if request.open {
						open_received += 1;
						if self.received.get(request.request_id) != Some(&self.key_of(request)) {
							return Err(format!("open received request {} is not in the table", request.request_id));
						}
					} else if request.charge != 0 {
						return Err(format!("answered request {} still holds a charge", request.request_id));
					}
				},
				Direction::Sent if request.open => open_sent += 1,
				Direction::Sent => {},
			}
			if request.parts == 0 {
				return Err(format!("request {} has no part left but is kept", request.request_id));
			}
		}
		for incoming in &self.incoming {
			buffered += cost(
				match incoming {
					Incoming::Request { body, .. } => body.len(),
					Incoming::Stream(message) => message.body.len(),
				},
				budget,
			);
		}
		let checks = [
			("buffered bytes", self.buffered, buffered),
			("unanswered bytes", self.unanswered_bytes, unanswered_bytes),
			("open received requests", self.received.len(), open_received),
			("open sent requests", self.sent.len(), open_sent),
			(
				"metered messages queued",
				self.write_queued,
				self.outgoing.iter().filter(|outgoing| outgoing.metered).count(),
			),
		];
		for (what, counted, actual) in checks {
			if counted != actual {
				return Err(format!("{what}: counted {counted}, actually {actual}"));
			}
		}
		if self.buffered > budget
			&& self.requests.iter().map(|(_, r)| r.queue.len()).sum::<usize>() + self.incoming.len() > 1
		{
			return Err(format!("{} bytes buffered past the budget of {budget}", self.buffered));
		}
		if self.stats.peak_sent_requests < self.sent.len() || self.stats.peak_received_requests < self.received.len() {
			return Err(format!("peaks {:?} below the open requests", self.stats));
		}
		if self.unanswered_bytes > self.limits.unanswered_bytes {
			return Err(format!("{} bytes unanswered past the budget", self.unanswered_bytes));
		}
		if self.links < parts.saturating_sub(self.incoming.len()) {
			return Err(format!("{} links for {parts} request parts", self.links));
		}
		Ok(())
	}

	fn key_of(&self, request: &Request) -> Key {
		self.requests.iter().find(|(_, other)| std::ptr::eq(*other, request)).map_or(usize::MAX, |(key, _)| key)
	}
}

/// Store `waker` in `slot` unless it would wake the same task already.
fn set_waker(slot: &mut Option<Waker>, waker: &Waker) {
	match slot {
		Some(old) if old.will_wake(waker) => {},
		_ => *slot = Some(waker.clone()),
	}
}

#[cfg(test)]
mod tests;
