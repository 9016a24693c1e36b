//! `Listener::with_max_connections`: past the limit a new client is closed at once (it does not
//! hang in the backlog), and once a connection ends a new client is served again.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::within;
use peerwire::{Config, PeerHandle, ReceivedMessage, TcpListener, TcpPeer};

/// How soon a client past the limit must see its connection closed.
const PROMPT: Duration = Duration::from_millis(500);

/// Accept forever, echoing every request.
fn echo_server(mut listener: TcpListener) -> tokio::task::JoinHandle<()> {
	tokio::spawn(async move {
		loop {
			let (mut peer, _) = listener.accept().await.unwrap();
			tokio::spawn(async move {
				while let Ok(message) = peer.recv_message().await {
					if let ReceivedMessage::Request(request, body) = message {
						let _ = request.send_response(0, body).await;
					}
				}
			});
		}
	})
}

async fn echo(client: &PeerHandle, text: &str) -> Result<(), peerwire::Error> {
	let mut request = client.send_request(1, text.to_string()).await?;
	let response = within(request.recv_response()).await?;
	assert_eq!(response.body, text);
	Ok(())
}

/// A raw client: connects (the kernel completes the handshake whatever the server does), then
/// waits for the server to close. Returns how long that took, or panics if it did not close.
fn closed_after(address: SocketAddr) -> Duration {
	let started = Instant::now();
	let mut stream = TcpStream::connect(address).unwrap();
	stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
	let mut buffer = [0; 16];
	match stream.read(&mut buffer) {
		Ok(0) => {},
		Ok(len) => panic!("the server sent {len} bytes to a client past the limit"),
		Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {},
		Err(error) => panic!("the server did not close a client past the limit: {error}"),
	}
	started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_the_limit_is_closed_promptly_and_served_once_room_is_made() {
	let config = Config::default();
	let listener = TcpListener::bind("127.0.0.1:0", &config).await.unwrap().with_max_connections(2);
	assert_eq!(listener.max_connections(), Some(2));
	let address = listener.local_addr().unwrap();
	let server = echo_server(listener);

	let (first, _) = TcpPeer::connect(address, &config).await.unwrap();
	let (second, _) = TcpPeer::connect(address, &config).await.unwrap();
	echo(&first, "first").await.unwrap();
	echo(&second, "second").await.unwrap();

	// A third client is closed at once, and so is every further one while the two stay.
	for _ in 0..3 {
		let took = tokio::task::spawn_blocking(move || closed_after(address)).await.unwrap();
		assert!(took < PROMPT, "a client past the limit waited {took:?} to be closed");
	}
	let (third, _) = TcpPeer::connect(address, &config).await.unwrap();
	assert!(echo(&third, "third").await.is_err(), "a third client was served past the limit of 2");

	// The first two are unaffected.
	echo(&first, "first again").await.unwrap();
	echo(&second, "second again").await.unwrap();

	// Once one leaves (its peer task on the server ends shortly after), a new client is served.
	drop(first);
	let deadline = Instant::now() + Duration::from_secs(5);
	let fourth = loop {
		let (client, _) = TcpPeer::connect(address, &config).await.unwrap();
		if echo(&client, "fourth").await.is_ok() {
			break client;
		}
		assert!(Instant::now() < deadline, "no client was served after one of the two left");
		tokio::time::sleep(Duration::from_millis(10)).await;
	};

	// And the limit holds again with the new pair.
	let took = tokio::task::spawn_blocking(move || closed_after(address)).await.unwrap();
	assert!(took < PROMPT, "a client past the limit waited {took:?} to be closed");
	echo(&second, "second, last").await.unwrap();
	echo(&fourth, "fourth, last").await.unwrap();
	server.abort();
}
