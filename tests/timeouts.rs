//! Timeouts on the receiving side: `Config::frame_timeout` disconnects a remote that starts a
//! stream frame and never finishes it; `Config::idle_timeout` closes a connection with no request
//! open in either direction and no traffic for that long. Without them, a silent remote stays
//! connected.
//!
//! The remotes are raw sockets; the server is a peerwire listener that echoes requests.

mod common;

use std::time::{Duration, Instant};

use common::raw::{Address, Application, Kind, request_datagram, u32_at};
use common::within;
use peerwire::{Body, Config, PeerHandle, ReceivedMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The timeout under test, frame or idle.
const TIMEOUT: Duration = Duration::from_millis(200);
/// A close earlier than this came too soon (the timer measures from the frame's first byte or the
/// last traffic, both at or before the moment the test starts its clock).
const NOT_BEFORE: Duration = Duration::from_millis(150);
/// A close must come within this, however loaded the machine.
const CLOSED_WITHIN: Duration = Duration::from_secs(5);

/// Hold the request open (no response) this long, then answer.
const HOLD: i32 = 3;
const HOLD_FOR: Duration = Duration::from_millis(700);

const RESPONSE: u32 = 1;

async fn server(kind: Kind, config: Config) -> Address {
	common::raw::listen(kind, "timeouts", &config, Echo).await
}

#[derive(Clone)]
struct Echo;

impl Application for Echo {
	/// Answers every request with its body: at once, or after [`HOLD_FOR`] for service [`HOLD`].
	async fn serve<B: Body>(self, mut peer: PeerHandle<B>) {
		while let Ok(message) = peer.recv_message().await {
			let ReceivedMessage::Request(request, body) = message else { continue };
			if request.service_id() == HOLD {
				tokio::spawn(async move {
					tokio::time::sleep(HOLD_FOR).await;
					let _ = request.send_response(0, body).await;
				});
			} else {
				let _ = request.send_response(0, body).await;
			}
		}
	}
}

fn request_frame(request_id: u32, service_id: i32, body: &[u8]) -> Vec<u8> {
	let datagram = request_datagram(request_id, service_id, body);
	let mut frame = (datagram.len() as u32).to_le_bytes().to_vec();
	frame.extend_from_slice(&datagram);
	frame
}

/// What a raw client's read ended with.
#[derive(Debug)]
enum Read {
	/// A message: (message type, request id, service id, body).
	Message(u32, u32, i32, Vec<u8>),
	/// End of file, or the connection was reset.
	Closed,
	/// Nothing within the wait.
	Silent,
}

enum Socket {
	Tcp(tokio::net::TcpStream),
	Unix(tokio::net::UnixStream),
	#[cfg(feature = "unix-seqpacket")]
	Seqpacket(tokio_seqpacket::UnixSeqpacket),
}

/// The remote, driven by hand.
struct Raw {
	socket: Socket,
	buffer: Vec<u8>,
}

impl Raw {
	async fn connect(address: &Address) -> Self {
		let socket = match address {
			Address::Tcp(address) => Socket::Tcp(within(tokio::net::TcpStream::connect(address)).await.unwrap()),
			Address::Unix(path) => Socket::Unix(within(tokio::net::UnixStream::connect(path)).await.unwrap()),
			#[cfg(feature = "unix-seqpacket")]
			Address::Seqpacket(path) => Socket::Seqpacket(within(tokio_seqpacket::UnixSeqpacket::connect(path)).await.unwrap()),
		};
		Self { socket, buffer: Vec::new() }
	}

	/// Raw bytes of a stream (not for seqpacket, where a datagram is always whole).
	async fn send_bytes(&mut self, bytes: &[u8]) {
		match &mut self.socket {
			Socket::Tcp(stream) => within(stream.write_all(bytes)).await.unwrap(),
			Socket::Unix(stream) => within(stream.write_all(bytes)).await.unwrap(),
			#[cfg(feature = "unix-seqpacket")]
			Socket::Seqpacket(_) => panic!("partial frames are for the stream transports"),
		}
	}

	async fn send_request(&mut self, request_id: u32, service_id: i32, body: &[u8]) {
		match &mut self.socket {
			#[cfg(feature = "unix-seqpacket")]
			Socket::Seqpacket(socket) => {
				within(socket.send(&request_datagram(request_id, service_id, body))).await.unwrap();
			},
			_ => self.send_bytes(&request_frame(request_id, service_id, body)).await,
		}
	}

	/// The next message, or the end of the connection, waiting at most `wait`.
	async fn recv(&mut self, wait: Duration) -> Read {
		let deadline = tokio::time::Instant::now() + wait;
		loop {
			if self.buffer.len() >= 4 {
				let len = u32_at(&self.buffer, 0) as usize;
				if self.buffer.len() >= 4 + len {
					let frame: Vec<u8> = self.buffer.drain(..4 + len).skip(4).collect();
					return parse(&frame);
				}
			}
			let mut chunk = vec![0; 1 << 16];
			let read = match &mut self.socket {
				Socket::Tcp(stream) => tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await,
				Socket::Unix(stream) => tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await,
				#[cfg(feature = "unix-seqpacket")]
				Socket::Seqpacket(socket) => {
					return match tokio::time::timeout_at(deadline, socket.recv(&mut chunk)).await {
						Err(_) => Read::Silent,
						Ok(Ok(0)) | Ok(Err(_)) => Read::Closed,
						Ok(Ok(len)) => parse(&chunk[..len]),
					};
				},
			};
			match read {
				Err(_) => return Read::Silent,
				Ok(Ok(0)) | Ok(Err(_)) => return Read::Closed,
				Ok(Ok(len)) => self.buffer.extend_from_slice(&chunk[..len]),
			}
		}
	}

	/// Send a request and expect its echo.
	async fn round_trip(&mut self, request_id: u32, service_id: i32, body: &[u8], context: &str) {
		self.send_request(request_id, service_id, body).await;
		match self.recv(CLOSED_WITHIN).await {
			Read::Message(RESPONSE, id, 0, echoed) if id == request_id && echoed == body => {},
			other => panic!("{context}: expected the echo of request {request_id}, got {other:?}"),
		}
	}

	/// Wait for the server to close the connection; how long it took from `start`.
	async fn closed_after(&mut self, start: Instant, context: &str) -> Duration {
		match self.recv(CLOSED_WITHIN).await {
			Read::Closed => start.elapsed(),
			Read::Silent => panic!("{context}: the server did not close the connection within {CLOSED_WITHIN:?}"),
			other => panic!("{context}: expected the connection to close, got {other:?}"),
		}
	}

	/// Expect the connection to stay open and silent for `wait`.
	async fn stays_open(&mut self, wait: Duration, context: &str) {
		match self.recv(wait).await {
			Read::Silent => {},
			other => panic!("{context}: expected an open, silent connection for {wait:?}, got {other:?}"),
		}
	}
}

fn parse(datagram: &[u8]) -> Read {
	assert!(datagram.len() >= 12, "a message shorter than its header");
	Read::Message(u32_at(datagram, 0), u32_at(datagram, 4), u32_at(datagram, 8) as i32, datagram[12..].to_vec())
}

fn frame_timeout() -> Config {
	Config::default().with_frame_timeout(Some(TIMEOUT))
}

fn idle_timeout() -> Config {
	Config::default().with_idle_timeout(Some(TIMEOUT))
}

fn check_close_time(elapsed: Duration, context: &str) {
	assert!(elapsed >= NOT_BEFORE, "{context}: closed after {elapsed:?}, before the {TIMEOUT:?} timeout");
}

/// The first 3 bytes of a frame length, then silence: disconnected after the frame timeout.
async fn partial_length_is_disconnected_after_frame_timeout(kind: Kind) {
	let context = format!("{kind:?}, 3 bytes of a frame, frame_timeout {TIMEOUT:?}");
	let address = server(kind, frame_timeout()).await;
	let mut client = Raw::connect(&address).await;
	let start = Instant::now();
	client.send_bytes(&request_frame(1, 1, b"never finished")[..3]).await;
	let elapsed = client.closed_after(start, &context).await;
	check_close_time(elapsed, &context);
}

/// A whole header and part of the body, then silence: disconnected after the frame timeout.
async fn partial_body_is_disconnected_after_frame_timeout(kind: Kind) {
	let context = format!("{kind:?}, header and half a body, frame_timeout {TIMEOUT:?}");
	let address = server(kind, frame_timeout()).await;
	let mut client = Raw::connect(&address).await;
	let frame = request_frame(1, 1, &[7; 1000]);
	let start = Instant::now();
	client.send_bytes(&frame[..16 + 500]).await;
	let elapsed = client.closed_after(start, &context).await;
	check_close_time(elapsed, &context);
}

/// The frame timeout is about one frame: whole frames with long pauses between them are fine.
async fn whole_frames_with_pauses_survive_frame_timeout(kind: Kind) {
	let context = format!("{kind:?}, whole frames 2.5 × frame_timeout apart");
	let address = server(kind, frame_timeout()).await;
	let mut client = Raw::connect(&address).await;
	for request_id in 0..3 {
		client.round_trip(request_id, 1, b"whole", &context).await;
		client.stays_open(TIMEOUT * 5 / 2, &context).await;
	}
	client.round_trip(3, 1, b"still here", &context).await;
}

/// Without a frame timeout, a partial frame just waits.
async fn partial_frame_waits_without_frame_timeout(kind: Kind) {
	let context = format!("{kind:?}, 3 bytes of a frame, no frame_timeout");
	let address = server(kind, Config::default()).await;
	let mut client = Raw::connect(&address).await;
	client.send_bytes(&request_frame(1, 1, b"never finished")[..3]).await;
	client.stays_open(Duration::from_millis(500), &context).await;
}

/// A client that connects and says nothing: closed after the idle timeout.
async fn silent_client_is_closed_after_idle_timeout(kind: Kind) {
	let context = format!("{kind:?}, silent client, idle_timeout {TIMEOUT:?}");
	let address = server(kind, idle_timeout()).await;
	let start = Instant::now();
	let mut client = Raw::connect(&address).await;
	let elapsed = client.closed_after(start, &context).await;
	// The server's clock may start a little after the client's connect returns; allow for it
	// by starting ours before the connect, which only makes the lower bound easier.
	check_close_time(elapsed, &context);
}

/// Traffic, then silence: closed after the idle timeout counted from the last answer.
async fn client_silent_after_traffic_is_closed_after_idle_timeout(kind: Kind) {
	let context = format!("{kind:?}, silent after one round trip, idle_timeout {TIMEOUT:?}");
	let address = server(kind, idle_timeout()).await;
	let mut client = Raw::connect(&address).await;
	let start = Instant::now();
	client.round_trip(1, 1, b"once", &context).await;
	let elapsed = client.closed_after(start, &context).await;
	check_close_time(elapsed, &context);
}

/// A request every 50 ms keeps the connection: open for 1 s, every answer arrives.
async fn active_client_stays_connected_with_idle_timeout(kind: Kind) {
	let context = format!("{kind:?}, a request every 50 ms, idle_timeout {TIMEOUT:?}");
	let address = server(kind, idle_timeout()).await;
	let mut client = Raw::connect(&address).await;
	let start = Instant::now();
	let mut request_id = 0;
	while start.elapsed() < Duration::from_secs(1) {
		client.round_trip(request_id, 1, format!("request {request_id}").as_bytes(), &context).await;
		request_id += 1;
		tokio::time::sleep(Duration::from_millis(50)).await;
	}
	client.round_trip(request_id, 1, b"last", &context).await;
}

/// A request open (held by the application for longer than the idle timeout, with no traffic
/// meanwhile) is not idleness: its answer arrives.
async fn open_request_is_not_idle(kind: Kind) {
	let context = format!("{kind:?}, a request held {HOLD_FOR:?}, idle_timeout {TIMEOUT:?}");
	let address = server(kind, idle_timeout()).await;
	let mut client = Raw::connect(&address).await;
	client.round_trip(1, HOLD, b"held", &context).await;
}

/// Without an idle timeout, a silent client stays connected.
async fn silent_client_stays_without_idle_timeout(kind: Kind) {
	let context = format!("{kind:?}, silent client, no idle_timeout");
	let address = server(kind, Config::default()).await;
	let mut client = Raw::connect(&address).await;
	client.stays_open(Duration::from_millis(500), &context).await;
	client.round_trip(1, 1, b"still here", &context).await;
}

/// A frame that arrives slowly, over longer than the idle timeout, is traffic, not idleness: the
/// connection stays up and the request is answered.
async fn slow_frame_is_not_idle(kind: Kind) {
	let context = format!("{kind:?}, one frame sent over 3 × idle_timeout");
	let address = server(kind, idle_timeout()).await;
	let mut client = Raw::connect(&address).await;
	let body = [9; 600];
	let frame = request_frame(1, 1, &body);
	for chunk in frame.chunks(100) {
		client.send_bytes(chunk).await;
		tokio::time::sleep(TIMEOUT / 2).await;
	}
	match client.recv(CLOSED_WITHIN).await {
		Read::Message(RESPONSE, 1, 0, echoed) if echoed == body => {},
		other => panic!("{context}: expected the echo, got {other:?}"),
	}
}

on_streams!(
	partial_length_is_disconnected_after_frame_timeout,
	partial_body_is_disconnected_after_frame_timeout,
	whole_frames_with_pauses_survive_frame_timeout,
	partial_frame_waits_without_frame_timeout,
	slow_frame_is_not_idle,
);

on_every_kind!(
	silent_client_is_closed_after_idle_timeout,
	client_silent_after_traffic_is_closed_after_idle_timeout,
	active_client_stays_connected_with_idle_timeout,
	open_request_is_not_idle,
	silent_client_stays_without_idle_timeout,
);

/// A peer made outside a runtime, with both timeouts set, can be run later on one: its timers
/// are made on the first poll, not in `Peer::new`.
#[test]
fn a_peer_with_timeouts_can_be_made_outside_a_runtime() {
	let config = Config::default()
		.with_frame_timeout(Some(Duration::from_millis(100)))
		.with_idle_timeout(Some(Duration::from_millis(100)));
	let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
	a.set_nonblocking(true).unwrap();
	let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
	let a = runtime.block_on(async { tokio::net::UnixStream::from_std(a).unwrap() });
	let (read, write) = a.into_split();
	let (peer, handle) = peerwire::Peer::new(peerwire::StreamTransport::new(read, write, &config), &config);
	// Idle from the start: the idle timeout ends it.
	runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), peer.run()).await.unwrap().unwrap() });
	drop(handle);
}
