//! A Unix listener removes its socket file when it is dropped (after a graceful shutdown of
//! `serve`), but never a newer server's socket at the same path.

mod common;

use std::time::Duration;

use common::{socket_path, within};
use peerwire::server::{CancellationToken, serve};
use peerwire::{Config, UnixStreamListener};

#[tokio::test]
async fn a_unix_stream_listener_removes_its_socket_file_after_a_graceful_shutdown() {
	let path = socket_path("served");
	let listener = UnixStreamListener::bind(&path, &Config::default()).await.unwrap();
	assert!(path.exists());
	let shutdown = CancellationToken::new();
	let server =
		tokio::spawn(serve(listener, shutdown.clone(), Duration::from_millis(100), |_message, _peer| async {}));
	let (client, _) = peerwire::UnixStreamPeer::connect(&path, &Config::default()).await.unwrap();
	shutdown.cancel();
	within(server).await.unwrap();
	assert!(!path.exists(), "socket file left behind after the shutdown");
	within(client.closed()).await;
}

#[tokio::test]
async fn a_unix_stream_listener_leaves_a_newer_servers_socket_file_alone() {
	let path = socket_path("replaced");
	let old = UnixStreamListener::bind(&path, &Config::default()).await.unwrap();
	// Someone removed the old file and a newer server bound the path.
	std::fs::remove_file(&path).unwrap();
	let new = UnixStreamListener::bind(&path, &Config::default()).await.unwrap();
	drop(old);
	assert!(path.exists(), "the old listener removed the newer server's socket file");
	peerwire::UnixStreamPeer::connect(&path, &Config::default()).await.unwrap();
	drop(new);
	assert!(!path.exists());
}

#[tokio::test]
async fn a_unix_stream_listener_leaves_a_file_that_replaced_its_socket_alone() {
	let path = socket_path("regular");
	let listener = UnixStreamListener::bind(&path, &Config::default()).await.unwrap();
	std::fs::remove_file(&path).unwrap();
	std::fs::write(&path, "not a socket").unwrap();
	drop(listener);
	assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
	std::fs::remove_file(&path).unwrap();
}

#[cfg(feature = "unix-seqpacket")]
mod seqpacket {
	use super::*;
	use peerwire::UnixSeqpacketListener;

	#[tokio::test]
	async fn a_unix_seqpacket_listener_removes_its_socket_file_after_a_graceful_shutdown() {
		let path = socket_path("seqpacket-served");
		let listener = UnixSeqpacketListener::bind(&path, &Config::default()).await.unwrap();
		assert!(path.exists());
		let shutdown = CancellationToken::new();
		let server =
			tokio::spawn(serve(listener, shutdown.clone(), Duration::from_millis(100), |_message, _peer| async {}));
		shutdown.cancel();
		within(server).await.unwrap();
		assert!(!path.exists(), "socket file left behind after the shutdown");
	}

	#[tokio::test]
	async fn a_unix_seqpacket_listener_leaves_a_newer_servers_socket_file_alone() {
		let path = socket_path("seqpacket-replaced");
		let old = UnixSeqpacketListener::bind(&path, &Config::default()).await.unwrap();
		std::fs::remove_file(&path).unwrap();
		let new = UnixSeqpacketListener::bind(&path, &Config::default()).await.unwrap();
		drop(old);
		assert!(path.exists(), "the old listener removed the newer server's socket file");
		drop(new);
		assert!(!path.exists());
	}
}
