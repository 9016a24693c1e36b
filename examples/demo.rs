//! The tour: a server and a client in one process over TCP loopback, showing a request with
//! responder updates, requester updates, an error response and stream messages both ways.
//!
//! `cargo run --example demo`

#[path = "shared/client.rs"]
mod client;
#[path = "shared/service.rs"]
mod service;

use peerwire::{Config, ReceivedMessage, TcpListener, TcpPeer};

#[tokio::main]
async fn main() -> Result<(), peerwire::Error> {
	let mut listener = TcpListener::bind("127.0.0.1:0", &Config::default()).await?;
	let address = listener.local_addr()?;
	println!("[server] listening on tcp://{address}");

	let server = tokio::spawn(async move {
		let (peer, info) = listener.accept().await?;
		println!("[server] connection from {info}");
		// The server also talks first: a stream message to the client.
		peer.send_stream(service::LOG, "welcome").await?;
		service::serve(peer).await;
		Ok::<_, peerwire::Error>(())
	});

	let (mut peer, _) = TcpPeer::connect(address, &Config::default()).await?;
	if let ReceivedMessage::Stream(message) = peer.recv_message().await? {
		println!("[client] stream {}: {}", message.header.service_id, String::from_utf8_lossy(&message.body));
	}
	client::run(&peer).await?;

	// Dropping the last handle closes the connection; the server sees it and ends.
	drop(peer);
	server.await.expect("server task")?;
	println!("done");
	Ok(())
}
