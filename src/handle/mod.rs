//! The handles applications hold: the peer handle with its read and write halves, and a handle
//! per open request (see [`request`]).

use std::sync::Arc;

use tokio::sync::{Semaphore, SemaphorePermit, TryAcquireError, mpsc};

use crate::error::Error;
use crate::message::{Body, IntoBody, Message};
use crate::peer::{Command, IncomingReceiver, Shared};
use crate::transport::ConnectionInfo;

mod request;

pub use request::{
	BUSY_TEXT, DROPPED_REQUEST_TEXT, ReceivedRequestHandle, ReceivedRequestWriteHandle, SentRequestHandle,
	SentRequestWriteHandle,
};

/// The connection to the peer task that every handle holds. While any link exists (other than
/// the peer's own weak one), the peer keeps running.
pub(crate) struct Link<B> {
	commands: mpsc::UnboundedSender<Command<B>>,
	pub(crate) shared: Arc<Shared<B>>,
}

impl<B> Clone for Link<B> {
	fn clone(&self) -> Self {
		Self { commands: self.commands.clone(), shared: self.shared.clone() }
	}
}

/// A reserved place in the write queue, and room for the message's bytes: sending through it
/// cannot wait any more, so everything after `reserve(..).await` is cancel-safe. Dropped unused,
/// it gives both back.
pub(crate) struct Reservation<'a, B> {
	link: &'a Link<B>,
	permit: SemaphorePermit<'a>,
	bytes: SemaphorePermit<'a>,
}

/// Take `n` permits from `semaphore`, without the machinery of a future that may wait when
/// there is room (the common case).
async fn acquire(semaphore: &Semaphore, n: u32) -> Result<SemaphorePermit<'_>, ()> {
	match semaphore.try_acquire_many(n) {
		Ok(permit) => Ok(permit),
		Err(TryAcquireError::Closed) => Err(()),
		Err(TryAcquireError::NoPermits) => semaphore.acquire_many(n).await.map_err(drop),
	}
}

impl<B: Body> Link<B> {
	pub(crate) fn new(commands: mpsc::UnboundedSender<Command<B>>, shared: Arc<Shared<B>>) -> Self {
		Self { commands, shared }
	}

	pub(crate) fn downgrade(&self) -> mpsc::WeakUnboundedSender<Command<B>> {
		self.commands.downgrade()
	}

	pub(crate) fn closed_error(&self) -> Error {
		self.shared.closed_error()
	}

	/// Check a message against this side's write limits before it is queued.
	pub(crate) fn check(&self, body: &B) -> Result<(), Error> {
		if body.len() > self.shared.max_body_len_write {
			return Err(Error::body_too_large(body.len(), self.shared.max_body_len_write));
		}
		if body.fd_count() > self.shared.max_fds_write {
			return Err(Error::too_many_fds(body.fd_count(), self.shared.max_fds_write));
		}
		Ok(())
	}

	/// Wait for room in the write queue for one message with a body of `body_len` bytes: a place
	/// in the queue (`Config::write_queue`) and its bytes (`Config::max_buffered_outgoing`).
	pub(crate) async fn reserve(&self, body_len: usize) -> Result<Reservation<'_, B>, Error> {
		let permit = acquire(&self.shared.write_permits, 1).await.map_err(|()| self.closed_error())?;
		let cost = self.shared.outgoing_cost(body_len);
		let bytes = acquire(&self.shared.write_bytes, cost).await.map_err(|()| self.closed_error())?;
		Ok(Reservation { link: self, permit, bytes })
	}

	/// Check and queue a message, waiting for room if the queue is full.
	pub(crate) async fn send(&self, message: Message<B>) -> Result<(), Error> {
		self.check(&message.body)?;
		self.reserve(message.body.len()).await?.send(message)
	}

	/// Queue a message without a write-queue permit. Only for messages whose number is bounded
	/// by something else (the error response of a dropped request: at most one per open request).
	pub(crate) fn send_unmetered(&self, message: Message<B>) -> Result<(), Error> {
		self.shared.unmetered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
		self.commands.send(Command::Send { message, metered: false, cost: 0 }).map_err(|_| {
			self.shared.unmetered.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
			self.closed_error()
		})
	}

	/// Wait until everything queued before this call has been written to the transport.
	pub(crate) async fn flush(&self) -> Result<(), Error> {
		let (done, written) = tokio::sync::oneshot::channel();
		self.commands.send(Command::Flush(done)).map_err(|_| self.closed_error())?;
		written.await.map_err(|_| self.closed_error())
	}

	/// Ask the peer to flush what is queued and close the connection.
	pub(crate) fn close(&self) {
		self.shared.request_close();
	}
}

impl<B> Reservation<'_, B> {
	/// Queue the message; its permits now travel with it and the peer gives them back once the
	/// transport has taken the message.
	pub(crate) fn send(self, message: Message<B>) -> Result<(), Error>
	where
		B: Body,
	{
		let cost = self.bytes.num_permits() as u32;
		self.permit.forget();
		self.bytes.forget();
		self.link.commands.send(Command::Send { message, metered: true, cost }).map_err(|_| self.link.closed_error())
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
	pub(crate) fn new(incoming: IncomingReceiver<B>, link: Link<B>) -> Self {
		Self { read: PeerReadHandle { incoming, link: link.clone() }, write: PeerWriteHandle { link } }
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
	pub async fn send_stream(&self, service_id: i32, body: impl IntoBody<B>) -> Result<(), Error> {
		self.write.send_stream(service_id, body).await
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

	/// Wait until the connection has ended. See [`PeerWriteHandle::closed`].
	pub async fn closed(&self) {
		self.write.closed().await
	}
}

/// The receiving half of a [`PeerHandle`].
///
/// Holds the queue of incoming requests and stream messages. If it is dropped while the
/// connection stays up, requests from the remote are answered with an error response and stream
/// messages are discarded.
#[derive(Debug)]
pub struct PeerReadHandle<B: Body = bytes::Bytes> {
	incoming: IncomingReceiver<B>,
	link: Link<B>,
}

impl<B: Body> PeerReadHandle<B> {
	/// Receive the next request or stream message from the remote.
	///
	/// Cancel-safe. Fails with [`ErrorKind::ConnectionClosed`](crate::ErrorKind::ConnectionClosed)
	/// once the connection has ended and everything received before has been taken.
	pub async fn recv_message(&mut self) -> Result<ReceivedMessage<B>, Error> {
		self.incoming.recv().await.map(|charged| charged.item).ok_or_else(|| self.link.closed_error())
	}

	/// Flush what is queued, then close the connection.
	pub fn close(&self) {
		self.link.close()
	}

	/// What is known about the remote.
	pub fn info(&self) -> &ConnectionInfo {
		&self.link.shared.info
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
		let body = body.into_body();
		self.link.check(&body)?;
		let reservation = self.link.reserve(body.len()).await?;
		// From here on nothing waits: the request is opened and queued, or neither.
		SentRequestHandle::open(&self.link, reservation, service_id, body)
	}

	/// Send a one-way stream message (request id 0).
	///
	/// Returns once the message is queued for writing, waiting first if the write queue is
	/// full; the peer task writes it soon after. It is not on the wire yet: a process that exits
	/// (or a runtime that shuts down) right after may lose it. Await [`flush`](Self::flush) first
	/// when that matters, for example for a last command before exit.
	pub async fn send_stream(&self, service_id: i32, body: impl IntoBody<B>) -> Result<(), Error> {
		self.link.send(Message::stream(0, service_id, body)).await
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
		self.link.flush().await
	}

	/// Flush what is queued, then close the connection.
	///
	/// Messages queued before the close are written; sends after it fail. Every open request
	/// handle then fails with a connection error.
	pub fn close(&self) {
		self.link.close()
	}

	/// What is known about the remote.
	pub fn info(&self) -> &ConnectionInfo {
		&self.link.shared.info
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

impl<B> std::fmt::Debug for Link<B> {
	fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
		f.debug_struct("Link").field("remote", &self.shared.info.remote_address).finish_non_exhaustive()
	}
}

impl<B: Body> Clone for PeerWriteHandle<B> {
	fn clone(&self) -> Self {
		Self { link: self.link.clone() }
	}
}
