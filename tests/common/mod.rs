//! Helpers shared by the integration tests: connected peers over real sockets.

#![allow(dead_code)]

#[cfg(feature = "cli")]
pub mod cli;
pub mod raw;
pub mod script;
#[cfg(feature = "unix-seqpacket")]
pub mod seqpacket;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use peerwire::{Config, ConnectionInfo, PeerHandle, TcpListener, TcpPeer, UnixStreamListener, UnixStreamPeer};

/// The socket kinds every stream test runs over.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
	Tcp,
	Unix,
}

/// Generous, but finite: a bug fails the test instead of hanging it.
pub const WAIT: Duration = Duration::from_secs(10);

/// Await `future`, failing the test if it takes longer than [`WAIT`].
pub async fn within<F: Future>(future: F) -> F::Output {
	within_for(WAIT, future).await
}

/// Await `future`, failing the test if it takes longer than `limit`.
pub async fn within_for<F: Future>(limit: Duration, future: F) -> F::Output {
	tokio::time::timeout(limit, future).await.expect("timed out")
}

/// Await `future`, failing the test with `what` if it takes longer than [`WAIT`].
pub async fn within_named<T>(what: &str, future: impl Future<Output = T>) -> T {
	match tokio::time::timeout(WAIT, future).await {
		Ok(output) => output,
		Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
	}
}

/// A fresh socket path in the temp directory.
pub fn socket_path(name: &str) -> PathBuf {
	static COUNTER: AtomicUsize = AtomicUsize::new(0);
	let n = COUNTER.fetch_add(1, Ordering::Relaxed);
	std::env::temp_dir().join(format!("peerwire-{name}-{}-{n}.sock", std::process::id()))
}

/// A fresh file in the temp directory, open for reading and writing, already unlinked.
pub fn temp_file(name: &str) -> std::fs::File {
	let path = socket_path(name);
	let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
	std::fs::remove_file(&path).unwrap();
	file
}

/// A connected (client, server) pair over `kind`, and what each side knows of the other.
pub async fn connected_with(kind: Kind, config: Config) -> (PeerHandle, PeerHandle, ConnectionInfo, ConnectionInfo) {
	match kind {
		Kind::Tcp => {
			let mut listener = TcpListener::bind("127.0.0.1:0", &config).await.unwrap();
			let address = listener.local_addr().unwrap();
			let (client, server) = tokio::join!(TcpPeer::connect(address, &config), listener.accept());
			let (client, client_info) = client.unwrap();
			let (server, server_info) = server.unwrap();
			(client, server, client_info, server_info)
		},
		Kind::Unix => {
			let path = socket_path("pair");
			let mut listener = UnixStreamListener::bind(&path, &config).await.unwrap();
			let (client, server) = tokio::join!(UnixStreamPeer::connect(&path, &config), listener.accept());
			let _ = std::fs::remove_file(&path);
			let (client, client_info) = client.unwrap();
			let (server, server_info) = server.unwrap();
			(client, server, client_info, server_info)
		},
	}
}

/// A connected (client, server) pair with the default configuration.
pub async fn connected(kind: Kind) -> (PeerHandle, PeerHandle) {
	let (client, server, _, _) = connected_with(kind, Config::default()).await;
	(client, server)
}

/// Run an async test function once over each socket kind.
#[macro_export]
macro_rules! on_every_transport {
	($($name:ident),* $(,)?) => {
		$(
			mod $name {
				#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
				async fn tcp() {
					super::$name(super::common::Kind::Tcp).await
				}
				#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
				async fn unix() {
					super::$name(super::common::Kind::Unix).await
				}
			}
		)*
	};
}

/// The far end of a connection driven by hand: frames written and read through the codec, so a
/// test can send what no well-behaved peer would.
pub struct RawRemote {
	pub stream: tokio::net::TcpStream,
	codec: peerwire::codec::StreamCodec,
	buffer: bytes::BytesMut,
}

impl RawRemote {
	/// A peerwire peer connected to a raw socket: (peer handle, raw remote).
	pub async fn connect(config: Config) -> (PeerHandle, RawRemote) {
		let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
		let address = listener.local_addr().unwrap();
		let (peer, accepted) = tokio::join!(TcpPeer::connect(address, &config), listener.accept());
		let (peer, _) = peer.unwrap();
		let codec = peerwire::codec::StreamCodec::new(config.endian, usize::MAX, usize::MAX);
		(peer, RawRemote { stream: accepted.unwrap().0, codec, buffer: bytes::BytesMut::new() })
	}

	/// Write one message.
	pub async fn send(&mut self, message: peerwire::Message) {
		let mut frame = bytes::BytesMut::new();
		self.codec.encode(&message, &mut frame).unwrap();
		self.send_bytes(&frame).await;
	}

	/// Write raw bytes.
	pub async fn send_bytes(&mut self, bytes: &[u8]) {
		use tokio::io::AsyncWriteExt;
		self.stream.write_all(bytes).await.unwrap();
	}

	/// Read one message; `None` when the peer closed the connection.
	pub async fn recv(&mut self) -> Option<peerwire::Message> {
		use tokio::io::AsyncReadExt;
		loop {
			if let Some(message) = self.codec.decode(&mut self.buffer).unwrap() {
				return Some(message);
			}
			if within(self.stream.read_buf(&mut self.buffer)).await.unwrap() == 0 {
				return None;
			}
		}
	}
}
