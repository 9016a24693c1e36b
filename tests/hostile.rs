//! A remote that breaks the rules: stray messages, duplicate ids, garbage. The connection
//! survives what the protocol says it should survive, and fails cleanly on the rest.

mod common;

use std::time::Duration;

use common::{RawRemote, within};
use peerwire::{Config, ErrorKind, Message, MessageType, ProtocolViolation, TcpListener, TcpPeer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_stray_response_and_update_leave_the_connection_working() {
	let (peer, mut remote) = RawRemote::connect(Config::default()).await;
	remote.send(Message::response(999, 0, "nobody asked")).await;
	remote.send(Message::responder_update(998, 0, "nobody asked")).await;
	remote.send(Message::requester_update(997, 0, "nothing open")).await;

	let mut request = peer.send_request(4, "real").await.unwrap();
	let sent = remote.recv().await.unwrap();
	assert_eq!(sent.header.message_type, MessageType::Request);
	remote.send(Message::response(sent.header.request_id, 0, "real answer")).await;
	assert_eq!(within(request.recv_response()).await.unwrap().body, "real answer");
}

#[tokio::test]
async fn a_duplicate_request_id_is_refused_and_the_first_request_stays_open() {
	let (mut peer, mut remote) = RawRemote::connect(Config::default()).await;
	remote.send(Message::request(5, 1, "first")).await;
	let (first, _) = within(peer.recv_message()).await.unwrap().into_request().unwrap();

	remote.send(Message::request(5, 1, "again")).await;
	let refusal = remote.recv().await.unwrap();
	assert_eq!(refusal.header.request_id, 5);
	assert!(refusal.error_text().unwrap().contains("already open"), "{refusal:?}");

	// The first request is still open and answerable, and new requests still work.
	first.send_response(0, "first answer").await.unwrap();
	assert_eq!(remote.recv().await.unwrap().body, "first answer");
	remote.send(Message::request(5, 1, "reused after close")).await;
	let (again, body) = within(peer.recv_message()).await.unwrap().into_request().unwrap();
	assert_eq!(body, "reused after close");
	again.send_response(0, "ok").await.unwrap();
	assert_eq!(remote.recv().await.unwrap().body, "ok");
}

/// Send `bytes` after one valid message; the peer must close with `check` holding for the error.
async fn garbage_closes_the_connection(bytes: &[u8], check: impl Fn(&peerwire::Error)) {
	let config = Config::default().with_max_body_len_read(1024);
	let (mut peer, mut remote) = RawRemote::connect(config).await;
	let mut request = peer.send_request(1, "").await.unwrap();
	let _ = remote.recv().await.unwrap();
	remote.send(Message::stream(0, 1, "valid")).await;
	assert_eq!(within(peer.recv_message()).await.unwrap().into_stream().unwrap().body, "valid");

	remote.send_bytes(bytes).await;
	let error = within(request.recv_response()).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::ConnectionClosed);
	check(&error);
	assert!(within(peer.recv_message()).await.unwrap_err().is_connection_closed());
	// The peer hung up on its side.
	assert!(remote.recv().await.is_none());
}

#[tokio::test]
async fn a_frame_length_below_the_header_is_a_protocol_error() {
	garbage_closes_the_connection(&[11, 0, 0, 0], |error| {
		assert_eq!(error.protocol_violation(), Some(&ProtocolViolation::FrameTooShort { length: 11 }));
	})
	.await;
}

#[tokio::test]
async fn an_unknown_message_type_is_a_protocol_error() {
	garbage_closes_the_connection(&[12, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], |error| {
		assert_eq!(error.protocol_violation(), Some(&ProtocolViolation::UnknownMessageType { value: 7 }));
	})
	.await;
}

#[tokio::test]
async fn an_oversized_length_is_refused_before_the_body_arrives() {
	// Announces 1 GiB, sends none of it: refused from the length alone.
	garbage_closes_the_connection(&((1u32 << 30) + 12).to_le_bytes(), |error| {
		let cause = std::error::Error::source(error).expect("the cause is kept");
		assert!(cause.to_string().contains("exceeds the limit"), "{cause}");
	})
	.await;
}

#[tokio::test]
async fn garbage_on_one_connection_leaves_the_others_on_the_listener_alone() {
	let mut listener = TcpListener::bind("127.0.0.1:0", &Config::default()).await.unwrap();
	let address = listener.local_addr().unwrap();
	let server = tokio::spawn(async move {
		loop {
			let Ok((mut peer, _)) = listener.accept().await else { return };
			tokio::spawn(async move {
				while let Ok(message) = peer.recv_message().await {
					if let Some((request, body)) = message.into_request() {
						let _ = request.send_response(0, body).await;
					}
				}
			});
		}
	});

	let (good, _) = TcpPeer::connect(address, &Config::default()).await.unwrap();
	let mut bad = tokio::net::TcpStream::connect(address).await.unwrap();
	tokio::io::AsyncWriteExt::write_all(&mut bad, b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
	// The bad connection is dropped by the server...
	let mut sink = Vec::new();
	within(tokio::io::AsyncReadExt::read_to_end(&mut bad, &mut sink)).await.unwrap();
	// ...and the good one keeps working.
	for i in 0..10 {
		let mut request = good.send_request(1, format!("{i}")).await.unwrap();
		assert_eq!(within(request.recv_response()).await.unwrap().body, format!("{i}"));
	}
	server.abort();
}

#[tokio::test]
async fn a_request_flood_to_a_peer_without_a_read_handle_is_pushed_back() {
	// Each request is answered by the peer itself (nobody reads requests). A remote that floods
	// requests and never reads the answers must be stopped, not buffered without end.
	let (peer, mut remote) = RawRemote::connect(Config::default()).await;
	let (read, _write) = peer.split();
	drop(read);
	let mut batch = bytes::BytesMut::new();
	let codec = peerwire::codec::StreamCodec::new(Default::default(), 1024, 1024);
	for id in 0..1000 {
		codec.encode(&Message::request(id, 1, ""), &mut batch).unwrap();
	}
	let mut sent = 0;
	loop {
		let write = tokio::io::AsyncWriteExt::write_all(&mut remote.stream, &batch);
		match tokio::time::timeout(std::time::Duration::from_millis(500), write).await {
			Ok(result) => result.unwrap(),
			Err(_) => break,
		}
		sent += 1;
		assert!(sent < 2_000, "2 million requests accepted without pushback");
	}
	// The peer is still alive: once the remote reads, the answers come.
	let answer = remote.recv().await.unwrap();
	assert_eq!(answer.header.message_type, MessageType::Response);
	assert!(answer.is_error_response());
}

#[tokio::test]
async fn updates_spread_over_many_requests_are_bounded_by_the_incoming_budget() {
	// Every request's own queue has room, but all of them together may hold no more than
	// `max_buffered_incoming`: past it the peer stops reading and the remote is pushed back.
	let config = Config::default().with_max_buffered_incoming(256 * 1024).with_request_queue(32);
	let (peer, mut remote) = RawRemote::connect(config).await;
	let mut requests = Vec::new();
	for _ in 0..100 {
		requests.push(peer.send_request(1, "").await.unwrap());
	}
	let mut ids = Vec::new();
	for _ in 0..100 {
		ids.push(remote.recv().await.unwrap().header.request_id);
	}

	let codec = peerwire::codec::StreamCodec::new(Default::default(), 1 << 20, 1 << 20);
	let body = vec![7u8; 8 * 1024];
	let mut sent = 0usize;
	let pushed_back = 'flood: {
		for round in 0..32 {
			for &id in &ids {
				let mut frame = bytes::BytesMut::new();
				codec.encode(&Message::responder_update(id, round, body.clone()), &mut frame).unwrap();
				let write = tokio::io::AsyncWriteExt::write_all(&mut remote.stream, &frame);
				if tokio::time::timeout(std::time::Duration::from_millis(500), write).await.is_err() {
					break 'flood true;
				}
				sent += 1;
			}
		}
		false
	};
	// 3,200 updates of 8 KiB (26 MB) would have fit in the request queues.
	assert!(pushed_back, "all {sent} updates were buffered");
	assert!(sent < 3200);

	// Reading in arrival order makes room, and every update sent arrives.
	for n in 0..sent {
		let update = within(requests[n % 100].recv_update()).await.unwrap().unwrap();
		assert_eq!(update.header.service_id, (n / 100) as i32);
	}
}

/// A seqpacket remote queues a burst, so that the peer reads it in one batch, with a datagram cut
/// by the kernel in the middle: the messages before it reach the handle, then the connection ends
/// with the violation; nothing behind it is delivered.
#[cfg(feature = "unix-seqpacket")]
#[tokio::test]
async fn a_bad_datagram_in_the_middle_of_a_burst_ends_the_connection_after_the_good_ones() {
	use peerwire::UnixBody;
	use peerwire::transport::seqpacket::UnixSeqpacketTransport;

	let config = Config::default().with_max_body_len_read(64);
	let (raw, ours) = tokio_seqpacket::UnixSeqpacket::pair().unwrap();
	let datagram = |request_id: u32, body: &[u8]| {
		let mut out: Vec<u8> = [4u32, request_id, 0].iter().flat_map(|field| field.to_le_bytes()).collect();
		out.extend_from_slice(body);
		out
	};
	for id in 0..8 {
		raw.send(&datagram(id, b"good")).await.unwrap();
	}
	raw.send(&datagram(8, &[0; 4096])).await.unwrap();
	for id in 9..12 {
		raw.send(&datagram(id, b"behind")).await.unwrap();
	}
	let (peer, mut handle) = peerwire::Peer::<UnixSeqpacketTransport>::new(
		UnixSeqpacketTransport::from_socket(ours, &config).unwrap(),
		&config,
	);
	let error = within(peer.run()).await.unwrap_err();
	assert_eq!(error.protocol_violation(), Some(&ProtocolViolation::DatagramTruncated));
	for id in 0..8 {
		let message: peerwire::Message<UnixBody> = within(handle.recv_message()).await.unwrap().into_stream().unwrap();
		assert_eq!((message.header.request_id, &message.body.data[..]), (id, &b"good"[..]));
	}
	let error = within(handle.recv_message()).await.unwrap_err();
	assert_eq!(error.protocol_violation(), Some(&ProtocolViolation::DatagramTruncated));
}

/// Once 1024 automatic replies wait to be flushed the peer stops reading; when they are flushed
/// it must read again (a found bug: the round that learned of the flush did not poll the reader
/// again, and the peer never read another request). The stall needs the flush to land in a round
/// with nothing else to do, which takes many fill-and-drain cycles: before the fix it stalled
/// after 83,161 of 200,000 answers (128 s); 20,000 requests passed without the fix, so the test is
/// kept at 200,000 and runs only on request: `cargo test --test hostile -- --ignored`.
#[tokio::test]
#[ignore = "slow (2-5 minutes): run with --ignored"]
async fn reading_resumes_once_a_backlog_of_automatic_replies_is_flushed() {
	let (peer, remote) = RawRemote::connect(Config::default()).await;
	let (read, _write) = peer.split();
	drop(read); // every request is now answered by the peer itself
	rustix::net::sockopt::set_socket_recv_buffer_size(&remote.stream, 4096).unwrap();
	let (mut rd, mut wr) = remote.stream.into_split();
	const N: u32 = 200_000;
	let codec = peerwire::codec::StreamCodec::new(Default::default(), 1 << 20, 1 << 20);
	let mut batch = bytes::BytesMut::new();
	for id in 0..N {
		codec.encode(&Message::request(id, 1, ""), &mut batch).unwrap();
	}
	let writer = tokio::spawn(async move {
		wr.write_all(&batch).await.unwrap();
		wr
	});
	// Let the peer's answers fill the socket so that the auto-reply backlog reaches its cap.
	tokio::time::sleep(Duration::from_millis(1500)).await;
	let mut buffer = bytes::BytesMut::new();
	let mut answers = 0u32;
	while answers < N {
		if let Some(message) = codec.decode(&mut buffer).unwrap() {
			assert_eq!(message.header.message_type, MessageType::Response);
			answers += 1;
			continue;
		}
		match tokio::time::timeout(Duration::from_secs(5), rd.read_buf(&mut buffer)).await {
			Ok(read) => assert!(read.unwrap() > 0, "closed after {answers} answers"),
			Err(_) => panic!("stalled: {answers} of {N} requests answered, peer no longer reads"),
		}
	}
	within(writer).await.unwrap();
}

/// A protocol violation that arrives behind messages still waiting for room (here every message
/// fills the incoming budget alone) ends the connection only after they are handed over: the
/// updates read before the bad frame all reach their request. (Found by the `peer_tracking` fuzz
/// target on the redesigned connection state, which read the bad frame in the same batch and
/// dropped the waiting updates.)
#[tokio::test]
async fn messages_read_before_a_bad_frame_are_all_delivered_first() {
	let (mut peer, mut remote) = RawRemote::connect(Config::default().with_max_buffered_incoming(1)).await;
	remote.send(Message::request(3, 1, "job")).await;
	for update in 1..=4u8 {
		remote.send(Message::requester_update(3, 1, vec![update])).await;
	}
	// A frame length below the header size.
	remote.send_bytes(&3u32.to_le_bytes()).await;
	remote.send_bytes(b"bad").await;
	tokio::time::sleep(Duration::from_millis(50)).await;
	let (mut request, _) = within(peer.recv_message()).await.unwrap().into_request().unwrap();
	for update in 1..=4u8 {
		let message = within(request.recv_update()).await.unwrap().expect("an update");
		assert_eq!(&message.body[..], &[update]);
	}
	let error = within(request.recv_update()).await.unwrap_err();
	assert!(error.is_connection_closed(), "{error}");
	assert!(within(peer.recv_message()).await.unwrap_err().is_connection_closed());
}
