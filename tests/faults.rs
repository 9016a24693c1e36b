//! Faults: a remote that dies mid-frame or with thousands of requests open, a remote that never
//! reads, and handles dropped in every order. Nothing may hang, leak or grow without bound, and
//! every handle learns why the connection ended. The last test is the regression test of what
//! fuzzing found (FUZZING.md).

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{RawRemote, within};
use peerwire::codec::{Endian, StreamCodec};
use peerwire::{
	Config, Error, ErrorKind, Message, MessageType, Peer, PeerReadHandle, PeerWriteHandle, ProtocolViolation,
	ReceivedMessage, ReceivedRequestHandle, ReceivedRequestWriteHandle, SentRequestHandle, SentRequestWriteHandle,
	StreamTransport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How soon every handle must learn that the connection is gone ("promptly").
const PROMPTLY: Duration = Duration::from_secs(2);

/// The tests here measure time and memory of the whole process: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn assert_closed_by_truncation(error: &Error, buffered: usize) {
	assert_eq!(error.kind(), ErrorKind::ConnectionClosed, "{error}");
	assert_eq!(error.protocol_violation(), Some(&ProtocolViolation::TruncatedFrame { buffered }), "{error}");
}

/// Open `sent` requests from the peer and `received` requests from the remote, all unanswered.
async fn open_both_ways(
	peer: &mut peerwire::PeerHandle,
	remote: &mut RawRemote,
	sent: usize,
	received: usize,
) -> (Vec<SentRequestHandle>, Vec<ReceivedRequestHandle>) {
	let mut sent_handles = Vec::with_capacity(sent);
	for i in 0..sent {
		sent_handles.push(peer.send_request(1, format!("{i}")).await.unwrap());
	}
	for _ in 0..sent {
		assert_eq!(remote.recv().await.unwrap().header.message_type, MessageType::Request);
	}
	for id in 0..received as u32 {
		remote.send(Message::request(id, 2, "from the remote")).await;
	}
	let mut received_handles = Vec::with_capacity(received);
	for _ in 0..received {
		received_handles.push(within(peer.recv_message()).await.unwrap().into_request().unwrap().0);
	}
	(sent_handles, received_handles)
}

/// Wait for every handle to fail, all at once; returns the errors and how long the slowest took.
async fn fail_all(
	sent: Vec<SentRequestHandle>,
	received: Vec<ReceivedRequestHandle>,
) -> (Vec<Error>, Vec<(ReceivedRequestHandle, Error)>, Duration) {
	let start = Instant::now();
	let sent_tasks: Vec<_> = sent
		.into_iter()
		.map(|mut request| {
			tokio::spawn(async move { request.recv_response().await.expect_err("a response from nobody") })
		})
		.collect();
	let received_tasks: Vec<_> = received
		.into_iter()
		.map(|mut request| {
			tokio::spawn(async move {
				let error = request.recv_update().await.expect_err("an update from nobody");
				(request, error)
			})
		})
		.collect();
	let mut sent_errors = Vec::new();
	let mut received_errors = Vec::new();
	within(async {
		for task in sent_tasks {
			sent_errors.push(task.await.unwrap());
		}
		for task in received_tasks {
			received_errors.push(task.await.unwrap());
		}
	})
	.await;
	(sent_errors, received_errors, start.elapsed())
}

/// The remote writes part of a frame and shuts its side down: every handle fails at once with
/// `ConnectionClosed`, caused by a `TruncatedFrame` that counts the bytes that did arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_closing_mid_frame_fails_every_handle_with_truncated_frame() {
	let _serial = SERIAL.lock().await;
	let codec = StreamCodec::new(Endian::Little, usize::MAX, usize::MAX);
	let mut frame = BytesMut::new();
	codec.encode(&Message::responder_update(0, 1, "ten bytes!"), &mut frame).unwrap();
	assert_eq!(frame.len(), 26);
	// Inside the length prefix, inside the header, inside the body, one byte short of whole.
	for cut in [1, 2, 4, 10, 16, 19, 25] {
		let (mut peer, mut remote) = RawRemote::connect(Config::default()).await;
		let (sent, received) = open_both_ways(&mut peer, &mut remote, 10, 10).await;
		remote.send_bytes(&frame[..cut]).await;
		remote.stream.shutdown().await.unwrap();

		let (sent_errors, received_errors, elapsed) = fail_all(sent, received).await;
		assert!(elapsed < PROMPTLY, "cut at {cut}: handles took {elapsed:?} to fail");
		for error in &sent_errors {
			assert_closed_by_truncation(error, cut);
		}
		for (request, error) in &received_errors {
			assert_closed_by_truncation(error, cut);
			// Answering is refused with the same reason, not queued for a dead connection.
			assert_closed_by_truncation(&request.send_response(0, "too late").await.unwrap_err(), cut);
		}
		assert_closed_by_truncation(&within(peer.recv_message()).await.unwrap_err(), cut);
		assert_closed_by_truncation(&peer.send_request(1, "after").await.unwrap_err(), cut);
		assert_closed_by_truncation(&peer.send_stream(1, "after").await.unwrap_err(), cut);
		// The peer task is gone: its socket is closed, so the remote reads the end of the stream.
		assert!(remote.recv().await.is_none(), "cut at {cut}: the peer kept the connection open");
	}
}

/// A thousand requests open in each direction when the remote goes away, cleanly (FIN) or by a
/// reset (RST): every sent handle and every wait for a requester update fails promptly, and
/// nothing hangs when the handles are dropped afterwards. After a FIN the remote still reads, so
/// the received requests are answered; after a reset, answering fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_open_requests_each_way_fail_promptly_when_the_remote_dies() {
	let _serial = SERIAL.lock().await;
	for reset in [false, true] {
		let (mut peer, mut remote) = RawRemote::connect(Config::default()).await;
		let (sent, received) = open_both_ways(&mut peer, &mut remote, 1000, 1000).await;
		let mut half_closed = if reset {
			// Close with SO_LINGER 0: the kernel answers with a reset, the peer's read fails.
			remote.stream.set_zero_linger().unwrap();
			drop(remote);
			None
		} else {
			remote.stream.shutdown().await.unwrap();
			Some(remote)
		};

		let (sent_errors, received_errors, elapsed) = fail_all(sent, received).await;
		assert!(elapsed < PROMPTLY, "reset {reset}: 2,000 handles took {elapsed:?} to fail");
		assert_eq!((sent_errors.len(), received_errors.len()), (1000, 1000));
		for error in sent_errors.iter().chain(received_errors.iter().map(|(_, error)| error)) {
			assert_eq!(error.kind(), ErrorKind::ConnectionClosed, "{error}");
			if reset {
				assert!(error.io_error().is_some(), "a reset is an I/O error: {error}");
			} else {
				assert!(error.is_closed_by_remote(), "{error}");
			}
		}
		within(async {
			if reset {
				// The received requests are released: answering fails at once instead of
				// queuing, and dropping them (which would send an error response on a live
				// connection) returns.
				for (request, _) in &received_errors {
					assert!(request.send_response(0, "late").await.unwrap_err().is_connection_closed());
				}
				drop(received_errors);
			} else {
				// A half-close: no update can come any more, but the remote still reads, so
				// every request is answered, and then the peer closes.
				let remote = half_closed.as_mut().unwrap();
				for (request, _) in &received_errors {
					request.send_response(0, "late").await.unwrap();
				}
				drop(received_errors);
				for _ in 0..1000 {
					let response = remote.recv().await.unwrap();
					assert_eq!(response.header.message_type, MessageType::Response);
					assert_eq!(&response.body[..], b"late");
				}
				assert!(remote.recv().await.is_none(), "the peer closes once everything is answered");
			}
		})
		.await;
		assert!(within(peer.recv_message()).await.unwrap_err().is_connection_closed());
		assert!(peer.send_request(1, "after").await.unwrap_err().is_connection_closed());
	}
}

/// This process's resident memory, from /proc (no `unsafe`, no extra crate).
fn resident_bytes() -> usize {
	let status = std::fs::read_to_string("/proc/self/status").unwrap();
	let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
	let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
	kib * 1024
}

/// A remote that never reads: sends are pushed back once the socket buffers and the bounded
/// write queue are full, a send bounded by a timeout returns `Elapsed` instead of hanging, and
/// trying to send a gibibyte leaves resident memory where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_that_never_reads_pushes_back_and_memory_stays_bounded() {
	let _serial = SERIAL.lock().await;
	const BODY: usize = 1 << 20;
	const ATTEMPTS: usize = 1024; // 1 GiB offered in all
	const GROWTH_LIMIT: usize = 128 << 20;
	let config = Config::default().with_write_queue(8);
	let (peer, remote) = RawRemote::connect(config).await;
	let baseline = resident_bytes();
	let mut peak = baseline;
	let mut accepted = 0;
	let mut refused = 0;
	let start = Instant::now();
	for attempt in 0..ATTEMPTS {
		// A fresh, fully written allocation each time: retaining them would show in RSS.
		let body = Bytes::from(vec![(attempt % 251) as u8 | 1; BODY]);
		let wait = if refused == 0 { Duration::from_millis(200) } else { Duration::from_millis(1) };
		match tokio::time::timeout(wait, peer.send_stream(1, body)).await {
			Ok(result) => {
				result.unwrap();
				accepted += 1;
			},
			Err(_elapsed) => refused += 1,
		}
		peak = peak.max(resident_bytes());
	}
	let growth = peak.saturating_sub(baseline);
	assert!(refused > 0, "sending was never pushed back ({accepted} MiB accepted)");
	// Socket buffers (a few MiB at most) and the 8-message write queue, nothing like the GiB offered.
	assert!(accepted < 64, "{accepted} MiB accepted by a remote that reads nothing");
	assert!(growth < GROWTH_LIMIT, "resident memory grew by {} MiB", growth >> 20);
	assert!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());
	drop(remote);
}

/// The parts of one connection whose drop order is permuted below.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Part {
	PeerRead,
	PeerWrite,
	Sent,
	SentWriter,
	Received,
	ReceivedWriter,
}

const PARTS: [Part; 6] =
	[Part::PeerRead, Part::PeerWrite, Part::Sent, Part::SentWriter, Part::Received, Part::ReceivedWriter];

fn permutations(items: &[Part]) -> Vec<Vec<Part>> {
	if items.len() <= 1 {
		return vec![items.to_vec()];
	}
	let mut out = Vec::new();
	for (i, first) in items.iter().enumerate() {
		let mut rest = items.to_vec();
		rest.remove(i);
		for mut tail in permutations(&rest) {
			tail.insert(0, *first);
			out.push(tail);
		}
	}
	out
}

#[derive(Default)]
struct Parts {
	read: Option<PeerReadHandle>,
	write: Option<PeerWriteHandle>,
	sent: Option<SentRequestHandle>,
	sent_writer: Option<SentRequestWriteHandle>,
	received: Option<ReceivedRequestHandle>,
	received_writer: Option<ReceivedRequestWriteHandle>,
}

impl Parts {
	fn drop_part(&mut self, part: Part) {
		match part {
			Part::PeerRead => drop(self.read.take()),
			Part::PeerWrite => drop(self.write.take()),
			Part::Sent => drop(self.sent.take()),
			Part::SentWriter => drop(self.sent_writer.take()),
			Part::Received => drop(self.received.take()),
			Part::ReceivedWriter => drop(self.received_writer.take()),
		}
	}
}

/// Every order of dropping the six kinds of handle (720 orders): whatever is still held keeps
/// working, a received request is answered as soon as its last part goes, the connection stays
/// up while anything is held, and once the last handle goes the peer task ends and the remote
/// sees the connection close. Runs over an in-memory stream with paused time, so "nothing more
/// happens" is seen at once.
#[tokio::test(start_paused = true)]
async fn dropping_handles_in_every_order_never_hangs_and_ends_the_peer() {
	const IDLE: Duration = Duration::from_millis(1);
	let config = Config::default();
	let codec = StreamCodec::new(config.endian, usize::MAX, usize::MAX);
	for order in permutations(&PARTS) {
		let (local, remote) = tokio::io::duplex(1 << 16);
		let (read, write) = tokio::io::split(local);
		let (peer, handle) = Peer::new(StreamTransport::new(read, write, &config), &config);
		let task = tokio::spawn(peer.run());
		let (mut remote_read, mut remote_write) = tokio::io::split(remote);
		let mut wire = BytesMut::new();

		// Read one message from the peer; `None` once it hung up. Bounded: a hang fails the test.
		macro_rules! next_from_peer {
			() => {
				within(async {
					loop {
						if let Some(message) = codec.decode(&mut wire).unwrap() {
							return Some(message);
						}
						if remote_read.read_buf(&mut wire).await.unwrap() == 0 {
							return None;
						}
					}
				})
				.await
			};
		}
		// Whether the peer wrote anything (or hung up) while everything ran until idle.
		macro_rules! peer_is_quiet {
			() => {
				codec.decode(&mut wire).unwrap().is_none()
					&& tokio::time::timeout(IDLE, remote_read.read_buf(&mut wire)).await.is_err()
			};
		}

		let (mut read, write) = handle.split();
		let sent = write.send_request(1, "mine").await.unwrap();
		let request = next_from_peer!().unwrap();
		assert_eq!(request.header.request_id, sent.request_id());
		let mut frame = BytesMut::new();
		codec.encode(&Message::request(77, 2, "yours"), &mut frame).unwrap();
		remote_write.write_all(&frame).await.unwrap();
		let (received, _) = within(read.recv_message()).await.unwrap().into_request().unwrap();
		let mut parts = Parts {
			sent_writer: Some(sent.write_handle()),
			received_writer: Some(received.write_handle()),
			read: Some(read),
			write: Some(write),
			sent: Some(sent),
			received: Some(received),
		};

		for (step, part) in order.iter().enumerate() {
			parts.drop_part(*part);
			let last = step == order.len() - 1;
			let received_gone = parts.received.is_none() && parts.received_writer.is_none();
			if received_gone && matches!(part, Part::Received | Part::ReceivedWriter) {
				// The last part of the received request went: it is answered, even if this was
				// the last handle of all (the answer is flushed before the connection closes).
				let answer = next_from_peer!().unwrap_or_else(|| panic!("{order:?}: no answer before the close"));
				assert_eq!(answer.header.request_id, 77);
				assert_eq!(answer.error_text().as_deref(), Some("request dropped without a response"));
			}
			if last {
				break;
			}
			assert!(peer_is_quiet!(), "{order:?}: the peer wrote or hung up after dropping {part:?}");
			assert!(!task.is_finished(), "{order:?}: the peer ended while handles were held");
			// What is still held keeps working.
			if let Some(writer) = &parts.sent_writer {
				within(writer.send_update(3, "still here")).await.unwrap();
				assert_eq!(next_from_peer!().unwrap().header.message_type, MessageType::RequesterUpdate);
			}
			if let Some(writer) = &parts.received_writer {
				within(writer.send_update(4, "still here")).await.unwrap();
				assert_eq!(next_from_peer!().unwrap().header.message_type, MessageType::ResponderUpdate);
			}
			if let Some(write) = &parts.write {
				within(write.send_stream(5, "still here")).await.unwrap();
				assert_eq!(next_from_peer!().unwrap().header.message_type, MessageType::Stream);
			}
		}
		assert!(next_from_peer!().is_none(), "{order:?}: the peer kept the connection open with no handle left");
		within(task).await.unwrap().unwrap();
	}
}

/// A remote announcing a body over the limit: the connection ends, and the cause that every
/// handle can reach is exactly a `BodyTooLarge` error (hostile.rs checks the text only).
#[tokio::test]
async fn an_oversized_length_ends_the_connection_with_exactly_body_too_large() {
	let _serial = SERIAL.lock().await;
	let config = Config::default().with_max_body_len_read(1024);
	let (mut peer, mut remote) = RawRemote::connect(config).await;
	let mut request = peer.send_request(1, "").await.unwrap();
	remote.recv().await.unwrap();
	remote.send_bytes(&(12u32 + 1025).to_le_bytes()).await;
	let error = within(request.recv_response()).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::ConnectionClosed);
	let cause =
		std::error::Error::source(&error).and_then(|cause| cause.downcast_ref::<Error>()).expect("a peerwire cause");
	assert_eq!(cause.kind(), ErrorKind::BodyTooLarge, "{cause}");
	assert_eq!(error.protocol_violation(), None);
	assert!(within(peer.recv_message()).await.unwrap_err().is_connection_closed());
	// The oversized body was never read: the peer hung up right after the length.
	assert!(remote.recv().await.is_none());
}

/// Big-endian peers refuse malformed frames the same way (the other tests use little endian).
#[tokio::test]
async fn malformed_frames_are_refused_in_big_endian_too() {
	let _serial = SERIAL.lock().await;
	let cases = [
		(&[0, 0, 0, 11][..], ProtocolViolation::FrameTooShort { length: 11 }),
		(&[0, 0, 0, 12, 0, 0, 0, 5][..], ProtocolViolation::UnknownMessageType { value: 5 }),
	];
	for (bytes, violation) in cases {
		let config = Config::default().with_endian(Endian::Big);
		let (mut peer, mut remote) = RawRemote::connect(config).await;
		remote.send(Message::stream(0, 1, "valid")).await;
		let message = within(peer.recv_message()).await.unwrap();
		assert!(matches!(message, ReceivedMessage::Stream(ref m) if m.body == "valid"));
		remote.send_bytes(bytes).await;
		let error = within(peer.recv_message()).await.unwrap_err();
		assert_eq!(error.kind(), ErrorKind::ConnectionClosed);
		assert_eq!(error.protocol_violation(), Some(&violation));
	}
}

/// Found by `fuzz/peer_tracking` (FUZZING.md, finding 1). An update that waits for room in the
/// queue of a received request must not outlive the request: once this side has answered, the
/// handle can no longer take updates (`recv_update` returns `Ok(None)`), so an update stuck for
/// it would stall the connection for as long as the handle is held. Here the handle is held
/// after its response, and the connection must go on: a later stream message arrives, and when
/// the remote closes, the close is seen.
#[tokio::test]
async fn an_answered_request_still_held_does_not_stall_the_connection() {
	let _serial = SERIAL.lock().await;
	let config = Config::default().with_request_queue(1);
	let (mut peer, mut remote) = RawRemote::connect(config).await;
	remote.send(Message::request(0, 1, "")).await;
	remote.send(Message::requester_update(0, 1, "fills the queue")).await;
	remote.send(Message::requester_update(0, 1, "waits for room")).await;
	let (request, _) = within(peer.recv_message()).await.unwrap().into_request().unwrap();
	request.send_response(0, "done").await.unwrap();
	assert_eq!(remote.recv().await.unwrap().header.message_type, MessageType::Response);

	remote.send(Message::stream(0, 2, "after the response")).await;
	let message = tokio::time::timeout(PROMPTLY, peer.recv_message()).await.expect("the connection stalled");
	assert_eq!(message.unwrap().into_stream().unwrap().body, "after the response");
	remote.stream.shutdown().await.unwrap();
	let error = tokio::time::timeout(PROMPTLY, peer.recv_message()).await.expect("the close was not seen").unwrap_err();
	assert!(error.is_closed_by_remote(), "{error}");
	drop(request);
}

/// Finding 1 again, through the incoming byte budget: an update already queued for a request
/// when it is answered can no longer be read, and must not keep its charge against
/// `Config::max_buffered_incoming` for as long as the handle is held.
#[tokio::test]
async fn updates_queued_for_an_answered_request_do_not_hold_the_incoming_budget() {
	let _serial = SERIAL.lock().await;
	let config = Config::default().with_max_buffered_incoming(200);
	let (mut peer, mut remote) = RawRemote::connect(config).await;
	remote.send(Message::request(0, 1, "")).await;
	let (request, _) = within(peer.recv_message()).await.unwrap().into_request().unwrap();
	// Queued for the request, unread: charged against the budget.
	remote.send(Message::requester_update(0, 1, vec![1; 100])).await;
	tokio::time::sleep(Duration::from_millis(100)).await;
	request.send_response(0, "done").await.unwrap();
	assert_eq!(remote.recv().await.unwrap().header.message_type, MessageType::Response);

	// Does not fit beside the update in the budget: arrives only once the update's charge is gone.
	remote.send(Message::stream(0, 2, vec![2; 100])).await;
	let message = tokio::time::timeout(PROMPTLY, peer.recv_message()).await.expect("the connection stalled");
	assert_eq!(message.unwrap().into_stream().unwrap().body.len(), 100);
	drop(request);
}

/// Found by `fuzz/peer_tracking` (FUZZING.md, finding 2). A received request whose read handle is
/// dropped while a write handle keeps it open: nothing can read its updates any more, so they
/// must be dropped, as they were when the read handle owned the queue. Here a second update
/// would wait for room in a full queue that no one will ever read, and stall the connection.
#[tokio::test]
async fn a_request_answered_only_through_a_write_handle_does_not_stall_the_connection() {
	let _serial = SERIAL.lock().await;
	let config = Config::default().with_request_queue(1);
	let (mut peer, mut remote) = RawRemote::connect(config).await;
	remote.send(Message::request(0, 1, "")).await;
	let (request, _) = within(peer.recv_message()).await.unwrap().into_request().unwrap();
	let writer = request.write_handle();
	drop(request);
	remote.send(Message::requester_update(0, 1, "fills the queue")).await;
	remote.send(Message::requester_update(0, 1, "waits for room")).await;

	remote.send(Message::stream(0, 2, "behind them")).await;
	let message = tokio::time::timeout(PROMPTLY, peer.recv_message()).await.expect("the connection stalled");
	assert_eq!(message.unwrap().into_stream().unwrap().body, "behind them");
	writer.send_response(0, "answered through the write handle").await.unwrap();
	assert_eq!(remote.recv().await.unwrap().body, "answered through the write handle");
}
