//! No descriptor leaks, on any path: 10,000 messages with descriptors (read, dropped unread,
//! refused), malformed datagrams that end connections (alone, and in the middle of a batch read
//! with one call), and connections that end mid-way.
//!
//! This test counts the entries of `/proc/self/fd`, so it is the only test in this file: the test
//! harness runs the tests of one file as threads of one process, and any other test would open
//! descriptors of its own while this one counts.

mod common;

use std::fs::File;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use common::seqpacket::raw_send;
use peerwire::transport::seqpacket::UnixSeqpacketTransport;
use peerwire::{Config, ErrorKind, Peer, PeerHandle, ReceivedMessage, UnixBody};
use tokio_seqpacket::UnixSeqpacket;

const WAIT: Duration = Duration::from_secs(20);

async fn within<F: Future>(future: F) -> F::Output {
	common::within_for(WAIT, future).await
}

/// Each phase takes a few seconds; the bound is for a machine under heavy load.
async fn phase<F: Future>(future: F) -> F::Output {
	tokio::time::timeout(Duration::from_secs(180), future).await.expect("phase timed out")
}

fn open_fds() -> usize {
	// The directory's own descriptor is counted too, the same every time.
	std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Wait for peer tasks that are still winding down, then report the count.
async fn settled_count(baseline: usize) -> usize {
	let deadline = Instant::now() + WAIT;
	loop {
		let count = open_fds();
		if count == baseline || Instant::now() > deadline {
			return count;
		}
		tokio::time::sleep(Duration::from_millis(20)).await;
	}
}

fn fd() -> File {
	File::open("/dev/null").unwrap()
}

fn fds(count: usize) -> Vec<File> {
	(0..count).map(|_| fd()).collect()
}

fn peers(config: &Config) -> (PeerHandle<UnixBody>, PeerHandle<UnixBody>) {
	let (a, b) = UnixSeqpacketTransport::pair(config).unwrap();
	(Peer::spawn(a, config), Peer::spawn(b, config))
}

const ANSWER: i32 = 1;
const DROP_UNANSWERED: i32 = 2;
const UPDATE_THEN_ANSWER: i32 = 3;
const READ: i32 = 4;
const IGNORE: i32 = 5;

/// Answers requests with descriptors, drops some unanswered, and drops or keeps stream messages.
async fn server(mut peer: PeerHandle<UnixBody>) -> usize {
	let mut received = 0;
	let mut kept = Vec::new();
	while let Ok(message) = peer.recv_message().await {
		received += 1;
		match message {
			ReceivedMessage::Request(request, body) => match request.service_id() {
				ANSWER => {
					// Send one of the received descriptors back, drop the rest.
					let back: Vec<OwnedFd> = body.fds.into_iter().take(1).collect();
					let _ = request.send_response(0, UnixBody::new("answer", back)).await;
				},
				UPDATE_THEN_ANSWER => {
					let _ = request.send_update(1, UnixBody::new("update", fds(2))).await;
					let _ = request.send_response(0, UnixBody::new("late", fds(1))).await;
				},
				// DROP_UNANSWERED: the handle and the body go; an error response goes out.
				_ => drop((request, body)),
			},
			ReceivedMessage::Stream(message) if message.header.service_id == READ => kept.push(message),
			ReceivedMessage::Stream(message) => drop(message),
		}
		if kept.len() > 100 {
			kept.clear();
		}
	}
	received
}

/// 10,000 messages with descriptors, each kind of fate in turn.
async fn traffic(messages: usize) {
	let config = Config::default().with_max_fds_read(4).with_max_fds_write(4);
	let (client, server_peer) = peers(&config);
	let server = tokio::spawn(server(server_peer));
	let mut refused = 0;
	for i in 0..messages {
		match i % 6 {
			0 => client.send_stream(READ, UnixBody::new("keep", fds(2))).await.unwrap(),
			1 => {
				let mut request = client.send_request(ANSWER, UnixBody::new("echo", fds(3))).await.unwrap();
				let response = within(request.recv_response()).await.unwrap();
				assert_eq!(response.body.fds.len(), 1);
			},
			2 => {
				let mut request = client.send_request(DROP_UNANSWERED, UnixBody::new("drop", fds(1))).await.unwrap();
				assert!(within(request.recv_response()).await.unwrap().is_error_response());
			},
			// The handle goes at once: the update and response arrive for a request nobody
			// holds, and are dropped unread with their descriptors.
			3 => drop(client.send_request(UPDATE_THEN_ANSWER, UnixBody::new("forget", fds(1))).await.unwrap()),
			4 => {
				let error = client.send_stream(IGNORE, UnixBody::new("too many", fds(5))).await.unwrap_err();
				assert_eq!(error.kind(), ErrorKind::TooManyFds);
				refused += 1;
			},
			_ => client.send_stream(IGNORE, UnixBody::new("ignore", fds(4))).await.unwrap(),
		}
	}
	// A last round trip: once it is answered, the server has read everything sent before it
	// (the requests whose handles were dropped may still be answered into a closed socket).
	let mut last = client.send_request(ANSWER, UnixBody::new("last", fds(1))).await.unwrap();
	within(last.recv_response()).await.unwrap();
	drop(last);
	client.close();
	within(client.closed()).await;
	drop(client);
	let received = within(server).await.unwrap();
	assert_eq!(received, messages - refused + 1);
}

fn header(message_type: u32) -> Vec<u8> {
	[message_type, 0, 0].iter().flat_map(|field| field.to_le_bytes()).collect()
}

/// Malformed datagrams with descriptors, each ending its connection, and messages queued behind
/// them that are never read.
async fn error_paths() {
	let config = Config::default().with_max_body_len_read(64).with_max_fds_read(2);
	let mut body_too_large = header(4);
	body_too_large.extend_from_slice(&[0; 65]);
	let mut truncated = header(4);
	truncated.extend_from_slice(&[0; 500]);
	let cases: [(&[u8], usize); 6] = [
		(&[1, 2, 3], 2),      // shorter than a header
		(&truncated, 2),      // cut by the kernel
		(&body_too_large, 1), // over the body limit
		(&header(4), 3),      // one descriptor too many
		(&header(4), 40),     // ancillary data cut by the kernel
		(&header(9), 1),      // unknown message type
	];
	for _ in 0..50 {
		for (datagram, count) in cases {
			let (raw, ours) = UnixSeqpacket::pair().unwrap();
			let (peer, mut handle) = Peer::new(UnixSeqpacketTransport::from_socket(ours, &config).unwrap(), &config);
			let run = tokio::spawn(peer.run());
			// A good message first, which nobody reads, then the bad one, then more behind it.
			let mut good = header(4);
			good.extend_from_slice(b"fine");
			// The remote may already be gone after an earlier datagram ended the connection.
			let _ = raw_send(&raw, &good, &fds(2)).await;
			let _ = raw_send(&raw, datagram, &fds(count)).await;
			let _ = raw_send(&raw, &good, &fds(2)).await;
			assert!(within(run).await.unwrap().is_err());
			// The unread good message is still queued for the handle: take it or leave it.
			if count % 2 == 0 {
				let _ = within(handle.recv_message()).await;
			}
		}
	}
}

/// Many datagrams with descriptors queued at once, so that each read takes a batch, with a bad one
/// in the middle of a batch (cut, too many descriptors, descriptors cut, too short): the good
/// ones before it are read, the rest are dropped with what they carry.
async fn batch_error_paths() {
	let config = Config::default().with_max_body_len_read(64).with_max_fds_read(2);
	let mut truncated = header(4);
	truncated.extend_from_slice(&[0; 500]);
	let cases: [(&[u8], usize); 4] = [(&truncated, 2), (&header(4), 3), (&header(4), 40), (&[1, 2, 3], 1)];
	for round in 0..25 {
		for (bad, count) in cases {
			let (raw, ours) = UnixSeqpacket::pair().unwrap();
			let (peer, mut handle) = Peer::new(UnixSeqpacketTransport::from_socket(ours, &config).unwrap(), &config);
			let mut good = header(4);
			good.extend_from_slice(b"fine");
			// All queued before the peer reads anything.
			let before = round % 7;
			for _ in 0..before {
				raw_send(&raw, &good, &fds(2)).await.unwrap();
			}
			raw_send(&raw, bad, &fds(count)).await.unwrap();
			for _ in 0..10 {
				raw_send(&raw, &good, &fds(1)).await.unwrap();
			}
			let run = tokio::spawn(peer.run());
			assert!(within(run).await.unwrap().is_err());
			// The good ones before the bad one reached the handle: read some, leave the rest.
			for _ in 0..before / 2 {
				within(handle.recv_message()).await.unwrap();
			}
		}
	}
}

/// Connections that end with messages everywhere: in the writer's queue, in the socket, in the
/// incoming queue, and sends racing the end.
async fn shutdown_mid_way() {
	let config = Config::default().with_write_queue(64).with_incoming_queue(8);
	for round in 0..20 {
		let (client, mut server) = peers(&config);
		let sender = tokio::spawn(async move {
			let mut sent = 0;
			for _ in 0..300 {
				match client.send_stream(1, UnixBody::new("x", fds(2))).await {
					Ok(()) => sent += 1,
					Err(error) => {
						assert!(error.is_connection_closed(), "{error:?}");
						break;
					},
				}
			}
			sent
		});
		// Read some, then end the connection on this side with more on the way.
		for _ in 0..(round * 5) {
			within(server.recv_message()).await.unwrap();
		}
		if round % 2 == 0 {
			server.close();
		}
		drop(server);
		within(sender).await.unwrap();
	}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_descriptor_leaks_on_any_path() {
	// Let the runtime and the allocator set up whatever they set up lazily.
	phase(traffic(60)).await;
	tokio::time::sleep(Duration::from_millis(50)).await;
	let baseline = open_fds();

	let started = Instant::now();
	phase(traffic(10_000)).await;
	let after_traffic = settled_count(baseline).await;
	phase(error_paths()).await;
	let after_errors = settled_count(baseline).await;
	phase(batch_error_paths()).await;
	let after_batches = settled_count(baseline).await;
	phase(shutdown_mid_way()).await;
	let after_shutdowns = settled_count(baseline).await;
	eprintln!(
		"leak test: {:?}, descriptors {baseline} -> {after_traffic}, {after_errors}, {after_batches}, {after_shutdowns}",
		started.elapsed()
	);

	assert_eq!(after_traffic, baseline, "descriptors leaked by normal traffic");
	assert_eq!(after_errors, baseline, "descriptors leaked on error paths");
	assert_eq!(after_batches, baseline, "descriptors leaked by a bad datagram in the middle of a batch");
	assert_eq!(after_shutdowns, baseline, "descriptors leaked when connections ended mid-way");
}
