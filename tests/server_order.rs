//! `server::serve` and `serve_connection` handle the stream messages of one connection one after
//! another, in the order they arrived: a `set_speed` followed by a `stop` is never run as `stop`,
//! then `set_speed`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::within;
use peerwire::server::{CancellationToken, serve, serve_connection};
use peerwire::transport::memory;
use peerwire::{Config, PeerHandle, PeerWriteHandle, ReceivedMessage, TcpListener, TcpPeer};
use tokio::sync::mpsc;

const COMMANDS: u32 = 10_000;

/// A handler that reports the number in the body of every stream message, after awaiting once
/// (as a handler that talks to a motor would), and counts in `overlaps` the times two ran at once.
fn recording_handler(
	numbers: mpsc::UnboundedSender<u32>,
	overlaps: Arc<AtomicUsize>,
) -> impl Fn(ReceivedMessage<Bytes>, PeerWriteHandle<Bytes>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
	let busy = Arc::new(AtomicBool::new(false));
	move |message, _peer| {
		let numbers = numbers.clone();
		let busy = busy.clone();
		let overlaps = overlaps.clone();
		Box::pin(async move {
			if let ReceivedMessage::Stream(message) = message {
				let overlapping = busy.swap(true, Ordering::AcqRel);
				if overlapping {
					overlaps.fetch_add(1, Ordering::Relaxed);
				}
				tokio::task::yield_now().await;
				let number = u32::from_be_bytes(message.body[..4].try_into().unwrap());
				if !overlapping {
					busy.store(false, Ordering::Release);
				}
				let _ = numbers.send(number);
			}
		})
	}
}

async fn send_numbered(client: &PeerHandle<Bytes>) {
	for number in 0..COMMANDS {
		client.send_stream(1, Bytes::copy_from_slice(&number.to_be_bytes())).await.unwrap();
	}
}

async fn assert_in_order(numbers: &mut mpsc::UnboundedReceiver<u32>, overlaps: &AtomicUsize) {
	let mut received = Vec::with_capacity(COMMANDS as usize);
	while received.len() < COMMANDS as usize {
		received.push(within(numbers.recv()).await.unwrap());
	}
	let out_of_order = received.windows(2).filter(|pair| pair[1] != pair[0] + 1).count();
	let overlaps = overlaps.load(Ordering::Relaxed);
	assert_eq!(
		(out_of_order, overlaps),
		(0, 0),
		"{out_of_order} stream messages arrived out of order, {overlaps} times two handlers ran at once"
	);
	assert_eq!(received, (0..COMMANDS).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_messages_are_handled_in_order_over_memory() {
	let (client, server) = memory::pair::<Bytes>(&Config::default());
	let (numbers_tx, mut numbers) = mpsc::unbounded_channel();
	let overlaps = Arc::new(AtomicUsize::new(0));
	let shutdown = CancellationToken::new();
	let served = tokio::spawn(serve_connection(
		server,
		shutdown.clone(),
		Duration::from_secs(5),
		recording_handler(numbers_tx, overlaps.clone()),
	));
	send_numbered(&client).await;
	assert_in_order(&mut numbers, &overlaps).await;
	shutdown.cancel();
	within(served).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_messages_are_handled_in_order_over_tcp() {
	let listener = TcpListener::bind("127.0.0.1:0", &Config::default()).await.unwrap();
	let address = listener.local_addr().unwrap();
	let (numbers_tx, mut numbers) = mpsc::unbounded_channel();
	let overlaps = Arc::new(AtomicUsize::new(0));
	let shutdown = CancellationToken::new();
	let server = tokio::spawn(serve(
		listener,
		shutdown.clone(),
		Duration::from_secs(5),
		recording_handler(numbers_tx, overlaps.clone()),
	));
	let (client, _) = TcpPeer::connect(address, &Config::default()).await.unwrap();
	send_numbered(&client).await;
	assert_in_order(&mut numbers, &overlaps).await;
	shutdown.cancel();
	within(server).await.unwrap();
}

#[tokio::test]
async fn stream_messages_received_before_a_shutdown_are_still_handled_in_order() {
	let (client, server) = memory::pair::<Bytes>(&Config::default());
	let (handled_tx, mut handled) = mpsc::unbounded_channel();
	let release = Arc::new(tokio::sync::Notify::new());
	let shutdown = CancellationToken::new();
	let served = tokio::spawn(serve_connection(server, shutdown.clone(), Duration::from_secs(5), {
		let release = release.clone();
		move |message, _peer| {
			let handled = handled_tx.clone();
			let release = release.clone();
			async move {
				if let ReceivedMessage::Stream(message) = message {
					if message.body == "set_speed" {
						// Still busy with the first command when the shutdown comes.
						release.notified().await;
					}
					let _ = handled.send(message.body);
				}
			}
		}
	}));
	client.send_stream(1, "set_speed").await.unwrap();
	client.send_stream(2, "stop").await.unwrap();
	// Let both arrive before the shutdown.
	tokio::time::sleep(Duration::from_millis(100)).await;
	shutdown.cancel();
	tokio::time::sleep(Duration::from_millis(50)).await;
	release.notify_one();
	assert_eq!(within(handled.recv()).await.unwrap(), "set_speed");
	assert_eq!(within(handled.recv()).await.unwrap(), "stop");
	within(served).await.unwrap();
}

#[tokio::test]
async fn a_stream_handler_that_never_returns_is_aborted_at_the_end_of_the_grace_period() {
	let (client, server) = memory::pair::<Bytes>(&Config::default());
	let shutdown = CancellationToken::new();
	let served =
		tokio::spawn(serve_connection(server, shutdown.clone(), Duration::from_millis(200), |_message, _peer| {
			std::future::pending::<()>()
		}));
	client.send_stream(1, "stuck").await.unwrap();
	client.send_stream(1, "waiting behind it").await.unwrap();
	tokio::time::sleep(Duration::from_millis(50)).await;
	shutdown.cancel();
	within(served).await.unwrap();
	within(client.closed()).await;
}
