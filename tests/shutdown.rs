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

/// `serve_with` runs the hook once per connection with what is known about the remote, stops
/// accepting on shutdown, and returns once the hooks have ended.
#[tokio::test]
async fn serve_with_runs_a_hook_per_connection_until_shutdown() {
	let listener = TcpListener::bind("127.0.0.1:0", &Config::default()).await.unwrap();
	let address = listener.local_addr().unwrap();
	let shutdown = CancellationToken::new();
	let token = shutdown.clone();
	let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
	let server = tokio::spawn(peerwire::server::serve_with(listener, shutdown.clone(), move |mut peer, info| {
		let (token, seen_tx) = (token.clone(), seen_tx.clone());
		async move {
			seen_tx.send(info.to_string()).unwrap();
			loop {
				tokio::select! {
					message = peer.recv_message() => match message {
						Ok(ReceivedMessage::Request(request, body)) => request.send_response(0, body).await.unwrap(),
						Ok(ReceivedMessage::Stream(_)) => {},
						Err(_) => return,
					},
					() = token.cancelled() => return,
				}
			}
		}
	}));

	let mut clients = Vec::new();
	for n in 0..2 {
		let (client, info) = within(peerwire::TcpPeer::connect(address, &Config::default())).await.unwrap();
		let mut request = client.send_request(1, format!("client {n}")).await.unwrap();
		assert_eq!(within(request.recv_response()).await.unwrap().body, format!("client {n}"));
		assert_eq!(info.to_string(), format!("tcp://{address}"));
		// The hook is told where the client is.
		let remote = within(seen.recv()).await.unwrap();
		assert!(remote.starts_with("tcp://127.0.0.1:"), "{remote}");
		clients.push(client);
	}

	// The hooks end on shutdown, and so does the server, with the clients still connected.
	shutdown.cancel();
	within(server).await.unwrap();
	for client in &clients {
		within(client.closed()).await;
	}
	// No longer accepting.
	assert!(peerwire::TcpPeer::connect(address, &Config::default()).await.is_err());
}
