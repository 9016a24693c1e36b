//! Small stream messages sent in a burst leave in few writes, and a lone one is not held back;
//! stream messages the read handle took ahead keep the connection from idling.
//!
//! The peer holds back the flush of stream messages while more keep coming (first until the other
//! tasks ready on its worker have run; then, while the sender sends on turn after turn, until its
//! next message; for at most 64 looks or 1 ms), so a burst costs a write per many messages
//! instead of a write per turn of the sender. These tests count the writes that reach the byte
//! stream, and time holds on the runtime's paused clock.

mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::within;
use peerwire::{Config, Peer, PeerHandle, ReceivedMessage, StreamTransport};
use tokio::io::{AsyncWrite, DuplexStream, ReadHalf, WriteHalf};

/// A write half that counts the writes that moved bytes.
struct Counting {
	inner: WriteHalf<DuplexStream>,
	writes: Arc<AtomicUsize>,
}

impl AsyncWrite for Counting {
	fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
		let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
		if let Poll::Ready(Ok(n)) = polled
			&& n > 0
		{
			self.writes.fetch_add(1, Ordering::Relaxed);
		}
		polled
	}

	fn poll_write_vectored(
		mut self: Pin<&mut Self>,
		cx: &mut Context<'_>,
		bufs: &[std::io::IoSlice<'_>],
	) -> Poll<std::io::Result<usize>> {
		let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
		if let Poll::Ready(Ok(n)) = polled
			&& n > 0
		{
			self.writes.fetch_add(1, Ordering::Relaxed);
		}
		polled
	}

	fn is_write_vectored(&self) -> bool {
		self.inner.is_write_vectored()
	}

	fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
		Pin::new(&mut self.inner).poll_flush(cx)
	}

	fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
		Pin::new(&mut self.inner).poll_shutdown(cx)
	}
}

type Sender = PeerHandle<Bytes>;

/// A sender whose writes are counted, and its remote.
fn connected() -> (Sender, PeerHandle<Bytes>, Arc<AtomicUsize>) {
	let config = Config::default();
	let (a, b) = tokio::io::duplex(1 << 20);
	let (a_read, a_write): (ReadHalf<DuplexStream>, _) = tokio::io::split(a);
	let (b_read, b_write) = tokio::io::split(b);
	let writes = Arc::new(AtomicUsize::new(0));
	let counting = Counting { inner: a_write, writes: writes.clone() };
	let sender = Peer::spawn(StreamTransport::new(a_read, counting, &config), &config);
	let receiver = Peer::spawn(StreamTransport::new(b_read, b_write, &config), &config);
	(sender, receiver, writes)
}

async fn recv_stream(receiver: &mut PeerHandle<Bytes>) -> Bytes {
	match receiver.recv_message().await.unwrap() {
		ReceivedMessage::Stream(message) => message.body,
		other => panic!("expected a stream message, got {other:?}"),
	}
}

const MESSAGES: usize = 4096;
const PER_TURN: usize = 4;

/// The stream messages of a burst sent 4 at a time, the sender yielding in between (as the
/// benchmark's stream scenario does, 16 at a time), leave in far fewer writes than turns of the
/// sender, and arrive whole and in order.
#[test]
fn a_burst_of_stream_messages_leaves_in_few_writes() {
	for workers in [1, 2] {
		let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().unwrap();
		let writes = runtime.block_on(async {
			let (sender, mut receiver, writes) = connected();
			let sending = tokio::spawn(async move {
				for turn in 0..MESSAGES / PER_TURN {
					for i in 0..PER_TURN {
						let n = (turn * PER_TURN + i) as u32;
						sender.send_stream(7, Bytes::copy_from_slice(&n.to_le_bytes())).await.unwrap();
					}
					tokio::task::yield_now().await;
				}
				sender
			});
			for n in 0..MESSAGES as u32 {
				assert_eq!(within(recv_stream(&mut receiver)).await, Bytes::copy_from_slice(&n.to_le_bytes()));
			}
			drop(within(sending).await.unwrap());
			writes.load(Ordering::Relaxed)
		});
		// Written as they came, every turn of the sender cost a write (1,024); held back while
		// more came, a write carries many turns (up to 64; fewer if its turns take long, as in a
		// debug build on a busy machine, where the 1 ms bound ends a hold first).
		// Measured on 2 idle cores: 16 writes on 1 worker (64 turns a write), 16 to 87 on 2 (the
		// peer task on the other worker may look before the sender's next turn).
		let turns = MESSAGES / PER_TURN;
		let bound = if workers == 1 { turns / 4 } else { turns / 2 };
		assert!(writes <= bound, "{workers} worker(s): {writes} writes for {MESSAGES} messages in {turns} turns");
		eprintln!("{workers} worker(s): {writes} writes for {MESSAGES} messages in {turns} turns");
	}
}

/// A stream message sent by a task that then waits for something else entirely is written at
/// once, not held until that task runs again: on both runtime flavours.
#[test]
fn a_lone_stream_message_is_not_held_back() {
	let runtimes = [
		tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
		tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap(),
	];
	for runtime in runtimes {
		runtime.block_on(async {
			let (sender, mut receiver, writes) = connected();
			let sending = tokio::spawn(async move {
				sender.send_stream(1, Bytes::from_static(b"telemetry")).await.unwrap();
				// The sender sleeps long after its message; the message must not wait for it.
				tokio::time::sleep(Duration::from_secs(30)).await;
				drop(sender);
			});
			let body = common::within_for(Duration::from_secs(5), recv_stream(&mut receiver)).await;
			assert_eq!(&body[..], b"telemetry");
			assert_eq!(writes.load(Ordering::Relaxed), 1);
			sending.abort();
		});
	}
}

/// A request after a burst of stream messages is not held back with them: its response comes
/// back while the stream messages are still being read, and everything arrives in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_not_held_back_behind_stream_messages() {
	let (sender, mut receiver, _) = connected();
	for n in 0..100u32 {
		sender.send_stream(7, Bytes::copy_from_slice(&n.to_le_bytes())).await.unwrap();
	}
	let mut request = sender.send_request(1, Bytes::from_static(b"ping")).await.unwrap();
	let serving = tokio::spawn(async move {
		for n in 0..100u32 {
			assert_eq!(recv_stream(&mut receiver).await, Bytes::copy_from_slice(&n.to_le_bytes()));
		}
		let (request, body) = receiver.recv_message().await.unwrap().into_request().unwrap();
		request.send_response(0, body).await.unwrap();
		receiver
	});
	let response = within(request.recv_response()).await.unwrap();
	assert_eq!(&response.body[..], b"ping");
	drop(within(serving).await.unwrap());
}

/// A steady sender that does real work between messages (0.5 ms each, yielding after each) gets
/// its first message out within a turn or two, not once everything it sends has piled up: the
/// hold ends after 64 looks or 1 ms even while every look finds one more message. On every
/// runtime flavour.
#[test]
fn a_steady_slow_sender_is_not_held_until_its_messages_pile_up() {
	let runtimes = [
		("current thread", tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()),
		("1 worker", tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()),
		("2 workers", tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()),
	];
	for (name, runtime) in runtimes {
		let latency = runtime.block_on(async {
			let (sender, mut receiver, _) = connected();
			let started = std::time::Instant::now();
			let sending = tokio::spawn(async move {
				for n in 0..400u32 {
					sender.send_stream(7, Bytes::copy_from_slice(&n.to_le_bytes())).await.unwrap();
					// The work behind the next message, blocking its worker as real work does.
					std::thread::sleep(Duration::from_micros(500));
					tokio::task::yield_now().await;
				}
				sender
			});
			let first = within(recv_stream(&mut receiver)).await;
			let latency = started.elapsed();
			assert_eq!(&first[..], &0u32.to_le_bytes());
			drop(within(sending).await.unwrap());
			latency
		});
		// Held until the end, the first message would come after the whole 200 ms of sending.
		assert!(latency < Duration::from_millis(100), "{name}: the first message came after {latency:?}");
	}
}

/// Send 16 stream messages a turn for `turns` turns, yielding in between, as a steady sender
/// does: after the first turns the peer holds for the sender's next message, not for a turn.
async fn send_turns(sender: &peerwire::PeerWriteHandle<Bytes>, turns: u32) {
	for turn in 0..turns {
		for i in 0..16 {
			sender.send_stream(7, Bytes::copy_from_slice(&(turn * 16 + i).to_le_bytes())).await.unwrap();
		}
		tokio::task::yield_now().await;
	}
}

async fn recv_in_order(receiver: &mut PeerHandle<Bytes>, count: u32) {
	for n in 0..count {
		assert_eq!(recv_stream(receiver).await, Bytes::copy_from_slice(&n.to_le_bytes()));
	}
}

/// A steady sender that stops without flushing (here it then sleeps for a minute, keeping its
/// handle) has its last messages written at the hold's deadline, 1 ms after the hold began
/// (rounded up to the timer's next millisecond), not when it next does something. Paused
/// clock: the time is virtual, and moves only to the next timer when every task waits.
#[tokio::test(start_paused = true)]
async fn the_tail_of_a_steady_sender_goes_out_at_the_holds_deadline() {
	let (sender, mut receiver, writes) = connected();
	let started = tokio::time::Instant::now();
	let sending = tokio::spawn(async move {
		send_turns(&sender.write_handle(), 70).await;
		tokio::time::sleep(Duration::from_secs(60)).await;
		drop(sender);
	});
	recv_in_order(&mut receiver, 70 * 16).await;
	let waited = started.elapsed();
	eprintln!("waited {waited:?}, {} writes", writes.load(Ordering::Relaxed));
	assert!(waited <= Duration::from_millis(3), "the last messages came after {waited:?}");
	assert!(writes.load(Ordering::Relaxed) <= 16, "{} writes for 70 turns", writes.load(Ordering::Relaxed));
	sending.abort();
}

/// `flush` wakes a peer that holds stream messages for the sender's next one: it returns without
/// waiting for the hold's deadline (no virtual time passes), and everything is written.
#[tokio::test(start_paused = true)]
async fn a_flush_ends_a_hold_at_once() {
	let (sender, mut receiver, _) = connected();
	let started = tokio::time::Instant::now();
	send_turns(&sender.write_handle(), 8).await;
	sender.flush().await.unwrap();
	assert_eq!(started.elapsed(), Duration::ZERO, "the flush waited for the hold's deadline");
	assert_eq!(sender.stats().sent.messages.stream, 8 * 16);
	recv_in_order(&mut receiver, 8 * 16).await;
	assert_eq!(started.elapsed(), Duration::ZERO);
}

/// A sender that runs out of room in the write budget wakes a peer that holds for its next
/// message: the held messages are flushed at once to make room, not at the hold's deadline (no
/// virtual time passes in 512 messages, one a turn, through a budget of a few).
#[tokio::test(start_paused = true)]
async fn a_sender_out_of_room_ends_a_hold_at_once() {
	let config = Config::default().with_max_buffered_outgoing(1024);
	let (a, b) = tokio::io::duplex(1 << 20);
	let (a_read, a_write) = tokio::io::split(a);
	let (b_read, b_write) = tokio::io::split(b);
	let sender = Peer::spawn(StreamTransport::new(a_read, a_write, &config), &config);
	let mut receiver = Peer::spawn(StreamTransport::new(b_read, b_write, &config), &config);
	let started = tokio::time::Instant::now();
	let sending = tokio::spawn(async move {
		for n in 0..512u32 {
			let mut body = vec![0; 64];
			body[..4].copy_from_slice(&n.to_le_bytes());
			sender.send_stream(7, Bytes::from(body)).await.unwrap();
			tokio::task::yield_now().await;
		}
		// The tail would wait for the hold's deadline (see above).
		sender.flush().await.unwrap();
		sender
	});
	for n in 0..512u32 {
		assert_eq!(recv_stream(&mut receiver).await[..4], n.to_le_bytes());
	}
	let sender = sending.await.unwrap();
	assert_eq!(started.elapsed(), Duration::ZERO, "a send waited for the hold's deadline");
	assert!(sender.stats().send_blocked > Duration::ZERO, "the budget never ran out: the test tests nothing");
	drop(sender);
}

/// A peer holding a steady sender's stream messages still reads on: here its remote answers a
/// request behind 100 stream messages (more than one read batch) while the sender runs for a
/// few turns and then stops without flushing. The response must not wait for the sender's next
/// message or the hold's deadline. Paused clock, every timing of the two tasks in a grid.
/// Found in review: a round that read a full batch and then parked for the sender left the rest
/// of the socket unread until the deadline (11 of the combinations waited 1 ms).
#[tokio::test(start_paused = true)]
async fn a_held_peer_reads_on() {
	let config = Config::default();
	for delay in 0..12u32 {
		for turns in 0..12u32 {
			let (a, b) = tokio::io::duplex(1 << 20);
			let (a_read, a_write) = tokio::io::split(a);
			let (b_read, b_write) = tokio::io::split(b);
			let a = Peer::spawn(StreamTransport::new(a_read, a_write, &config), &config);
			let mut b = Peer::spawn(StreamTransport::new(b_read, b_write, &config), &config);
			let server = tokio::spawn(async move {
				let (request, body) = b.recv_message().await.unwrap().into_request().unwrap();
				for _ in 0..delay {
					tokio::task::yield_now().await;
				}
				for n in 0..100u32 {
					b.send_stream(9, Bytes::copy_from_slice(&n.to_le_bytes())).await.unwrap();
				}
				request.send_response(0, body).await.unwrap();
				b
			});
			let started = tokio::time::Instant::now();
			let mut request = a.send_request(1, Bytes::from_static(b"ping")).await.unwrap();
			let sender = a.write_handle();
			let sending = tokio::spawn(async move {
				send_turns(&sender, turns).await;
				tokio::time::sleep(Duration::from_secs(60)).await;
				drop(sender);
			});
			assert_eq!(&request.recv_response().await.unwrap().body[..], b"ping");
			let waited = started.elapsed();
			assert_eq!(
				waited,
				Duration::ZERO,
				"{delay} turns before answering, {turns} turns sent: the response came after {waited:?}"
			);
			sending.abort();
			drop(server.await.unwrap());
		}
	}
}

/// Stream messages the read handle took ahead of the one it returned, not yet read by the
/// application, keep the connection from closing as idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_messages_taken_ahead_keep_the_connection_from_idling() {
	let idle = Config::default().with_idle_timeout(Some(Duration::from_millis(200)));
	let plain = Config::default();
	let (a, b) = tokio::io::duplex(1 << 20);
	let (a_read, a_write) = tokio::io::split(a);
	let (b_read, b_write) = tokio::io::split(b);
	let sender = Peer::spawn(StreamTransport::new(a_read, a_write, &plain), &plain);
	let mut receiver = Peer::spawn(StreamTransport::new(b_read, b_write, &idle), &idle);
	for n in 0..3u8 {
		sender.send_stream(1, Bytes::from(vec![n])).await.unwrap();
	}
	sender.flush().await.unwrap();
	// Wait until all three are queued at the receiver, so that the first take reads ahead.
	within(async {
		while receiver.stats().received.messages.stream < 3 {
			tokio::time::sleep(Duration::from_millis(5)).await;
		}
	})
	.await;
	assert_eq!(&within(recv_stream(&mut receiver)).await[..], &[0]);
	tokio::time::sleep(Duration::from_millis(600)).await;
	assert!(!receiver.write_handle().is_closed(), "closed as idle with two messages not yet taken");
	assert_eq!(&within(recv_stream(&mut receiver)).await[..], &[1]);
	assert_eq!(&within(recv_stream(&mut receiver)).await[..], &[2]);
	// Everything taken: now it idles out.
	within(async {
		while !receiver.write_handle().is_closed() {
			tokio::time::sleep(Duration::from_millis(20)).await;
		}
	})
	.await;
	drop(sender);
}
