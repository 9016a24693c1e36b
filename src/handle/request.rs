//! Handles of open requests: one for each request this side sent, one for each it received.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use super::WakeupHold;
use crate::error::Error;
use crate::message::{Body, IntoBody, Message, MessageHeader, MessageType};
use crate::peer::Shared;
use crate::proto::Key;
use crate::transport::ConnectionInfo;

/// The text of the error response sent for a received request dropped without an answer.
pub const DROPPED_REQUEST_TEXT: &str = "request dropped without a response";

/// The text of the error response sent for a request refused because the requests received and
/// not yet answered hold [`Config::max_unanswered_incoming`](crate::Config::max_unanswered_incoming)
/// bytes already.
pub const BUSY_TEXT: &str = "busy: too many bytes of requests not yet answered";

/// What every part of one request holds: the connection, and the request's key in it. When the
/// last part of a sent request goes, the request is forgotten locally at once: its id is free
/// and late messages for it are dropped quietly. When the last part of a received request goes
/// without a response, an error response goes to the remote, so it never waits forever.
struct Part<B: Body> {
	shared: Arc<Shared<B>>,
	key: Key,
	request_id: u32,
	service_id: i32,
	/// Whether this part is the one that receives (the request handle itself).
	reader: bool,
}

impl<B: Body> Part<B> {
	/// Another (writing) part of the same request.
	fn write_part(&self) -> Self {
		self.shared.state().add_part(self.key);
		Self { shared: self.shared.clone(), reader: false, ..*self }
	}

	fn info(&self) -> &ConnectionInfo {
		&self.shared.info
	}

	/// Queue a message of this request through `send` (a method of the state), waiting for room.
	async fn send(
		&self,
		body: B,
		send: impl Fn(&mut crate::proto::Connection<B>, Key, B) -> Result<(), crate::proto::Refused<B>>,
	) -> Result<(), Error> {
		self.shared.send_with(body, |state, body| send(state, self.key, body)).await
	}

	async fn closed(&self) {
		self.shared.stopped.cancelled().await
	}

	fn is_closed(&self) -> bool {
		self.shared.stopped.is_cancelled()
	}
}

impl<B: Body> Drop for Part<B> {
	fn drop(&mut self) {
		self.shared.state().drop_part(self.key, self.reader);
	}
}

impl<B: Body> std::fmt::Debug for Part<B> {
	fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
		f.debug_struct("Request").field("request_id", &self.request_id).field("service_id", &self.service_id).finish()
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
	part: Part<B>,
	response: Option<Message<B>>,
	/// The response was returned by `recv_response`.
	done: bool,
}

impl<B: Body> SentRequestHandle<B> {
	/// The handle of a request just opened under `key`.
	pub(crate) fn new(shared: Arc<Shared<B>>, key: Key, request_id: u32, service_id: i32) -> Self {
		let part = Part { shared, key, request_id, service_id, reader: true };
		Self { part, response: None, done: false }
	}

	/// The id of this request.
	pub fn request_id(&self) -> u32 {
		self.part.request_id
	}

	/// The service this request was sent for.
	pub fn service_id(&self) -> i32 {
		self.part.service_id
	}

	/// What is known about the remote.
	pub fn info(&self) -> &ConnectionInfo {
		self.part.info()
	}

	/// Wait until the connection this request lives on has ended.
	///
	/// Useful to give up on a request whose remote is gone without waiting to fail a send.
	pub async fn closed(&self) {
		self.part.closed().await
	}

	/// Whether the connection this request lives on has ended.
	pub fn is_closed(&self) -> bool {
		self.part.is_closed()
	}

	/// A cloneable handle that sends requester updates, so that another task can send while this
	/// one receives. It keeps the request open as long as it lives.
	pub fn write_handle(&self) -> SentRequestWriteHandle<B> {
		SentRequestWriteHandle { part: self.part.write_part() }
	}

	/// Send a requester update.
	///
	/// Fails with [`ErrorKind::RequestClosed`](crate::ErrorKind::RequestClosed) once the response
	/// has arrived.
	pub async fn send_update(&self, service_id: i32, body: impl IntoBody<B>) -> Result<(), Error> {
		self.part.send(body.into_body(), |state, key, body| state.send_requester_update(key, service_id, body)).await
	}

	async fn next(&mut self) -> Result<Message<B>, Error> {
		let part = &self.part;
		poll_fn(|cx| part.shared.state().poll_recv_sent(part.key, cx.waker())).await
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
	part: Part<B>,
}

impl<B: Body> SentRequestWriteHandle<B> {
	/// The id of this request.
	pub fn request_id(&self) -> u32 {
		self.part.request_id
	}

	/// The service this request was sent for.
	pub fn service_id(&self) -> i32 {
		self.part.service_id
	}

	/// Send a requester update. See [`SentRequestHandle::send_update`].
	pub async fn send_update(&self, service_id: i32, body: impl IntoBody<B>) -> Result<(), Error> {
		self.part.send(body.into_body(), |state, key, body| state.send_requester_update(key, service_id, body)).await
	}

	/// Hold back the peer task's wake-up for queued messages; see
	/// [`PeerWriteHandle::hold_wakeups`](crate::PeerWriteHandle::hold_wakeups).
	pub fn hold_wakeups(&self) -> WakeupHold<B> {
		WakeupHold::new(&self.part.shared)
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
	part: Part<B>,
}

impl<B: Body> ReceivedRequestHandle<B> {
	/// The handle of a request the remote opened, open under `key`.
	pub(crate) fn new(shared: Arc<Shared<B>>, key: Key, header: MessageHeader) -> Self {
		let (request_id, service_id) = (header.request_id, header.service_id);
		Self { part: Part { shared, key, request_id, service_id, reader: true } }
	}

	/// The id the remote gave this request.
	pub fn request_id(&self) -> u32 {
		self.part.request_id
	}

	/// The service the remote asked for.
	pub fn service_id(&self) -> i32 {
		self.part.service_id
	}

	/// What is known about the remote.
	pub fn info(&self) -> &ConnectionInfo {
		self.part.info()
	}

	/// Wait until the connection this request lives on has ended.
	///
	/// Useful to give up on a request whose remote is gone without waiting to fail a send.
	pub async fn closed(&self) {
		self.part.closed().await
	}

	/// Whether the connection this request lives on has ended.
	pub fn is_closed(&self) -> bool {
		self.part.is_closed()
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
		self.part.shared.state().is_remote_finished()
	}

	/// A cloneable handle that sends updates and the response, so that another task can answer
	/// while this one receives. The request stays open (and unanswered) while any part lives.
	pub fn write_handle(&self) -> ReceivedRequestWriteHandle<B> {
		ReceivedRequestWriteHandle { part: self.part.write_part() }
	}

	/// Receive the next requester update.
	///
	/// `Ok(None)` once this side has sent the response. Cancel-safe.
	pub async fn recv_update(&mut self) -> Result<Option<Message<B>>, Error> {
		let part = &self.part;
		poll_fn(|cx| part.shared.state().poll_recv_received(part.key, cx.waker())).await
	}

	/// Send a responder update.
	pub async fn send_update(&self, service_id: i32, body: impl IntoBody<B>) -> Result<(), Error> {
		self.part.send(body.into_body(), |state, key, body| state.send_responder_update(key, service_id, body)).await
	}

	/// Send the response, closing the request. A second response fails with
	/// [`ErrorKind::RequestClosed`](crate::ErrorKind::RequestClosed).
	///
	/// Like every `send_*`, returns once the message is queued for writing; await
	/// [`PeerWriteHandle::flush`](crate::PeerWriteHandle::flush) to know it is written.
	pub async fn send_response(&self, service_id: i32, body: impl IntoBody<B>) -> Result<(), Error> {
		self.part.send(body.into_body(), |state, key, body| state.send_response(key, service_id, body)).await
	}

	/// Send an error response (service id -1, `text` as body), closing the request.
	pub async fn send_error_response(&self, text: &str) -> Result<(), Error> {
		self.part
			.send(B::from_error_text(text), |state, key, body| {
				state.send_response(key, crate::message::SERVICE_ID_ERROR, body)
			})
			.await
	}
}

/// Sends updates and the response for a [`ReceivedRequestHandle`]; cloneable, and keeps the
/// request open. See the guarantee on [`ReceivedRequestHandle`].
#[derive(Debug)]
pub struct ReceivedRequestWriteHandle<B: Body = bytes::Bytes> {
	part: Part<B>,
}

impl<B: Body> ReceivedRequestWriteHandle<B> {
	/// The id the remote gave this request.
	pub fn request_id(&self) -> u32 {
		self.part.request_id
	}

	/// The service the remote asked for.
	pub fn service_id(&self) -> i32 {
		self.part.service_id
	}

	/// Hold back the peer task's wake-up for queued messages; see
	/// [`PeerWriteHandle::hold_wakeups`](crate::PeerWriteHandle::hold_wakeups).
	pub fn hold_wakeups(&self) -> WakeupHold<B> {
		WakeupHold::new(&self.part.shared)
	}

	/// Wait until the connection this request lives on has ended.
	///
	/// Useful to give up on a request whose remote is gone without waiting to fail a send.
	pub async fn closed(&self) {
		self.part.closed().await
	}

	/// Whether the connection this request lives on has ended.
	pub fn is_closed(&self) -> bool {
		self.part.is_closed()
	}

	/// Send a responder update.
	pub async fn send_update(&self, service_id: i32, body: impl IntoBody<B>) -> Result<(), Error> {
		self.part.send(body.into_body(), |state, key, body| state.send_responder_update(key, service_id, body)).await
	}

	/// Send the response, closing the request.
	pub async fn send_response(&self, service_id: i32, body: impl IntoBody<B>) -> Result<(), Error> {
		self.part.send(body.into_body(), |state, key, body| state.send_response(key, service_id, body)).await
	}

	/// Send an error response (service id -1, `text` as body), closing the request.
	pub async fn send_error_response(&self, text: &str) -> Result<(), Error> {
		self.part
			.send(B::from_error_text(text), |state, key, body| {
				state.send_response(key, crate::message::SERVICE_ID_ERROR, body)
			})
			.await
	}
}

impl<B: Body> Clone for SentRequestWriteHandle<B> {
	fn clone(&self) -> Self {
		Self { part: self.part.write_part() }
	}
}

impl<B: Body> Clone for ReceivedRequestWriteHandle<B> {
	fn clone(&self) -> Self {
		Self { part: self.part.write_part() }
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
