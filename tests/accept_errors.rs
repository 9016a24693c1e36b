//! The listeners when the process runs out of file descriptors: `accept` neither fails nor
//! spins, it waits with a backoff (as documented on `Listener::accept`), and accepts the client
//! that waited through it all once descriptors are free again.
//!
//! Alone in its own test binary: it lowers RLIMIT_NOFILE and uses up every descriptor of the
//! process, which would break any test running beside it.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::{socket_path, within};
use peerwire::{Acceptor, Config, Listener, PeerHandle, TcpListener, TcpPeer, UnixStreamListener, UnixStreamPeer};
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

/// The CPU time this process has used so far, from a `/proc/self/stat` opened beforehand (no
/// descriptor can be opened while they are used up).
fn cpu_time(stat: &File) -> Duration {
	let mut buffer = [0; 4096];
	let len = stat.read_at(&mut buffer, 0).unwrap();
	let text = std::str::from_utf8(&buffer[..len]).unwrap();
	// The command name (field 2) is in parentheses and may hold spaces: count from after it.
	let fields: Vec<&str> = text[text.rfind(')').unwrap() + 2..].split(' ').collect();
	// utime and stime, fields 14 and 15 of the line, in clock ticks (100 a second on Linux).
	let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
	Duration::from_millis(ticks * 10)
}

/// With a client already waiting in the backlog: out of descriptors, accept keeps waiting
/// without spinning; once they are free, the same listener accepts the waiting client and a new
/// one, and serves both.
async fn survives_running_out<A: Acceptor>(
	listener: &mut Listener<A>,
	waiting: PeerHandle,
	connect: impl AsyncFnOnce() -> PeerHandle,
) where
	A::Transport: peerwire::Transport<Body = bytes::Bytes>,
{
	let mut request = waiting.send_request(1, "are you there?").await.unwrap();

	let stat = File::open("/proc/self/stat").unwrap();
	let exhausted = exhaust_descriptors();
	let cpu_before = cpu_time(&stat);
	let outcome = tokio::time::timeout(Duration::from_millis(500), listener.accept()).await;
	let cpu = cpu_time(&stat) - cpu_before;
	drop(exhausted);
	match outcome {
		Err(_elapsed) => {},
		Ok(Ok(_)) => panic!("accepted a connection without a descriptor"),
		Ok(Err(error)) => panic!("accept returned an error instead of waiting for descriptors: {error}"),
	}
	// Without a backoff, accept would retry at once and burn the whole half second.
	assert!(cpu < Duration::from_millis(100), "accept spun while out of descriptors: {cpu:?} of CPU in 500 ms");

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

	let mut listener = TcpListener::bind("127.0.0.1:0", &config).await.unwrap();
	let address = listener.local_addr().unwrap();
	// The handshake completes in the kernel: the connection waits in the backlog to be accepted.
	let (waiting, _) = TcpPeer::connect(address, &config).await.unwrap();
	survives_running_out(&mut listener, waiting, async || TcpPeer::connect(address, &config).await.unwrap().0).await;

	let path = socket_path("accept-errors");
	let mut listener = UnixStreamListener::bind(&path, &config).await.unwrap();
	let (waiting, _) = UnixStreamPeer::connect(&path, &config).await.unwrap();
	survives_running_out(&mut listener, waiting, async || UnixStreamPeer::connect(&path, &config).await.unwrap().0)
		.await;
	let _ = std::fs::remove_file(&path);
}
