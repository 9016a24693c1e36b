//! What a typed client sends through: one connection's write handle, or a reconnecting client.

use std::future::Future;

use super::TypedBody;
use crate::error::Error;
use crate::handle::{PeerWriteHandle, SentRequestHandle};
use crate::message::CloneBody;
use crate::reconnect::Reconnecting;

mod sealed {
	pub trait Sealed {}
	impl<B: super::TypedBody> Sealed for crate::PeerWriteHandle<B> {}
	impl<B: super::TypedBody + crate::message::CloneBody> Sealed for crate::Reconnecting<B> {}
}

/// Where a typed `Client` sends: a [`PeerWriteHandle`] (one connection) or a [`Reconnecting`]
/// client (whichever connection is live, reconnecting as needed), over any transport whose body
/// is a [`TypedBody`] (on seqpacket, typed values carry descriptors: see
/// [`Fd`](super::Fd)).
///
/// Through a `Reconnecting` client, a request or stream message that could not be queued
/// because the connection had ended is sent once more on a new connection (it never reached
/// the wire, so this cannot do anything twice); see [`Reconnecting::send_request`].
///
/// Sealed: the typed layer may add methods.
pub trait Sender: sealed::Sealed + Clone + Send + Sync + 'static {
	/// The body type of the connection.
	type Body: TypedBody;

	/// Open a request; returns once it is queued.
	fn send_request(
		&self,
		service_id: i32,
		body: Self::Body,
	) -> impl Future<Output = Result<SentRequestHandle<Self::Body>, Error>> + Send;

	/// Send a stream message; returns once it is queued.
	fn send_stream(&self, service_id: i32, body: Self::Body) -> impl Future<Output = Result<(), Error>> + Send;

	/// Wait until everything queued before has been written to the transport.
	fn flush(&self) -> impl Future<Output = Result<(), Error>> + Send;

	/// Flush what is queued, then close the connection.
	fn close(&self);

	/// Wait until the connection has ended.
	fn closed(&self) -> impl Future<Output = ()> + Send;
}

impl<B: TypedBody> Sender for PeerWriteHandle<B> {
	type Body = B;

	async fn send_request(&self, service_id: i32, body: B) -> Result<SentRequestHandle<B>, Error> {
		PeerWriteHandle::send_request(self, service_id, body).await
	}

	async fn send_stream(&self, service_id: i32, body: B) -> Result<(), Error> {
		PeerWriteHandle::send_stream(self, service_id, body).await
	}

	async fn flush(&self) -> Result<(), Error> {
		PeerWriteHandle::flush(self).await
	}

	fn close(&self) {
		PeerWriteHandle::close(self)
	}

	async fn closed(&self) {
		PeerWriteHandle::closed(self).await
	}
}

impl<B: TypedBody + CloneBody> Sender for Reconnecting<B> {
	type Body = B;

	async fn send_request(&self, service_id: i32, body: B) -> Result<SentRequestHandle<B>, Error> {
		Reconnecting::send_request(self, service_id, body).await
	}

	async fn send_stream(&self, service_id: i32, body: B) -> Result<(), Error> {
		Reconnecting::send_stream(self, service_id, body).await
	}

	async fn flush(&self) -> Result<(), Error> {
		Reconnecting::flush(self).await
	}

	fn close(&self) {
		Reconnecting::close(self)
	}

	async fn closed(&self) {
		Reconnecting::closed(self).await
	}
}
