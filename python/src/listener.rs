//! Addresses, `Config`, `connect`, `listen` and `Listener`, and the blocking `call`.
//!
//! Connecting and accepting run on the module's runtime; a TCP or Unix stream socket is then
//! taken off the runtime's reactor and handed to the loop that awaited it, whose thread drives
//! it from then on (see `loopsock`). Seqpacket peers, and the blocking `call`'s, stay on the
//! runtime.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use peerwire::{
	CancellationToken, ConnectionInfo, Endian, PeerHandle, StreamTransport, TcpListener, TcpPeer, TcpTransport,
	UnixBody, UnixSeqpacketListener, UnixSeqpacketPeer, UnixStreamListener, UnixStreamPeer, UnixStreamTransport,
};
use pyo3::exceptions::{PyStopAsyncIteration, PyTypeError, PyValueError};
use pyo3::prelude::*;
use tokio::sync::Mutex;

use crate::error::{ConnectionClosed, Timeout, remote_error, to_py};
use crate::loopsock;
use crate::message::RsMessage;
use crate::peer::{NewPeer, OutBody, Peer, ReadH, WriteH};
use crate::{future, timeout_from};

/// Where to connect or listen.
enum Address {
	Tcp(String),
	Unix(PathBuf),
	Seqpacket(PathBuf),
}

const EXPECTED: &str = "expected tcp://HOST:PORT, unix:///PATH or seqpacket:///PATH";

impl Address {
	fn parse(text: &str) -> PyResult<Self> {
		let Some((scheme, rest)) = text.split_once("://") else {
			return Err(PyValueError::new_err(format!("{text:?}: {EXPECTED}")));
		};
		if rest.is_empty() {
			return Err(PyValueError::new_err(format!("{text:?}: {EXPECTED}")));
		}
		match scheme {
			"tcp" => match rest.rsplit_once(':').map(|(_, port)| port.parse::<u16>()) {
				Some(Ok(_)) => Ok(Self::Tcp(rest.to_string())),
				_ => Err(PyValueError::new_err(format!("{text:?} needs a port: tcp://HOST:PORT"))),
			},
			"unix" => Ok(Self::Unix(PathBuf::from(rest))),
			"seqpacket" => Ok(Self::Seqpacket(PathBuf::from(rest))),
			other => Err(PyValueError::new_err(format!("{text:?}: unknown scheme {other}://, {EXPECTED}"))),
		}
	}
}

/// Limits and settings of a connection (defaults as in Rust's `peerwire::Config`).
///
/// Sizes are in bytes, times in seconds; `None` leaves the default.
#[pyclass(module = "peerwire", frozen)]
#[derive(Clone)]
pub struct Config {
	inner: peerwire::Config,
}

#[pymethods]
impl Config {
	#[new]
	#[pyo3(signature = (*, endian = None, max_body_len_read = None, max_body_len_write = None, max_fds_read = None,
		max_fds_write = None, max_open_requests = None, max_unanswered_incoming = None, close_timeout = None,
		frame_timeout = None, idle_timeout = None))]
	#[allow(clippy::too_many_arguments)]
	fn new(
		endian: Option<&str>,
		max_body_len_read: Option<usize>,
		max_body_len_write: Option<usize>,
		max_fds_read: Option<usize>,
		max_fds_write: Option<usize>,
		max_open_requests: Option<usize>,
		max_unanswered_incoming: Option<usize>,
		close_timeout: Option<f64>,
		frame_timeout: Option<f64>,
		idle_timeout: Option<f64>,
	) -> PyResult<Self> {
		let mut inner = peerwire::Config::default();
		if let Some(endian) = endian {
			inner = inner.with_endian(match endian {
				"little" => Endian::Little,
				"big" => Endian::Big,
				"native" => Endian::Native,
				other => {
					return Err(PyValueError::new_err(format!(
						"endian must be \"little\", \"big\" or \"native\", not {other:?}"
					)));
				},
			});
		}
		if let Some(value) = max_body_len_read {
			inner = inner.with_max_body_len_read(value);
		}
		if let Some(value) = max_body_len_write {
			inner = inner.with_max_body_len_write(value);
		}
		if let Some(value) = max_fds_read {
			inner = inner.with_max_fds_read(value);
		}
		if let Some(value) = max_fds_write {
			inner = inner.with_max_fds_write(value);
		}
		if let Some(value) = max_open_requests {
			inner = inner.with_max_open_requests(value);
		}
		if let Some(value) = max_unanswered_incoming {
			inner = inner.with_max_unanswered_incoming(value);
		}
		if let Some(value) = timeout_from(close_timeout)? {
			inner = inner.with_close_timeout(value);
		}
		if let Some(value) = timeout_from(frame_timeout)? {
			inner = inner.with_frame_timeout(Some(value));
		}
		if let Some(value) = timeout_from(idle_timeout)? {
			inner = inner.with_idle_timeout(Some(value));
		}
		Ok(Self { inner })
	}

	fn __repr__(&self) -> String {
		format!("<peerwire.{:?}>", self.inner)
	}
}

fn config_from(config: Option<&Bound<'_, PyAny>>) -> PyResult<peerwire::Config> {
	match config {
		None => Ok(peerwire::Config::default()),
		Some(config) if config.is_none() => Ok(peerwire::Config::default()),
		Some(config) => match config.cast::<Config>() {
			Ok(config) => Ok(config.get().inner.clone()),
			Err(_) => Err(PyTypeError::new_err("config must be a peerwire.Config or None")),
		},
	}
}

fn stream_peer(handle: PeerHandle<Bytes>, info: ConnectionInfo) -> NewPeer {
	let (read, write) = handle.split();
	NewPeer { read: ReadH::Stream(read), write: WriteH::Stream(write), info, home: None }
}

fn seq_peer(handle: PeerHandle<UnixBody>, info: ConnectionInfo) -> NewPeer {
	let (read, write) = handle.split();
	NewPeer { read: ReadH::Seq(read), write: WriteH::Seq(write), info, home: None }
}

/// A connection made or accepted on the runtime, on its way to Python: a TCP or Unix stream socket
/// is handed to the loop that takes it (its peer task starts there), a seqpacket one keeps its
/// peer task on the runtime.
enum Connected {
	Runtime(NewPeer),
	Loop(LoopPeer),
}

/// A connected TCP or Unix stream socket, taken off the runtime's reactor, not yet on a loop.
struct LoopPeer {
	socket: Socket,
	info: ConnectionInfo,
	config: peerwire::Config,
}

enum Socket {
	Tcp(std::net::TcpStream),
	Unix(std::os::unix::net::UnixStream),
}

impl LoopPeer {
	/// The socket of `transport` (which set it up: no delay on TCP, credentials on Unix), in
	/// non-blocking mode, off the runtime.
	fn tcp(transport: TcpTransport, config: peerwire::Config) -> std::io::Result<Self> {
		let (read, write, info) = transport.into_parts();
		let stream = read.reunite(write).map_err(std::io::Error::other)?.into_std()?;
		Ok(Self { socket: Socket::Tcp(stream), info, config })
	}

	fn unix(transport: UnixStreamTransport, config: peerwire::Config) -> std::io::Result<Self> {
		let (read, write, info) = transport.into_parts();
		let stream = read.reunite(write).map_err(std::io::Error::other)?.into_std()?;
		Ok(Self { socket: Socket::Unix(stream), info, config })
	}

	/// Start the peer task on the running loop, whose thread reads and writes the socket from
	/// now on.
	fn start<'py>(self, py: Python<'py>) -> PyResult<Bound<'py, Peer>> {
		let (event_loop, bridge) = crate::bridge::current(py)?;
		let shared = bridge.get().shared();
		let (read, write) = match self.socket {
			Socket::Tcp(stream) => loopsock::split_tcp(py, stream, &event_loop, shared)?,
			Socket::Unix(stream) => loopsock::split_unix(py, stream, &event_loop, shared)?,
		};
		let socket = loopsock::Rehome::of(&read);
		let transport = StreamTransport::with_info(read, write, &self.config, self.info.clone());
		let (peer, handle) = peerwire::Peer::new(transport, &self.config);
		let (read, write) = handle.split();
		// How it ended reaches every handle; nobody else asks.
		let home = crate::bridge::spawn_peer(py, shared, socket, async move { drop(peer.run().await) })?;
		Bound::new(py, Peer::new(py, ReadH::Stream(read), WriteH::Stream(write), &self.info, Some(home))?)
	}
}

impl<'py> IntoPyObject<'py> for Connected {
	type Target = Peer;
	type Output = Bound<'py, Peer>;
	type Error = PyErr;

	fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, Peer>> {
		match self {
			Connected::Runtime(peer) => peer.into_pyobject(py),
			Connected::Loop(peer) => peer.start(py),
		}
	}
}

/// Connect with the peer task on the runtime (for the blocking `call`).
async fn connect_on_runtime(address: Address, config: peerwire::Config) -> Result<NewPeer, peerwire::Error> {
	Ok(match address {
		Address::Tcp(host_port) => {
			let (handle, info) = TcpPeer::connect(host_port.as_str(), &config).await?;
			stream_peer(handle, info)
		},
		Address::Unix(path) => {
			let (handle, info) = UnixStreamPeer::connect(path, &config).await?;
			stream_peer(handle, info)
		},
		Address::Seqpacket(path) => {
			let (handle, info) = UnixSeqpacketPeer::connect(path, &config).await?;
			seq_peer(handle, info)
		},
	})
}

/// Connect for the running loop: a stream socket is connected on the runtime, then driven by the
/// loop.
async fn connect_to(address: Address, config: peerwire::Config) -> Result<Connected, peerwire::Error> {
	Ok(match address {
		Address::Tcp(host_port) => {
			let stream = tokio::net::TcpStream::connect(host_port.as_str()).await?;
			Connected::Loop(LoopPeer::tcp(TcpTransport::from_socket(stream, &config)?, config)?)
		},
		Address::Unix(path) => {
			let stream = tokio::net::UnixStream::connect(path).await?;
			Connected::Loop(LoopPeer::unix(UnixStreamTransport::from_socket(stream, &config)?, config)?)
		},
		address @ Address::Seqpacket(_) => Connected::Runtime(connect_on_runtime(address, config).await?),
	})
}

/// Connect to `url` (`tcp://HOST:PORT`, `unix:///PATH` or `seqpacket:///PATH`); returns a `Peer`.
#[pyfunction]
#[pyo3(signature = (url, config = None))]
pub fn connect<'py>(py: Python<'py>, url: &str, config: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
	let address = Address::parse(url)?;
	let config = config_from(config)?;
	future(py, None, async move { connect_to(address, config).await.map_err(to_py) })
}

enum ListenerH {
	Tcp(TcpListener),
	Unix(UnixStreamListener),
	Seq(UnixSeqpacketListener),
}

/// Accepts connections: `await listener.accept()`, or `async for peer in listener`.
///
/// `close()` stops it (a pending accept raises `ConnectionClosed`) and removes a Unix socket file.
#[pyclass(module = "peerwire", frozen)]
pub struct Listener {
	inner: Arc<Mutex<Option<ListenerH>>>,
	stop: CancellationToken,
	/// The address it listens on, with the port the system chose for `tcp://HOST:0`.
	#[pyo3(get)]
	url: String,
}

struct NewListener {
	inner: ListenerH,
	url: String,
}

impl<'py> IntoPyObject<'py> for NewListener {
	type Target = Listener;
	type Output = Bound<'py, Listener>;
	type Error = PyErr;

	fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, Listener>> {
		Bound::new(
			py,
			Listener { inner: Arc::new(Mutex::new(Some(self.inner))), stop: CancellationToken::new(), url: self.url },
		)
	}
}

/// Who a listener admits: the `allow_*` arguments of `listen`.
type Check = Arc<dyn Fn(&ConnectionInfo) -> bool + Send + Sync>;

/// The admission check of `listen`'s `allow_uids`, `allow_gids` and `allow_ips`: a client
/// matching any list given is admitted (as the CLI's `--allow-*`). `None` if none is given.
fn admission_check(
	allow_uids: Option<Vec<u32>>,
	allow_gids: Option<Vec<u32>>,
	allow_ips: Option<Vec<String>>,
) -> PyResult<Option<Check>> {
	let mut checks: Vec<Check> = Vec::new();
	if let Some(uids) = allow_uids {
		checks.push(Arc::new(peerwire::admission::uids(uids)));
	}
	if let Some(gids) = allow_gids {
		checks.push(Arc::new(peerwire::admission::gids(gids)));
	}
	if let Some(ips) = allow_ips {
		let ips = ips
			.iter()
			.map(|ip| {
				ip.parse::<std::net::IpAddr>()
					.map_err(|_| PyValueError::new_err(format!("{ip:?} is not an IP address")))
			})
			.collect::<PyResult<Vec<_>>>()?;
		checks.push(Arc::new(peerwire::admission::ip_addresses(ips)));
	}
	if checks.is_empty() {
		return Ok(None);
	}
	Ok(Some(Arc::new(move |info: &ConnectionInfo| checks.iter().any(|check| check(info)))))
}

/// `listener` with `check` as its admission check, if there is one: a refused client is closed
/// before anything is read from it, and logged at `warn`.
fn admitting<A: peerwire::Acceptor>(
	mut listener: peerwire::Listener<A>,
	check: Option<Check>,
) -> peerwire::Listener<A> {
	if let Some(check) = check {
		listener.set_admission(move |info| check(info));
	}
	listener
}

async fn bind(
	address: Address,
	config: peerwire::Config,
	check: Option<Check>,
) -> Result<NewListener, peerwire::Error> {
	Ok(match address {
		Address::Tcp(host_port) => {
			let listener = admitting(TcpListener::bind(host_port.as_str(), &config).await?, check);
			let url = format!("tcp://{}", listener.local_addr()?);
			NewListener { inner: ListenerH::Tcp(listener), url }
		},
		Address::Unix(path) => {
			let listener = admitting(UnixStreamListener::bind(&path, &config).await?, check);
			NewListener { inner: ListenerH::Unix(listener), url: format!("unix://{}", path.display()) }
		},
		Address::Seqpacket(path) => {
			let listener = admitting(UnixSeqpacketListener::bind(&path, &config).await?, check);
			NewListener { inner: ListenerH::Seq(listener), url: format!("seqpacket://{}", path.display()) }
		},
	})
}

/// Listen on `url` (`tcp://HOST:PORT`, port 0 for any; `unix:///PATH`; `seqpacket:///PATH`);
/// returns a `Listener`. A stale Unix socket file is replaced; a live one is not.
///
/// `allow_uids`, `allow_gids` (Unix sockets: the client process's user and primary group, as
/// the kernel saw them at connect) and `allow_ips` (TCP): admit only clients matching any list
/// given; the others are closed before anything is read from them. `ValueError` for an IP
/// address that does not parse.
#[pyfunction]
#[pyo3(signature = (url, config = None, *, allow_uids = None, allow_gids = None, allow_ips = None))]
pub fn listen<'py>(
	py: Python<'py>,
	url: &str,
	config: Option<&Bound<'py, PyAny>>,
	allow_uids: Option<Vec<u32>>,
	allow_gids: Option<Vec<u32>>,
	allow_ips: Option<Vec<String>>,
) -> PyResult<Bound<'py, PyAny>> {
	let address = Address::parse(url)?;
	let config = config_from(config)?;
	let check = admission_check(allow_uids, allow_gids, allow_ips)?;
	future(py, None, async move { bind(address, config, check).await.map_err(to_py) })
}

/// `Ok(None)` once the listener is closed.
async fn accept(inner: Arc<Mutex<Option<ListenerH>>>, stop: CancellationToken) -> PyResult<Option<Connected>> {
	let mut guard = tokio::select! {
		guard = inner.lock() => guard,
		() = stop.cancelled() => return Ok(None),
	};
	let Some(listener) = guard.as_mut() else { return Ok(None) };
	let accepted = tokio::select! {
		accepted = async {
			Ok::<_, peerwire::Error>(match listener {
				ListenerH::Tcp(l) => {
					let config = l.config().clone();
					Connected::Loop(LoopPeer::tcp(l.accept_transport().await?, config)?)
				},
				ListenerH::Unix(l) => {
					let config = l.config().clone();
					Connected::Loop(LoopPeer::unix(l.accept_transport().await?, config)?)
				},
				ListenerH::Seq(l) => {
					let (handle, info) = l.accept().await?;
					Connected::Runtime(seq_peer(handle, info))
				},
			})
		} => accepted,
		() = stop.cancelled() => {
			// Closed while accepting: drop the listener here (removing its socket file).
			guard.take();
			return Ok(None);
		},
	};
	accepted.map(Some).map_err(to_py)
}

#[pymethods]
impl Listener {
	/// The next connection, as a `Peer`. `ConnectionClosed` once the listener is closed.
	fn accept<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
		let (inner, stop) = (self.inner.clone(), self.stop.clone());
		future(py, None, async move {
			accept(inner, stop).await?.ok_or_else(|| ConnectionClosed::new_err("the listener is closed"))
		})
	}

	fn __aiter__(slf: Py<Self>) -> Py<Self> {
		slf
	}

	/// `async for peer in listener`: every connection until the listener is closed.
	fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
		let (inner, stop) = (self.inner.clone(), self.stop.clone());
		future(py, None, async move { accept(inner, stop).await?.ok_or_else(|| PyStopAsyncIteration::new_err(())) })
	}

	/// Stop listening: the socket closes (a Unix socket file is removed), a pending accept ends.
	/// Connections already accepted stay up.
	fn close(&self) {
		self.stop.cancel();
		if let Ok(mut guard) = self.inner.try_lock() {
			guard.take();
		}
	}

	fn __aenter__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
		let py = slf.py();
		let this = slf.unbind();
		future(py, None, async move { Ok(this) })
	}

	#[pyo3(signature = (*_args))]
	fn __aexit__<'py>(&self, py: Python<'py>, _args: &Bound<'py, pyo3::types::PyTuple>) -> PyResult<Bound<'py, PyAny>> {
		self.close();
		future(py, None, async move { Ok(false) })
	}

	fn __repr__(&self) -> String {
		format!("<peerwire.Listener {}>", self.url)
	}
}

/// Blocking: connect to `url`, send one request, wait for its response and close. Responder
/// updates are skipped. Returns the response `Message`; an error response raises `RemoteError`.
/// `timeout` (seconds) bounds the whole call (`Timeout`). The GIL is released while waiting.
#[pyfunction]
#[pyo3(signature = (url, service_id, body = None, *, fds = None, timeout = None, config = None))]
pub fn call<'py>(
	py: Python<'py>,
	url: &str,
	service_id: i64,
	body: Option<&Bound<'py, PyAny>>,
	fds: Option<&Bound<'py, PyAny>>,
	timeout: Option<f64>,
	config: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, crate::message::Message>> {
	let service_id = crate::service_id_from(service_id)?;
	let address = Address::parse(url)?;
	let seqpacket = matches!(address, Address::Seqpacket(_));
	let empty = pyo3::types::PyBytes::new(py, b"");
	let out = OutBody::from_args(body.unwrap_or(empty.as_any()), fds, seqpacket)?;
	let timeout = timeout_from(timeout)?;
	let config = config_from(config)?;
	let runtime = crate::runtime();
	let work = async move {
		let peer = connect_on_runtime(address, config).await?;
		let response = match peer.write {
			WriteH::Stream(write) => {
				let mut request = write.send_request(service_id, out.data).await?;
				request.recv_response().await.map(RsMessage::from_bytes)
			},
			WriteH::Seq(write) => {
				let mut request = write.send_request(service_id, UnixBody::new(out.data, out.fds)).await?;
				request.recv_response().await.map(RsMessage::from_unix)
			},
		};
		drop(peer.read);
		response
	};
	let result = py.detach(move || {
		runtime.block_on(async move {
			match timeout {
				Some(limit) => {
					tokio::time::timeout(limit, work).await.unwrap_or_else(|_| Err(peerwire::Error::timeout(limit)))
				},
				None => work.await,
			}
		})
	});
	let response = result.map_err(|error| match error.kind() {
		peerwire::ErrorKind::Timeout => Timeout::new_err(error.to_string()),
		_ => to_py(error),
	})?;
	if response.is_error() {
		return Err(remote_error(response.service_id, &response.error_text()));
	}
	response.into_pyobject(py)
}
