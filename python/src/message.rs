//! Messages as Python sees them, bodies from Python arguments, and what is known of a remote.

use std::os::fd::OwnedFd;

use bytes::Bytes;
use peerwire::message::MessageType;
use peerwire::{ConnectionInfo, UnixBody};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyString};

/// A message received: an update, a response or a stream message.
#[pyclass(module = "peerwire", frozen)]
pub struct Message {
	kind: &'static str,
	/// The request id (meaningless for stream messages).
	#[pyo3(get)]
	request_id: u32,
	/// The service id: of the stream message, the update kind, or the result of a response
	/// (negative for an error response).
	#[pyo3(get)]
	service_id: i32,
	/// The body.
	#[pyo3(get)]
	body: Py<PyBytes>,
	/// The descriptors that came with it (seqpacket only), as `Fd` objects owned by this list.
	#[pyo3(get)]
	fds: Py<PyList>,
}

#[pymethods]
impl Message {
	/// `"request"`, `"response"`, `"requester_update"`, `"responder_update"` or `"stream"`.
	#[getter]
	fn kind(&self) -> &'static str {
		self.kind
	}

	/// Whether this is an error response (a response with a negative service id).
	#[getter]
	fn is_error(&self) -> bool {
		self.kind == "response" && self.service_id < 0
	}

	/// The text of an error response (the body as UTF-8, invalid bytes replaced), else `None`.
	#[getter]
	fn error_text(&self, py: Python<'_>) -> Option<String> {
		self.is_error().then(|| String::from_utf8_lossy(self.body.as_bytes(py)).into_owned())
	}

	/// This message if it is not an error response; `RemoteError` with the remote's text if it is.
	fn ok(slf: Py<Self>, py: Python<'_>) -> PyResult<Py<Self>> {
		let this = slf.get();
		if this.is_error() {
			let text = String::from_utf8_lossy(this.body.as_bytes(py)).into_owned();
			return Err(crate::error::remote_error(this.service_id, &text));
		}
		Ok(slf)
	}

	fn __repr__(&self, py: Python<'_>) -> String {
		format!(
			"<peerwire.Message {} request_id={} service_id={} body={} fds={}>",
			self.kind,
			self.request_id,
			self.service_id,
			self.body.bind(py).repr().map(|repr| repr.to_string()).unwrap_or_default(),
			self.fds.bind(py).len()
		)
	}
}

/// A received message before it meets Python: built on a runtime thread, turned into a
/// `Message` where the GIL is held.
pub struct RsMessage {
	pub kind: MessageType,
	pub request_id: u32,
	pub service_id: i32,
	pub data: Bytes,
	pub fds: Vec<OwnedFd>,
}

impl RsMessage {
	pub fn from_bytes(message: peerwire::Message<Bytes>) -> Self {
		let header = message.header;
		Self {
			kind: header.message_type,
			request_id: header.request_id,
			service_id: header.service_id,
			data: message.body,
			fds: Vec::new(),
		}
	}

	pub fn from_unix(message: peerwire::Message<UnixBody>) -> Self {
		let header = message.header;
		Self {
			kind: header.message_type,
			request_id: header.request_id,
			service_id: header.service_id,
			data: message.body.data,
			fds: message.body.fds,
		}
	}

	pub fn is_error(&self) -> bool {
		self.kind == MessageType::Response && self.service_id < 0
	}

	pub fn error_text(&self) -> String {
		String::from_utf8_lossy(&self.data).into_owned()
	}
}

pub fn kind_name(kind: MessageType) -> &'static str {
	match kind {
		MessageType::Request => "request",
		MessageType::Response => "response",
		MessageType::RequesterUpdate => "requester_update",
		MessageType::ResponderUpdate => "responder_update",
		MessageType::Stream => "stream",
	}
}

impl<'py> IntoPyObject<'py> for RsMessage {
	type Target = Message;
	type Output = Bound<'py, Message>;
	type Error = PyErr;

	fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, Message>> {
		let fds = crate::fd::to_list(py, self.fds)?.unbind();
		Bound::new(
			py,
			Message {
				kind: kind_name(self.kind),
				request_id: self.request_id,
				service_id: self.service_id,
				body: PyBytes::new(py, &self.data).unbind(),
				fds,
			},
		)
	}
}

/// A body given by Python: `bytes`, `bytearray`, `memoryview` (or any contiguous buffer) or `str`
/// (sent as UTF-8). Copied once.
pub fn body_from(value: &Bound<'_, PyAny>, what: &str) -> PyResult<Bytes> {
	if let Ok(bytes) = value.cast::<PyBytes>() {
		return Ok(Bytes::copy_from_slice(bytes.as_bytes()));
	}
	if let Ok(text) = value.cast::<PyString>() {
		return Ok(Bytes::copy_from_slice(text.to_str()?.as_bytes()));
	}
	if let Ok(array) = value.cast::<PyByteArray>() {
		return Ok(Bytes::from(array.to_vec()));
	}
	if let Ok(buffer) = PyBuffer::<u8>::get(value) {
		return Ok(Bytes::from(buffer.to_vec(value.py())?));
	}
	let type_name = value.get_type().name().map(|name| name.to_string()).unwrap_or_else(|_| "?".to_string());
	Err(PyTypeError::new_err(format!("{what} must be bytes, bytearray, memoryview or str, not {type_name}")))
}

/// What is known about the remote of a connection.
#[pyclass(module = "peerwire", frozen)]
pub struct Info {
	/// `tcp://HOST:PORT` or `unix:///PATH` where the transport knows an address, else `None`.
	#[pyo3(get)]
	address: Option<String>,
	/// The remote process's user id (Unix sockets), else `None`.
	#[pyo3(get)]
	uid: Option<u32>,
	/// The remote process's group id (Unix sockets), else `None`.
	#[pyo3(get)]
	gid: Option<u32>,
	/// The remote process's id (Unix sockets), else `None`.
	#[pyo3(get)]
	pid: Option<i32>,
	text: String,
}

impl Info {
	pub fn new(info: &ConnectionInfo) -> Self {
		let address = match &info.remote_address {
			Some(peerwire::RemoteAddress::Unix(None)) | None => None,
			Some(address) => Some(address.to_string()),
		};
		Self {
			address,
			uid: info.credentials.map(|c| c.uid),
			gid: info.credentials.map(|c| c.gid),
			pid: info.credentials.and_then(|c| c.pid),
			text: info.to_string(),
		}
	}
}

#[pymethods]
impl Info {
	fn __repr__(&self) -> String {
		format!("<peerwire.Info {}>", self.text)
	}

	fn __str__(&self) -> String {
		self.text.clone()
	}
}
