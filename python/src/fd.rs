//! Descriptors: taking them from Python arguments (duplicated) and handing received ones to
//! Python as owned `Fd` objects.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyList;

/// A descriptor received with a message, owned by this object.
///
/// It is closed by `close()`, at the end of a `with` block, or when the object is garbage
/// collected, unless `detach()` handed it over first.
#[pyclass(module = "peerwire", frozen)]
pub struct Fd {
	fd: Mutex<Option<OwnedFd>>,
}

impl Fd {
	pub fn new(fd: OwnedFd) -> Self {
		Self { fd: Mutex::new(Some(fd)) }
	}

	fn slot(&self) -> std::sync::MutexGuard<'_, Option<OwnedFd>> {
		// A panic while holding this lock cannot happen (no code in the critical sections panics);
		// recover the data rather than propagate poison.
		self.fd.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
	}
}

#[pymethods]
impl Fd {
	/// The descriptor number; `ValueError` once closed or detached.
	fn fileno(&self) -> PyResult<RawFd> {
		self.slot().as_ref().map(AsRawFd::as_raw_fd).ok_or_else(|| PyValueError::new_err("descriptor is closed"))
	}

	/// Close the descriptor (nothing happens if it is already closed or detached).
	fn close(&self) {
		drop(self.slot().take());
	}

	/// Give up ownership: return the descriptor number, which the caller must close.
	fn detach(&self) -> PyResult<RawFd> {
		self.slot().take().map(IntoRawFd::into_raw_fd).ok_or_else(|| PyValueError::new_err("descriptor is closed"))
	}

	/// Whether the descriptor is closed or detached.
	#[getter]
	fn closed(&self) -> bool {
		self.slot().is_none()
	}

	fn __enter__(slf: Py<Self>) -> Py<Self> {
		slf
	}

	#[pyo3(signature = (*_args))]
	fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) {
		self.close();
	}

	fn __repr__(&self) -> String {
		match self.slot().as_ref() {
			Some(fd) => format!("<peerwire.Fd {}>", fd.as_raw_fd()),
			None => "<peerwire.Fd closed>".to_string(),
		}
	}
}

/// Received descriptors as a Python list of `Fd` objects.
pub fn to_list(py: Python<'_>, fds: Vec<OwnedFd>) -> PyResult<Bound<'_, PyList>> {
	let list = PyList::empty(py);
	for fd in fds {
		list.append(Bound::new(py, Fd::new(fd))?)?;
	}
	Ok(list)
}

/// Duplicates of the descriptors given as `fds=[...]`: ints or objects with `fileno()`. The
/// caller keeps its own; the duplicates are owned from the moment they exist, so an error on a
/// later item closes the earlier ones.
pub fn from_args(fds: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<OwnedFd>> {
	let Some(fds) = fds else { return Ok(Vec::new()) };
	if fds.is_none() {
		return Ok(Vec::new());
	}
	if fds.is_instance_of::<pyo3::types::PyString>() || fds.is_instance_of::<pyo3::types::PyBytes>() {
		return Err(PyTypeError::new_err("fds must be a list of ints or objects with fileno(), not a string"));
	}
	let iter = fds.try_iter().map_err(|_| {
		PyTypeError::new_err(format!("fds must be a list of ints or objects with fileno(), not {}", type_name(fds)))
	})?;
	let mut owned = Vec::new();
	for (index, item) in iter.enumerate() {
		let item = item?;
		let raw = if item.is_instance_of::<pyo3::types::PyBool>() {
			return Err(PyTypeError::new_err(format!("fds[{index}] must be an int or have fileno(), not bool")));
		} else if let Ok(raw) = item.extract::<i64>() {
			raw
		} else if item.hasattr("fileno")? {
			item.call_method0("fileno")?
				.extract::<i64>()
				.map_err(|_| PyTypeError::new_err(format!("fds[{index}].fileno() must return an int")))?
		} else {
			return Err(PyTypeError::new_err(format!(
				"fds[{index}] must be an int or have fileno(), not {}",
				type_name(&item)
			)));
		};
		let raw = RawFd::try_from(raw)
			.ok()
			.filter(|raw| *raw >= 0)
			.ok_or_else(|| PyValueError::new_err(format!("fds[{index}] is {raw}, not a valid descriptor number")))?;
		owned.push(duplicate(raw).map_err(|error| {
			PyValueError::new_err(format!("fds[{index}]: cannot duplicate descriptor {raw}: {error}"))
		})?);
	}
	Ok(owned)
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
	value.get_type().name().map(|name| name.to_string()).unwrap_or_else(|_| "?".to_string())
}

/// `fcntl(raw, F_DUPFD_CLOEXEC)`: a new descriptor for the same open file, owned here.
#[allow(unsafe_code)]
fn duplicate(raw: RawFd) -> std::io::Result<OwnedFd> {
	// SAFETY: fcntl with F_DUPFD_CLOEXEC reads no memory of ours; for a number that is not an open
	// descriptor it fails with EBADF. Python code owns `raw` and we never close it.
	let new = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 0) };
	if new < 0 {
		return Err(std::io::Error::last_os_error());
	}
	// SAFETY: `new` was just returned by fcntl: an open descriptor that nothing else owns.
	Ok(unsafe { OwnedFd::from_raw_fd(new) })
}
