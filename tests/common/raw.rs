//! For tests that talk raw bytes to a peerwire server over every transport.

use std::future::Future;

use peerwire::{Acceptor, Body, Config, Listener, PeerHandle};

use super::socket_path;

/// A transport a raw test client can use.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
	Tcp,
	Unix,
	#[cfg(feature = "unix-seqpacket")]
	Seqpacket,
}

/// Where a test server listens.
pub enum Address {
	Tcp(std::net::SocketAddr),
	Unix(std::path::PathBuf),
	#[cfg(feature = "unix-seqpacket")]
	Seqpacket(std::path::PathBuf),
}

/// For each `async fn name(kind: Kind)` named, a module `name` with one test per transport
/// (`tcp`, `unix`, and `seqpacket` with that feature). `Kind` must be in scope where it is used.
#[macro_export]
macro_rules! on_every_kind {
	($($name:ident),* $(,)?) => {
		$(
			mod $name {
				#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
				async fn tcp() {
					super::$name(super::Kind::Tcp).await
				}
				#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
				async fn unix() {
					super::$name(super::Kind::Unix).await
				}
				#[cfg(feature = "unix-seqpacket")]
				#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
				async fn seqpacket() {
					super::$name(super::Kind::Seqpacket).await
				}
			}
		)*
	};
}

/// Like [`on_every_kind!`], for the byte-stream transports only (`tcp`, `unix`).
#[macro_export]
macro_rules! on_streams {
	($($name:ident),* $(,)?) => {
		$(
			mod $name {
				#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
				async fn tcp() {
					super::$name(super::Kind::Tcp).await
				}
				#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
				async fn unix() {
					super::$name(super::Kind::Unix).await
				}
			}
		)*
	};
}

/// The little-endian `u32` at `offset`.
pub fn u32_at(bytes: &[u8], offset: usize) -> u32 {
	u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

/// A whole stream-transport frame, little endian, built by hand as PROTOCOL.md lays it out: length
/// prefix, header, body.
pub fn stream_frame(message_type: u32, request_id: u32, service_id: i32, body: &[u8]) -> Vec<u8> {
	let mut frame = u32::try_from(12 + body.len()).unwrap().to_le_bytes().to_vec();
	frame.extend_from_slice(&message_type.to_le_bytes());
	frame.extend_from_slice(&request_id.to_le_bytes());
	frame.extend_from_slice(&service_id.to_le_bytes());
	frame.extend_from_slice(body);
	frame
}

/// Header and body of a request, little endian, without the stream length prefix.
pub fn request_datagram(request_id: u32, service_id: i32, body: &[u8]) -> Vec<u8> {
	let mut data = Vec::with_capacity(12 + body.len());
	data.extend_from_slice(&0u32.to_le_bytes());
	data.extend_from_slice(&request_id.to_le_bytes());
	data.extend_from_slice(&service_id.to_le_bytes());
	data.extend_from_slice(body);
	data
}

/// What a test server runs on each accepted connection, whatever the body type.
pub trait Application: Clone + Send + Sync + 'static {
	/// Serve one connection until it ends.
	fn serve<B: Body>(self, peer: PeerHandle<B>) -> impl Future<Output = ()> + Send;
}

/// A peerwire server over `kind` with `config`, running `app` on each connection (in a task of
/// its own); `name` goes into its socket path. Returns where it listens.
pub async fn listen(kind: Kind, name: &str, config: &Config, app: impl Application) -> Address {
	match kind {
		Kind::Tcp => {
			let listener = peerwire::TcpListener::bind("127.0.0.1:0", config).await.unwrap();
			let address = listener.local_addr().unwrap();
			tokio::spawn(accept_all(listener, app));
			Address::Tcp(address)
		},
		Kind::Unix => {
			let path = socket_path(name);
			let listener = peerwire::UnixStreamListener::bind(&path, config).await.unwrap();
			tokio::spawn(accept_all(listener, app));
			Address::Unix(path)
		},
		#[cfg(feature = "unix-seqpacket")]
		Kind::Seqpacket => {
			let path = socket_path(&format!("{name}-seqpacket"));
			let listener = peerwire::UnixSeqpacketListener::bind(&path, config).await.unwrap();
			tokio::spawn(accept_all(listener, app));
			Address::Seqpacket(path)
		},
	}
}

async fn accept_all<A: Acceptor>(mut listener: Listener<A>, app: impl Application) {
	while let Ok((peer, _info)) = listener.accept().await {
		tokio::spawn(app.clone().serve(peer));
	}
}
