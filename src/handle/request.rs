//! Handles of open requests: one for each request this side sent, one for each it received.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::{Link, Reservation};
use crate::error::Error;
use crate::message::{Body, IntoBody, Message, MessageHeader, MessageType};
use crate::peer::RequestReceiver;
use crate::tracker::Serial;
use crate::transport::ConnectionInfo;

/// The text of the error response sent for a received request dropped without an answer.
pub const DROPPED_REQUEST_TEXT: &str = "request dropped without a response";

/// The text of the error response sent for a request refused because the requests received and
/// not yet answered hold [`Config::max_unanswered_incoming`](crate::Config::max_unanswered_incoming)
/// bytes already.
pub const BUSY_TEXT: &str = "busy: too many bytes of requests not yet answered";

/// What the read and write parts of a sent request share. When the last part goes, the request
/// is forgotten locally at once: its id is free and late messages for it are dropped quietly.
struct SentState<B: Body> {
	link: Link<B>,
	request_id: u32,
	service_id: i32,
	serial: Serial,
}

impl<B: Body> Drop for SentState<B> {
	fn drop(&mut self) {
		// A no-op if the response already closed the request.
		let removed = self.link.shared.tracker().sent.remove_if(self.request_id, self.serial);
		if removed.is_some() {
			tracing::debug!(request_id = self.request_id, "sent request dropped before its response");
		}
	}
}

impl<B: Body> SentState<B> {
	async fn send_update(&self, service_id: i32, body: B) -> Result<(), Error> {
		self.link.check(&body)?;
		let reservation = self.link.reserve(body.len()).await?;
		let (open, closed) = {
			let tracker = self.link.shared.tracker();
			(tracker.sent.is_open(self.request_id, self.serial), tracker.closed)
		};
		if !open {
			return Err(if closed { self.link.closed_error() } else { Error::request_closed(self.request_id) });
		}
		reservation.send(Message::requester_update(self.request_id, service_id, body))
	}
}

/// A request this side sent: receive the responder's updates and the response, send updates.
///
/// Dropping the handle (and every [`SentRequestWriteHandle`] of it) forgets the request at once:
/// its id is free again, and an update or response that still arrives for it is dropped quietly
/// (a debug log), never an error for the connection. The protocol has no way to tell the remote.
///
/// If the connection ends before the response, every receive fails with
/// [`ErrorKind::ConnectionClosed`](crate::ErrorKind::ConnectionClosed): no handle waits forever
/// on a dead connection. A live remote that never answers is another matter; bound the wait with
/// [`recv_response_timeout`](Self::recv_response_timeout).
#[derive(Debug)]
pub struct SentRequestHandle<B: Body = bytes::Bytes> {
	state: Arc<SentState<B>>,
	incoming: RequestReceiver<B>,
	response: Option<Message<B>>,
	/// The response was returned by `recv_response`.
	done: bool,
}

impl<B: Body> SentRequestHandle<B> {
	/// Open a request through a reserved write-queue place; nothing in here waits.
	pub(crate) fn open(
		link: &Link<B>,
		reservation: Reservation<'_, B>,
		service_id: i32,
		body: B,
	) -> Result<Self, Error> {
		let (sender, incoming) = mpsc::channel(link.shared.request_queue);
		let opened = {
			let mut tracker = link.shared.tracker();
			if tracker.closed {
				return Err(link.closed_error());
			}
			tracker.sent.insert(sender)
		};
		let (request_id, serial) = opened.ok_or_else(|| Error::too_many_requests(link.shared.max_open_requests()))?;
		// Built before sending so that a failed send drops it and frees the id.
		let state = Arc::new(SentState { link: link.clone(), request_id, service_id, serial });
		reservation.send(Message::request(request_id, service_id, body))?;
		Ok(Self { state, incoming, response: None, done: false })
	}

	/// The id of this request.
	pub fn request_id(&self) -> u32 {
		self.state.request_id
	}

	/// The service this request was sent for.
	pub fn service_id(&self) -> i32 {
		self.state.service_id
	}

	/// What is known about the remote.
	pub fn info(&self) -> &ConnectionInfo {
		&self.state.link.shared.info
	}

	/// Wait until the connection this request lives on has ended.
	///
	/// Useful to give up on a request whose remote is gone without waiting to fail a send.
	pub async fn closed(&self) {
		self.state.link.shared.stopped.cancelled().await
	}

	/// Whether the connection this request lives on has ended.
	pub fn is_closed(&self) -> bool {
		self.state.link.shared.stopped.is_cancelled()
	}

	/// A cloneable handle that sends requester updates, so that another task can send while this
	/// one receives. It keeps the request open as long as it lives.
	pub fn write_handle(&self) -> SentRequestWriteHandle<B> {
		SentRequestWriteHandle { state: self.state.clone() }
	}

	/// Send a requester update.
	///
	/// Fails with [`ErrorKind::RequestClosed`](crate::ErrorKind::RequestClosed) once the response
	/// has arrived.
	pub async fn send_update(&self, service_id: i32, body: impl IntoBody<B>) -> Result<(), Error> {
		self.state.send_update(service_id, body.into_body()).await
	}

	async fn next(&mut self) -> Result<Message<B>, Error> {
		self.incoming.recv().await.map(|charged| charged.item).ok_or_else(|| self.state.link.closed_error())
	}

	/// Receive the next responder update.
	///
	/// `Ok(None)` once the response has arrived (it stays for [`recv_response`](Self::recv_response)).
	/// Cancel-safe.
	///
	/// Propagate the error with `?` rather than ending the loop on it: a loop on
	/// `while let Ok(Some(update))`, as often written for fizyr-rpc, takes a lost connection for
	/// the end of the updates.
	///
	/// ```
	/// # async fn demo(peer: peerwire::PeerHandle) -> Result<(), peerwire::Error> {
	/// let mut request = peer.send_request(7, "scan").await?;
	/// while let Some(update) = request.recv_update().await? {
	///     println!("progress: {:?}", update.body);
	/// }
	/// // An error response from the remote is an `Err` here, of kind `ErrorKind::Remote`.
	/// let response = request.recv_response_ok().await?;
	/// # let _ = response;
	/// # Ok(())
	/// # }
	/// ```
	pub async fn recv_update(&mut self) -> Result<Option<Message<B>>, Error> {
		if self.response.is_some() || self.done {
			return Ok(None);
		}
		let message = self.next().await?;
		if message.header.message_type == MessageType::ResponderUpdate {
			return Ok(Some(message));
		}
		self.response = Some(message);
		Ok(None)
	}

	/// Receive the response, discarding any update not yet received.
	///
	/// An error response from the remote is an `Ok` message too: check
	/// [`Message::is_error_response`] and [`Message::error_text`], or use
	/// [`recv_response_ok`](Self::recv_response_ok), which makes it an `Err`. Cancel-safe.
	pub async fn recv_response(&mut self) -> Result<Message<B>, Error> {
		loop {
			if let Some(response) = self.response.take() {
				self.done = true;
				return Ok(response);
			}
			if self.done {
				return Err(Error::request_closed(self.request_id()));
			}
			let message = self.next().await?;
			if message.header.message_type == MessageType::ResponderUpdate {
				tracing::debug!(request_id = self.request_id(), "discarded an update unread before the response");
			} else {
				self.response = Some(message);
			}
		}
	}

	/// [`recv_response`](Self::recv_response) with a deadline: fails with
	/// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if no response arrives in time. The
	/// request stays open; call again to keep waiting, or drop the handle to forget it.
	pub async fn recv_response_timeout(&mut self, timeout: Duration) -> Result<Message<B>, Error> {
		tokio::time::timeout(timeout, self.recv_response()).await.map_err(|_| Error::timeout(timeout))?
	}
}

/// Sends requester updates for a [`SentRequestHandle`]; cloneable, and keeps the request open.
#[derive(Debug)]
pub struct SentRequestWriteHandle<B: Body = bytes::Bytes> {
	state: Arc<SentState<B>>,
}

impl<B: Body> SentRequestWriteHandle<B> {
	/// The id of this request.
	pub fn request_id(&self) -> u32 {
		self.state.request_id
	}

	/// The service this request was sent for.
	pub fn service_id(&self) -> i32 {
		self.state.service_id
	}

	/// Send a requester update. See [`SentRequestHandle::send_update`].
	pub async fn send_update(&self, service_id: i32, body: impl IntoBody<B>) -> Result<(), Error> {
		self.state.send_update(service_id, body.into_body()).await
	}
}

/// What the read and write parts of a received request share. When the last part goes without a
/// response having been sent, an error response goes to the remote, so it never waits forever.
struct ReceivedState<B: Body> {
	link: Link<B>,
	request_id: u32,
	service_id: i32,
	serial: Serial,
	/// Whether the response is queued. Held while an update or the response is queued, so that
	/// no update can be queued after the response by another task.
	responded: Mutex<bool>,
	/// The requester's updates. Here rather than in the read half so that answering the request,
	/// from whichever half, closes the queue: updates still queued or arriving for an answered
	/// request are dropped at once, instead of holding the connection's reading (a full queue)
	/// or its incoming budget for as long as a handle is kept.
	updates: Mutex<RequestReceiver<B>>,
	/// The request's share of `Config::max_unanswered_incoming`, from when it was read until it
	/// is answered: work handed to the application counts against the connection's memory
	/// bound, so a handler per request cannot escape it.
	charge: Mutex<Option<OwnedSemaphorePermit>>,
}

impl<B: Body> ReceivedState<B> {
	fn responded(&self) -> MutexGuard<'_, bool> {
		// Only a bool behind it: a panic elsewhere cannot leave it inconsistent.
		self.responded.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
	}

	/// Mark the request answered and close it in the tracker; `false` if it already was.
	fn close(&self, responded: &mut bool) -> bool {
		if std::mem::replace(responded, true) {
			return false;
		}
		// Freed before the response is queued: the remote may reuse the id as soon as it has
		// the response, and must not find it still open.
		self.link.shared.tracker().received.remove_if(self.request_id, self.serial);
		let mut updates = self.updates();
		updates.close();
		while updates.try_recv().is_ok() {}
		drop(self.charge().take());
		true
	}

	fn charge(&self) -> MutexGuard<'_, Option<OwnedSemaphorePermit>> {
		// Only an `Option` behind it: a panic elsewhere cannot leave it inconsistent.
		self.charge.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
	}

	fn updates(&self) -> MutexGuard<'_, RequestReceiver<B>> {
		// Never held across an await or a call that could panic while the queue is changed.
		self.updates.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
	}

	async fn send_update(&self, service_id: i32, body: B) -> Result<(), Error> {
		self.link.check(&body)?;
		let reservation = self.link.reserve(body.len()).await?;
		let responded = self.responded();
		if *responded {
			return Err(Error::request_closed(self.request_id));
		}
		reservation.send(Message::responder_update(self.request_id, service_id, body))
	}

	async fn send_response(&self, service_id: i32, body: B) -> Result<(), Error> {
		self.link.check(&body)?;
		let reservation = self.link.reserve(body.len()).await?;
		let mut responded = self.responded();
		if !self.close(&mut responded) {
			return Err(Error::request_closed(self.request_id));
		}
		reservation.send(Message::response(self.request_id, service_id, body))
	}
}

impl<B: Body> Drop for ReceivedState<B> {
	fn drop(&mut self) {
		let mut responded = self.responded();
		if self.close(&mut responded) {
			tracing::debug!(request_id = self.request_id, "received request dropped without a response");
			// Fails only if the connection is gone, and then no answer is possible anyway.
			let _ = self.link.send_unmetered(Message::error_response(self.request_id, DROPPED_REQUEST_TEXT));
		}
	}
}

/// A request the remote opened: receive its requester updates, send responder updates and the
/// response.
///
/// **Always answered.** If this handle and all its [`ReceivedRequestWriteHandle`]s are dropped
/// without a response (including when the task holding them panics), peerwire sends an error
/// response with the text `"request dropped without a response"`, so the remote never waits
/// forever and the request id is free again.
#[derive(Debug)]
pub struct ReceivedRequestHandle<B: Body = bytes::Bytes> {
	state: Arc<ReceivedState<B>>,
}

impl<B: Body> ReceivedRequestHandle<B> {
	pub(crate) fn new(
		link: Link<B>,
		header: MessageHeader,
		serial: Serial,
		incoming: RequestReceiver<B>,
		charge: OwnedSemaphorePermit,
	) -> Self {
		let state = ReceivedState {
			link,
			request_id: header.request_id,
			service_id: header.service_id,
			serial,
			responded: Mutex::new(false),
			updates: Mutex::new(incoming),
			charge: Mutex::new(Some(charge)),
		};
		Self { state: Arc::new(state) }
	}

	/// The id the remote gave this request.
	pub fn request_id(&self) -> u32 {
		self.state.request_id
	}

	/// The service the remote asked for.
	pub fn service_id(&self) -> i32 {
		self.state.service_id
	}

	/// What is known about the remote.
	pub fn info(&self) -> &ConnectionInfo {
		&self.state.link.shared.info
	}

	/// Wait until the connection this request lives on has ended.
	///
	/// Useful to give up on a request whose remote is gone without waiting to fail a send.
	pub async fn closed(&self) {
		self.state.link.shared.stopped.cancelled().await
	}

	/// Whether the connection this request lives on has ended.
	pub fn is_closed(&self) -> bool {
		self.state.link.shared.stopped.is_cancelled()
	}

	/// Whether the remote has finished sending on this connection (its end of stream has
	/// arrived), or the connection has ended.
	///
	/// After the remote's end of stream the connection stays up until every request it sent is
	/// answered (at most [`Config::close_timeout`](crate::Config::close_timeout)): a remote
	/// that only shut down its sending side still reads the answers. But a remote that closed
	/// its socket entirely looks the same until a write fails, and over TCP the first write
	/// after such a close still succeeds. A server that must not hand something valuable to a
	/// remote that may be gone (a job from a queue) checks this first.
	pub fn is_remote_finished(&self) -> bool {
		let shared = &self.state.link.shared;
		shared.remote_finished.load(std::sync::atomic::Ordering::Relaxed) || shared.stopped.is_cancelled()
	}

	/// A cloneable handle that sends updates and the response, so that another task can answer
	/// while this one receives. The request stays open (and unanswered) while any part lives.
	pub fn write_handle(&self) -> ReceivedRequestWriteHandle<B> {
		ReceivedRequestWriteHandle { state: self.state.clone() }
	}

	/// Receive the next requester update.
	///
	/// `Ok(None)` once this side has sent the response. Cancel-safe.
	pub async fn recv_update(&mut self) -> Result<Option<Message<B>>, Error> {
		// The lock is taken for each poll only, never across a wait.
		match std::future::poll_fn(|cx| self.state.updates().poll_recv(cx)).await {
			Some(charged) => Ok(Some(charged.item)),
			// The queue is closed: either we responded, or the connection ended.
			None if *self.state.responded() => Ok(None),
			None => Err(self.state.link.closed_error()),
		}
	}

	/// Send a responder update.
	pub async fn send_update(&self, service_id: i32, body: impl IntoBody<B>) -> Result<(), Error> {
		self.state.send_update(service_id, body.into_body()).await
	}

	/// Send the response, closing the request. A second response fails with
	/// [`ErrorKind::RequestClosed`](crate::ErrorKind::RequestClosed).
	///
	/// Like every `send_*`, returns once the message is queued for writing; await
	/// [`PeerWriteHandle::flush`](crate::PeerWriteHandle::flush) to know it is written.
	pub async fn send_response(&self, service_id: i32, body: impl IntoBody<B>) -> Result<(), Error> {
		self.state.send_response(service_id, body.into_body()).await
	}

	/// Send an error response (service id -1, `text` as body), closing the request.
	pub async fn send_error_response(&self, text: &str) -> Result<(), Error> {
		self.state.send_response(crate::message::SERVICE_ID_ERROR, B::from_error_text(text)).await
	}
}

impl<B: Body> Drop for ReceivedRequestHandle<B> {
	fn drop(&mut self) {
		// Nobody can read the requester's updates any more: refuse and drop them, so that a
		// write handle kept to answer later does not leave a full queue holding the connection.
		let mut updates = self.state.updates();
		updates.close();
		while updates.try_recv().is_ok() {}
	}
}

/// Sends updates and the response for a [`ReceivedRequestHandle`]; cloneable, and keeps the
/// request open. See the guarantee on [`ReceivedRequestHandle`].
#[derive(Debug)]
pub struct ReceivedRequestWriteHandle<B: Body = bytes::Bytes> {
	state: Arc<ReceivedState<B>>,
}

impl<B: Body> ReceivedRequestWriteHandle<B> {
	/// The id the remote gave this request.
	pub fn request_id(&self) -> u32 {
		self.state.request_id
	}

	/// The service the remote asked for.
	pub fn service_id(&self) -> i32 {
		self.state.service_id
	}

	/// Wait until the connection this request lives on has ended.
	///
	/// Useful to give up on a request whose remote is gone without waiting to fail a send.
	pub async fn closed(&self) {
		self.state.link.shared.stopped.cancelled().await
	}

	/// Whether the connection this request lives on has ended.
	pub fn is_closed(&self) -> bool {
		self.state.link.shared.stopped.is_cancelled()
	}

	/// Send a responder update.
	pub async fn send_update(&self, service_id: i32, body: impl IntoBody<B>) -> Result<(), Error> {
		self.state.send_update(service_id, body.into_body()).await
	}

	/// Send the response, closing the request.
	pub async fn send_response(&self, service_id: i32, body: impl IntoBody<B>) -> Result<(), Error> {
		self.state.send_response(service_id, body.into_body()).await
	}

	/// Send an error response (service id -1, `text` as body), closing the request.
	pub async fn send_error_response(&self, text: &str) -> Result<(), Error> {
		self.state.send_response(crate::message::SERVICE_ID_ERROR, B::from_error_text(text)).await
	}
}

impl<B: Body> std::fmt::Debug for SentState<B> {
	fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
		f.debug_struct("SentRequest")
			.field("request_id", &self.request_id)
			.field("service_id", &self.service_id)
			.finish()
	}
}

impl<B: Body> std::fmt::Debug for ReceivedState<B> {
	fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
		f.debug_struct("ReceivedRequest")
			.field("request_id", &self.request_id)
			.field("service_id", &self.service_id)
			.finish()
	}
}

impl<B: Body> Clone for SentRequestWriteHandle<B> {
	fn clone(&self) -> Self {
		Self { state: self.state.clone() }
	}
}

impl<B: Body> Clone for ReceivedRequestWriteHandle<B> {
	fn clone(&self) -> Self {
		Self { state: self.state.clone() }
	}
}

/// Responses as `Result` (kept apart from the handle's core, which it only calls).
impl<B: Body> SentRequestHandle<B> {
	/// [`recv_response`](Self::recv_response), with an error response from the remote (a negative
	/// service id) as an `Err` of kind [`ErrorKind::Remote`](crate::ErrorKind::Remote) that holds
	/// its service id and text (see [`Message::into_result`]). Cancel-safe.
	///
	/// ```
	/// # async fn demo(peer: peerwire::PeerHandle) -> Result<(), peerwire::Error> {
	/// use peerwire::ErrorKind;
	///
	/// let mut request = peer.send_request(3, "missing.txt").await?;
	/// match request.recv_response_ok().await {
	///     Ok(response) => println!("{:?}", response.body),
	///     Err(error) if error.kind() == ErrorKind::Remote => {
	///         println!("refused ({:?}): {:?}", error.remote_service_id(), error.remote_text())
	///     },
	///     Err(error) => return Err(error),
	/// }
	/// # Ok(())
	/// # }
	/// ```
	pub async fn recv_response_ok(&mut self) -> Result<Message<B>, Error> {
		self.recv_response().await?.into_result()
	}
}
