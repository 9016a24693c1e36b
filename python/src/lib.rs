//! The Python binding of peerwire: asyncio peers over TCP, Unix stream and Unix seqpacket
//! sockets, wrapping the Rust library (the protocol is not reimplemented here).
//!
//! Every awaitable is a Rust future bridged to an asyncio future and polled on the loop's thread
//! (see `bridge`): the GIL is not held while it waits, and cancelling the asyncio future drops the
//! Rust future. The peer task of a TCP or Unix stream connection runs on the loop's thread too,
//! its socket watched by the loop's selector (see `loopsock`): a round trip crosses no thread.
//! Seqpacket connections, the listeners' accept and `connect`'s connecting run on one tokio
//! runtime for the module; the blocking `call` waits on it with the GIL released.

#![deny(unsafe_code)]

use std::future::Future;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use bridge::{Hold, Home};

mod bridge;
mod error;
mod fd;
mod listener;
mod loopsock;
mod message;
mod peer;

pub use listener::{Config, Listener};

/// An awaitable for `fut`; `home` is the loop of the peer it works on, if loop-driven (an
/// operation from another loop raises).
///
/// The future is polled at once, on this thread inside the runtime's context: what can finish
/// without waiting (queueing a send, taking a message that has already arrived) returns an
/// awaitable that is already done. A future that must wait becomes a task of the loop's bridge,
/// polled on this thread again when woken (see `bridge`).
pub(crate) fn future<'py, F, T>(py: Python<'py>, home: Option<&Home>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
	F: Future<Output = PyResult<T>> + Send + 'static,
	T: for<'a> IntoPyObject<'a> + Send + 'static,
{
	// The loop first: without one (a `RuntimeError`), nothing may be sent.
	let (event_loop, bridge) = bridge::current(py)?;
	bridge::check_home(py, home, &event_loop, &bridge)?;
	run(py, &event_loop, &bridge, fut)
}

/// An awaitable for `fut`, a send: like `future`, but the peer task it wakes is polled at the
/// start of the loop's next iteration, with the other sends of this one (see
/// `Bridge::before_send`), or at once if it is the first since the loop delivered results (see
/// `Bridge::send_now`); `hold` takes a hold on the wake-up of a peer task on the runtime.
pub(crate) fn send<'py, F, T>(
	py: Python<'py>,
	home: Option<&Home>,
	hold: impl FnOnce() -> Option<Hold>,
	fut: F,
) -> PyResult<Bound<'py, PyAny>>
where
	F: Future<Output = PyResult<T>> + Send + 'static,
	T: for<'a> IntoPyObject<'a> + Send + 'static,
{
	let (event_loop, bridge) = bridge::current(py)?;
	bridge::check_home(py, home, &event_loop, &bridge)?;
	// A loop-driven peer task may write this send at once (see `Bridge::send_now`).
	if home.is_some() && bridge.get().send_now() {
		let sent = run(py, &event_loop, &bridge, fut);
		bridge.get().sent_now(py);
		return sent;
	}
	bridge.get().before_send(py, &event_loop, hold())?;
	run(py, &event_loop, &bridge, fut)
}

fn run<'py, F, T>(
	py: Python<'py>,
	event_loop: &Bound<'py, PyAny>,
	bridge: &Bound<'py, bridge::Bridge>,
	fut: F,
) -> PyResult<Bound<'py, PyAny>>
where
	F: Future<Output = PyResult<T>> + Send + 'static,
	T: for<'a> IntoPyObject<'a> + Send + 'static,
{
	let mut fut = Box::pin(fut);
	let polled = {
		let _context = runtime().enter();
		fut.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
	};
	match polled {
		std::task::Poll::Ready(result) => bridge::done(py, result),
		std::task::Poll::Pending => bridge::spawn(py, event_loop, bridge.get().shared(), fut),
	}
}

/// The module's runtime, started on first use: one worker thread for the seqpacket sockets, the
/// listeners, connecting, and the timers of every peer task, since the Python side of every
/// operation runs on the event loop's thread anyway; a second worker made 64 requests in flight
/// about a fifth slower on 2 cores (more threads contending for them).
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
	static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
	RUNTIME.get_or_init(|| {
		tokio::runtime::Builder::new_multi_thread()
			.worker_threads(1)
			.enable_all()
			.thread_name("peerwire")
			.build()
			.expect("peerwire: cannot start the tokio runtime")
	})
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
