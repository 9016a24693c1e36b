//! The listeners when the process runs out of file descriptors: `accept` fails with an error
//! (no panic, no hang), and the same listener works again once descriptors are free.
//!
//! Alone in its own test binary: it lowers RLIMIT_NOFILE and uses up every descriptor of the
//! process, which would break any test running beside it.

mod common;

use std::fs::File;

use common::{socket_path, within};
use peerwire::{
	Acceptor, Config, ErrorKind, Listener, PeerHandle, TcpListener, TcpPeer, UnixStreamListener, UnixStreamPeer,
};
use rustix::process::{Resource, getrlimit, setrlimit};

/// Never hold more than this many extra descriptors, whatever the limit says.
const MAX_HOARD: usize = 10_000;
const EMFILE: i32 = 24;

/// Descriptors used up, and the limit to restore once they are given back.
struct Exhausted {
	hoard: Vec<File>,
	original: rustix::process::Rlimit,
}

impl Drop for Exhausted {
	fn drop(&mut self) {
		self.hoard.clear();
		setrlimit(Resource::Nofile, self.original).unwrap();
	}
}

/// Use up every descriptor the process may open, until the returned value is dropped.
fn exhaust_descriptors() -> Exhausted {
	let open_now = std::fs::read_dir("/proc/self/fd").unwrap().count();
	let original = getrlimit(Resource::Nofile);
	// Lower the soft limit a little above what is open, so that the hoard stays small.
	let lowered = rustix::process::Rlimit { current: Some(open_now as u64 + 32), maximum: original.maximum };
	setrlimit(Resource::Nofile, lowered).unwrap();
	let mut hoard = Vec::new();
	let error = loop {
		match File::open("/dev/null") {
			Ok(file) => {
				hoard.push(file);
				assert!(hoard.len() < MAX_HOARD, "no descriptor limit reached");
			},
			Err(error) => break error,
		}
	};
	assert_eq!(error.raw_os_error(), Some(EMFILE), "{error}");
	Exhausted { hoard, original }
}

/// With a client already waiting in the backlog: out of descriptors, accept fails; once they are
/// free, the same listener accepts the waiting client and a new one, and serves both.
async fn survives_running_out<A: Acceptor>(
	listener: &mut Listener<A>,
	waiting: PeerHandle,
	connect: impl AsyncFnOnce() -> PeerHandle,
) where
	A::Transport: peerwire::Transport<Body = bytes::Bytes>,
{
	let mut request = waiting.send_request(1, "are you there?").await.unwrap();

	let exhausted = exhaust_descriptors();
	for _ in 0..3 {
		let error = within(listener.accept()).await.expect_err("accepted a connection without a descriptor");
		assert_eq!(error.kind(), ErrorKind::Io, "{error}");
		assert_eq!(error.io_error().and_then(|error| error.raw_os_error()), Some(EMFILE), "{error}");
	}
	drop(exhausted);

	// The client that waited through it all is served.
	let (mut server, _) = within(listener.accept()).await.unwrap();
	let (received, body) = within(server.recv_message()).await.unwrap().into_request().unwrap();
	received.send_response(0, body).await.unwrap();
	assert_eq!(within(request.recv_response()).await.unwrap().body, "are you there?");

	// And so is a new one.
	let (fresh, accepted) = tokio::join!(connect(), listener.accept());
	let (mut server, _) = accepted.unwrap();
	let mut request = fresh.send_request(2, "and me?").await.unwrap();
	let (received, body) = within(server.recv_message()).await.unwrap().into_request().unwrap();
	received.send_response(0, body).await.unwrap();
	assert_eq!(within(request.recv_response()).await.unwrap().body, "and me?");
}

#[tokio::test]
async fn listeners_survive_running_out_of_descriptors() {
	let config = Config::default();

	let mut listener = TcpListener::bind("127.0.0.1:0", config.clone()).await.unwrap();
	let address = listener.local_addr().unwrap();
	// The handshake completes in the kernel: the connection waits in the backlog to be accepted.
	let (waiting, _) = TcpPeer::connect(address, &config).await.unwrap();
	survives_running_out(&mut listener, waiting, async || TcpPeer::connect(address, &config).await.unwrap().0).await;

	let path = socket_path("accept-errors");
	let mut listener = UnixStreamListener::bind(&path, config.clone()).await.unwrap();
	let (waiting, _) = UnixStreamPeer::connect(&path, &config).await.unwrap();
	survives_running_out(&mut listener, waiting, async || UnixStreamPeer::connect(&path, &config).await.unwrap().0)
		.await;
	let _ = std::fs::remove_file(&path);
}
