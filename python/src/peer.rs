//! A connection and its requests: `Peer`, `SentRequest`, `ReceivedRequest`.
//!
//! One Python type per handle whatever the transport: each wraps an enum of the stream-transport
//! handle (`Bytes` bodies) and the seqpacket one (`UnixBody`: bytes and descriptors). Receiving
//! handles sit behind a tokio mutex, since receiving needs `&mut`; sending goes through the
//! cloneable write handles, so a pending receive never holds up a send.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use peerwire::{
	PeerReadHandle, PeerWriteHandle, ReceivedMessage, ReceivedRequestHandle, ReceivedRequestWriteHandle,
	SentRequestHandle, SentRequestWriteHandle, UnixBody,
};
use pyo3::exceptions::{PyStopAsyncIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use tokio::sync::Mutex;

use crate::bridge::{Hold, Home};
use crate::error::{remote_error, to_py};
use crate::message::{Info, RsMessage, body_from};
use crate::{future, send, timeout_from};

/// Run `$body` with `$h` bound to the inner handle of either transport.
macro_rules! either {
	($value:expr, $enum:ident, $h:ident => $body:expr) => {
		match $value {
			$enum::Stream($h) => $body,
			$enum::Seq($h) => $body,
		}
	};
}

/// A body ready to send: the bytes, and descriptors (already duplicated, owned).
pub struct OutBody {
	pub data: Bytes,
	pub fds: Vec<OwnedFd>,
}

impl OutBody {
	/// The body from Python arguments, refusing descriptors on a transport that cannot carry them.
	pub fn from_args(body: &Bound<'_, PyAny>, fds: Option<&Bound<'_, PyAny>>, seqpacket: bool) -> PyResult<Self> {
		let data = body_from(body, "body")?;
		let has_fds = fds.is_some_and(|fds| !fds.is_none());
		if has_fds && !seqpacket {
			// Checked before duplicating anything, so nothing needs closing.
			let given = fds.map(|fds| fds.len().unwrap_or(1)).unwrap_or(0);
			if given > 0 {
				return Err(PyValueError::new_err(
					"fds need a seqpacket:// connection: only Unix seqpacket sockets carry descriptors",
				));
			}
		}
		let fds = crate::fd::from_args(fds)?;
		Ok(Self { data, fds })
	}

	fn stream(self) -> Bytes {
		self.data
	}

	fn unix(self) -> UnixBody {
		UnixBody::new(self.data, self.fds)
	}
}

pub enum ReadH {
	Stream(PeerReadHandle<Bytes>),
	Seq(PeerReadHandle<UnixBody>),
}

#[derive(Clone)]
pub enum WriteH {
	Stream(PeerWriteHandle<Bytes>),
	Seq(PeerWriteHandle<UnixBody>),
}

impl WriteH {
	/// A hold on the peer task's wake-up, for a peer task on the runtime (seqpacket); a
	/// loop-driven peer task needs none (see `bridge`).
	fn hold(&self) -> Option<Hold> {
		match self {
			WriteH::Stream(_) => None,
			WriteH::Seq(h) => Some(Box::new(h.hold_wakeups())),
		}
	}
}

enum SentH {
	Stream(SentRequestHandle<Bytes>),
	Seq(SentRequestHandle<UnixBody>),
}

#[derive(Clone)]
enum SentW {
	Stream(SentRequestWriteHandle<Bytes>),
	Seq(SentRequestWriteHandle<UnixBody>),
}

impl SentW {
	/// A hold on the peer task's wake-up, for a peer task on the runtime (seqpacket); a
	/// loop-driven peer task needs none (see `bridge`).
	fn hold(&self) -> Option<Hold> {
		match self {
			SentW::Stream(_) => None,
			SentW::Seq(h) => Some(Box::new(h.hold_wakeups())),
		}
	}
}

enum RecvH {
	Stream(ReceivedRequestHandle<Bytes>),
	Seq(ReceivedRequestHandle<UnixBody>),
}

#[derive(Clone)]
enum RecvW {
	Stream(ReceivedRequestWriteHandle<Bytes>),
	Seq(ReceivedRequestWriteHandle<UnixBody>),
}

impl RecvW {
	/// A hold on the peer task's wake-up, for a peer task on the runtime (seqpacket); a
	/// loop-driven peer task needs none (see `bridge`).
	fn hold(&self) -> Option<Hold> {
		match self {
			RecvW::Stream(_) => None,
			RecvW::Seq(h) => Some(Box::new(h.hold_wakeups())),
		}
	}
}

/// Send `$out` (an `OutBody`) through `$call` on a handle of either transport.
macro_rules! send_on {
	($handle:expr, $enum:ident, |$h:ident, $b:ident| $call:expr, $out:expr) => {
		match $handle {
			$enum::Stream($h) => {
				let $b = $out.stream();
				$call
			},
			$enum::Seq($h) => {
				let $b = $out.unix();
				$call
			},
		}
	};
}

/// A connection to a remote peer.
///
/// Made by `peerwire.connect()` or accepted by a `Listener`. The connection stays up while this
/// object or any request of it lives; `close()` ends it, and so does `async with`. A tcp:// or
/// unix:// connection runs on the event loop it was made or accepted on (see `bridge`).
#[pyclass(module = "peerwire", frozen)]
pub struct Peer {
	read: Arc<Mutex<ReadH>>,
	write: WriteH,
	info: Py<Info>,
	/// The loop whose thread runs the connection (TCP and Unix stream), or `None` for a peer task
	/// on the runtime (seqpacket).
	home: Option<Home>,
}

impl Peer {
	pub fn new(
		py: Python<'_>,
		read: ReadH,
		write: WriteH,
		info: &peerwire::ConnectionInfo,
		home: Option<Home>,
	) -> PyResult<Self> {
		Ok(Self { read: Arc::new(Mutex::new(read)), write, info: Py::new(py, Info::new(info))?, home })
	}

	fn seqpacket(&self) -> bool {
		matches!(self.write, WriteH::Seq(_))
	}
}

/// A new peer from the two halves of a `PeerHandle`, for the conversion under the GIL.
pub struct NewPeer {
	pub read: ReadH,
	pub write: WriteH,
	pub info: peerwire::ConnectionInfo,
	pub home: Option<Home>,
}

impl<'py> IntoPyObject<'py> for NewPeer {
	type Target = Peer;
	type Output = Bound<'py, Peer>;
	type Error = PyErr;

	fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, Peer>> {
		Bound::new(py, Peer::new(py, self.read, self.write, &self.info, self.home)?)
	}
}

/// What `recv_message` hands over: a request or a stream message.
enum Received {
	Request(RsRequest),
	Stream(RsMessage),
}

impl<'py> IntoPyObject<'py> for Received {
	type Target = PyAny;
	type Output = Bound<'py, PyAny>;
	type Error = PyErr;

	fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
		match self {
			Received::Request(request) => Ok(request.into_pyobject(py)?.into_any()),
			Received::Stream(message) => Ok(message.into_pyobject(py)?.into_any()),
		}
	}
}

async fn recv_message(read: Arc<Mutex<ReadH>>, home: Option<Home>) -> Result<Received, peerwire::Error> {
	let mut read = read.lock().await;
	Ok(match &mut *read {
		ReadH::Stream(handle) => match handle.recv_message().await? {
			ReceivedMessage::Request(request, body) => Received::Request(RsRequest::stream(request, body, home)),
			ReceivedMessage::Stream(message) => Received::Stream(RsMessage::from_bytes(message)),
		},
		ReadH::Seq(handle) => match handle.recv_message().await? {
			ReceivedMessage::Request(request, body) => Received::Request(RsRequest::seq(request, body, home)),
			ReceivedMessage::Stream(message) => Received::Stream(RsMessage::from_unix(message)),
		},
	})
}

#[pymethods]
impl Peer {
	/// Send a request; returns a `SentRequest` once it is queued.
	#[pyo3(signature = (service_id, body = None, *, fds = None))]
	fn send_request<'py>(
		&self,
		py: Python<'py>,
		service_id: i64,
		body: Option<&Bound<'py, PyAny>>,
		fds: Option<&Bound<'py, PyAny>>,
	) -> PyResult<Bound<'py, PyAny>> {
		let service_id = crate::service_id_from(service_id)?;
		let out = out_body(py, body, fds, self.seqpacket())?;
		let write = self.write.clone();
		let home = self.home.clone();
		send(py, self.home.as_ref(), || self.write.hold(), async move {
			Ok(match write {
				WriteH::Stream(h) => {
					let request = h.send_request(service_id, out.stream()).await.map_err(to_py)?;
					let write = SentW::Stream(request.write_handle());
					NewSent { handle: SentH::Stream(request), write, home }
				},
				WriteH::Seq(h) => {
					let request = h.send_request(service_id, out.unix()).await.map_err(to_py)?;
					let write = SentW::Seq(request.write_handle());
					NewSent { handle: SentH::Seq(request), write, home }
				},
			})
		})
	}

	/// Send a one-way stream message; returns once it is queued.
	#[pyo3(signature = (service_id, body = None, *, fds = None))]
	fn send_stream<'py>(
		&self,
		py: Python<'py>,
		service_id: i64,
		body: Option<&Bound<'py, PyAny>>,
		fds: Option<&Bound<'py, PyAny>>,
	) -> PyResult<Bound<'py, PyAny>> {
		let service_id = crate::service_id_from(service_id)?;
		let out = out_body(py, body, fds, self.seqpacket())?;
		let write = self.write.clone();
		send(py, self.home.as_ref(), || self.write.hold(), async move {
			send_on!(write, WriteH, |h, b| h.send_stream(service_id, b).await.map_err(to_py), out)
		})
	}

	/// Receive the next request (a `ReceivedRequest`) or stream message (a `Message`) from the
	/// remote. `ConnectionClosed` once the connection has ended and everything before was taken.
	fn recv_message<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
		let read = self.read.clone();
		let home = self.home.clone();
		future(py, self.home.as_ref(), async move { recv_message(read, home).await.map_err(to_py) })
	}

	fn __aiter__(slf: Py<Self>) -> Py<Self> {
		slf
	}

	/// `async for message in peer`: every request and stream message, ending quietly when the
	/// connection is closed by either side in an orderly way.
	fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
		let read = self.read.clone();
		let home = self.home.clone();
		future(py, self.home.as_ref(), async move {
			match recv_message(read, home).await {
				Ok(received) => Ok(received),
				Err(error) if error.is_closed_by_remote() || error.is_closed_locally() => {
					Err(PyStopAsyncIteration::new_err(()))
				},
				Err(error) => Err(to_py(error)),
			}
		})
	}

	/// Wait until everything queued so far is written to the socket.
	fn flush<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
		let write = self.write.clone();
		future(py, self.home.as_ref(), async move { either!(write, WriteH, h => h.flush().await.map_err(to_py)) })
	}

	/// Flush what is queued, then close the connection. Open requests fail with `ConnectionClosed`.
	fn close(&self) {
		either!(&self.write, WriteH, h => h.close())
	}

	/// Wait until the connection has ended.
	fn wait_closed<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
		let write = self.write.clone();
		future(py, self.home.as_ref(), async move {
			either!(write, WriteH, h => h.closed().await);
			Ok(())
		})
	}

	/// Whether the connection has ended.
	#[getter]
	fn is_closed(&self) -> bool {
		either!(&self.write, WriteH, h => h.is_closed())
	}

	/// What is known about the remote: `address`, or `uid`, `gid` and `pid` on Unix sockets.
	#[getter]
	fn info(&self, py: Python<'_>) -> Py<Info> {
		self.info.clone_ref(py)
	}

	/// Whether this connection carries descriptors (a `seqpacket://` connection).
	#[getter]
	fn carries_fds(&self) -> bool {
		self.seqpacket()
	}

	fn __aenter__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
		let py = slf.py();
		let home = slf.get().home.clone();
		let this = slf.unbind();
		future(py, home.as_ref(), async move { Ok(this) })
	}

	#[pyo3(signature = (*_args))]
	fn __aexit__<'py>(&self, py: Python<'py>, _args: &Bound<'py, pyo3::types::PyTuple>) -> PyResult<Bound<'py, PyAny>> {
		self.close();
		let write = self.write.clone();
		future(py, self.home.as_ref(), async move {
			either!(write, WriteH, h => h.closed().await);
			Ok(false)
		})
	}

	fn __repr__(&self, py: Python<'_>) -> String {
		format!("<peerwire.Peer {}>", self.info.bind(py).str().map(|s| s.to_string()).unwrap_or_default())
	}
}

fn out_body(
	py: Python<'_>,
	body: Option<&Bound<'_, PyAny>>,
	fds: Option<&Bound<'_, PyAny>>,
	seqpacket: bool,
) -> PyResult<OutBody> {
	match body {
		Some(body) => OutBody::from_args(body, fds, seqpacket),
		None => OutBody::from_args(PyBytes::new(py, b"").as_any(), fds, seqpacket),
	}
}

struct NewSent {
	handle: SentH,
	write: SentW,
	home: Option<Home>,
}

impl<'py> IntoPyObject<'py> for NewSent {
	type Target = SentRequest;
	type Output = Bound<'py, SentRequest>;
	type Error = PyErr;

	fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, SentRequest>> {
		let (request_id, service_id) = either!(&self.handle, SentH, h => (h.request_id(), h.service_id()));
		Bound::new(
			py,
			SentRequest {
				handle: Arc::new(Mutex::new(self.handle)),
				write: self.write,
				request_id,
				service_id,
				home: self.home,
			},
		)
	}
}

/// A request this side sent: receive the responder's updates and the response, send updates.
///
/// Dropping it (every reference gone) forgets the request, as in Rust: late messages for it are
/// dropped quietly. If the connection ends first, every receive raises `ConnectionClosed`.
#[pyclass(module = "peerwire", frozen)]
pub struct SentRequest {
	handle: Arc<Mutex<SentH>>,
	write: SentW,
	/// The id of this request.
	#[pyo3(get)]
	request_id: u32,
	/// The service this request was sent for.
	#[pyo3(get)]
	service_id: i32,
	/// Its connection's loop (see `Peer::home`).
	home: Option<Home>,
}

async fn sent_recv_update(handle: Arc<Mutex<SentH>>) -> Result<Option<RsMessage>, peerwire::Error> {
	let mut handle = handle.lock().await;
	Ok(match &mut *handle {
		SentH::Stream(h) => h.recv_update().await?.map(RsMessage::from_bytes),
		SentH::Seq(h) => h.recv_update().await?.map(RsMessage::from_unix),
	})
}

async fn sent_recv_response(
	handle: Arc<Mutex<SentH>>,
	timeout: Option<Duration>,
) -> Result<RsMessage, peerwire::Error> {
	let mut handle = handle.lock().await;
	match (&mut *handle, timeout) {
		(SentH::Stream(h), None) => h.recv_response().await.map(RsMessage::from_bytes),
		(SentH::Stream(h), Some(t)) => h.recv_response_timeout(t).await.map(RsMessage::from_bytes),
		(SentH::Seq(h), None) => h.recv_response().await.map(RsMessage::from_unix),
		(SentH::Seq(h), Some(t)) => h.recv_response_timeout(t).await.map(RsMessage::from_unix),
	}
}

#[pymethods]
impl SentRequest {
	/// The next responder update, or `None` once the response has arrived.
	fn recv_update<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
		let handle = self.handle.clone();
		future(py, self.home.as_ref(), async move { sent_recv_update(handle).await.map_err(to_py) })
	}

	fn __aiter__(slf: Py<Self>) -> Py<Self> {
		slf
	}

	/// `async for update in request`: the responder updates until the response.
	fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
		let handle = self.handle.clone();
		future(py, self.home.as_ref(), async move {
			match sent_recv_update(handle).await.map_err(to_py)? {
				Some(update) => Ok(update),
				None => Err(PyStopAsyncIteration::new_err(())),
			}
		})
	}

	/// The response (updates not yet taken are skipped). An error response is returned as a
	/// `Message` with `is_error`; `recv_response_ok` raises it instead. With `timeout` (seconds),
	/// `Timeout` if it has not arrived by then; the request stays open.
	#[pyo3(signature = (timeout = None))]
	fn recv_response<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
		let timeout = timeout_from(timeout)?;
		let handle = self.handle.clone();
		future(py, self.home.as_ref(), async move { sent_recv_response(handle, timeout).await.map_err(to_py) })
	}

	/// The response, or `RemoteError` (with the remote's `text`) for an error response.
	#[pyo3(signature = (timeout = None))]
	fn recv_response_ok<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
		let timeout = timeout_from(timeout)?;
		let handle = self.handle.clone();
		future(py, self.home.as_ref(), async move {
			let response = sent_recv_response(handle, timeout).await.map_err(to_py)?;
			if response.is_error() {
				return Err(remote_error(response.service_id, &response.error_text()));
			}
			Ok(response)
		})
	}

	/// Send a requester update; returns once it is queued.
	#[pyo3(signature = (service_id, body = None, *, fds = None))]
	fn send_update<'py>(
		&self,
		py: Python<'py>,
		service_id: i64,
		body: Option<&Bound<'py, PyAny>>,
		fds: Option<&Bound<'py, PyAny>>,
	) -> PyResult<Bound<'py, PyAny>> {
		let service_id = crate::service_id_from(service_id)?;
		let out = out_body(py, body, fds, matches!(self.write, SentW::Seq(_)))?;
		let write = self.write.clone();
		send(py, self.home.as_ref(), || self.write.hold(), async move {
			send_on!(write, SentW, |h, b| h.send_update(service_id, b).await.map_err(to_py), out)
		})
	}

	fn __repr__(&self) -> String {
		format!("<peerwire.SentRequest request_id={} service_id={}>", self.request_id, self.service_id)
	}
}

/// A received request before it meets Python.
pub struct RsRequest {
	handle: RecvH,
	write: RecvW,
	body: RsMessage,
	home: Option<Home>,
}

impl RsRequest {
	fn stream(handle: ReceivedRequestHandle<Bytes>, body: Bytes, home: Option<Home>) -> Self {
		let message = peerwire::Message::request(handle.request_id(), handle.service_id(), body);
		let write = RecvW::Stream(handle.write_handle());
		Self { handle: RecvH::Stream(handle), write, body: RsMessage::from_bytes(message), home }
	}

	fn seq(handle: ReceivedRequestHandle<UnixBody>, body: UnixBody, home: Option<Home>) -> Self {
		let message = peerwire::Message::request(handle.request_id(), handle.service_id(), body);
		let write = RecvW::Seq(handle.write_handle());
		Self { handle: RecvH::Seq(handle), write, body: RsMessage::from_unix(message), home }
	}
}

impl<'py> IntoPyObject<'py> for RsRequest {
	type Target = ReceivedRequest;
	type Output = Bound<'py, ReceivedRequest>;
	type Error = PyErr;

	fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, ReceivedRequest>> {
		let request_id = self.body.request_id;
		let service_id = self.body.service_id;
		let body = PyBytes::new(py, &self.body.data).unbind();
		let fds = crate::fd::to_list(py, self.body.fds)?.unbind();
		Bound::new(
			py,
			ReceivedRequest {
				handle: Arc::new(Mutex::new(self.handle)),
				write: self.write,
				request_id,
				service_id,
				body,
				fds,
				home: self.home,
			},
		)
	}
}

/// A request the remote sent: answer it with `send_response` or `send_error`, send updates,
/// receive the requester's updates.
///
/// Dropped without an answer (every reference gone, for example when the task handling it is
/// cancelled), it answers with an automatic error response, as in Rust: the remote never waits
/// forever.
#[pyclass(module = "peerwire", frozen)]
pub struct ReceivedRequest {
	handle: Arc<Mutex<RecvH>>,
	write: RecvW,
	/// The id of this request.
	#[pyo3(get)]
	request_id: u32,
	/// The service asked for.
	#[pyo3(get)]
	service_id: i32,
	/// The request's body.
	#[pyo3(get)]
	body: Py<PyBytes>,
	/// The descriptors that came with the request (seqpacket only), owned by this list.
	#[pyo3(get)]
	fds: Py<PyList>,
	/// Its connection's loop (see `Peer::home`).
	home: Option<Home>,
}

async fn recv_recv_update(handle: Arc<Mutex<RecvH>>) -> Result<Option<RsMessage>, peerwire::Error> {
	let mut handle = handle.lock().await;
	Ok(match &mut *handle {
		RecvH::Stream(h) => h.recv_update().await?.map(RsMessage::from_bytes),
		RecvH::Seq(h) => h.recv_update().await?.map(RsMessage::from_unix),
	})
}

#[pymethods]
impl ReceivedRequest {
	/// `"request"`, for symmetry with `Message.kind`.
	#[getter]
	fn kind(&self) -> &'static str {
		"request"
	}

	/// The next requester update, or `None` once this side has sent the response.
	fn recv_update<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
		let handle = self.handle.clone();
		future(py, self.home.as_ref(), async move { recv_recv_update(handle).await.map_err(to_py) })
	}

	fn __aiter__(slf: Py<Self>) -> Py<Self> {
		slf
	}

	/// `async for update in request`: the requester updates until this side responds.
	fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
		let handle = self.handle.clone();
		future(py, self.home.as_ref(), async move {
			match recv_recv_update(handle).await.map_err(to_py)? {
				Some(update) => Ok(update),
				None => Err(PyStopAsyncIteration::new_err(())),
			}
		})
	}

	/// Send a responder update; returns once it is queued.
	#[pyo3(signature = (service_id, body = None, *, fds = None))]
	fn send_update<'py>(
		&self,
		py: Python<'py>,
		service_id: i64,
		body: Option<&Bound<'py, PyAny>>,
		fds: Option<&Bound<'py, PyAny>>,
	) -> PyResult<Bound<'py, PyAny>> {
		let service_id = crate::service_id_from(service_id)?;
		let out = out_body(py, body, fds, matches!(self.write, RecvW::Seq(_)))?;
		let write = self.write.clone();
		send(py, self.home.as_ref(), || self.write.hold(), async move {
			send_on!(write, RecvW, |h, b| h.send_update(service_id, b).await.map_err(to_py), out)
		})
	}

	/// Send the response (service id 0 or positive for success), closing the request.
	#[pyo3(signature = (service_id, body = None, *, fds = None))]
	fn send_response<'py>(
		&self,
		py: Python<'py>,
		service_id: i64,
		body: Option<&Bound<'py, PyAny>>,
		fds: Option<&Bound<'py, PyAny>>,
	) -> PyResult<Bound<'py, PyAny>> {
		let service_id = crate::service_id_from(service_id)?;
		let out = out_body(py, body, fds, matches!(self.write, RecvW::Seq(_)))?;
		let write = self.write.clone();
		send(py, self.home.as_ref(), || self.write.hold(), async move {
			send_on!(write, RecvW, |h, b| h.send_response(service_id, b).await.map_err(to_py), out)
		})
	}

	/// Send an error response (service id -1) with `text`, closing the request.
	fn send_error<'py>(&self, py: Python<'py>, text: String) -> PyResult<Bound<'py, PyAny>> {
		let write = self.write.clone();
		send(py, self.home.as_ref(), || self.write.hold(), async move {
			either!(write, RecvW, h => h.send_error_response(&text).await.map_err(to_py))
		})
	}

	fn __repr__(&self) -> String {
		format!("<peerwire.ReceivedRequest request_id={} service_id={}>", self.request_id, self.service_id)
	}
}
