//! The example client shared by the client examples: one call of each service.

#![allow(dead_code)]

use peerwire::{Error, PeerHandle};

use super::service;

/// Call every service once and print what happens.
pub async fn run(peer: &PeerHandle) -> Result<(), Error> {
	let mut echo = peer.send_request(service::ECHO, "Hello World").await?;
	let response = echo.recv_response().await?;
	println!("[client] echo: {}", String::from_utf8_lossy(&response.body));

	let mut countdown = peer.send_request(service::COUNTDOWN, "3").await?;
	while let Some(update) = countdown.recv_update().await? {
		println!("[client] countdown update: {}", String::from_utf8_lossy(&update.body));
	}
	println!("[client] countdown: {}", String::from_utf8_lossy(&countdown.recv_response().await?.body));

	let mut sum = peer.send_request(service::SUM, "").await?;
	for n in [20, 22] {
		println!("[client] sum: sending requester update {n}");
		sum.send_update(service::ADD, n.to_string()).await?;
	}
	sum.send_update(service::DONE, "").await?;
	println!("[client] sum: {}", String::from_utf8_lossy(&sum.recv_response().await?.body));

	let mut unknown = peer.send_request(99, "").await?;
	match unknown.recv_response_ok().await {
		Ok(response) => println!("[client] service 99: unexpected success {:?}", response.body),
		Err(error) if error.kind() == peerwire::ErrorKind::Remote => {
			println!("[client] service 99: error response {:?}", error.remote_text().unwrap_or_default());
		},
		Err(error) => return Err(error),
	}

	peer.send_stream(service::LOG, "client says goodbye").await?;
	Ok(())
}
