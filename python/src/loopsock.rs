//! A TCP or Unix stream socket driven by the asyncio loop's own selector: `LoopRead` and
//! `LoopWrite`, the two halves a `peerwire::StreamTransport` is made of.
//!
//! Reads and writes are plain non-blocking system calls, made on the loop's thread while the
//! bridge polls the connection's peer task (see `bridge`). When one would block, the half keeps
//! the task's waker and has the loop watch the descriptor (`loop.add_reader`,
//! `loop.add_writer`); the loop calls a `Readiness` back when the socket is ready, which wakes
//! the task and polls it at once, in the same callback. No thread is involved: a request and its
//! response cost the loop one callback each way, as a hand-written asyncio protocol does.
//!
//! The selector is level-triggered, so a registration must not outlive the wait it serves: one
//! that fires while nobody waits (the peer has paused reading under back-pressure, or its write
//! went through meanwhile) is removed there and then, and made again at the next `WouldBlock`.
//! While the peer keeps reading, the reader stays registered: one `add_reader` per connection in
//! the steady state, not one per message. Both registrations are removed, and the descriptor
//! closed, when the socket is dropped (the peer task ended, or its loop closed).

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::bridge::Shared;

/// The bytes made ready (zeroed) for one read, at first and after small reads. The transport
/// hands over spare capacity that is not initialised, and safe code must initialise it before a
/// `read` may fill it: 16 KiB holds hundreds of small frames, and zeroing it costs far less than
/// the system call.
const READ_MIN: usize = 16 * 1024;
/// The most made ready for one read, reached by doubling while reads fill what was offered (a
/// large body): zeroing 256 KiB costs a small part of copying it in, and a loopback socket
/// rarely holds more.
const READ_MAX: usize = 256 * 1024;

/// The connected socket.
enum Stream {
	Tcp(TcpStream),
	Unix(UnixStream),
}

/// Which way a registration watches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
	Read,
	Write,
}

/// What the two halves share.
struct Inner {
	stream: Stream,
	fd: RawFd,
	/// The last read found the socket empty (it would block, or it returned less than asked),
	/// and the loop has not reported it readable since: a read now would only fail, so the
	/// reader waits for the loop without the system call (two failed reads per round trip
	/// otherwise, one after the response and one after the request is written).
	drained: AtomicBool,
	watch: Mutex<Watch>,
}

/// The loop driving the socket, the wakers waiting for it, and what the loop watches.
struct Watch {
	/// The loop, weakly (`weakref.ref`): a socket must not keep its loop alive, since the loop's
	/// bridge keeps the socket's peer task.
	event_loop: Py<PyAny>,
	/// The bridge of that loop, for the callbacks to poll the woken tasks.
	bridge: Weak<Shared>,
	reader: Option<Waker>,
	writer: Option<Waker>,
	reading: bool,
	writing: bool,
}

fn lock(mutex: &Mutex<Watch>) -> MutexGuard<'_, Watch> {
	// Nothing under this lock can panic half-way; a poisoned lock is safe to keep using.
	mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A socket on the loop `event_loop` (whose bridge is `bridge`): its read and write halves.
/// `stream` must be in non-blocking mode (as `into_std` of a tokio stream leaves it).
pub fn split_tcp(
	py: Python<'_>,
	stream: TcpStream,
	event_loop: &Bound<'_, PyAny>,
	bridge: &Arc<Shared>,
) -> PyResult<(LoopRead, LoopWrite)> {
	let fd = stream.as_raw_fd();
	split(py, Stream::Tcp(stream), fd, event_loop, bridge)
}

/// [`split_tcp`] for a Unix stream socket.
pub fn split_unix(
	py: Python<'_>,
	stream: UnixStream,
	event_loop: &Bound<'_, PyAny>,
	bridge: &Arc<Shared>,
) -> PyResult<(LoopRead, LoopWrite)> {
	let fd = stream.as_raw_fd();
	split(py, Stream::Unix(stream), fd, event_loop, bridge)
}

fn split(
	py: Python<'_>,
	stream: Stream,
	fd: RawFd,
	event_loop: &Bound<'_, PyAny>,
	bridge: &Arc<Shared>,
) -> PyResult<(LoopRead, LoopWrite)> {
	let watch = Watch::new(py, event_loop, bridge)?;
	let inner = Arc::new(Inner { stream, fd, drained: AtomicBool::new(false), watch: Mutex::new(watch) });
	Ok((LoopRead { inner: inner.clone(), chunk: READ_MIN }, LoopWrite(inner)))
}

impl Watch {
	fn new(py: Python<'_>, event_loop: &Bound<'_, PyAny>, bridge: &Arc<Shared>) -> PyResult<Self> {
		let event_loop = py.import(intern!(py, "weakref"))?.getattr(intern!(py, "ref"))?.call1((event_loop,))?.unbind();
		Ok(Self {
			event_loop,
			bridge: Arc::downgrade(bridge),
			reader: None,
			writer: None,
			reading: false,
			writing: false,
		})
	}
}

/// A weak handle on a socket, to move it to another loop.
pub struct Rehome(Weak<Inner>);

impl Rehome {
	pub fn of(read: &LoopRead) -> Self {
		Self(Arc::downgrade(&read.inner))
	}

	/// The socket's loop has closed (its selector forgot every registration): forget them too,
	/// and the wakers of its peer task, dropped with that loop's bridge.
	pub fn forget(&self) {
		if let Some(inner) = self.0.upgrade() {
			let mut watch = lock(&inner.watch);
			let wakers = (watch.reader.take(), watch.writer.take());
			watch.reading = false;
			watch.writing = false;
			drop(watch);
			// Not under the lock: dropping a waker may drop a task.
			drop(wakers);
		}
	}

	/// Let `event_loop` (whose bridge is `bridge`) drive the socket from now on; its peer task
	/// registers it there at its next poll.
	pub fn rehome(&self, py: Python<'_>, event_loop: &Bound<'_, PyAny>, bridge: &Arc<Shared>) -> PyResult<()> {
		if let Some(inner) = self.0.upgrade() {
			let watch = Watch::new(py, event_loop, bridge)?;
			// The new loop has reported nothing yet: read to find out.
			inner.drained.store(false, Ordering::Release);
			let mut old = std::mem::replace(&mut *lock(&inner.watch), watch);
			// Whoever waited on the old loop waits on a loop that reports nothing any more: wake
			// them, so that they read (or write) again and register with the new one. A peer task
			// polls its reader only once the reader's waker was woken.
			for waker in [old.reader.take(), old.writer.take()].into_iter().flatten() {
				waker.wake();
			}
			drop(old);
		}
		Ok(())
	}
}

impl Inner {
	fn read(&self, buffer: &mut [u8]) -> io::Result<usize> {
		match &self.stream {
			Stream::Tcp(stream) => (&*stream).read(buffer),
			Stream::Unix(stream) => (&*stream).read(buffer),
		}
	}

	fn write(&self, buffer: &[u8]) -> io::Result<usize> {
		match &self.stream {
			Stream::Tcp(stream) => (&*stream).write(buffer),
			Stream::Unix(stream) => (&*stream).write(buffer),
		}
	}

	fn write_vectored(&self, buffers: &[IoSlice<'_>]) -> io::Result<usize> {
		match &self.stream {
			Stream::Tcp(stream) => (&*stream).write_vectored(buffers),
			Stream::Unix(stream) => (&*stream).write_vectored(buffers),
		}
	}

	fn shutdown(&self) -> io::Result<()> {
		match &self.stream {
			Stream::Tcp(stream) => stream.shutdown(Shutdown::Write),
			Stream::Unix(stream) => stream.shutdown(Shutdown::Write),
		}
	}

	/// An operation would block: keep `waker` and make sure the loop watches the socket.
	fn park(self: &Arc<Self>, way: Way, waker: &Waker) -> io::Result<()> {
		let register = {
			let mut watch = lock(&self.watch);
			let watch = &mut *watch;
			let (slot, registered) = match way {
				Way::Read => (&mut watch.reader, &mut watch.reading),
				Way::Write => (&mut watch.writer, &mut watch.writing),
			};
			match slot {
				Some(kept) if kept.will_wake(waker) => {},
				_ => *slot = Some(waker.clone()),
			}
			!std::mem::replace(registered, true)
		};
		if !register {
			return Ok(());
		}
		// Polled by the bridge, on the loop's thread, which holds the GIL: attaching is a check.
		let registered = Python::attach(|py| self.register(py, way));
		registered.map_err(|error| {
			let mut watch = lock(&self.watch);
			match way {
				Way::Read => watch.reading = false,
				Way::Write => watch.writing = false,
			}
			io::Error::other(error.to_string())
		})
	}

	/// The loop driving the socket (a `weakref.ref`), and its bridge.
	fn home(&self, py: Python<'_>) -> (Py<PyAny>, Weak<Shared>) {
		let watch = lock(&self.watch);
		(watch.event_loop.clone_ref(py), watch.bridge.clone())
	}

	fn register(self: &Arc<Self>, py: Python<'_>, way: Way) -> PyResult<()> {
		let event_loop = self.home(py).0.bind(py).call0()?;
		if event_loop.is_none() {
			return Err(crate::error::ConnectionClosed::new_err("the event loop of this connection is gone"));
		}
		let callback = Readiness { inner: Arc::downgrade(self), way };
		let method = match way {
			Way::Read => intern!(py, "add_reader"),
			Way::Write => intern!(py, "add_writer"),
		};
		event_loop.call_method1(method, (self.fd, callback))?;
		Ok(())
	}

	/// The loop reports the socket ready: wake the waiting task, or stop watching if none waits.
	fn ready(&self, py: Python<'_>, way: Way) {
		if way == Way::Read {
			self.drained.store(false, Ordering::Release);
		}
		let waker = {
			let mut watch = lock(&self.watch);
			let waker = match way {
				Way::Read => watch.reader.take(),
				Way::Write => watch.writer.take(),
			};
			if waker.is_none() {
				match way {
					Way::Read => watch.reading = false,
					Way::Write => watch.writing = false,
				}
			}
			waker
		};
		match waker {
			Some(waker) => waker.wake(),
			// Level-triggered: left registered, the loop would call again at once, and forever.
			None => self.unregister(py, way),
		}
	}

	fn unregister(&self, py: Python<'_>, way: Way) {
		let Ok(event_loop) = self.home(py).0.bind(py).call0() else { return };
		if event_loop.is_none() {
			return;
		}
		let method = match way {
			Way::Read => intern!(py, "remove_reader"),
			Way::Write => intern!(py, "remove_writer"),
		};
		// A closed loop has forgotten its registrations already (and says so with `False`).
		if let Err(error) = event_loop.call_method1(method, (self.fd,)) {
			error.write_unraisable(py, None);
		}
	}
}

impl Drop for Inner {
	fn drop(&mut self) {
		let (reading, writing) = {
			let watch = lock(&self.watch);
			(watch.reading, watch.writing)
		};
		if reading || writing {
			// Before the descriptor closes (with `stream`, after this): its number may be reused
			// at once, and a registration left behind would watch someone else's socket.
			Python::attach(|py| {
				if reading {
					self.unregister(py, Way::Read);
				}
				if writing {
					self.unregister(py, Way::Write);
				}
			});
		}
	}
}

/// The loop's callback for a registered socket.
#[pyclass(module = "peerwire", frozen)]
struct Readiness {
	inner: Weak<Inner>,
	way: Way,
}

#[pymethods]
impl Readiness {
	#[pyo3(signature = (*_args))]
	fn __call__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) {
		let Some(inner) = self.inner.upgrade() else { return };
		// The woken peer task, and the tasks it wakes in turn (the requests whose responses it
		// read), run now, in this callback: no byte on the bridge's socket pair, no second
		// callback.
		match inner.home(py).1.upgrade() {
			Some(bridge) => bridge.wake_and_run(py, || inner.ready(py, self.way)),
			None => inner.ready(py, self.way),
		}
	}
}

/// The read half of a loop-driven socket.
pub struct LoopRead {
	inner: Arc<Inner>,
	/// How much to offer the next read (`READ_MIN` to `READ_MAX`).
	chunk: usize,
}

/// The write half of a loop-driven socket.
pub struct LoopWrite(Arc<Inner>);

impl AsyncRead for LoopRead {
	fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
		let this = self.get_mut();
		if this.inner.drained.load(Ordering::Acquire) {
			this.inner.park(Way::Read, cx.waker())?;
			return Poll::Pending;
		}
		let want = buf.remaining().min(this.chunk);
		loop {
			let target = buf.initialize_unfilled_to(want);
			match this.inner.read(target) {
				Ok(n) => {
					if n > 0 && n < want {
						// Short: the kernel had no more. The loop says when it has.
						this.inner.drained.store(true, Ordering::Release);
					}
					// Filled: a large body is coming, offer more next time; otherwise, back to
					// the small offer that suits small messages.
					this.chunk = if n == this.chunk { (n * 2).min(READ_MAX) } else { READ_MIN };
					buf.advance(n);
					return Poll::Ready(Ok(()));
				},
				Err(error) if error.kind() == io::ErrorKind::Interrupted => {},
				Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
					this.inner.drained.store(true, Ordering::Release);
					this.inner.park(Way::Read, cx.waker())?;
					return Poll::Pending;
				},
				Err(error) => return Poll::Ready(Err(error)),
			}
		}
	}
}

impl LoopWrite {
	fn poll_io(
		&self,
		cx: &mut Context<'_>,
		mut io: impl FnMut(&Inner) -> io::Result<usize>,
	) -> Poll<io::Result<usize>> {
		loop {
			match io(&self.0) {
				Ok(n) => return Poll::Ready(Ok(n)),
				Err(error) if error.kind() == io::ErrorKind::Interrupted => {},
				Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
					self.0.park(Way::Write, cx.waker())?;
					return Poll::Pending;
				},
				Err(error) => return Poll::Ready(Err(error)),
			}
		}
	}
}

impl AsyncWrite for LoopWrite {
	fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
		self.poll_io(cx, |inner| inner.write(buf))
	}

	fn poll_write_vectored(
		self: Pin<&mut Self>,
		cx: &mut Context<'_>,
		bufs: &[IoSlice<'_>],
	) -> Poll<io::Result<usize>> {
		self.poll_io(cx, |inner| inner.write_vectored(bufs))
	}

	fn is_write_vectored(&self) -> bool {
		true
	}

	fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
		// The kernel has every byte a write accepted; there is no buffer of our own.
		Poll::Ready(Ok(()))
	}

	fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
		// The remote may have gone already: its end of stream is what the peer reports.
		match self.0.shutdown() {
			Err(error) if error.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(error)),
			_ => Poll::Ready(Ok(())),
		}
	}
}
