//! Request lifecycle guarantees: a received request is always answered, a dropped sent request
//! is forgotten at once, ids never run out while one is free.

mod common;

use std::time::Duration;

use common::{Kind, RawRemote, connected, connected_with, within};
use peerwire::{Config, ErrorKind, Message, MessageType};

const DROPPED: &str = "request dropped without a response";

#[tokio::test]
async fn a_received_request_dropped_unanswered_gets_an_error_response_and_frees_its_id() {
	let (mut peer, mut remote) = RawRemote::connect(Config::default()).await;
	remote.send(Message::request(42, 1, "please")).await;
	let (request, _) = within(peer.recv_message()).await.unwrap().into_request().unwrap();
	drop(request);

	let answer = remote.recv().await.unwrap();
	assert_eq!(answer.header.message_type, MessageType::Response);
	assert_eq!(answer.header.request_id, 42);
	assert_eq!(answer.error_text().as_deref(), Some(DROPPED));

	// The id is free: the remote may open a new request with it.
	remote.send(Message::request(42, 1, "again")).await;
	let (request, body) = within(peer.recv_message()).await.unwrap().into_request().unwrap();
	assert_eq!(body, "again");
	request.send_response(0, "answered").await.unwrap();
	assert_eq!(remote.recv().await.unwrap().body, "answered");
}

#[tokio::test]
async fn a_task_that_panics_holding_a_received_request_still_answers_it() {
	let (mut peer, mut remote) = RawRemote::connect(Config::default()).await;
	remote.send(Message::request(7, 1, "crash on me")).await;
	let (request, _) = within(peer.recv_message()).await.unwrap().into_request().unwrap();
	let task = tokio::spawn(async move {
		let _request = request;
		panic!("handler bug");
	});
	assert!(task.await.unwrap_err().is_panic());
	let answer = remote.recv().await.unwrap();
	assert_eq!((answer.header.request_id, answer.error_text().as_deref()), (7, Some(DROPPED)));
}

#[tokio::test]
async fn the_write_half_keeps_a_received_request_open_until_both_halves_are_gone() {
	let (client, mut server) = connected(Kind::Tcp).await;
	let mut request = client.send_request(1, "").await.unwrap();
	let (received, _) = within(server.recv_message()).await.unwrap().into_request().unwrap();
	let writer = received.write_handle();
	drop(received);
	// Still open: no error response yet.
	assert!(tokio::time::timeout(Duration::from_millis(200), request.recv_response()).await.is_err());
	writer.send_update(1, "still here").await.unwrap();
	assert_eq!(within(request.recv_update()).await.unwrap().unwrap().body, "still here");
	drop(writer);
	let response = within(request.recv_response()).await.unwrap();
	assert_eq!(response.error_text().as_deref(), Some(DROPPED));
}

#[tokio::test]
async fn a_late_response_to_a_dropped_sent_request_leaves_the_connection_working() {
	let (peer, mut remote) = RawRemote::connect(Config::default()).await;
	let request = peer.send_request(1, "never mind").await.unwrap();
	let id = request.request_id();
	drop(request);
	let _ = remote.recv().await.unwrap();
	remote.send(Message::responder_update(id, 1, "late update")).await;
	remote.send(Message::response(id, 0, "late response")).await;

	let mut request = peer.send_request(2, "next").await.unwrap();
	assert_ne!(request.request_id(), id, "a freed id is not handed out again at once");
	let sent = remote.recv().await.unwrap();
	remote.send(Message::response(sent.header.request_id, 0, "fine")).await;
	assert_eq!(within(request.recv_response()).await.unwrap().body, "fine");
}

#[tokio::test]
async fn request_ids_run_out_only_at_the_limit_and_come_back_when_freed() {
	const LIMIT: usize = 1000;
	let config = Config::default().with_max_open_requests(LIMIT);
	let (client, _server, _, _) = connected_with(Kind::Tcp, config).await;
	let mut open = Vec::new();
	for _ in 0..LIMIT {
		open.push(client.send_request(1, "").await.unwrap());
	}
	let error = client.send_request(1, "one too many").await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::TooManyRequests);
	assert!(error.to_string().contains("1000"), "{error}");

	// Free one, and exactly one more fits.
	open.swap_remove(500);
	open.push(client.send_request(1, "").await.unwrap());
	assert_eq!(client.send_request(1, "").await.unwrap_err().kind(), ErrorKind::TooManyRequests);

	// Free them all, and the full count fits again.
	open.clear();
	for _ in 0..LIMIT {
		open.push(client.send_request(1, "").await.unwrap());
	}
}

#[tokio::test]
async fn a_remote_past_the_open_request_limit_gets_error_responses() {
	let config = Config::default().with_max_open_requests(3);
	let (mut peer, mut remote) = RawRemote::connect(config).await;
	for id in 0..4 {
		remote.send(Message::request(id, 1, "")).await;
	}
	let mut held = Vec::new();
	for _ in 0..3 {
		held.push(within(peer.recv_message()).await.unwrap().into_request().unwrap());
	}
	let refusal = remote.recv().await.unwrap();
	assert_eq!(refusal.header.request_id, 3);
	assert!(refusal.error_text().unwrap().contains("too many open requests"));

	// Answering one makes room again.
	held.pop().unwrap().0.send_response(0, "").await.unwrap();
	assert_eq!(remote.recv().await.unwrap().header.request_id, 2);
	remote.send(Message::request(3, 1, "now there is room")).await;
	let (_request, body) = within(peer.recv_message()).await.unwrap().into_request().unwrap();
	assert_eq!(body, "now there is room");
}

#[tokio::test]
async fn recv_response_timeout_gives_a_timeout_error_and_the_request_stays_usable() {
	let (client, mut server) = connected(Kind::Unix).await;
	let mut request = client.send_request(1, "").await.unwrap();
	let (received, _) = within(server.recv_message()).await.unwrap().into_request().unwrap();
	let error = request.recv_response_timeout(Duration::from_millis(100)).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::Timeout);
	received.send_response(0, "eventually").await.unwrap();
	assert_eq!(request.recv_response_timeout(common::WAIT).await.unwrap().body, "eventually");
	// A second response is not possible.
	assert_eq!(received.send_response(0, "twice").await.unwrap_err().kind(), ErrorKind::RequestClosed);
	assert_eq!(request.recv_response().await.unwrap_err().kind(), ErrorKind::RequestClosed);
}

#[tokio::test]
async fn dropping_handles_in_any_order_ends_every_task() {
	// Request handle before its response; peer handle with open requests; write handle kept
	// while the read handle is dropped. Each case must end, not hang.
	let (client, mut server) = connected(Kind::Tcp).await;
	let request = client.send_request(1, "").await.unwrap();
	let (received, _) = within(server.recv_message()).await.unwrap().into_request().unwrap();
	drop(request);
	drop(client);
	// The client side is gone (its request handle too), so the server sees the close.
	assert!(within(server.recv_message()).await.unwrap_err().is_connection_closed());
	// A remote that closed only its sending side could still read the answer, so answering is
	// allowed; once it is answered the server's side closes too.
	let _ = received.send_response(0, "").await;
	within(received.closed()).await;
	assert!(received.send_response(0, "").await.unwrap_err().is_connection_closed());

	let (client, server) = connected(Kind::Tcp).await;
	let (read, write) = client.split();
	drop(read);
	drop(server);
	let error = within(async {
		loop {
			if let Err(error) = write.send_stream(1, "x").await {
				return error;
			}
			tokio::time::sleep(Duration::from_millis(5)).await;
		}
	})
	.await;
	assert!(error.is_connection_closed());
}

#[tokio::test]
async fn a_held_request_learns_when_its_connection_ends() {
	// After the remote's end of stream the connection stays up for the answers still owed, at
	// most `close_timeout`; a request nobody answers learns of the end then.
	let config = Config::default().with_close_timeout(Duration::from_millis(300));
	let (client, mut server, _, _) = connected_with(Kind::Unix, config).await;
	let request = client.send_request(1, "").await.unwrap();
	let (mut received, _) = within(server.recv_message()).await.unwrap().into_request().unwrap();
	let writer = received.write_handle();
	assert!(!received.is_closed() && !request.is_closed());
	drop((request, client));
	// No requester update can come any more.
	assert!(within(received.recv_update()).await.unwrap_err().is_closed_by_remote());
	within(received.closed()).await;
	within(writer.closed()).await;
	assert!(writer.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_update_reaches_the_wire_after_the_response() {
	// One task sends updates while another sends the response: whatever the interleaving, the
	// remote must never see an update after the response of the same request.
	const N: u32 = 2000;
	let (mut peer, mut remote) = RawRemote::connect(Config::default()).await;
	for id in 0..N {
		remote.send(Message::request(id, 1, "")).await;
	}
	let answering = tokio::spawn(async move {
		for _ in 0..N {
			let (request, _) = within(peer.recv_message()).await.unwrap().into_request().unwrap();
			let updates = request.write_handle();
			tokio::spawn(async move {
				for i in 0.. {
					if updates.send_update(1, format!("{i}")).await.is_err() {
						break;
					}
					tokio::task::yield_now().await;
				}
			});
			tokio::spawn(async move {
				tokio::task::yield_now().await;
				request.send_response(0, "done").await.unwrap();
			});
		}
		peer
	});
	let mut answered = std::collections::HashSet::new();
	while answered.len() < N as usize {
		let message = remote.recv().await.unwrap();
		let id = message.header.request_id;
		match message.header.message_type {
			MessageType::Response => assert!(answered.insert(id), "two responses for {id}"),
			MessageType::ResponderUpdate => assert!(!answered.contains(&id), "update after the response for {id}"),
			other => panic!("unexpected {other:?}"),
		}
	}
	let _peer = within(answering).await.unwrap();
}

/// Requests handed to the application count against `max_unanswered_incoming` until answered.
/// Past it a request is refused with an error response, and reading goes on: a handler that waits
/// for an update before it answers still gets the update (no deadlock on the held bytes).
#[tokio::test]
async fn unanswered_requests_are_bounded_in_bytes_without_stopping_reads() {
	let config = Config::default().with_max_unanswered_incoming(1 << 20);
	let (client, mut server, _, _) = connected_with(Kind::Tcp, config).await;
	let body = vec![7u8; 600 << 10];
	let mut first = client.send_request(1, body.clone()).await.unwrap();
	let (mut held, _) = within(server.recv_message()).await.unwrap().into_request().unwrap();

	// 600 KiB more would pass 1 MiB unanswered: refused at once, the connection stays up.
	let mut second = client.send_request(2, body.clone()).await.unwrap();
	let refused = within(second.recv_response()).await.unwrap();
	assert_eq!(refused.error_text().as_deref(), Some(peerwire::BUSY_TEXT), "{refused:?}");

	// The held request still gets its update, and answers.
	first.send_update(5, "go").await.unwrap();
	let update = within(held.recv_update()).await.unwrap().unwrap();
	assert_eq!(update.body, "go");
	held.send_response(0, "done").await.unwrap();
	assert_eq!(within(first.recv_response()).await.unwrap().body, "done");

	// Answered, its bytes are free again.
	let mut third = client.send_request(3, body).await.unwrap();
	let (again, _) = within(server.recv_message()).await.unwrap().into_request().unwrap();
	again.send_response(0, "ok").await.unwrap();
	assert_eq!(within(third.recv_response()).await.unwrap().body, "ok");
}

/// A sent request whose handle is dropped while a write handle lives: its later updates and its
/// response are dropped on arrival, not queued for nobody (which, once the request's queue was
/// full, stopped the whole connection from reading).
#[tokio::test]
async fn updates_for_a_sent_request_whose_reader_is_gone_do_not_block_the_connection() {
	let config = Config::default().with_request_queue(4);
	let (mut peer, mut remote) = RawRemote::connect(config).await;
	let request = peer.send_request(1, "x").await.unwrap();
	let writer = request.write_handle();
	drop(request);
	let sent = remote.recv().await.unwrap();
	for i in 0..10 {
		remote.send(Message::responder_update(sent.header.request_id, i, "update")).await;
	}
	remote.send(Message::stream(0, 9, "after")).await;
	let message = tokio::time::timeout(Duration::from_secs(3), peer.recv_message())
		.await
		.expect("connection blocked by updates queued for a request nobody reads")
		.unwrap();
	assert_eq!(message.into_stream().unwrap().body, "after");
	drop(writer);
}
