//! Rust futures as asyncio futures, without the runtime threads taking the GIL.
//!
//! A runtime thread that finishes a future does not call into Python (which would wait for the
//! GIL, held by the thread running the event loop for up to the interpreter's switch interval):
//! it queues the result and writes a byte to a socket pair that the event loop watches
//! (`loop.add_reader`). The loop's thread then delivers every queued result in one go, which
//! also batches the completions of many requests in flight. One bridge per event loop.
//!
//! Cancelling the asyncio future aborts the runtime task, which drops the Rust future (and the
//! handles it holds) as a dropped future does in Rust.

use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

type Deliver = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

struct Completion {
	future: Py<PyAny>,
	result: Deliver,
}

pub struct Shared {
	queue: Mutex<Vec<Completion>>,
	wake: UnixStream,
}

impl Shared {
	fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Completion>> {
		self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
	}

	fn push(&self, completion: Completion) {
		let was_empty = {
			let mut queue = self.lock();
			queue.push(completion);
			queue.len() == 1
		};
		if was_empty {
			// Full socket buffer (WouldBlock): a wake-up is pending anyway. Other errors mean the
			// loop's end is gone, and nobody waits for the result.
			let _ = (&self.wake).write(&[1]);
		}
	}
}

/// The bridge of one event loop; its `drain` is the loop's reader callback.
#[pyclass(module = "peerwire", frozen)]
struct Bridge {
	shared: Arc<Shared>,
	reader: UnixStream,
}

#[pymethods]
impl Bridge {
	/// Deliver every queued result to its asyncio future.
	fn drain(&self, py: Python<'_>) -> PyResult<()> {
		let mut buffer = [0u8; 256];
		while let Ok(n) = (&self.reader).read(&mut buffer) {
			if n < buffer.len() {
				break;
			}
		}
		let completions = std::mem::take(&mut *self.shared.lock());
		for completion in completions {
			// One failure (which would be a bug) must not strand the results after it.
			if let Err(error) = deliver(py, completion) {
				error.write_unraisable(py, None);
			}
		}
		Ok(())
	}
}

fn deliver(py: Python<'_>, completion: Completion) -> PyResult<()> {
	let future = completion.future.bind(py);
	if future.call_method0("done")?.is_truthy()? {
		// Cancelled meanwhile; the result is dropped here (a handle in it too).
		drop((completion.result)(py));
		return Ok(());
	}
	match (completion.result)(py) {
		Ok(value) => future.call_method1("set_result", (value,))?,
		Err(error) => future.call_method1("set_exception", (error.into_value(py),))?,
	};
	Ok(())
}

/// Aborts the runtime task when its asyncio future is cancelled (a done callback).
#[pyclass(module = "peerwire", frozen)]
struct AbortOnCancel {
	task: tokio::task::AbortHandle,
}

#[pymethods]
impl AbortOnCancel {
	#[pyo3(signature = (*args))]
	fn __call__(&self, args: &Bound<'_, PyTuple>) -> PyResult<()> {
		let future = args.get_item(0)?;
		if future.call_method0("cancelled")?.is_truthy()? {
			self.task.abort();
		}
		Ok(())
	}
}

static BRIDGES: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

thread_local! {
	/// The last loop this thread used, and its bridge: most programs run one loop per thread, and
	/// this spares a dictionary lookup per operation. Holding the loop keeps its address from
	/// being reused by another object while cached.
	static LAST: std::cell::RefCell<Option<(Py<PyAny>, Arc<Shared>)>> = const { std::cell::RefCell::new(None) };
}

/// The running loop (a `RuntimeError` without one), and its bridge (made and registered on first
/// use).
pub fn current<'py>(py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, Arc<Shared>)> {
	let get_running_loop = GET_RUNNING_LOOP
		.get_or_try_init(py, || py.import("asyncio")?.getattr("get_running_loop").map(Bound::unbind))?;
	let event_loop = get_running_loop.bind(py).call0()?;
	let cached = LAST.with_borrow(|last| {
		last.as_ref().filter(|(cached, _)| cached.as_ptr() == event_loop.as_ptr()).map(|(_, shared)| shared.clone())
	});
	if let Some(shared) = cached {
		return Ok((event_loop, shared));
	}
	let shared = register(py, &event_loop)?;
	let previous = LAST.with_borrow_mut(|last| last.replace((event_loop.clone().unbind(), shared.clone())));
	drop(previous);
	Ok((event_loop, shared))
}

/// The bridge of `event_loop`, made and registered with it on first use.
fn register(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Arc<Shared>> {
	// Weak keys: a loop that is garbage collected takes its bridge (and socket pair) with it.
	let bridges = BRIDGES
		.get_or_try_init(py, || py.import("weakref")?.getattr("WeakKeyDictionary")?.call0().map(Bound::unbind))?
		.bind(py);
	if let Ok(bridge) = bridges.call_method1("get", (event_loop,))?.cast::<Bridge>() {
		return Ok(bridge.get().shared.clone());
	}
	let (reader, wake) = UnixStream::pair()?;
	reader.set_nonblocking(true)?;
	wake.set_nonblocking(true)?;
	let fd = reader.as_raw_fd();
	let bridge = Bound::new(py, Bridge { shared: Arc::new(Shared { queue: Mutex::new(Vec::new()), wake }), reader })?;
	event_loop.call_method1("add_reader", (fd, bridge.getattr("drain")?))?;
	bridges.set_item(event_loop, &bridge)?;
	Ok(bridge.get().shared.clone())
}

/// An asyncio future of `event_loop`, already done with `result`.
pub fn done<'py, T>(py: Python<'py>, event_loop: &Bound<'py, PyAny>, result: PyResult<T>) -> PyResult<Bound<'py, PyAny>>
where
	T: for<'a> IntoPyObject<'a>,
{
	let future = event_loop.call_method0("create_future")?;
	match result {
		Ok(value) => future.call_method1("set_result", (value.into_bound_py_any(py)?,))?,
		Err(error) => future.call_method1("set_exception", (error.into_value(py),))?,
	};
	Ok(future)
}

/// Run `fut` on the runtime; its result goes to the returned asyncio future of `event_loop`
/// through the loop's bridge `shared`.
pub fn spawn<'py, F, T>(event_loop: &Bound<'py, PyAny>, shared: Arc<Shared>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
	F: Future<Output = PyResult<T>> + Send + 'static,
	T: for<'a> IntoPyObject<'a> + Send + 'static,
{
	let future = event_loop.call_method0("create_future")?;
	let target = future.clone().unbind();
	let task = crate::runtime().spawn(async move {
		let result = fut.await;
		let deliver: Deliver = Box::new(move |py| result.and_then(|value| value.into_py_any(py)));
		shared.push(Completion { future: target, result: deliver });
	});
	future.call_method1("add_done_callback", (AbortOnCancel { task: task.abort_handle() },))?;
	Ok(future)
}
