//! Rust futures as asyncio futures, polled on the event loop's thread.
//!
//! A future is polled where it was made, on the loop's thread, with the GIL held: most finish at
//! the first poll (queueing a send, taking a message that has already arrived). One that must wait
//! becomes a task of the loop's bridge. Its waker, called by the peer task on a runtime thread
//! when a message arrives, never calls into Python (which would wait for the GIL, held by the
//! loop's thread while it is busy): it queues the task and, if the queue was empty, writes one
//! byte to a socket pair that the loop watches (`loop.add_reader`). The loop's thread then polls
//! every woken task in one callback and hands the finished ones' results to their asyncio futures:
//! one byte and one callback for a batch of results, however many requests are in flight, and no
//! runtime task (with its own cross-thread wake-up) per operation.
//!
//! Sends go the other way: each takes a hold on its peer task's wake-up (`WakeupHold`), released
//! at the start of the loop's next iteration by a `call_soon` callback, or after 16 held sends.
//! That callback also polls the tasks woken meanwhile, so that while sends keep it scheduled,
//! results need no byte at all. Counts per request at 64 in flight: one state lock to queue, no
//! cross-thread wake-up of its own (one per 16 sends, or per iteration), no asyncio future for a
//! send (a `Ready` awaitable), one for an awaited response.
//!
//! Cancelling the asyncio future drops the Rust future (and the handles it holds) at once, on the
//! loop's thread, as a dropped future does in Rust.

use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};

use pyo3::IntoPyObjectExt;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

/// The result of a finished future, made a Python object under the GIL.
type Deliver = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;
type BoxFuture = Pin<Box<dyn Future<Output = Deliver> + Send>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
	// Nothing under these locks can panic half-way; a poisoned lock is safe to keep using.
	mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a loop's bridge shares with the wakers of its tasks (on any thread).
pub struct Shared {
	woken: Mutex<Woken>,
	wake: UnixStream,
}

#[derive(Default)]
struct Woken {
	/// Tasks woken since the loop last looked.
	tasks: Vec<Arc<Task>>,
	/// The loop will look at the start of its next iteration anyway (a `release` is scheduled,
	/// so it does not sleep in between): a task woken meanwhile needs no byte on the socket pair.
	looking: bool,
}

impl Shared {
	fn push(&self, task: Arc<Task>) {
		let signal = {
			let mut woken = lock(&self.woken);
			woken.tasks.push(task);
			woken.tasks.len() == 1 && !woken.looking
		};
		if signal {
			// Full socket buffer (WouldBlock): a wake-up is pending anyway. Other errors mean the
			// loop's end is gone, and nobody waits for the result.
			let _ = (&self.wake).write(&[1]);
		}
	}

	/// The tasks woken so far; `looking` says whether the loop will look again without a byte.
	fn take(&self, looking: bool) -> Vec<Arc<Task>> {
		let mut woken = lock(&self.woken);
		woken.looking = looking;
		std::mem::take(&mut woken.tasks)
	}
}

/// Poll `tasks` on the loop's thread.
fn run(py: Python<'_>, tasks: Vec<Arc<Task>>) {
	for task in tasks {
		// One failure (which would be a bug) must not strand the tasks after it.
		if let Err(error) = task.poll(py) {
			error.write_unraisable(py, None);
		}
	}
}

/// A future that had to wait, and the asyncio future its result goes to.
struct Task {
	/// The bridge of the loop; weak, so that a task queued in it does not keep it alive.
	shared: Weak<Shared>,
	/// Queued in `shared.woken` and not yet polled: a second wake-up needs no second entry.
	queued: AtomicBool,
	slot: Mutex<Option<Slot>>,
}

/// A task until it finishes or is cancelled (then `None`).
struct Slot {
	future: BoxFuture,
	/// The asyncio future.
	target: Py<PyAny>,
	/// Its done callback (a `Cancel`), removed before the result is set, so that a finished
	/// request costs the loop no callback.
	on_cancel: Py<PyAny>,
}

impl Wake for Task {
	fn wake(self: Arc<Self>) {
		self.wake_by_ref();
	}

	fn wake_by_ref(self: &Arc<Self>) {
		if self.queued.swap(true, Ordering::AcqRel) {
			return;
		}
		match self.shared.upgrade() {
			Some(shared) => shared.push(self.clone()),
			// The loop and its bridge are gone: nobody can take the result, so let go of the
			// future and the handles it holds.
			// (Not while the loop's thread polls it: that thread holds the bridge.)
			None => {
				if let Ok(mut slot) = self.slot.try_lock() {
					drop(slot.take());
				}
			},
		}
	}
}

impl Task {
	/// Poll the future on the loop's thread; hand its result over if it has finished.
	fn poll(self: &Arc<Self>, py: Python<'_>) -> PyResult<()> {
		self.queued.store(false, Ordering::Release);
		let mut slot = lock(&self.slot);
		let Some(current) = slot.as_mut() else { return Ok(()) };
		let waker = Waker::from(self.clone());
		let polled = {
			let _context = crate::runtime().enter();
			current.future.as_mut().poll(&mut Context::from_waker(&waker))
		};
		let Poll::Ready(result) = polled else { return Ok(()) };
		let Some(done) = slot.take() else { return Ok(()) };
		// Not under the task's lock: setting the result calls into Python.
		drop(slot);
		let future = done.target.bind(py);
		future.call_method1(intern!(py, "remove_done_callback"), (done.on_cancel,))?;
		let set = match result(py) {
			Ok(value) => future.call_method1(intern!(py, "set_result"), (value,)),
			Err(error) => future.call_method1(intern!(py, "set_exception"), (error.into_value(py),)),
		};
		match set {
			// Cancelled, its callback not run yet (or done by the application): the result, a
			// handle in it too, is dropped with the error.
			Err(_) if future.call_method0(intern!(py, "done"))?.is_truthy()? => Ok(()),
			Err(error) => Err(error),
			Ok(_) => Ok(()),
		}
	}
}

/// Sends held before their peer tasks are woken even though the loop's iteration goes on: the
/// first ones go out while the loop still works on the rest (the remote starts on them, instead
/// of the two sides taking turns), at a sixteenth of the wake-ups of one per send. 16 and 32
/// measured alike at 64 in flight, and both above no bound, in same-run pairs.
const SENDS_PER_WAKEUP: usize = 16;

/// A hold on the wake-up of a connection's peer task (a `peerwire::WakeupHold`).
pub type Hold = Box<dyn std::any::Any + Send>;

/// The bridge of one event loop; its `drain` is the loop's reader callback.
#[pyclass(module = "peerwire", frozen)]
pub struct Bridge {
	shared: Arc<Shared>,
	reader: UnixStream,
	/// Holds taken by sends in this iteration of the loop, released by `release`.
	held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
	holds: Vec<Hold>,
	/// A `release` is scheduled (`call_soon`) for the start of the next iteration.
	scheduled: bool,
}

impl Bridge {
	/// Before a send: take a hold (`hold`) on the peer task's wake-up, kept until a `release`
	/// scheduled (`call_soon`) by the first send of this iteration of the loop runs, at the start
	/// of the next one, or until `SENDS_PER_WAKEUP` sends are held. The sends of one iteration
	/// (the coroutines resumed by one batch of results, typically) then cost a peer task one
	/// wake-up per 16, not one each, and go out together.
	pub fn before_send(
		slf: &Bound<'_, Self>,
		event_loop: &Bound<'_, PyAny>,
		hold: impl FnOnce() -> Hold,
	) -> PyResult<()> {
		let py = slf.py();
		let this = slf.get();
		let hold = hold();
		let (first, full) = {
			let mut held = lock(&this.held);
			held.holds.push(hold);
			let full = if held.holds.len() >= SENDS_PER_WAKEUP { std::mem::take(&mut held.holds) } else { Vec::new() };
			(!std::mem::replace(&mut held.scheduled, true), full)
		};
		// Released outside the lock: each wakes its peer task.
		drop(full);
		if !first {
			return Ok(());
		}
		let scheduled = slf
			.getattr(intern!(py, "release"))
			.and_then(|release| event_loop.call_method1(intern!(py, "call_soon"), (release,)));
		if let Err(error) = scheduled {
			// Not scheduled (a closed loop): release now rather than never.
			drop(std::mem::take(&mut *lock(&this.held)));
			return Err(error);
		}
		// The release also polls the tasks woken until then (the results of this iteration's
		// requests, typically): no byte, no reader callback for them.
		lock(&this.shared.woken).looking = true;
		Ok(())
	}

	pub fn shared(&self) -> &Arc<Shared> {
		&self.shared
	}
}

#[pymethods]
impl Bridge {
	/// Poll every woken task, handing the results of the finished ones to their asyncio futures.
	fn drain(&self, py: Python<'_>) -> PyResult<()> {
		let mut buffer = [0u8; 256];
		while let Ok(n) = (&self.reader).read(&mut buffer) {
			if n < buffer.len() {
				break;
			}
		}
		// A release still scheduled will look again.
		let looking = lock(&self.held).scheduled;
		run(py, self.shared.take(looking));
		Ok(())
	}

	/// Release the holds taken in the last iteration, waking each peer task that has messages
	/// to write; then poll the tasks woken meanwhile.
	fn release(&self, py: Python<'_>) {
		let held = std::mem::take(&mut *lock(&self.held));
		drop(held);
		run(py, self.shared.take(false));
	}
}

impl Drop for Bridge {
	fn drop(&mut self) {
		drop(std::mem::take(&mut *lock(&self.held)));
		// Tasks woken but never polled: their loop is gone, so are their results' takers.
		for task in self.shared.take(false) {
			drop(lock(&task.slot).take());
		}
	}
}

/// Drops the Rust future of a task when its asyncio future is cancelled (a done callback).
#[pyclass(module = "peerwire", frozen)]
struct Cancel {
	task: Weak<Task>,
}

#[pymethods]
impl Cancel {
	#[pyo3(signature = (*_args))]
	fn __call__(&self, _args: &Bound<'_, PyTuple>) {
		// Called only when the asyncio future is done by someone else than its task (which
		// removes this callback first): cancelled, typically.
		if let Some(task) = self.task.upgrade() {
			let slot = lock(&task.slot).take();
			drop(slot);
		}
	}
}

static BRIDGES: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

thread_local! {
	/// The last loop this thread used, and its bridge: most programs run one loop per thread, and
	/// this spares a dictionary lookup per operation. Holding the loop keeps its address from
	/// being reused by another object while cached.
	static LAST: std::cell::RefCell<Option<(Py<PyAny>, Py<Bridge>)>> = const { std::cell::RefCell::new(None) };
}

/// The running loop (a `RuntimeError` without one), and its bridge (made and registered on first
/// use).
pub fn current<'py>(py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, Bridge>)> {
	let get_running_loop = GET_RUNNING_LOOP
		.get_or_try_init(py, || py.import("asyncio")?.getattr("get_running_loop").map(Bound::unbind))?;
	let event_loop = get_running_loop.bind(py).call0()?;
	let cached = LAST.with_borrow(|last| {
		last.as_ref()
			.filter(|(cached, _)| cached.as_ptr() == event_loop.as_ptr())
			.map(|(_, bridge)| bridge.bind(py).clone())
	});
	if let Some(bridge) = cached {
		return Ok((event_loop, bridge));
	}
	let bridge = register(py, &event_loop)?;
	let previous = LAST.with_borrow_mut(|last| last.replace((event_loop.clone().unbind(), bridge.clone().unbind())));
	drop(previous);
	Ok((event_loop, bridge))
}

/// The bridge of `event_loop`, made and registered with it on first use.
fn register<'py>(py: Python<'py>, event_loop: &Bound<'py, PyAny>) -> PyResult<Bound<'py, Bridge>> {
	// Weak keys: a loop that is garbage collected takes its bridge (and socket pair) with it.
	let bridges = BRIDGES
		.get_or_try_init(py, || py.import("weakref")?.getattr("WeakKeyDictionary")?.call0().map(Bound::unbind))?
		.bind(py);
	if let Ok(bridge) = bridges.call_method1("get", (event_loop,))?.cast_into::<Bridge>() {
		return Ok(bridge);
	}
	let (reader, wake) = UnixStream::pair()?;
	reader.set_nonblocking(true)?;
	wake.set_nonblocking(true)?;
	let fd = reader.as_raw_fd();
	let shared = Arc::new(Shared { woken: Mutex::new(Woken::default()), wake });
	let bridge = Bound::new(py, Bridge { shared, reader, held: Mutex::new(Held::default()) })?;
	event_loop.call_method1("add_reader", (fd, bridge.getattr("drain")?))?;
	bridges.set_item(event_loop, &bridge)?;
	Ok(bridge)
}

/// An awaitable already done with `result`.
pub fn done<'py, T>(py: Python<'py>, result: PyResult<T>) -> PyResult<Bound<'py, PyAny>>
where
	T: for<'a> IntoPyObject<'a>,
{
	let result = result.and_then(|value| value.into_py_any(py));
	Ok(Bound::new(py, Ready { result })?.into_any())
}

/// An awaitable whose result is known when it is made (a send that only queued, a message that
/// had already arrived): awaiting it returns (or raises) at once, without suspending. Cheaper
/// than an asyncio future made done: no call into the loop, no result to set.
#[pyclass(module = "peerwire", frozen)]
pub struct Ready {
	result: PyResult<Py<PyAny>>,
}

#[pymethods]
impl Ready {
	fn __await__(slf: Py<Self>) -> Py<Self> {
		slf
	}

	fn __iter__(slf: Py<Self>) -> Py<Self> {
		slf
	}

	/// Finish at once with the result; each await gets it, as with a done future.
	fn __next__(&self, py: Python<'_>) -> PyResult<()> {
		match &self.result {
			Ok(value) => Err(pyo3::exceptions::PyStopIteration::new_err((value.clone_ref(py),))),
			Err(error) => Err(error.clone_ref(py)),
		}
	}
}

/// Make `fut`, which has been polled and must wait, a task of the loop's bridge `shared`; its
/// result goes to the returned asyncio future of `event_loop`. The task is polled again at once,
/// with its own waker.
pub fn spawn<'py, F, T>(
	py: Python<'py>,
	event_loop: &Bound<'py, PyAny>,
	shared: &Arc<Shared>,
	fut: F,
) -> PyResult<Bound<'py, PyAny>>
where
	F: Future<Output = PyResult<T>> + Send + 'static,
	T: for<'a> IntoPyObject<'a> + Send + 'static,
{
	let future = event_loop.call_method0(intern!(py, "create_future"))?;
	let task =
		Arc::new(Task { shared: Arc::downgrade(shared), queued: AtomicBool::new(false), slot: Mutex::new(None) });
	let on_cancel = Bound::new(py, Cancel { task: Arc::downgrade(&task) })?.into_any();
	future.call_method1(intern!(py, "add_done_callback"), (&on_cancel,))?;
	let boxed: BoxFuture = Box::pin(async move {
		let result = fut.await;
		Box::new(move |py: Python<'_>| result.and_then(|value| value.into_py_any(py))) as Deliver
	});
	*lock(&task.slot) = Some(Slot { future: boxed, target: future.clone().unbind(), on_cancel: on_cancel.unbind() });
	task.poll(py)?;
	Ok(future)
}
