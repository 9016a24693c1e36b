//! The handles applications hold: the peer handle with its read and write halves, and a handle
//! per open request (see [`request`]).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use crate::error::Error;
use crate::message::{Body, IntoBody, Message};
use crate::peer::Shared;
use crate::proto::{Connection, Incoming, Refused};
use crate::transport::ConnectionInfo;

mod request;

pub use request::{
	BUSY_TEXT, DROPPED_REQUEST_TEXT, ReceivedRequestHandle, ReceivedRequestWriteHandle, SentRequestHandle,
	SentRequestWriteHandle,
};

/// A counted reference to the connection: while any link exists, the peer task keeps running.
pub(crate) struct Link<B: Body> {
	pub(crate) shared: Arc<Shared<B>>,
}

impl<B: Body> Clone for Link<B> {
	fn clone(&self) -> Self {
		self.shared.state().add_link();
		Self { shared: self.shared.clone() }
	}
}

impl<B: Body> Drop for Link<B> {
	fn drop(&mut self) {
		self.shared.state().drop_link();
	}
}

impl<B: Body> Link<B> {
	/// The first link of a new connection.
	pub(crate) fn first(shared: Arc<Shared<B>>) -> Self {
		shared.state().add_link();
		Self { shared }
	}
}

impl<B: Body> Shared<B> {
	/// Queue a message through `send`, which gives the body back while the write queue is full:
	/// then wait for room and try again. Cancel-safe: nothing is queued until it returns `Ok`.
	pub(crate) fn send_with<'a, R: 'a>(
		&'a self,
		body: B,
		send: impl FnMut(&mut Connection<B>, B) -> Result<R, Refused<B>> + 'a,
	) -> impl Future<Output = Result<R, Error>> + 'a {
		// Written out rather than an `async fn`: the first poll queues the message under the
		// lock and returns, as most sends do, and a future this small (the body, the closure,
		// `self`) costs less to build and poll on every send than nested async state machines.
		// The wait is boxed: it holds a `Notified` and a clock reading, and only a send that
		// finds the write queue full makes it.
		let mut first = Some((body, send));
		let mut waiting = None;
		poll_fn(move |cx| {
			if waiting.is_none() {
				let (body, mut send) = first.take().expect("a send polled after it completed");
				// The lock is let go before any wait.
				let result = send(&mut self.state(), body);
				match result {
					Ok(done) => return Poll::Ready(Ok(done)),
					Err(Refused::Failed(error)) => return Poll::Ready(Err(error)),
					Err(Refused::Full(body)) => waiting = Some(Box::pin(self.wait_and_send(body, send))),
				}
			}
			waiting.as_mut().expect("set above").as_mut().poll(cx)
		})
	}

	/// [`send_with`](Self::send_with) once the write queue was full: wait for room, try again.
	async fn wait_and_send<R>(
		&self,
		mut body: B,
		mut send: impl FnMut(&mut Connection<B>, B) -> Result<R, Refused<B>>,
	) -> Result<R, Error> {
		loop {
			let len = body.len();
			// Registered before looking, so that room made after the look wakes it.
			let mut notified = pin!(self.room.notified());
			notified.as_mut().enable();
			if !self.state().has_room_for(len) {
				let _wait = SendWait { shared: self, since: std::time::Instant::now() };
				notified.await;
			}
			let result = send(&mut self.state(), body);
			match result {
				Ok(done) => return Ok(done),
				Err(Refused::Failed(error)) => return Err(error),
				Err(Refused::Full(returned)) => body = returned,
			}
		}
	}

	/// Wait until everything queued so far is written to the transport.
	pub(crate) async fn flush(&self) -> Result<(), Error> {
		let target = self.state().flush_target()?;
		loop {
			let mut notified = pin!(self.flushed.notified());
			notified.as_mut().enable();
			if let std::task::Poll::Ready(result) = self.state().poll_flushed(target) {
				return result;
			}
			notified.await;
		}
	}
}

/// A send waiting for room in the write queue: the wait is added to the connection's
/// [`send_blocked`](crate::ConnectionStats::send_blocked) when it ends, also when the waiting
/// future is dropped. Only a send that has to wait reads the clock.
struct SendWait<'a, B: Body> {
	shared: &'a Shared<B>,
	since: std::time::Instant,
}

impl<B: Body> Drop for SendWait<'_, B> {
	fn drop(&mut self) {
		self.shared.state().note_send_blocked(self.since.elapsed());
	}
}

/// Holds back the peer task's wake-up for queued messages while it lives; see
/// [`PeerWriteHandle::hold_wakeups`]. It does not keep the connection open.
#[must_use = "dropping the hold releases it at once"]
pub struct WakeupHold<B: Body = bytes::Bytes> {
	shared: Arc<Shared<B>>,
}

impl<B: Body> WakeupHold<B> {
	pub(crate) fn new(shared: &Arc<Shared<B>>) -> Self {
		shared.state().hold_wakeups();
		Self { shared: shared.clone() }
	}
}

impl<B: Body> Drop for WakeupHold<B> {
	fn drop(&mut self) {
		self.shared.state().release_wakeups();
	}
}

impl<B: Body> std::fmt::Debug for WakeupHold<B> {
	fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
		f.debug_struct("WakeupHold").finish_non_exhaustive()
	}
}

/// A message from the remote that is not part of a request this side sent.
#[derive(Debug)]
pub enum ReceivedMessage<B: Body = bytes::Bytes> {
	/// The remote opened a request: the handle to answer it, and the request's body.
	Request(ReceivedRequestHandle<B>, B),
	/// A one-way stream message.
	Stream(Message<B>),
}

impl<B: Body> ReceivedMessage<B> {
	/// The request, if this is one.
	pub fn into_request(self) -> Option<(ReceivedRequestHandle<B>, B)> {
		match self {
			Self::Request(request, body) => Some((request, body)),
			Self::Stream(_) => None,
		}
	}

	/// The stream message, if this is one.
	pub fn into_stream(self) -> Option<Message<B>> {
		match self {
			Self::Request(..) => None,
			Self::Stream(message) => Some(message),
		}
	}
}

/// The handle to one connection: send requests and stream messages, receive what the remote
/// opens.
///
/// Split it with [`split`](Self::split) to receive in one task and send from others. The
/// connection stays up while any handle to it exists, request handles included; it closes when
/// the last one is dropped or on [`close`](Self::close).
///
/// ```no_run
/// # async fn demo() -> Result<(), peerwire::Error> {
/// use peerwire::{Config, ReceivedMessage, TcpPeer};
///
/// let (peer, _info) = TcpPeer::connect("localhost:1337", &Config::default()).await?;
/// let mut request = peer.send_request(1, "Hello").await?;
/// while let Some(update) = request.recv_update().await? {
///     println!("progress: {:?}", update.body);
/// }
/// let response = request.recv_response().await?;
/// println!("response: {:?}", response.body);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct PeerHandle<B: Body = bytes::Bytes> {
	read: PeerReadHandle<B>,
	write: PeerWriteHandle<B>,
}

impl<B: Body> PeerHandle<B> {
	pub(crate) fn new(shared: Arc<Shared<B>>) -> Self {
		let link = Link::first(shared);
		Self { read: PeerReadHandle { link: link.clone(), ahead: Default::default() }, write: PeerWriteHandle { link } }
	}

	/// Split into a read half and a cloneable write half.
	pub fn split(self) -> (PeerReadHandle<B>, PeerWriteHandle<B>) {
		(self.read, self.write)
	}

	/// A new write handle for this connection.
	pub fn write_handle(&self) -> PeerWriteHandle<B> {
		self.write.clone()
	}

	/// Receive the next request or stream message from the remote.
	///
	/// Fails with [`ErrorKind::ConnectionClosed`](crate::ErrorKind::ConnectionClosed) once the
	/// connection has ended and everything received before has been taken.
	pub async fn recv_message(&mut self) -> Result<ReceivedMessage<B>, Error> {
		self.read.recv_message().await
	}

	/// Open a request. See [`PeerWriteHandle::send_request`].
	pub async fn send_request(&self, service_id: i32, body: impl IntoBody<B>) -> Result<SentRequestHandle<B>, Error> {
		self.write.send_request(service_id, body).await
	}

	/// Send a stream message. See [`PeerWriteHandle::send_stream`].
	pub fn send_stream(
		&self,
		service_id: i32,
		body: impl IntoBody<B>,
	) -> impl Future<Output = Result<(), Error>> + Send + '_ {
		self.write.send_stream(service_id, body)
	}

	/// Wait until everything queued so far is written. See [`PeerWriteHandle::flush`].
	pub async fn flush(&self) -> Result<(), Error> {
		self.write.flush().await
	}

	/// Flush what is queued, then close the connection. See [`PeerWriteHandle::close`].
	pub fn close(&self) {
		self.write.close()
	}

	/// What is known about the remote.
	pub fn info(&self) -> &ConnectionInfo {
		self.write.info()
	}

	/// A snapshot of the connection's counters: messages and bytes each way by type, open
	/// requests and their peaks, automatic replies, stray messages, protocol errors, time
	/// blocked on backpressure. See [`ConnectionStats`](crate::ConnectionStats).
	///
	/// Takes the connection's lock once; cheap enough to call every second for every
	/// connection. The counts stay readable after the connection has ended.
	pub fn stats(&self) -> crate::ConnectionStats {
		self.write.stats()
	}

	/// Wait until the connection has ended. See [`PeerWriteHandle::closed`].
	pub async fn closed(&self) {
		self.write.closed().await
	}
}

/// Batches the read handle reads for the peer task in one poll of `recv_message`.
const READS_PER_POLL: usize = 4;

/// The receiving half of a [`PeerHandle`].
///
/// Holds the queue of incoming requests and stream messages. If it is dropped while the
/// connection stays up, requests from the remote are answered with an error response and stream
/// messages are discarded.
#[derive(Debug)]
pub struct PeerReadHandle<B: Body = bytes::Bytes> {
	link: Link<B>,
	/// Stream messages taken from the connection ahead of the one returned, under the same
	/// lock, returned next (see `Connection::poll_recv_incoming_ahead`). Only reached through
	/// `&mut self` (`get_mut`, no locking): the mutex is there so that the handle stays `Sync`
	/// for any body type, as it was without this queue.
	ahead: std::sync::Mutex<VecDeque<Message<B>>>,
}

impl<B: Body> Drop for PeerReadHandle<B> {
	fn drop(&mut self) {
		// What it took ahead is dropped with it.
		self.link.shared.read_ahead.store(0, Ordering::Relaxed);
		self.link.shared.state().drop_reader();
	}
}

impl<B: Body> PeerReadHandle<B> {
	/// Receive the next request or stream message from the remote.
	///
	/// Cancel-safe. Fails with [`ErrorKind::ConnectionClosed`](crate::ErrorKind::ConnectionClosed)
	/// once the connection has ended and everything received before has been taken.
	pub async fn recv_message(&mut self) -> Result<ReceivedMessage<B>, Error> {
		let shared = &self.link.shared;
		let ahead = self.ahead.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
		if let Some(message) = ahead.pop_front() {
			shared.read_ahead.store(ahead.len(), Ordering::Relaxed);
			return Ok(ReceivedMessage::Stream(message));
		}
		let incoming = poll_fn(|cx| {
			// A few reads for the peer task per poll, so that a flow of messages for other
			// handles cannot keep this task polling.
			for _ in 0..READS_PER_POLL {
				let mut state = shared.state();
				if let Poll::Ready(incoming) = state.poll_recv_incoming_ahead(cx.waker(), ahead) {
					return Poll::Ready(incoming);
				}
				// Nothing here: read for the peer task if it sleeps (the messages then stay on
				// this thread), and look again if that brought anything.
				let Some(driver) = state.driver_waker_for_reading() else { return Poll::Pending };
				drop(state);
				if !shared.read_for_driver(&driver) {
					return Poll::Pending;
				}
			}
			cx.waker().wake_by_ref();
			Poll::Pending
		})
		.await?;
		if !ahead.is_empty() {
			shared.read_ahead.store(ahead.len(), Ordering::Relaxed);
		}
		Ok(match incoming {
			Incoming::Request { key, header, body } => {
				ReceivedMessage::Request(ReceivedRequestHandle::new(shared.clone(), key, header), body)
			},
			Incoming::Stream(message) => ReceivedMessage::Stream(message),
		})
	}

	/// Flush what is queued, then close the connection.
	pub fn close(&self) {
		self.link.shared.state().request_close()
	}

	/// What is known about the remote.
	pub fn info(&self) -> &ConnectionInfo {
		&self.link.shared.info
	}

	/// A snapshot of the connection's counters. See [`PeerHandle::stats`].
	pub fn stats(&self) -> crate::ConnectionStats {
		self.link.shared.state().stats()
	}
}

/// The sending half of a [`PeerHandle`]; clone it freely.
#[derive(Debug)]
pub struct PeerWriteHandle<B: Body = bytes::Bytes> {
	link: Link<B>,
}

impl<B: Body> PeerWriteHandle<B> {
	/// Open a request for `service_id` and return its handle.
	///
	/// Returns once the request is queued for writing (not once it is on the wire: see
	/// [`flush`](Self::flush)); waits first if the write queue is full. Fails for this request
	/// only if the body is over the write limit or the open-request limit is reached, and with
	/// a connection error if the connection has ended.
	pub async fn send_request(&self, service_id: i32, body: impl IntoBody<B>) -> Result<SentRequestHandle<B>, Error> {
		let shared = &self.link.shared;
		let (key, request_id) =
			shared.send_with(body.into_body(), |state, body| state.open_request(service_id, body)).await?;
		Ok(SentRequestHandle::new(shared.clone(), key, request_id, service_id))
	}

	/// Send a one-way stream message (request id 0).
	///
	/// Returns once the message is queued for writing, waiting first if the write queue is
	/// full; the peer task writes it soon after. It is not on the wire yet: a process that exits
	/// (or a runtime that shuts down) right after may lose it. Await [`flush`](Self::flush) first
	/// when that matters, for example for a last command before exit.
	///
	/// Over a byte stream (TCP, Unix stream, TLS), small stream messages that keep coming are
	/// gathered into fewer writes. A lone message, or a burst sent in one turn of the task, waits
	/// for one turn of the runtime's queue (two on a current-thread runtime). The last messages
	/// of a task that sent on turn after turn and then stopped wait at most about 2 ms (1 ms,
	/// rounded up to the timer's next millisecond) unless a flush, a request, an update or a
	/// response sent after them takes them along at once.
	pub fn send_stream(
		&self,
		service_id: i32,
		body: impl IntoBody<B>,
	) -> impl Future<Output = Result<(), Error>> + Send + '_ {
		// Not an `async fn`: the send's own future is returned as it is, one state machine
		// fewer on every message. The body is converted now; nothing is queued before the
		// first poll.
		self.link.shared.send_with(body.into_body(), move |state, body| state.send_stream(service_id, body))
	}

	/// Wait until everything queued before this call, through any handle of this connection,
	/// has been written to the transport (the socket has taken it: the remote may not have read
	/// it yet). The connection stays open.
	///
	/// Fails with [`ErrorKind::ConnectionClosed`](crate::ErrorKind::ConnectionClosed) if the
	/// connection ends first.
	///
	/// ```no_run
	/// # async fn demo(arm: peerwire::PeerWriteHandle) -> Result<(), peerwire::Error> {
	/// arm.send_stream(10, "stop").await?; // queued
	/// arm.flush().await?; // written: safe to exit now
	/// # Ok(())
	/// # }
	/// ```
	pub async fn flush(&self) -> Result<(), Error> {
		self.link.shared.flush().await
	}

	/// Flush what is queued, then close the connection.
	///
	/// Messages queued before the close are written; sends after it fail. Every open request
	/// handle then fails with a connection error.
	pub fn close(&self) {
		self.link.shared.state().request_close()
	}

	/// What is known about the remote.
	pub fn info(&self) -> &ConnectionInfo {
		&self.link.shared.info
	}

	/// A snapshot of the connection's counters. See [`PeerHandle::stats`].
	pub fn stats(&self) -> crate::ConnectionStats {
		self.link.shared.state().stats()
	}

	/// Hold back the peer task's wake-up for messages queued on this connection (through any
	/// handle) until the returned guard is dropped, which wakes it once if it sleeps while
	/// messages wait.
	///
	/// For code that queues a burst of messages from outside the runtime, such as a binding to
	/// another event loop: each message queued while the peer task sleeps otherwise wakes it,
	/// which costs a cross-thread wake-up per message and lets it write them one by one. What is
	/// queued under a hold may wait until the guard is dropped (the peer task writes it earlier
	/// only if something else wakes it: the remote's bytes, a timer, a flush, a close), so drop
	/// it soon (at the end of the burst); holds may overlap, and the last one dropped wakes.
	pub fn hold_wakeups(&self) -> WakeupHold<B> {
		WakeupHold::new(&self.link.shared)
	}

	/// Wait until the connection has ended and its peer task has stopped.
	///
	/// After [`close`](Self::close), this returns once everything queued before the close has
	/// been written and the connection is shut down:
	///
	/// ```no_run
	/// # async fn demo(peer: peerwire::PeerHandle) -> Result<(), peerwire::Error> {
	/// peer.send_stream(1, "last words").await?;
	/// peer.close();
	/// peer.closed().await; // "last words" is on the wire
	/// # Ok(())
	/// # }
	/// ```
	pub async fn closed(&self) {
		self.link.shared.stopped.cancelled().await
	}

	/// Whether the connection has ended.
	pub fn is_closed(&self) -> bool {
		self.link.shared.stopped.is_cancelled()
	}

	/// Whether `other` talks to the same connection.
	pub fn same_peer(&self, other: &Self) -> bool {
		Arc::ptr_eq(&self.link.shared, &other.link.shared)
	}
}

impl<B: Body> std::fmt::Debug for Link<B> {
	fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
		f.debug_struct("Link").field("remote", &self.shared.info.remote_address).finish_non_exhaustive()
	}
}

impl<B: Body> Clone for PeerWriteHandle<B> {
	fn clone(&self) -> Self {
		Self { link: self.link.clone() }
	}
}
