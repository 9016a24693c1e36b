//! The scripted exchange whose counters tests/observe.rs (and tests/tls.rs) check exactly.

use std::time::Duration;

use peerwire::{Body, ByType, ConnectionStats, PeerHandle, ReceivedMessage};
use tokio::sync::oneshot;

use super::within;

/// The script, from the client's side; the server's side runs in `serve`.
///
/// 1. request "ping" → responder update "half", requester update "more", response "pong!";
/// 2. stream message "abc";
/// 3. request "bad" → error response "nope";
/// 4. request "drop" → the server drops the handle: an automatic error response;
/// 5. request "late" → the client drops its handle, then the server answers "ok": stray.
pub async fn script<B: Body>(client: PeerHandle<B>, server: PeerHandle<B>) -> (ConnectionStats, ConnectionStats)
where
	&'static str: peerwire::IntoBody<B>,
{
	let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
	let server = tokio::spawn(serve(server, dropped_rx));

	let mut request = client.send_request(1, "ping").await.unwrap();
	let update = within(request.recv_update()).await.unwrap().expect("an update");
	assert_eq!(update.body.len(), 4);
	request.send_update(2, "more").await.unwrap();
	let response = within(request.recv_response()).await.unwrap();
	assert_eq!(response.body.len(), 5);

	client.send_stream(3, "abc").await.unwrap();

	let mut request = client.send_request(4, "bad").await.unwrap();
	assert!(within(request.recv_response()).await.unwrap().is_error_response());

	let mut request = client.send_request(5, "drop").await.unwrap();
	assert!(within(request.recv_response()).await.unwrap().is_error_response());

	let request = client.send_request(6, "late").await.unwrap();
	// Make sure it is on its way before forgetting it.
	client.flush().await.unwrap();
	drop(request);
	dropped_tx.send(()).unwrap();

	let server_stats = within(server).await.unwrap();
	// The server has flushed its last answer: wait until the client has read it.
	within(async {
		while client.stats().stray_messages == 0 {
			tokio::time::sleep(Duration::from_millis(2)).await;
		}
	})
	.await;
	(client.stats(), server_stats)
}

async fn serve<B: Body>(mut server: PeerHandle<B>, dropped: oneshot::Receiver<()>) -> ConnectionStats
where
	&'static str: peerwire::IntoBody<B>,
{
	let next = |message: ReceivedMessage<B>| message.into_request().expect("a request");
	let (mut request, _) = next(within(server.recv_message()).await.unwrap());
	request.send_update(10, "half").await.unwrap();
	let update = within(request.recv_update()).await.unwrap().expect("an update");
	assert_eq!(update.body.len(), 4);
	request.send_response(0, "pong!").await.unwrap();

	let stream = within(server.recv_message()).await.unwrap().into_stream().expect("a stream message");
	assert_eq!(stream.body.len(), 3);

	let (request, _) = next(within(server.recv_message()).await.unwrap());
	request.send_error_response("nope").await.unwrap();

	let (request, _) = next(within(server.recv_message()).await.unwrap());
	drop(request);

	let (request, _) = next(within(server.recv_message()).await.unwrap());
	dropped.await.unwrap();
	request.send_response(0, "ok").await.unwrap();
	server.flush().await.unwrap();
	server.stats()
}

pub fn check(client: &ConnectionStats, server: &ConnectionStats) {
	let auto_reply = peerwire::DROPPED_REQUEST_TEXT.len() as u64;
	// The client's view.
	assert_eq!(
		client.sent.messages,
		ByType { request: 4, requester_update: 1, stream: 1, ..ByType::default() },
		"{client:#?}"
	);
	assert_eq!(
		client.sent.body_bytes,
		ByType { request: 4 + 3 + 4 + 4, requester_update: 4, stream: 3, ..ByType::default() }
	);
	assert_eq!(client.sent.error_responses, 0);
	assert_eq!(
		client.received.messages,
		ByType { responder_update: 1, response: 4, ..ByType::default() },
		"{client:#?}"
	);
	assert_eq!(
		client.received.body_bytes,
		ByType { responder_update: 4, response: 5 + 4 + auto_reply + 2, ..ByType::default() }
	);
	assert_eq!(client.received.error_responses, 2);
	assert_eq!((client.open_sent_requests, client.open_received_requests), (0, 0));
	assert_eq!((client.peak_sent_requests, client.peak_received_requests), (1, 0));
	assert_eq!(client.auto_replies, 0);
	assert_eq!(client.stray_messages, 1, "the answer to the forgotten request");
	assert_eq!(client.protocol_errors, 0);

	// The server's: the mirror image, the automatic reply included in what it sent.
	assert_eq!(server.received.messages, client.sent.messages);
	assert_eq!(server.received.body_bytes, client.sent.body_bytes);
	assert_eq!(server.sent.messages, client.received.messages);
	assert_eq!(server.sent.body_bytes, client.received.body_bytes);
	assert_eq!(server.sent.error_responses, 2);
	assert_eq!((server.open_sent_requests, server.open_received_requests), (0, 0));
	assert_eq!((server.peak_sent_requests, server.peak_received_requests), (0, 1));
	assert_eq!(server.auto_replies, 1, "the dropped request");
	assert_eq!((server.stray_messages, server.protocol_errors), (0, 0));
}
