//! The peer over real sockets (TCP and Unix stream): every message kind, concurrency, large
//! bodies, and a broken connection.

mod common;

use std::collections::HashSet;

use bytes::Bytes;
use common::{Kind, connected, connected_with, within};
use peerwire::{Config, ErrorKind, MessageType, ReceivedMessage, RemoteAddress};

async fn every_message_kind_in_both_directions(kind: Kind) {
	let (mut client, mut server) = connected(kind).await;
	every_message_kind_from(&client, &mut server).await;
	every_message_kind_from(&server, &mut client).await;
}

/// `a` sends each kind of message to `b`, and `b` answers.
async fn every_message_kind_from(a: &peerwire::PeerHandle, b: &mut peerwire::PeerHandle) {
	{
		// A request with updates both ways and a response.
		let mut sent = a.send_request(5, "request body").await.unwrap();
		let (mut received, body) = within(b.recv_message()).await.unwrap().into_request().unwrap();
		assert_eq!(&body[..], b"request body");
		assert_eq!(received.service_id(), 5);
		assert_eq!(received.request_id(), sent.request_id());

		sent.send_update(11, "from requester").await.unwrap();
		let update = within(received.recv_update()).await.unwrap().unwrap();
		assert_eq!(update.header.message_type, MessageType::RequesterUpdate);
		assert_eq!((update.header.service_id, &update.body[..]), (11, &b"from requester"[..]));

		received.send_update(12, "from responder").await.unwrap();
		let update = within(sent.recv_update()).await.unwrap().unwrap();
		assert_eq!(update.header.message_type, MessageType::ResponderUpdate);
		assert_eq!((update.header.service_id, &update.body[..]), (12, &b"from responder"[..]));

		received.send_response(3, "response body").await.unwrap();
		assert_eq!(within(sent.recv_update()).await.unwrap(), None);
		let response = within(sent.recv_response()).await.unwrap();
		assert_eq!(response.header.message_type, MessageType::Response);
		assert_eq!((response.header.service_id, &response.body[..]), (3, &b"response body"[..]));
		assert!(!response.is_error_response());

		// An error response.
		let mut sent = a.send_request(6, "").await.unwrap();
		let (received, _) = within(b.recv_message()).await.unwrap().into_request().unwrap();
		received.send_error_response("it broke").await.unwrap();
		let response = within(sent.recv_response()).await.unwrap();
		assert_eq!(response.header.service_id, -1);
		assert_eq!(response.error_text().as_deref(), Some("it broke"));

		// A stream message.
		a.send_stream(9, "streamed").await.unwrap();
		let message = within(b.recv_message()).await.unwrap().into_stream().unwrap();
		assert_eq!(message.header.message_type, MessageType::Stream);
		assert_eq!((message.header.service_id, &message.body[..]), (9, &b"streamed"[..]));
	}
}

async fn a_thousand_concurrent_requests_answered_out_of_order(kind: Kind) {
	let (client, mut server) = connected(kind).await;
	const N: usize = 1000;

	let responder = tokio::spawn(async move {
		let mut requests = Vec::new();
		for _ in 0..N {
			requests.push(within(server.recv_message()).await.unwrap().into_request().unwrap());
		}
		// Answer in an order unrelated to arrival: reversed, odd ones first.
		requests.reverse();
		requests.sort_by_key(|(request, _)| request.request_id() % 2 == 0);
		for (request, body) in requests {
			let answer = format!("answer to {}", std::str::from_utf8(&body).unwrap());
			request.send_response(0, answer).await.unwrap();
		}
		server
	});

	let mut callers = Vec::new();
	for i in 0..N {
		let client = client.write_handle();
		callers.push(tokio::spawn(async move {
			let mut request = client.send_request(1, format!("request {i}")).await.unwrap();
			let response = within(request.recv_response()).await.unwrap();
			assert_eq!(response.body, format!("answer to request {i}"));
			request.request_id()
		}));
	}
	let mut ids = HashSet::new();
	for caller in callers {
		assert!(ids.insert(within(caller).await.unwrap()), "request ids unique while open");
	}
	within(responder).await.unwrap();
}

async fn requester_and_responder_updates_interleave(kind: Kind) {
	let (client, mut server) = connected(kind).await;
	let mut request = client.send_request(1, "").await.unwrap();
	let (mut received, _) = within(server.recv_message()).await.unwrap().into_request().unwrap();

	// Each side sends in its own task while the other receives, through split handles.
	let requester_writer = request.write_handle();
	let responder_writer = received.write_handle();
	let sending_up = tokio::spawn(async move {
		for i in 0..200 {
			requester_writer.send_update(1, format!("up {i}")).await.unwrap();
		}
	});
	let sending_down = tokio::spawn(async move {
		for i in 0..200 {
			responder_writer.send_update(2, format!("down {i}")).await.unwrap();
		}
		responder_writer
	});
	let receiving_up = tokio::spawn(async move {
		for i in 0..200 {
			let update = within(received.recv_update()).await.unwrap().unwrap();
			assert_eq!(update.body, format!("up {i}"));
		}
		received
	});
	for i in 0..200 {
		let update = within(request.recv_update()).await.unwrap().unwrap();
		assert_eq!(update.body, format!("down {i}"));
	}
	within(sending_up).await.unwrap();
	let responder_writer = within(sending_down).await.unwrap();
	let _received = within(receiving_up).await.unwrap();
	responder_writer.send_response(0, "done").await.unwrap();
	assert_eq!(within(request.recv_response()).await.unwrap().body, "done");
	// After the response, updates are refused locally.
	let error = responder_writer.send_update(2, "late").await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::RequestClosed);
	let error = request.send_update(1, "late").await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::RequestClosed);
}

async fn a_cut_connection_fails_every_open_request(kind: Kind) {
	let (client, mut server) = connected(kind).await;
	let mut requests = Vec::new();
	for i in 0..100 {
		requests.push(client.send_request(1, format!("{i}")).await.unwrap());
	}
	// The server sees them all, then its connection goes away without answering.
	for _ in 0..100 {
		let (request, _) = within(server.recv_message()).await.unwrap().into_request().unwrap();
		std::mem::forget(request.write_handle()); // keep it "open" so no error response is sent
	}
	server.close();
	drop(server);

	let (mut read, write) = client.split();
	for mut request in requests {
		let error = within(request.recv_response()).await.unwrap_err();
		assert_eq!(error.kind(), ErrorKind::ConnectionClosed, "{error}");
	}
	let error = within(read.recv_message()).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::ConnectionClosed);
	let error = within(write.send_request(1, "after")).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::ConnectionClosed);
}

async fn sixty_four_mebibytes_round_trip_intact(kind: Kind) {
	let config = Config::default().with_max_body_len_read(65 << 20).with_max_body_len_write(65 << 20);
	let (client, mut server, _, _) = connected_with(kind, config).await;
	let body: Bytes = (0..64usize << 20).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>().into();

	let expected = body.clone();
	let server = tokio::spawn(async move {
		let (request, received) = within(server.recv_message()).await.unwrap().into_request().unwrap();
		assert!(received == expected, "request body corrupted");
		// Answer with the bytes reversed, so the response is not a byte-identical echo.
		let mut reversed = received.to_vec();
		reversed.reverse();
		request.send_response(0, reversed).await.unwrap();
		server
	});
	let mut request = client.send_request(1, body.clone()).await.unwrap();
	let response = within(request.recv_response()).await.unwrap();
	assert_eq!(response.body.len(), body.len());
	assert!(response.body.iter().eq(body.iter().rev()), "response body corrupted");
	within(server).await.unwrap();
}

async fn sending_over_the_write_limit_fails_that_message_only(kind: Kind) {
	let config = Config::default().with_max_body_len_write(100);
	let (client, mut server, _, _) = connected_with(kind, config).await;
	let error = client.send_request(1, vec![0; 101]).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::BodyTooLarge);
	let error = client.send_stream(1, vec![0; 101]).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::BodyTooLarge);
	client.send_stream(1, vec![0; 100]).await.unwrap();
	assert_eq!(within(server.recv_message()).await.unwrap().into_stream().unwrap().body.len(), 100);
}

/// `send_stream` queues its message when first polled, not when called: a send that loses a
/// `select!` before its turn, or is dropped unpolled, sends nothing.
async fn a_send_dropped_before_it_is_polled_sends_nothing(kind: Kind) {
	let (client, mut server) = connected(kind).await;
	let unpolled = client.send_stream(1, "never");
	drop(unpolled);
	tokio::select! {
		biased;
		() = std::future::ready(()) => {},
		_ = client.send_stream(2, "lost the race") => panic!("the second branch ran"),
	}
	client.send_stream(3, "sent").await.unwrap();
	client.flush().await.unwrap();
	let message = within(server.recv_message()).await.unwrap().into_stream().unwrap();
	assert_eq!((message.header.service_id, &message.body[..]), (3, &b"sent"[..]));
	assert_eq!(client.stats().sent.messages.stream, 1);
}

async fn connection_info_names_the_remote(kind: Kind) {
	let (_client, _server, client_info, server_info) = connected_with(kind, Config::default()).await;
	match kind {
		Kind::Tcp => {
			assert!(
				matches!(client_info.remote_address, Some(RemoteAddress::Tcp(address)) if address.ip().is_loopback())
			);
			assert!(matches!(server_info.remote_address, Some(RemoteAddress::Tcp(_))));
			assert_eq!(client_info.credentials, None);
		},
		Kind::Unix => {
			// Both ends are this process.
			for info in [client_info, server_info] {
				let credentials = info.credentials.expect("unix sockets report credentials");
				assert_eq!(credentials.uid, unsafe_free_ids::uid());
				assert_eq!(credentials.gid, unsafe_free_ids::gid());
				assert_eq!(credentials.pid, Some(std::process::id() as i32));
			}
		},
	}
}

/// The test process's own ids, read from /proc so the test needs no `unsafe` libc call.
mod unsafe_free_ids {
	fn status_field(name: &str) -> u32 {
		let status = std::fs::read_to_string("/proc/self/status").unwrap();
		let line = status.lines().find(|line| line.starts_with(name)).unwrap();
		line.split_whitespace().nth(1).unwrap().parse().unwrap()
	}
	pub fn uid() -> u32 {
		status_field("Uid:")
	}
	pub fn gid() -> u32 {
		status_field("Gid:")
	}
}

async fn the_read_handle_gone_requests_get_an_error_response(kind: Kind) {
	let (client, server) = connected(kind).await;
	let (read, _write) = server.split();
	drop(read);
	let mut request = client.send_request(1, "anyone?").await.unwrap();
	let response = within(request.recv_response()).await.unwrap();
	assert!(response.is_error_response());
	// Streams to nobody are dropped; the connection stays usable.
	client.send_stream(1, "lost").await.unwrap();
	let mut request = client.send_request(1, "still there?").await.unwrap();
	assert!(within(request.recv_response()).await.unwrap().is_error_response());
}

async fn dropping_every_handle_closes_the_connection(kind: Kind) {
	let (client, mut server) = connected(kind).await;
	drop(client);
	let error = within(server.recv_message()).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::ConnectionClosed);
	assert!(error.is_closed_by_remote(), "{error}");
}

async fn close_flushes_what_was_queued(kind: Kind) {
	let (client, mut server) = connected(kind).await;
	for i in 0..500 {
		client.send_stream(1, format!("{i}")).await.unwrap();
	}
	client.close();
	let error = within(client.send_stream(1, "after close")).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::ConnectionClosed);
	for i in 0..500 {
		let message = within(server.recv_message()).await.unwrap().into_stream().unwrap();
		assert_eq!(message.body, format!("{i}"));
	}
	assert!(within(server.recv_message()).await.unwrap_err().is_closed_by_remote());
}

async fn a_slow_reader_pushes_back_instead_of_queuing_without_bound(kind: Kind) {
	let config = Config::default().with_incoming_queue(4).with_write_queue(4);
	let (client, mut server, _, _) = connected_with(kind, config).await;
	// The server does not read: socket buffers, the server's incoming queue and the client's
	// write queue fill up, and then sending waits instead of growing memory.
	let body = vec![0u8; 64 * 1024];
	let mut sent = 0usize;
	let stalled = loop {
		match tokio::time::timeout(std::time::Duration::from_millis(500), client.send_stream(1, body.clone())).await {
			Ok(result) => {
				result.unwrap();
				sent += 1;
				assert!(sent < 10_000, "sending never pushed back");
			},
			Err(_) => break true,
		}
	};
	assert!(stalled);
	// Everything sent arrives once the reader catches up.
	for _ in 0..sent {
		within(server.recv_message()).await.unwrap();
	}
}

on_every_transport!(
	every_message_kind_in_both_directions,
	a_thousand_concurrent_requests_answered_out_of_order,
	requester_and_responder_updates_interleave,
	a_cut_connection_fails_every_open_request,
	sixty_four_mebibytes_round_trip_intact,
	sending_over_the_write_limit_fails_that_message_only,
	connection_info_names_the_remote,
	the_read_handle_gone_requests_get_an_error_response,
	dropping_every_handle_closes_the_connection,
	close_flushes_what_was_queued,
	a_slow_reader_pushes_back_instead_of_queuing_without_bound,
	a_send_dropped_before_it_is_polled_sends_nothing,
);

#[tokio::test]
async fn a_received_message_tells_request_from_stream() {
	let (client, mut server) = connected(Kind::Tcp).await;
	client.send_stream(2, "s").await.unwrap();
	assert!(matches!(within(server.recv_message()).await.unwrap(), ReceivedMessage::Stream(_)));
}
