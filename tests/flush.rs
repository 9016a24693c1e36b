//! A command sent just before the process exits reaches the remote when the sender flushes
//! first: `send_stream` only queues, `flush` waits until the socket has taken it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{socket_path, within};
use peerwire::{Config, ReceivedMessage, UnixStreamListener, UnixStreamPeer};

const RUNS: usize = 100;

/// Each run: a fresh runtime connects, sends one `stop` command, flushes, and is shut down at
/// once (as when `main` returns). The server, on a runtime of its own, must get every command.
#[test]
fn a_command_flushed_before_exit_always_arrives() {
	let path = socket_path("flush");
	let server_runtime = tokio::runtime::Runtime::new().unwrap();
	let received = Arc::new(AtomicUsize::new(0));
	let mut listener = server_runtime.block_on(UnixStreamListener::bind(&path, &Config::default())).unwrap();
	server_runtime.spawn({
		let received = received.clone();
		async move {
			while let Ok((mut peer, _)) = listener.accept().await {
				let received = received.clone();
				tokio::spawn(async move {
					while let Ok(message) = peer.recv_message().await {
						if let ReceivedMessage::Stream(message) = message {
							assert_eq!(&message.body[..], b"stop");
							received.fetch_add(1, Ordering::SeqCst);
						}
					}
				});
			}
		}
	});

	for run in 0..RUNS {
		let client_runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
		client_runtime.block_on(async {
			let (arm, _) = UnixStreamPeer::connect(&path, &Config::default()).await.unwrap();
			arm.send_stream(10, "stop").await.unwrap();
			arm.flush().await.unwrap();
		});
		// Exit: every task of the client (its peer task included) is dropped here.
		drop(client_runtime);
		server_runtime.block_on(within(async {
			while received.load(Ordering::SeqCst) <= run {
				tokio::time::sleep(Duration::from_millis(1)).await;
			}
		}));
	}
	assert_eq!(received.load(Ordering::SeqCst), RUNS);
	let _ = std::fs::remove_file(&path);
}

/// `flush` covers what other handles of the connection queued before it, and fails once the
/// connection has ended.
#[tokio::test]
async fn flush_covers_every_handle_and_fails_on_a_closed_connection() {
	let (client, mut server) = common::connected(common::Kind::Tcp).await;
	let other = client.write_handle();
	for i in 0..1000 {
		other.send_stream(1, format!("{i}")).await.unwrap();
	}
	within(client.flush()).await.unwrap();
	for i in 0..1000 {
		let message = within(server.recv_message()).await.unwrap().into_stream().unwrap();
		assert_eq!(message.body, format!("{i}"));
	}
	client.close();
	within(client.closed()).await;
	assert!(client.flush().await.unwrap_err().is_connection_closed());
}

/// A message queued under a `WakeupHold` waits for the hold to go (nothing else wakes the peer
/// task here), and dropping the hold sends it. Paused time: the 50 ms window is virtual, and runs
/// out before any timer of the peer task could wake it.
#[tokio::test(start_paused = true)]
async fn a_message_queued_under_a_wakeup_hold_is_written_when_the_hold_is_dropped() {
	let (a, mut b) = peerwire::transport::memory::pair::<peerwire::Bytes>(&Config::default());
	// A first message, so that a's peer task has run and sleeps waiting for something to write.
	a.send_stream(1, "first").await.unwrap();
	let Ok(ReceivedMessage::Stream(first)) = within(b.recv_message()).await else { panic!("no stream message") };
	assert_eq!(first.body, "first");

	let hold = a.write_handle().hold_wakeups();
	a.send_stream(2, "held").await.unwrap();
	assert!(
		tokio::time::timeout(Duration::from_millis(50), b.recv_message()).await.is_err(),
		"written although the wake-up was held"
	);
	drop(hold);
	let Ok(ReceivedMessage::Stream(held)) = within(b.recv_message()).await else { panic!("no stream message") };
	assert_eq!((held.header.service_id, &held.body[..]), (2, &b"held"[..]));
}
