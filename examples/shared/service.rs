//! The example service shared by the server examples: echo, a countdown with responder updates,
//! a sum fed by requester updates, and an error for anything else.

#![allow(dead_code)]

use peerwire::{Error, PeerHandle, ReceivedMessage, ReceivedRequestHandle};

/// Answers with the request body.
pub const ECHO: i32 = 1;
/// Body: a number n. Sends n responder updates counting down, then responds "liftoff".
pub const COUNTDOWN: i32 = 2;
/// Requester updates of kind [`ADD`] carry numbers; one of kind [`DONE`] asks for the sum.
pub const SUM: i32 = 3;
/// A stream message the server logs.
pub const LOG: i32 = 10;

/// Requester update kind: a number to add.
pub const ADD: i32 = 1;
/// Requester update kind: no more numbers.
pub const DONE: i32 = 2;

/// Serve one connection until it closes.
pub async fn serve(mut peer: PeerHandle) {
	let remote = peer.info().remote_address.as_ref().map(ToString::to_string).unwrap_or_default();
	loop {
		match peer.recv_message().await {
			Ok(ReceivedMessage::Request(request, body)) => {
				// One task per request: a slow request does not hold up the others.
				tokio::spawn(async move {
					if let Err(error) = answer(request, body).await {
						eprintln!("[server] request failed: {error}");
					}
				});
			},
			Ok(ReceivedMessage::Stream(message)) => {
				println!("[server] stream {}: {}", message.header.service_id, String::from_utf8_lossy(&message.body));
			},
			Err(error) => {
				println!("[server] {remote}: {error}");
				return;
			},
		}
	}
}

async fn answer(mut request: ReceivedRequestHandle, body: peerwire::Bytes) -> Result<(), Error> {
	match request.service_id() {
		ECHO => request.send_response(0, body).await,
		COUNTDOWN => {
			let Some(n) = std::str::from_utf8(&body).ok().and_then(|text| text.parse::<u32>().ok()) else {
				return request.send_error_response("countdown needs a number").await;
			};
			for i in (1..=n).rev() {
				request.send_update(0, i.to_string()).await?;
				tokio::time::sleep(std::time::Duration::from_millis(50)).await;
			}
			request.send_response(0, "liftoff").await
		},
		SUM => {
			let mut sum = 0i64;
			while let Some(update) = request.recv_update().await? {
				match update.header.service_id {
					ADD => {
						sum += std::str::from_utf8(&update.body)
							.ok()
							.and_then(|text| text.parse::<i64>().ok())
							.unwrap_or(0)
					},
					DONE => break,
					other => return request.send_error_response(&format!("unknown update kind {other}")).await,
				}
			}
			request.send_response(0, sum.to_string()).await
		},
		other => request.send_error_response(&format!("unknown service {other}")).await,
	}
}
