//! The Python binding of peerwire: asyncio peers over TCP, Unix stream and Unix seqpacket
//! sockets, wrapping the Rust library (the protocol is not reimplemented here).
//!
//! Every awaitable is a Rust future on one tokio runtime for the module (the multi-thread
//! runtime of `pyo3-async-runtimes`), bridged to an asyncio future: the GIL is not held while it
//! waits, and cancelling the asyncio future drops the Rust future. The blocking `call` waits with
//! the GIL released.

#![deny(unsafe_code)]

use std::future::Future;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;

mod error;
mod fd;
mod listener;
mod message;
mod peer;

pub use listener::{Config, Listener};

/// An awaitable for `fut`, run on the module's runtime.
///
/// The future is polled once at once, on this thread inside the runtime's context: what can
/// finish without waiting (queueing a send, taking a message that has already arrived) returns
/// an asyncio future that is already done, without a hop to a runtime thread and back. Only a
/// future that must wait is handed to the runtime.
pub(crate) fn future<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
	F: Future<Output = PyResult<T>> + Send + 'static,
	T: for<'a> IntoPyObject<'a> + Send + 'static,
{
	let mut fut = Box::pin(fut);
	let polled = {
		let _context = pyo3_async_runtimes::tokio::get_runtime().enter();
		fut.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
	};
	match polled {
		std::task::Poll::Ready(result) => done_future(py, result),
		std::task::Poll::Pending => pyo3_async_runtimes::tokio::future_into_py(py, fut),
	}
}

static GET_RUNNING_LOOP: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();

/// An asyncio future of the running loop, already done with `result`.
fn done_future<'py, T>(py: Python<'py>, result: PyResult<T>) -> PyResult<Bound<'py, PyAny>>
where
	T: for<'a> IntoPyObject<'a>,
{
	let get_running_loop =
		GET_RUNNING_LOOP.get_or_try_init(py, || py.import("asyncio")?.getattr("get_running_loop").map(Bound::unbind))?;
	let future = get_running_loop.bind(py).call0()?.call_method0("create_future")?;
	match result {
		Ok(value) => future.call_method1("set_result", (value.into_bound_py_any(py)?,))?,
		Err(error) => future.call_method1("set_exception", (error.into_value(py),))?,
	};
	Ok(future)
}

/// A timeout in seconds from Python: positive and finite, or `None`.
pub(crate) fn timeout_from(seconds: Option<f64>) -> PyResult<Option<Duration>> {
	match seconds {
		None => Ok(None),
		Some(seconds) if seconds.is_finite() && seconds >= 0.0 => Duration::try_from_secs_f64(seconds)
			.map(Some)
			.map_err(|_| PyValueError::new_err(format!("timeout {seconds} is out of range"))),
		Some(seconds) => Err(PyValueError::new_err(format!(
			"timeout must be a non-negative number of seconds or None, not {seconds}"
		))),
	}
}

#[pymodule]
fn _peerwire(module: &Bound<'_, PyModule>) -> PyResult<()> {
	error::register(module)?;
	module.add_class::<fd::Fd>()?;
	module.add_class::<message::Message>()?;
	module.add_class::<message::Info>()?;
	module.add_class::<peer::Peer>()?;
	module.add_class::<peer::SentRequest>()?;
	module.add_class::<peer::ReceivedRequest>()?;
	module.add_class::<Listener>()?;
	module.add_class::<Config>()?;
	module.add_function(wrap_pyfunction!(listener::connect, module)?)?;
	module.add_function(wrap_pyfunction!(listener::listen, module)?)?;
	module.add_function(wrap_pyfunction!(listener::call, module)?)?;
	Ok(())
}

/// A service id from Python: it must fit the protocol's signed 32-bit field.
pub(crate) fn service_id_from(value: i64) -> PyResult<i32> {
	i32::try_from(value).map_err(|_| {
		PyValueError::new_err(format!(
			"service_id {value} is out of range: the protocol carries a signed 32-bit integer ({} to {})",
			i32::MIN,
			i32::MAX
		))
	})
}
