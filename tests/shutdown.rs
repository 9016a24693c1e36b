//! Closing and shutting down never hang, even when the remote stops reading or a handler never
//! returns.

mod common;

use std::time::Duration;

use common::{RawRemote, within};
use peerwire::server::{CancellationToken, serve};
use peerwire::{Config, ErrorKind, Message, ReceivedMessage, TcpListener};
use tokio::io::AsyncWriteExt;

/// Send stream messages until sending waits: the remote is not reading, and every buffer on the
/// way is full.
async fn fill_until_pushed_back(peer: &peerwire::PeerWriteHandle) {
	let body = bytes::Bytes::from(vec![0u8; 64 * 1024]);
	for _ in 0..100_000 {
		if tokio::time::timeout(Duration::from_millis(200), peer.send_stream(1, body.clone())).await.is_err() {
			return;
		}
	}
	panic!("never pushed back");
}

#[tokio::test]
async fn closing_towards_a_remote_that_never_reads_gives_up_after_the_close_timeout() {
	let config = Config::default().with_close_timeout(Duration::from_millis(300)).with_write_queue(8);
	let (peer, _remote) = RawRemote::connect(config).await;
	let mut request = peer.send_request(1, "never answered").await.unwrap();
	fill_until_pushed_back(&peer.write_handle()).await;
	peer.close();
	within(peer.closed()).await;
	assert_eq!(within(request.recv_response()).await.unwrap_err().kind(), ErrorKind::ConnectionClosed);
}

#[tokio::test]
async fn shutdown_ends_even_if_the_remote_stops_reading_and_a_handler_never_returns() {
	let listener = TcpListener::bind("127.0.0.1:0", &Config::default()).await.unwrap();
	let address = listener.local_addr().unwrap();
	let shutdown = CancellationToken::new();
	let server =
		tokio::spawn(serve(listener, shutdown.clone(), Duration::from_millis(300), |message, peer| async move {
			if let ReceivedMessage::Request(_request, _) = message {
				// Floods the remote, which does not read, and so never returns.
				fill_until_pushed_back(&peer).await;
				std::future::pending::<()>().await;
			}
		}));

	// A remote that sends requests and never reads anything.
	let mut remote = tokio::net::TcpStream::connect(address).await.unwrap();
	let mut frame = bytes::BytesMut::new();
	let codec = peerwire::codec::StreamCodec::new(Default::default(), 1024, 1024);
	codec.encode(&Message::request(1, 1, ""), &mut frame).unwrap();
	remote.write_all(&frame).await.unwrap();
	tokio::time::sleep(Duration::from_millis(500)).await;
	shutdown.cancel();
	// A request during the grace period: answering it would wait for room forever.
	frame.clear();
	codec.encode(&Message::request(2, 1, ""), &mut frame).unwrap();
	remote.write_all(&frame).await.unwrap();

	within(server).await.unwrap();
}

#[tokio::test]
async fn shutdown_bounds_handlers_of_a_connection_that_already_ended() {
	let listener = TcpListener::bind("127.0.0.1:0", &Config::default()).await.unwrap();
	let address = listener.local_addr().unwrap();
	let shutdown = CancellationToken::new();
	let (started_tx, mut started) = tokio::sync::mpsc::channel(1);
	let server = tokio::spawn(serve(listener, shutdown.clone(), Duration::from_millis(200), move |message, _peer| {
		let started = started_tx.clone();
		async move {
			if let ReceivedMessage::Request(request, _) = message {
				started.send(()).await.unwrap();
				let _keep = request;
				std::future::pending::<()>().await;
			}
		}
	}));
	let (client, _) = peerwire::TcpPeer::connect(address, &Config::default()).await.unwrap();
	let _request = client.send_request(1, "").await.unwrap();
	within(started.recv()).await.unwrap();
	drop(_request);
	drop(client);
	tokio::time::sleep(Duration::from_millis(100)).await;
	shutdown.cancel();
	within(server).await.unwrap();
}
