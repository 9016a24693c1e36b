//! The exceptions of the module, one per `peerwire::ErrorKind`, and the conversion to them.

use pyo3::exceptions::PyException;
use pyo3::prelude::*;

pyo3::create_exception!(peerwire, PeerwireError, PyException, "The base class of every peerwire error.");
pyo3::create_exception!(
	peerwire,
	ConnectionClosed,
	PeerwireError,
	"The connection is closed (by the remote, locally, or after an error). Every open request of a connection that ends fails with it."
);
pyo3::create_exception!(
	peerwire,
	IoError,
	PeerwireError,
	"An error from the operating system; `errno` holds its number when known."
);
pyo3::create_exception!(peerwire, ProtocolError, PeerwireError, "The remote broke the protocol.");
pyo3::create_exception!(peerwire, BodyTooLarge, PeerwireError, "A body is larger than the configured limit.");
pyo3::create_exception!(
	peerwire,
	TooManyFds,
	PeerwireError,
	"A message carries more descriptors than the configured limit."
);
pyo3::create_exception!(peerwire, TooManyRequests, PeerwireError, "The limit on open requests is reached.");
pyo3::create_exception!(peerwire, Timeout, PeerwireError, "An operation did not finish within its deadline.");
pyo3::create_exception!(
	peerwire,
	RequestClosed,
	PeerwireError,
	"The request is already closed (its response was sent or received)."
);
pyo3::create_exception!(peerwire, Unsupported, PeerwireError, "The transport cannot carry what was asked.");
pyo3::create_exception!(
	peerwire,
	RemoteError,
	PeerwireError,
	"The remote answered with an error response; `text` holds its text and `service_id` its (negative) service id."
);

/// A peerwire error as the matching Python exception.
pub fn to_py(error: peerwire::Error) -> PyErr {
	use peerwire::ErrorKind;
	let text = error.to_string();
	match error.kind() {
		ErrorKind::ConnectionClosed => ConnectionClosed::new_err(text),
		ErrorKind::Io => {
			let errno = error.io_error().and_then(std::io::Error::raw_os_error);
			Python::attach(|py| {
				let err = IoError::new_err(text);
				// Setting an attribute on a fresh exception object does not fail in practice; if
				// it did, the exception still says what happened.
				let _ = err.value(py).setattr("errno", errno);
				err
			})
		},
		ErrorKind::Protocol => ProtocolError::new_err(text),
		ErrorKind::BodyTooLarge => BodyTooLarge::new_err(text),
		ErrorKind::TooManyFds => TooManyFds::new_err(text),
		ErrorKind::TooManyRequests => TooManyRequests::new_err(text),
		ErrorKind::Timeout => Timeout::new_err(text),
		ErrorKind::RequestClosed => RequestClosed::new_err(text),
		ErrorKind::Unsupported => Unsupported::new_err(text),
		ErrorKind::Remote => {
			remote_error(error.remote_service_id().unwrap_or(-1), error.remote_text().unwrap_or_default())
		},
		_ => PeerwireError::new_err(text),
	}
}

/// A `RemoteError` for an error response with `service_id` and `text`.
pub fn remote_error(service_id: i32, text: &str) -> PyErr {
	Python::attach(|py| {
		let err = RemoteError::new_err(text.to_string());
		let _ = err.value(py).setattr("text", text);
		let _ = err.value(py).setattr("service_id", service_id);
		err
	})
}

/// Add the exception classes to the module.
pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
	let py = module.py();
	module.add("PeerwireError", py.get_type::<PeerwireError>())?;
	module.add("ConnectionClosed", py.get_type::<ConnectionClosed>())?;
	module.add("IoError", py.get_type::<IoError>())?;
	module.add("ProtocolError", py.get_type::<ProtocolError>())?;
	module.add("BodyTooLarge", py.get_type::<BodyTooLarge>())?;
	module.add("TooManyFds", py.get_type::<TooManyFds>())?;
	module.add("TooManyRequests", py.get_type::<TooManyRequests>())?;
	module.add("Timeout", py.get_type::<Timeout>())?;
	module.add("RequestClosed", py.get_type::<RequestClosed>())?;
	module.add("Unsupported", py.get_type::<Unsupported>())?;
	module.add("RemoteError", py.get_type::<RemoteError>())?;
	Ok(())
}
