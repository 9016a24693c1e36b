//! Memory per connection, measured as the process's resident set size (RSS).
//!
//! - A remote that writes requests and never reads holds at most about the configured budgets of
//!   the server's memory (`Config::max_buffered_incoming` for what waits in the queues,
//!   `Config::max_unanswered_incoming` for received requests until they are answered, and
//!   `Config::max_buffered_outgoing`), whatever the message size and whether the application
//!   answers in turn or spawns a task per request.
//! - An idle connection that once carried a large message costs kilobytes, not the message size.
//!
//! Each measurement runs in a child process of this test binary (the `child_*` tests, ignored in
//! a normal run), so that no other test's memory mixes in, with glibc told to return freed large
//! buffers to the kernel at once (`MALLOC_MMAP_THRESHOLD_`, which also turns off its dynamic
//! threshold, and `MALLOC_TRIM_THRESHOLD_`). The child prints one result line; the parent test
//! parses it and judges. The parents take turns, so that the children do not compete for the
//! two cores.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::{Address, Application, Kind};
use common::within;
use peerwire::{Body, Config, PeerHandle, ReceivedMessage};

const MIB: usize = 1 << 20;

/// The budgets of the flood tests, each way.
const BUDGET: usize = 16 * MIB;

/// What the measurement itself, the runtime and the allocator may add on top of what a test
/// allows for the messages.
const SLACK: usize = 48 * MIB;

/// The prefix of the line a child prints.
const RESULT: &str = "PEERWIRE-MEMORY";

/// The longest a child may take; it is killed and the test fails after that.
const CHILD_TIMEOUT: Duration = Duration::from_secs(240);

/// One child at a time.
static CHILDREN: Mutex<()> = Mutex::new(());

/// The resident set size of this process, in bytes.
fn rss() -> usize {
	let status = std::fs::read_to_string("/proc/self/status").unwrap();
	let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("VmRSS in /proc/self/status");
	let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
	kib * 1024
}

fn runtime() -> tokio::runtime::Runtime {
	tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Run the ignored test `child` in a child process and return the values of its result line.
fn measure_in_child(child: &str) -> HashMap<String, usize> {
	let _turn = CHILDREN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
	let mut process = Command::new(std::env::current_exe().unwrap())
		.args(["--exact", child, "--ignored", "--nocapture", "--test-threads=1"])
		.env("MALLOC_MMAP_THRESHOLD_", "131072")
		.env("MALLOC_TRIM_THRESHOLD_", "131072")
		.stdin(Stdio::null())
		.stdout(Stdio::piped())
		.stderr(Stdio::piped())
		.spawn()
		.unwrap();
	let mut stdout = process.stdout.take().unwrap();
	let mut stderr = process.stderr.take().unwrap();
	let stdout = std::thread::spawn(move || {
		let mut text = String::new();
		let _ = stdout.read_to_string(&mut text);
		text
	});
	let stderr = std::thread::spawn(move || {
		let mut text = String::new();
		let _ = stderr.read_to_string(&mut text);
		text
	});
	let start = Instant::now();
	let status = loop {
		if let Some(status) = process.try_wait().unwrap() {
			break Some(status);
		}
		if start.elapsed() > CHILD_TIMEOUT {
			let _ = process.kill();
			let _ = process.wait();
			break None;
		}
		std::thread::sleep(Duration::from_millis(50));
	};
	let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
	let Some(status) = status else {
		panic!("{child}: still running after {CHILD_TIMEOUT:?}, killed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
	};
	assert!(status.success(), "{child} failed: {status}\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
	// The harness may have printed the test's name on the same line.
	let line =
		stdout.lines().find_map(|line| line.find(RESULT).map(|at| &line[at + RESULT.len()..])).unwrap_or_else(|| {
			panic!("{child} printed no result line (did it run?)\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
		});
	line.split_whitespace()
		.map(|pair| {
			let (key, value) = pair.split_once('=').unwrap();
			(key.to_string(), value.parse().unwrap())
		})
		.collect()
}

fn report(values: &[(&str, usize)]) {
	let pairs: Vec<String> = values.iter().map(|(key, value)| format!("{key}={value}")).collect();
	println!("\n{RESULT} {}", pairs.join(" "));
}

fn mib(bytes: usize) -> String {
	format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// How the server application handles requests.
#[derive(Debug, Clone, Copy)]
enum App {
	/// Takes one request, answers it with its body, takes the next.
	Echo,
	/// Spawns a task per request, which answers with the body.
	SpawnPerRequest,
}

async fn server(kind: Kind, config: Config, app: App) -> Address {
	common::raw::listen(kind, "memory", &config, app).await
}

impl Application for App {
	async fn serve<B: Body>(self, mut peer: PeerHandle<B>) {
		while let Ok(message) = peer.recv_message().await {
			let ReceivedMessage::Request(request, body) = message else { continue };
			match self {
				App::Echo => {
					if request.send_response(0, body).await.is_err() {
						break;
					}
				},
				App::SpawnPerRequest => {
					tokio::spawn(async move {
						let _ = request.send_response(0, body).await;
					});
				},
			}
		}
	}
}

/// A raw client's socket, blocking, with a write timeout.
enum RawSocket {
	Tcp(std::net::TcpStream),
	Unix(std::os::unix::net::UnixStream),
}

impl RawSocket {
	fn connect(address: &Address, write_timeout: Duration) -> Self {
		match address {
			Address::Tcp(address) => {
				let stream = std::net::TcpStream::connect(address).unwrap();
				stream.set_write_timeout(Some(write_timeout)).unwrap();
				Self::Tcp(stream)
			},
			Address::Unix(path) => {
				let stream = std::os::unix::net::UnixStream::connect(path).unwrap();
				stream.set_write_timeout(Some(write_timeout)).unwrap();
				Self::Unix(stream)
			},
			#[cfg(feature = "unix-seqpacket")]
			Address::Seqpacket(_) => unreachable!("the flood tests use the stream transports"),
		}
	}

	fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
		match self {
			Self::Tcp(stream) => stream.write_all(bytes),
			Self::Unix(stream) => stream.write_all(bytes),
		}
	}
}

/// The flood, in a child process: a raw client writes `count` requests with `body_len` byte
/// bodies (one buffer, its request id changed each time) until its writes block for a second,
/// and never reads. RSS is sampled from the start of the flood until two seconds after the
/// client stopped.
fn flood(kind: Kind, app: App, body_len: usize, count: u32) {
	let config = Config::default()
		.with_max_body_len_read(body_len + MIB)
		.with_max_body_len_write(body_len + MIB)
		.with_max_buffered_incoming(BUDGET)
		.with_max_unanswered_incoming(BUDGET)
		.with_max_buffered_outgoing(BUDGET);
	let runtime = runtime();

	// The frame, touched before the baseline so that it is part of it.
	let mut frame = vec![0x5a; 16 + body_len];
	frame[0..4].copy_from_slice(&((12 + body_len) as u32).to_le_bytes());
	frame[4..8].copy_from_slice(&0u32.to_le_bytes());
	frame[12..16].copy_from_slice(&1i32.to_le_bytes());

	let address = runtime.block_on(server(kind, config, app));
	std::thread::sleep(Duration::from_millis(200));
	let baseline = rss();

	let client = std::thread::spawn(move || {
		let mut socket = RawSocket::connect(&address, Duration::from_secs(1));
		let mut written = 0;
		for request_id in 0..count {
			frame[8..12].copy_from_slice(&request_id.to_le_bytes());
			if socket.write_all(&frame).is_err() {
				break;
			}
			written += 1;
		}
		// The socket stays open (and unread) until the measurement is done.
		(written, socket)
	});
	let mut peak = baseline;
	while !client.is_finished() {
		peak = peak.max(rss());
		std::thread::sleep(Duration::from_millis(20));
	}
	let blocked = Instant::now();
	while blocked.elapsed() < Duration::from_secs(2) {
		peak = peak.max(rss());
		std::thread::sleep(Duration::from_millis(20));
	}
	let (written, socket) = client.join().unwrap();
	report(&[
		("baseline", baseline),
		("peak", peak),
		("growth", peak - baseline),
		("written", written as usize),
		("count", count as usize),
		("body_len", body_len),
	]);
	drop(socket);
	drop(runtime);
}

/// Judge a flood: the peak growth must stay within the budgets, one message being read and one
/// more in flight between the stages, and [`SLACK`].
fn check_flood(child: &str, body_len: usize, before: &str) {
	let values = measure_in_child(child);
	let growth = values["growth"];
	let bound = 2 * BUDGET + 2 * (body_len + 16) + SLACK;
	eprintln!(
		"{child}: RSS growth {} (bound {}), {} of {} requests of {} written before the client blocked",
		mib(growth),
		mib(bound),
		values["written"],
		values["count"],
		mib(body_len)
	);
	assert!(
		growth <= bound,
		"{child}: a client that never reads grew the server's memory by {} (bound {}: budgets {} in + {} out, \
		 2 messages of {}, {} slack); {} of {} requests of {} were written before the client's writes blocked. \
		 {before}",
		mib(growth),
		mib(bound),
		mib(BUDGET),
		mib(BUDGET),
		mib(body_len),
		mib(SLACK),
		values["written"],
		values["count"],
		mib(body_len),
	);
}

const ECHO_BODY: usize = 16 * MIB;
const ECHO_COUNT: u32 = 40;
const SPAWN_BODY: usize = MIB;
const SPAWN_COUNT: u32 = 400;

#[test]
fn a_reader_that_never_reads_is_bounded_echo_tcp() {
	check_flood(
		"child_flood_echo_tcp",
		ECHO_BODY,
		"Before the fix, the responses waited in the 128-message write queue, unbounded in bytes.",
	);
}

#[test]
fn a_reader_that_never_reads_is_bounded_echo_unix() {
	check_flood(
		"child_flood_echo_unix",
		ECHO_BODY,
		"Before the fix, the responses waited in the 128-message write queue, unbounded in bytes.",
	);
}

#[test]
fn a_reader_that_never_reads_is_bounded_spawn_per_request_tcp() {
	check_flood(
		"child_flood_spawn_tcp",
		SPAWN_BODY,
		"Before the fix, requests handed to their tasks were no longer charged, so reading never stopped.",
	);
}

#[test]
fn a_reader_that_never_reads_is_bounded_spawn_per_request_unix() {
	check_flood(
		"child_flood_spawn_unix",
		SPAWN_BODY,
		"Before the fix, requests handed to their tasks were no longer charged, so reading never stopped.",
	);
}

#[test]
#[ignore = "run in a child process by a_reader_that_never_reads_is_bounded_echo_tcp"]
fn child_flood_echo_tcp() {
	flood(Kind::Tcp, App::Echo, ECHO_BODY, ECHO_COUNT);
}

#[test]
#[ignore = "run in a child process by a_reader_that_never_reads_is_bounded_echo_unix"]
fn child_flood_echo_unix() {
	flood(Kind::Unix, App::Echo, ECHO_BODY, ECHO_COUNT);
}

#[test]
#[ignore = "run in a child process by a_reader_that_never_reads_is_bounded_spawn_per_request_tcp"]
fn child_flood_spawn_tcp() {
	flood(Kind::Tcp, App::SpawnPerRequest, SPAWN_BODY, SPAWN_COUNT);
}

#[test]
#[ignore = "run in a child process by a_reader_that_never_reads_is_bounded_spawn_per_request_unix"]
fn child_flood_spawn_unix() {
	flood(Kind::Unix, App::SpawnPerRequest, SPAWN_BODY, SPAWN_COUNT);
}

/// Connections in the idle test.
const IDLE_CONNECTIONS: usize = 16;
/// The message each connection carries once (streams; seqpacket carries what one datagram can,
/// at most this).
const IDLE_BODY: usize = 4 * MIB;
/// The smallest body worth measuring: below it, the old cost is too close to the bound.
#[cfg(feature = "unix-seqpacket")]
const IDLE_MIN_BODY: usize = MIB;

/// A client peer of `kind` connected to `address`.
async fn connect_tcp_or_unix(address: &Address, config: &Config) -> PeerHandle {
	match address {
		Address::Tcp(address) => peerwire::TcpPeer::connect(address, config).await.unwrap().0,
		Address::Unix(path) => peerwire::UnixStreamPeer::connect(path, config).await.unwrap().0,
		#[cfg(feature = "unix-seqpacket")]
		Address::Seqpacket(_) => unreachable!(),
	}
}

/// The idle test, in a child process: `IDLE_CONNECTIONS` peerwire clients each echo one large
/// message through a peerwire echo server, then every connection stays open and idle. Both ends
/// of each connection are in this process. RSS is measured ~200 ms later (the lowest of five
/// samples 50 ms apart) against a baseline taken before the first connection.
fn idle(kind: Kind) {
	let runtime = runtime();
	let stream_config =
		Config::default().with_max_body_len_read(IDLE_BODY + MIB).with_max_body_len_write(IDLE_BODY + MIB);
	let (body_len, baseline, settled) = runtime.block_on(async {
		match kind {
			Kind::Tcp | Kind::Unix => {
				let body = Bytes::from(vec![0x5a; IDLE_BODY]);
				let address = server(kind, stream_config.clone(), App::Echo).await;
				tokio::time::sleep(Duration::from_millis(200)).await;
				let baseline = rss();
				let mut clients = Vec::new();
				for _ in 0..IDLE_CONNECTIONS {
					let client = within(connect_tcp_or_unix(&address, &stream_config)).await;
					let mut request = within(client.send_request(1, body.clone())).await.unwrap();
					let response = within(request.recv_response()).await.unwrap();
					assert_eq!(response.body.len(), IDLE_BODY);
					drop((request, response));
					clients.push(client);
				}
				let settled = settle().await;
				drop(clients);
				(IDLE_BODY, baseline, settled)
			},
			#[cfg(feature = "unix-seqpacket")]
			Kind::Seqpacket => idle_seqpacket().await,
		}
	});
	report(&[
		("baseline", baseline),
		("settled", settled),
		("growth", settled.saturating_sub(baseline)),
		("body_len", body_len),
		("connections", IDLE_CONNECTIONS),
	]);
	drop(runtime);
}

/// Wait for the connections to go idle; then the lowest of five samples.
async fn settle() -> usize {
	tokio::time::sleep(Duration::from_millis(200)).await;
	let mut lowest = usize::MAX;
	for _ in 0..5 {
		lowest = lowest.min(rss());
		tokio::time::sleep(Duration::from_millis(50)).await;
	}
	lowest
}

/// The seqpacket variant: the body is as large as one datagram can be (at most [`IDLE_BODY`]);
/// a body of 0 reports that the system allows too small a datagram to measure anything.
#[cfg(feature = "unix-seqpacket")]
async fn idle_seqpacket() -> (usize, usize, usize) {
	use peerwire::transport::seqpacket::UnixSeqpacketTransport;
	use peerwire::{Peer, UnixBody};

	let config = Config::default();
	let max_datagram = UnixSeqpacketTransport::pair(&config).unwrap().0.max_datagram_len();
	let body_len = IDLE_BODY.min(max_datagram - 12);
	if body_len < IDLE_MIN_BODY {
		eprintln!("the largest seqpacket datagram is {max_datagram} bytes (net.core.wmem_max): too small to measure");
		return (0, 0, 0);
	}
	let body = Bytes::from(vec![0x5a; body_len]);
	let Address::Seqpacket(path) = server(Kind::Seqpacket, config.clone(), App::Echo).await else { unreachable!() };
	tokio::time::sleep(Duration::from_millis(200)).await;
	let baseline = rss();
	let mut clients = Vec::new();
	for _ in 0..IDLE_CONNECTIONS {
		let transport = within(UnixSeqpacketTransport::connect(&path, &config)).await.unwrap();
		let client: PeerHandle<UnixBody> = Peer::spawn(transport, &config);
		let mut request = within(client.send_request(1, UnixBody::from(body.clone()))).await.unwrap();
		let response = within(request.recv_response()).await.unwrap();
		assert_eq!(response.body.data.len(), body_len);
		drop((request, response));
		clients.push(client);
	}
	let settled = settle().await;
	drop(clients);
	(body_len, baseline, settled)
}

/// Judge the idle test: at most a quarter of the message size per connection (both of its ends
/// together), where holding on to the buffers costs at least the message size per end.
fn check_idle(child: &str) {
	let values = measure_in_child(child);
	let body_len = values["body_len"];
	if body_len == 0 {
		eprintln!("{child}: skipped, the system's datagrams are too small");
		return;
	}
	let growth = values["growth"];
	let connections = values["connections"];
	let bound = connections * body_len / 4;
	eprintln!("{child}: RSS growth {} (bound {}) for {connections} idle connections", mib(growth), mib(bound));
	assert!(
		growth <= bound,
		"{child}: {connections} idle connections (client and server in this process), each of which once \
		 echoed one message of {}, still hold {} (bound {}: a quarter of the message per connection). Holding \
		 on to the large read buffers costs about one message per end of each connection.",
		mib(body_len),
		mib(growth),
		mib(bound),
	);
}

#[test]
fn idle_connections_release_large_buffers_tcp() {
	check_idle("child_idle_tcp");
}

#[test]
fn idle_connections_release_large_buffers_unix() {
	check_idle("child_idle_unix");
}

#[cfg(feature = "unix-seqpacket")]
#[test]
fn idle_connections_release_large_buffers_seqpacket() {
	check_idle("child_idle_seqpacket");
}

#[test]
#[ignore = "run in a child process by idle_connections_release_large_buffers_tcp"]
fn child_idle_tcp() {
	idle(Kind::Tcp);
}

#[test]
#[ignore = "run in a child process by idle_connections_release_large_buffers_unix"]
fn child_idle_unix() {
	idle(Kind::Unix);
}

#[cfg(feature = "unix-seqpacket")]
#[test]
#[ignore = "run in a child process by idle_connections_release_large_buffers_seqpacket"]
fn child_idle_seqpacket() {
	idle(Kind::Seqpacket);
}
