//! Rust futures as asyncio futures, polled on the event loop's thread; and the peer tasks of
//! TCP and Unix stream connections, run there too.
//!
//! A future is polled where it was made, on the loop's thread, with the GIL held: most finish at
//! the first poll (queueing a send, taking a message that has already arrived). One that must wait
//! becomes a task of the loop's bridge, and so does the peer task of every TCP and Unix stream
//! connection (`spawn_peer`): its socket is read and written on the loop's thread, watched by
//! the loop's own selector (see `loopsock`). The peer task, the handles' futures and the socket
//! then all live on one thread, and a round trip crosses none:
//!
//! - A send queues its message and wakes the peer task, which only queues the task in the
//!   bridge. The first send since the loop last delivered results polls the peer task at once,
//!   which writes it (`Bridge::send_now`: a lone request costs no extra loop iteration); the
//!   sends after it in the same iteration (the other coroutines resumed by one batch of
//!   responses, typically) wait for a `release` scheduled (`call_soon`) for the start of the next
//!   one, except every 16th, which writes those before it at once, so that the remote starts on
//!   them while the loop still works on the rest.
//! - When the socket is readable, the loop calls the socket's callback, which wakes the peer task
//!   and polls the woken tasks at once, in the same callback: the peer task reads every message
//!   that arrived, which wakes the requests' tasks, which are polled in turn and hand their
//!   results to their asyncio futures. Waking a task while the bridge is polling, or while a
//!   `release` is scheduled, costs nothing more than queueing it.
//!
//! Counts per round trip (strace, a client against an asyncio echo): three `epoll_wait`, one
//! `sendto`, one `recvfrom`, as a hand-written asyncio client; no thread hand-off, no byte on the
//! socket pair. Per request at 64 in flight: one state lock to queue the send, a share of one
//! `writev` (up to 16 requests each) and of one `read`, one asyncio future for an awaited
//! response.
//!
//! A wake-up from another thread (a tokio timer of the peer task, polled inside the runtime's
//! context: idle, frame and close timeouts, a response timeout; a handle dropped or a peer closed
//! on another thread), or from the loop's thread outside the bridge's callbacks, queues the task
//! and, if the queue was empty and no callback will look anyway, writes one byte to a socket pair
//! that the loop watches (`loop.add_reader`). The loop's thread then polls every woken task in one
//! callback. Seqpacket connections (which carry descriptors) and the blocking `call` keep their
//! peer task on the module's tokio runtime, as before: their results come back this way, and
//! their sends take a hold on the peer task's wake-up (`WakeupHold`) until the `release`, so
//! that one iteration's sends cost that runtime thread one wake-up, not one each.
//!
//! A loop-driven connection belongs to its loop while that loop is open: using it from another
//! raises (`check_home`). The bridge learns that its loop has closed (or been garbage collected)
//! as the loop lets go of its socket-pair callback (`Watch`): every task still waiting is
//! dropped, letting go of the handles it holds, and every peer task is parked in its connection
//! (`Conn`). The next loop that uses the connection takes it over: its socket is registered with
//! that loop, its peer task polled there (a peer made in one `asyncio.run` works in the next, as
//! it did when every peer task ran on the runtime). A connection nobody uses again is closed, its
//! descriptor too, when its last Python object goes.
//!
//! Wakers never drop a future: peerwire calls them under its connection's lock, which dropping a
//! handle takes. A future a waker lets go of (its loop gone) waits in a graveyard, emptied at the
//! start of the next operation or callback (`bury_the_dead`).
//!
//! Cancelling the asyncio future drops the Rust future (and the handles it holds) at once, on the
//! loop's thread, as a dropped future does in Rust.

use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Wake, Waker};

use pyo3::IntoPyObjectExt;
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

use crate::error::ConnectionClosed;
use crate::loopsock::Rehome;

/// The result of a finished future, made a Python object under the GIL.
type Deliver = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;
type BoxFuture = Pin<Box<dyn Future<Output = Deliver> + Send>>;

/// Rounds of polling woken tasks in one callback before the rest waits for the loop's next
/// iteration: a connection that never runs dry (its peer task yields after 32 rounds of work and
/// wakes itself) must not keep the loop from its other callbacks and sockets.
const ROUNDS_PER_CALLBACK: usize = 8;

/// Sends held before their peer tasks are woken even though the loop's iteration goes on (for
/// peer tasks on the runtime): the first ones go out while the loop still works on the rest (the
/// remote starts on them, instead of the two sides taking turns), at a sixteenth of the wake-ups
/// of one per send. 16 and 32 measured alike at 64 in flight, and both above no bound, in
/// same-run pairs.
const SENDS_PER_WAKEUP: usize = 16;

/// Sends of one loop iteration that wait for the `release` before the one that is written at
/// once, with them (on loop-driven connections): as with `SENDS_PER_WAKEUP`, the remote starts on
/// the first ones while the loop still works on the rest. Without it, when the machine has CPU
/// to spare, the two sides took turns on whole batches of 64 and the peerwire client reached 0.78×
/// to 0.84× the asyncio client's rate against the asyncio echo in one full run.
const SENDS_PER_WRITE: usize = 16;

/// A hold on the wake-up of a connection's peer task on the runtime (a `peerwire::WakeupHold`).
pub type Hold = Box<dyn std::any::Any + Send>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
	// Nothing under these locks can panic half-way; a poisoned lock is safe to keep using.
	mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The bridge of one loop: what its callbacks, its tasks' wakers (on any thread) and its
/// loop-driven sockets share.
pub struct Shared {
	woken: Mutex<Woken>,
	/// The writing end of the socket pair the loop watches.
	wake: UnixStream,
	/// The loop, weakly (a `weakref.ref`): the bridge must not keep its loop alive.
	event_loop: Py<PyAny>,
	/// The callback that `call_soon` schedules (a `Release`).
	release: Py<PyAny>,
	/// Holds taken by sends of runtime peers in this iteration of the loop, released by
	/// `release`.
	holds: Mutex<Vec<Hold>>,
	/// The peer tasks of the loop-driven connections: the bridge owns them, since nothing else
	/// does (their wakers are held by their own sockets).
	peers: Mutex<Vec<Arc<Task>>>,
	/// Every task that had to wait (weakly): when the loop closes, those still waiting are
	/// dropped with it, letting go of the handles they hold (a receive holds its handle's lock).
	waiting: Mutex<Waiting>,
	/// The loop is closed or gone: its peers are parked or dropped, and new ones refused.
	closed: AtomicBool,
}

/// The tasks of a bridge, pruned of the finished ones whenever their number doubles.
#[derive(Default)]
struct Waiting {
	tasks: Vec<Weak<Task>>,
	prune_at: usize,
}

impl Waiting {
	fn add(&mut self, task: &Arc<Task>) {
		if self.tasks.len() >= self.prune_at {
			self.tasks.retain(|task| task.strong_count() > 0);
			self.prune_at = (2 * self.tasks.len()).max(64);
		}
		self.tasks.push(Arc::downgrade(task));
	}
}

struct Woken {
	/// Tasks woken since the loop last looked.
	tasks: Vec<Arc<Task>>,
	/// A callback on the loop's thread is polling the woken tasks, and looks again before it
	/// returns: a task woken meanwhile needs no byte on the socket pair.
	draining: bool,
	/// A `release` is scheduled (`call_soon`) for the start of the next iteration, so the loop
	/// does not sleep before it looks: no byte either.
	scheduled: bool,
	/// The next send on a loop-driven connection may be written at once (`Bridge::send_now`);
	/// the first since the loop last delivered results or ran a `release`.
	send_now: bool,
	/// Sends on loop-driven connections waiting for the scheduled `release`.
	waiting_sends: usize,
}

impl Default for Woken {
	fn default() -> Self {
		Self { tasks: Vec::new(), draining: false, scheduled: false, send_now: true, waiting_sends: 0 }
	}
}

impl Shared {
	fn push(&self, task: Arc<Task>) {
		let signal = {
			let mut woken = lock(&self.woken);
			woken.tasks.push(task);
			woken.tasks.len() == 1 && !woken.draining && !woken.scheduled
		};
		if signal {
			// Full socket buffer (WouldBlock): a wake-up is pending anyway. Other errors mean the
			// loop's end is gone, and nobody waits for the result.
			let _ = (&self.wake).write(&[1]);
		}
	}

	/// Poll the woken tasks on the loop's thread, and those they wake, until none is left or
	/// `ROUNDS_PER_CALLBACK` rounds have run (then a `release` is scheduled for the rest).
	pub fn run_woken(self: &Arc<Self>, py: Python<'_>) {
		self.run_rounds(py, false, true);
	}

	/// `wake` (a socket's readiness waking its peer task), then `run_woken`: what `wake` wakes
	/// is polled here, so it needs no byte on the socket pair.
	pub fn wake_and_run(self: &Arc<Self>, py: Python<'_>, wake: impl FnOnce()) {
		lock(&self.woken).draining = true;
		wake();
		self.run_rounds(py, false, true);
	}

	/// `run_woken`. `released`: called by the scheduled `release`, which is no longer scheduled;
	/// `rearm`: the next send may be written at once again (not after a send written at once).
	fn run_rounds(self: &Arc<Self>, py: Python<'_>, released: bool, rearm: bool) {
		bury_the_dead();
		for round in 0..ROUNDS_PER_CALLBACK {
			let tasks = {
				let mut woken = lock(&self.woken);
				if released && round == 0 {
					woken.scheduled = false;
					woken.waiting_sends = 0;
				}
				if woken.tasks.is_empty() {
					woken.draining = false;
					woken.send_now |= rearm;
					return;
				}
				woken.draining = true;
				std::mem::take(&mut woken.tasks)
			};
			for task in tasks {
				// One failure (which would be a bug) must not strand the tasks after it.
				if let Err(error) = task.poll(py) {
					error.write_unraisable(py, None);
				}
			}
		}
		// Still busy: the rest at the next iteration, after the loop's other callbacks.
		let scheduled = self.schedule_release(py, None);
		{
			let mut woken = lock(&self.woken);
			woken.draining = false;
			woken.send_now |= rearm;
		}
		if let Err(error) = scheduled {
			// A loop that cannot schedule is closing; the byte is the last resort.
			error.write_unraisable(py, None);
			let _ = (&self.wake).write(&[1]);
		}
	}

	/// Have `release` run at the start of the loop's next iteration, unless it is scheduled
	/// already. `event_loop`: the loop, when the caller has it at hand.
	fn schedule_release(&self, py: Python<'_>, event_loop: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
		if std::mem::replace(&mut lock(&self.woken).scheduled, true) {
			return Ok(());
		}
		let scheduled = match event_loop {
			Some(event_loop) => event_loop.call_method1(intern!(py, "call_soon"), (&self.release,)),
			None => self
				.loop_ref(py)
				.and_then(|event_loop| event_loop.call_method1(intern!(py, "call_soon"), (&self.release,))),
		};
		if let Err(error) = scheduled {
			// Not scheduled (a closed loop): release now rather than never.
			lock(&self.woken).scheduled = false;
			drop(std::mem::take(&mut *lock(&self.holds)));
			return Err(error);
		}
		Ok(())
	}

	/// The loop, or `ConnectionClosed` if it is gone.
	fn loop_ref<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
		let event_loop = self.event_loop.bind(py).call0()?;
		if event_loop.is_none() {
			return Err(ConnectionClosed::new_err("the event loop is gone"));
		}
		Ok(event_loop)
	}

	/// The loop is closed or gone: park every peer task in its connection (see `Task::park`),
	/// and drop every task still waiting or woken (nobody will take its result), letting go of
	/// the handles they hold.
	fn shut(&self) {
		if self.closed.swap(true, Ordering::AcqRel) {
			return;
		}
		drop(std::mem::take(&mut *lock(&self.holds)));
		let peers = std::mem::take(&mut *lock(&self.peers));
		for task in peers {
			task.park();
		}
		let waiting = std::mem::take(&mut lock(&self.waiting).tasks);
		for task in waiting.iter().filter_map(Weak::upgrade) {
			task.abandon();
		}
		// Dropping a peer wakes its requests' tasks; each dropped future may wake more. Bounded:
		// a task dropped is never queued again.
		loop {
			let tasks = std::mem::take(&mut lock(&self.woken).tasks);
			if tasks.is_empty() {
				break;
			}
			for task in tasks {
				task.abandon();
			}
		}
	}

	/// Whether the loop is closed (or gone), shutting its peers down if nobody had noticed yet.
	fn loop_closed(&self, py: Python<'_>) -> bool {
		if self.closed.load(Ordering::Acquire) {
			return true;
		}
		let closed = match self.loop_ref(py) {
			Ok(event_loop) => {
				event_loop.call_method0(intern!(py, "is_closed")).and_then(|closed| closed.is_truthy()).unwrap_or(true)
			},
			Err(_) => true,
		};
		if closed {
			self.shut();
		}
		closed
	}
}

impl Drop for Shared {
	fn drop(&mut self) {
		// The last reference may be a waker's, under a lock of peerwire's: no future is dropped
		// here.
		let woken = std::mem::take(&mut lock(&self.woken).tasks);
		for task in woken {
			task.bury();
		}
		let peers = std::mem::take(&mut *lock(&self.peers));
		for task in peers {
			task.bury();
		}
	}
}

/// A future that had to wait (and the asyncio future its result goes to), or a peer task.
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
	/// Where the result goes; `None` for a peer task, whose result nobody takes.
	target: Option<Target>,
	/// The connection of a peer task, to park it in when its loop closes.
	conn: Weak<Conn>,
}

/// The asyncio future of a task.
struct Target {
	future: Py<PyAny>,
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
			Some(shared) if !shared.closed.load(Ordering::Acquire) => shared.push(self.clone()),
			// The loop and its bridge are gone: nobody can take the result, so let go of the
			// future and the handles it holds; but not here, since a waker may be called under
			// the lock that dropping a handle takes.
			_ => self.bury(),
		}
	}
}

/// Futures let go of by a waker: dropped at the next safe point (`bury`).
static GRAVEYARD: Mutex<Vec<Slot>> = Mutex::new(Vec::new());
/// The graveyard holds something: spares the hot path its lock.
static BURIED: AtomicBool = AtomicBool::new(false);

/// Drop what wakers have let go of: called where no lock of peerwire's is held (at the start of
/// an operation, in the loop's callbacks).
pub fn bury_the_dead() {
	if BURIED.swap(false, Ordering::AcqRel) {
		let dead = std::mem::take(&mut *lock(&GRAVEYARD));
		drop(dead);
	}
}

impl Task {
	/// Move the future to the graveyard (see `bury_the_dead`), unless it is being polled (then
	/// it is the poller's to finish: this is a wake-up from inside its own poll).
	fn bury(&self) {
		let slot = match self.slot.try_lock() {
			Ok(mut slot) => slot.take(),
			Err(_) => None,
		};
		if let Some(slot) = slot {
			lock(&GRAVEYARD).push(slot);
			BURIED.store(true, Ordering::Release);
		}
	}

	/// Drop the future (and what it holds), unless it is being polled (as for `bury`). Only
	/// where no lock of peerwire's is held.
	fn abandon(&self) {
		let slot = match self.slot.try_lock() {
			Ok(mut slot) => slot.take(),
			Err(_) => None,
		};
		// Outside the lock: dropping a peer task wakes its requests' tasks.
		drop(slot);
	}

	/// A peer task whose loop has closed: its future waits in its connection for the next loop
	/// that uses it (`check_home`), or is dropped with the connection's last Python object.
	fn park(&self) {
		let slot = match self.slot.try_lock() {
			Ok(mut slot) => slot.take(),
			Err(_) => None,
		};
		let Some(slot) = slot else { return };
		match slot.conn.upgrade() {
			Some(conn) => {
				conn.socket.forget();
				*lock(&conn.parked) = Some(slot.future);
			},
			// Nobody can use the connection again: close it.
			None => drop(slot),
		}
	}

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
		// Not under the task's lock: setting the result calls into Python, and dropping a peer
		// task's future wakes other tasks.
		drop(slot);
		let Some(target) = done.target else {
			// A peer task has ended; its bridge lets go of it.
			drop(done.future);
			if let Some(shared) = self.shared.upgrade() {
				lock(&shared.peers).retain(|peer| !Arc::ptr_eq(peer, self));
			}
			return Ok(());
		};
		drop(done.future);
		let future = target.future.bind(py);
		future.call_method1(intern!(py, "remove_done_callback"), (target.on_cancel,))?;
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

/// The bridge of one event loop (kept in a weak-keyed dictionary by the loop).
#[pyclass(module = "peerwire", frozen)]
pub struct Bridge {
	shared: Arc<Shared>,
}

impl Bridge {
	/// Before a send: make sure a `release` is scheduled (`call_soon`) for the start of the
	/// loop's next iteration, so that the peer task this send wakes is polled then, with the
	/// other sends of this iteration, at no cost beyond queueing it. A send on a runtime peer
	/// also gives its `hold` on the peer task's wake-up, kept until that release, or until
	/// `SENDS_PER_WAKEUP` sends are held.
	pub fn before_send(&self, py: Python<'_>, event_loop: &Bound<'_, PyAny>, hold: Option<Hold>) -> PyResult<()> {
		if let Some(hold) = hold {
			let full = {
				let mut holds = lock(&self.shared.holds);
				holds.push(hold);
				if holds.len() >= SENDS_PER_WAKEUP { std::mem::take(&mut *holds) } else { Vec::new() }
			};
			// Released outside the lock: each wakes its peer task.
			drop(full);
		}
		self.shared.schedule_release(py, Some(event_loop))
	}

	/// Whether a send on a loop-driven connection is to be written at once, in this call,
	/// rather than by the `release` at the start of the loop's next iteration: the first send
	/// since the loop last delivered results (or ran a release) is, so that a lone request costs
	/// no extra iteration of the loop (`call_soon`, `epoll_wait`, the callback); the sends after
	/// it in the same iteration (the other coroutines resumed by one batch of responses) wait for
	/// the release and go out together, but every `SENDS_PER_WRITE`th of them is written at once
	/// with those before it. If so, the caller sends, then calls `sent_now`.
	pub fn send_now(&self) -> bool {
		let mut woken = lock(&self.shared.woken);
		if woken.draining {
			return false;
		}
		if woken.send_now && !woken.scheduled {
			woken.send_now = false;
		} else if woken.waiting_sends + 1 >= SENDS_PER_WRITE {
			woken.waiting_sends = 0;
		} else {
			woken.waiting_sends += 1;
			return false;
		}
		// The peer task the send wakes is polled by `sent_now`: no byte.
		woken.draining = true;
		true
	}

	/// After a send that `send_now` allowed: poll the peer task it woke, which writes it.
	pub fn sent_now(&self, py: Python<'_>) {
		self.shared.run_rounds(py, false, false);
	}

	pub fn shared(&self) -> &Arc<Shared> {
		&self.shared
	}
}

impl Drop for Bridge {
	fn drop(&mut self) {
		// The loop is gone (garbage collected): so are the takers of every result.
		self.shared.shut();
	}
}

/// The loop's reader callback for the bridge's socket pair; dropped by the loop when it closes
/// (its selector lets go of every registration), which is how the bridge learns of it.
#[pyclass(module = "peerwire", frozen)]
struct Watch {
	shared: Weak<Shared>,
	reader: UnixStream,
}

#[pymethods]
impl Watch {
	/// Poll every woken task, handing the results of the finished ones to their asyncio futures.
	#[pyo3(signature = (*_args))]
	fn __call__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) {
		let mut buffer = [0u8; 256];
		while let Ok(n) = (&self.reader).read(&mut buffer) {
			if n < buffer.len() {
				break;
			}
		}
		if let Some(shared) = self.shared.upgrade() {
			shared.run_woken(py);
		}
	}
}

impl Drop for Watch {
	fn drop(&mut self) {
		if let Some(shared) = self.shared.upgrade() {
			shared.shut();
		}
	}
}

/// The callback `call_soon` runs at the start of the loop's next iteration: releases the holds
/// taken by sends, then polls the woken tasks (the peer tasks the sends woke, the requests whose
/// results came meanwhile).
#[pyclass(module = "peerwire", frozen)]
struct Release {
	shared: OnceLock<Weak<Shared>>,
}

#[pymethods]
impl Release {
	fn __call__(&self, py: Python<'_>) {
		let Some(shared) = self.shared.get().and_then(Weak::upgrade) else { return };
		drop(std::mem::take(&mut *lock(&shared.holds)));
		shared.run_rounds(py, true, true);
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
	bury_the_dead();
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
	let release = Bound::new(py, Release { shared: OnceLock::new() })?;
	let shared = Arc::new(Shared {
		woken: Mutex::new(Woken::default()),
		wake,
		event_loop: py.import("weakref")?.getattr("ref")?.call1((event_loop,))?.unbind(),
		release: release.clone().into_any().unbind(),
		holds: Mutex::new(Vec::new()),
		peers: Mutex::new(Vec::new()),
		waiting: Mutex::new(Waiting::default()),
		closed: AtomicBool::new(false),
	});
	let _ = release.get().shared.set(Arc::downgrade(&shared));
	let watch = Bound::new(py, Watch { shared: Arc::downgrade(&shared), reader })?;
	let bridge = Bound::new(py, Bridge { shared })?;
	event_loop.call_method1("add_reader", (fd, watch))?;
	bridges.set_item(event_loop, &bridge)?;
	Ok(bridge)
}

/// One loop-driven connection, shared by its Python objects (the peer and its requests): the
/// loop that drives it, and its peer task while no loop does.
pub struct Conn {
	home: Mutex<Weak<Shared>>,
	/// The peer task, parked when its loop closed, until another loop takes it.
	parked: Mutex<Option<BoxFuture>>,
	socket: Rehome,
}

/// The connection of a loop-driven peer (and of each of its requests).
pub type Home = Arc<Conn>;

/// Check that an operation on a loop-driven object of `home` runs on its loop (that of `bridge`
/// and `event_loop`): its socket is watched by that loop's selector and its peer task polled on
/// that loop's thread only. A connection whose loop has closed moves to this one (as a peer on
/// the runtime used to, a peer made in one `asyncio.run` works in the next); one whose loop is
/// still open raises `RuntimeError`.
pub fn check_home(
	py: Python<'_>,
	home: Option<&Home>,
	event_loop: &Bound<'_, PyAny>,
	bridge: &Bound<'_, Bridge>,
) -> PyResult<()> {
	let Some(conn) = home else { return Ok(()) };
	let shared = &bridge.get().shared;
	let old = lock(&conn.home).clone();
	// A weak pointer points at the allocation, which lives while it does: equal pointers are the
	// same bridge.
	if std::ptr::eq(old.as_ptr(), Arc::as_ptr(shared)) {
		return Ok(());
	}
	if let Some(old) = old.upgrade() {
		// Closed (then its peers are parked by now), or running elsewhere.
		if !old.loop_closed(py) {
			return Err(PyRuntimeError::new_err(
				"this peerwire connection belongs to another event loop (the one it was connected or \
				 accepted on), which is still open: use it from that loop, or connect again from this one",
			));
		}
	}
	if shared.closed.load(Ordering::Acquire) {
		return Err(ConnectionClosed::new_err("the event loop is closed"));
	}
	*lock(&conn.home) = Arc::downgrade(shared);
	conn.socket.rehome(py, event_loop, shared)?;
	let parked = lock(&conn.parked).take();
	// None: the peer task has ended (or its loop was left mid-poll); its handles report that.
	if let Some(future) = parked {
		start_peer(py, shared, conn, future)?;
	}
	Ok(())
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
	let target = Target { future: future.clone().unbind(), on_cancel: on_cancel.unbind() };
	*lock(&task.slot) = Some(Slot { future: boxed, target: Some(target), conn: Weak::new() });
	lock(&shared.waiting).add(&task);
	task.poll(py)?;
	Ok(future)
}

/// Run `peer` (a connection's `Peer::run`, its socket `socket`) as a task of the loop's bridge
/// `shared`, which owns it until it ends; it is polled once at once. Returns the connection's
/// `Home`, for its Python objects.
pub fn spawn_peer<F>(py: Python<'_>, shared: &Arc<Shared>, socket: Rehome, peer: F) -> PyResult<Home>
where
	F: Future<Output = ()> + Send + 'static,
{
	if shared.closed.load(Ordering::Acquire) {
		return Err(ConnectionClosed::new_err("the event loop is closed"));
	}
	let boxed: BoxFuture = Box::pin(async move {
		peer.await;
		Box::new(|py: Python<'_>| Ok(py.None())) as Deliver
	});
	let conn = Arc::new(Conn { home: Mutex::new(Arc::downgrade(shared)), parked: Mutex::new(None), socket });
	start_peer(py, shared, &conn, boxed)?;
	Ok(conn)
}

/// Make `future`, the peer task of `conn`, a task of `shared` and poll it.
fn start_peer(py: Python<'_>, shared: &Arc<Shared>, conn: &Arc<Conn>, future: BoxFuture) -> PyResult<()> {
	let task = Arc::new(Task {
		shared: Arc::downgrade(shared),
		queued: AtomicBool::new(false),
		slot: Mutex::new(Some(Slot { future, target: None, conn: Arc::downgrade(conn) })),
	});
	lock(&shared.peers).push(task.clone());
	task.poll(py)
}
