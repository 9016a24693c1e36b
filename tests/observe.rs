//! The counters of a connection and of a listener: exact values after a scripted exchange on
//! every transport, protocol errors and stray messages from a raw remote, time blocked on
//! backpressure each way.

mod common;

use std::time::Duration;

use common::script::{check, script};
use common::{RawRemote, socket_path, within};
use peerwire::{Config, ConnectionStats, Message, Peer, TcpListener, TcpPeer, UnixStreamTransport};

#[tokio::test]
async fn exact_counts_in_memory() {
	let (client, server) = peerwire::transport::memory::pair::<peerwire::Bytes>(&Config::default());
	let (client, server) = script(client, server).await;
	check(&client, &server);
}

#[tokio::test]
async fn exact_counts_over_tcp() {
	let config = Config::default();
	let mut listener = TcpListener::bind("127.0.0.1:0", &config).await.unwrap();
	let address = listener.local_addr().unwrap();
	let (client, server) = tokio::join!(TcpPeer::connect(address, &config), listener.accept());
	let (client, server) = script(client.unwrap().0, server.unwrap().0).await;
	check(&client, &server);
	let listener = listener.stats();
	assert_eq!((listener.accepted, listener.refused_by_admission, listener.refused_by_limit), (1, 0, 0));
}

#[tokio::test]
async fn exact_counts_over_unix_stream() {
	let config = Config::default();
	let (a, b) = UnixStreamTransport::pair(&config).unwrap();
	let (client, server) = script(Peer::spawn(a, &config), Peer::spawn(b, &config)).await;
	check(&client, &server);
}

#[cfg(feature = "unix-seqpacket")]
#[tokio::test]
async fn exact_counts_over_seqpacket() {
	let config = Config::default();
	let (a, b) = peerwire::UnixSeqpacketTransport::pair(&config).unwrap();
	let (client, server) = script(Peer::spawn(a, &config), Peer::spawn(b, &config)).await;
	check(&client, &server);
}

#[tokio::test]
async fn a_duplicate_id_and_a_malformed_frame_count_as_protocol_errors() {
	let (peer, mut remote) = RawRemote::connect(Config::default()).await;
	let (mut read, _write) = peer.split();
	remote.send(Message::request(7, 1, peerwire::Bytes::from_static(b"a"))).await;
	remote.send(Message::request(7, 1, peerwire::Bytes::from_static(b"b"))).await;
	// The duplicate is answered on its own, and the connection goes on.
	let reply = remote.recv().await.expect("the automatic reply");
	assert!(reply.is_error_response());
	let (request, _) = within(read.recv_message()).await.unwrap().into_request().unwrap();
	let stats = read.stats();
	assert_eq!((stats.protocol_errors, stats.auto_replies), (1, 1));
	assert_eq!(stats.received.messages.request, 2);
	assert_eq!((stats.open_received_requests, stats.peak_received_requests), (1, 1));

	// A frame of an unknown message type ends the connection; the count stays readable.
	let mut frame = Vec::new();
	frame.extend_from_slice(&12u32.to_le_bytes());
	frame.extend_from_slice(&9u32.to_le_bytes());
	frame.extend_from_slice(&8u32.to_le_bytes());
	frame.extend_from_slice(&1i32.to_le_bytes());
	remote.send_bytes(&frame).await;
	assert!(within(read.recv_message()).await.is_err());
	let stats = read.stats();
	assert_eq!(stats.protocol_errors, 2);
	assert_eq!(stats.open_received_requests, 1, "unanswered, though it can no longer be answered");
	drop(request);
}

#[tokio::test]
async fn time_blocked_on_a_remote_that_does_not_read_is_counted() {
	// The remote never reads: the socket buffers fill, then the write queue.
	let config = Config::default().with_write_queue(4).with_max_buffered_outgoing(256 * 1024);
	let (peer, _remote) = RawRemote::connect(config).await;
	let body = peerwire::Bytes::from(vec![7u8; 64 * 1024]);
	let blocked = tokio::time::timeout(Duration::from_secs(5), async {
		loop {
			let started = std::time::Instant::now();
			peer.send_stream(1, body.clone()).await.unwrap();
			if started.elapsed() > Duration::from_millis(50) {
				break;
			}
		}
	});
	// Either a send waited and then got through, or it is still waiting: cancel it then.
	let _ = tokio::time::timeout(Duration::from_millis(300), blocked).await;
	let stats = peer.stats();
	assert!(stats.send_blocked >= Duration::from_millis(50), "{stats:#?}");
	assert_eq!(stats.read_paused, Duration::ZERO);
}

#[tokio::test]
async fn time_reading_paused_for_the_application_is_counted() {
	let config = Config::default().with_incoming_queue(2);
	let (client, mut server) = peerwire::transport::memory::pair::<peerwire::Bytes>(&config);
	for _ in 0..8 {
		client.send_stream(1, "x").await.unwrap();
	}
	// The server takes nothing for a while: its reading pauses once two messages wait.
	tokio::time::sleep(Duration::from_millis(150)).await;
	let paused = server.stats().read_paused;
	assert!(paused >= Duration::from_millis(100), "counted while it lasts: {paused:?}");
	for _ in 0..8 {
		within(server.recv_message()).await.unwrap();
	}
	let stats = server.stats();
	assert!(stats.read_paused >= paused);
	assert_eq!(stats.received.messages.stream, 8);
	let later = server.stats().read_paused;
	tokio::time::sleep(Duration::from_millis(50)).await;
	assert_eq!(server.stats().read_paused, later, "not counted once reading resumes");
}

#[tokio::test]
async fn listener_counts_accepted_refused_and_open_connections() {
	let path = socket_path("stats-listener");
	let config = Config::default();
	let mut listener = peerwire::UnixStreamListener::bind(&path, &config).await.unwrap();
	listener.set_max_connections(Some(1));
	let (first, accepted) = tokio::join!(peerwire::UnixStreamPeer::connect(&path, &config), listener.accept());
	let (_first, _) = first.unwrap();
	let (server, _) = accepted.unwrap();
	// A second connection is past the limit: accepted by the socket, closed at once.
	let (second, _) = peerwire::UnixStreamPeer::connect(&path, &config).await.unwrap();
	let accept = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
	assert!(accept.is_err(), "no connection to keep");
	within(second.closed()).await;
	let stats = listener.stats();
	assert_eq!((stats.accepted, stats.refused_by_limit, stats.refused_by_admission, stats.open), (1, 1, 0, 1));

	// An admission check that refuses everyone.
	listener.set_max_connections(None);
	listener.set_admission(|_| false);
	let (third, _) = peerwire::UnixStreamPeer::connect(&path, &config).await.unwrap();
	let accept = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
	assert!(accept.is_err());
	within(third.closed()).await;
	drop(server);
	within(async {
		while listener.open_connections() > 0 {
			tokio::time::sleep(Duration::from_millis(2)).await;
		}
	})
	.await;
	let stats = listener.stats();
	assert_eq!((stats.accepted, stats.refused_by_limit, stats.refused_by_admission, stats.open), (1, 1, 1, 0));
	let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn a_stats_handle_reads_the_counters_of_a_listener_moved_away() {
	let config = Config::default();
	let mut listener = TcpListener::bind("127.0.0.1:0", &config).await.unwrap();
	let address = listener.local_addr().unwrap();
	listener.set_admission(|info| info.remote_address.is_some());
	let stats = listener.stats_handle();
	assert_eq!(stats.get(), listener.stats());
	// The listener moves into its accept task; the handle keeps reading its counters.
	let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::unbounded_channel();
	let server = tokio::spawn(async move {
		while let Ok((peer, _)) = listener.accept().await {
			let _ = accepted_tx.send(peer);
		}
	});
	let (_client, _) = TcpPeer::connect(address, &config).await.unwrap();
	let peer = within(accepted_rx.recv()).await.unwrap();
	let now = stats.get();
	assert_eq!((now.accepted, now.refused_by_admission, now.refused_by_limit, now.open), (1, 0, 0, 1));
	// A clone sees the same counters; the open count follows the connection's end.
	let copy = stats.clone();
	drop(peer);
	within(async {
		while copy.get().open > 0 {
			tokio::time::sleep(Duration::from_millis(2)).await;
		}
	})
	.await;
	// The last values stay readable once the listener is gone.
	server.abort();
	let _ = server.await;
	assert_eq!(stats.get().accepted, 1);
	assert_eq!(stats.get().open, 0);
}

#[test]
fn stats_are_plain_values() {
	let stats = ConnectionStats::default();
	assert_eq!(stats.sent.messages.total(), 0);
	assert_eq!(stats.received.messages.get(peerwire::MessageType::Stream), 0);
}
