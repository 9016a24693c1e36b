//! The spellings a new user, and a user porting from fizyr-rpc 0.8, tried and found broken
//! (issue 13, "Why"), each in the form it has now: this file compiles only if they do, and each
//! test checks that the spelling does what it says.

mod common;

use std::io::{Read, Seek, Write};
use std::time::Duration;

use common::{socket_path, within};
use peerwire::{
	Backoff, Body, Bytes, Config, Credentials, Endian, ErrorKind, IntoBody, Message, ReceivedMessage, Reconnecting,
	TcpListener, TcpPeer, TcpTransport, UnixBody, UnixSeqpacketListener, UnixSeqpacketPeer, UnixSeqpacketTransport,
	UnixStreamListener, UnixStreamTransport,
};

/// `peerwire::Bytes` names the body type of the stream transports: no dependency on `bytes`.
#[tokio::test]
async fn bytes_is_named_from_the_crate_root() {
	let (client, mut server) = peerwire::transport::memory::pair::<Bytes>(&Config::default());
	let body: Bytes = Bytes::from_static(b"named");
	client.send_stream(1, body.clone()).await.unwrap();
	let ReceivedMessage::Stream(message) = within(server.recv_message()).await.unwrap() else {
		panic!("expected a stream message");
	};
	let received: Bytes = message.body;
	assert_eq!(received, body);
}

/// `peerwire::Endian` is the byte order of the configuration.
#[test]
fn endian_is_named_from_the_crate_root() {
	let config = Config::default().with_endian(Endian::Big);
	assert_eq!(config.endian, Endian::Big);
	assert_eq!(config.endian, peerwire::codec::Endian::Big);
	assert_eq!(Config::default().endian, Endian::Little);
}

/// `send_response(-7, b"custom")` and a borrowed `&[u8]` body, on both body types.
#[tokio::test]
async fn byte_literals_and_borrowed_slices_are_bodies_of_both_types() {
	let borrowed: &[u8] = &[1, 2, 3];

	let (client, mut server) = peerwire::transport::memory::pair::<Bytes>(&Config::default());
	let mut request = client.send_request(1, b"request").await.unwrap();
	let (incoming, body) = within(server.recv_message()).await.unwrap().into_request().unwrap();
	assert_eq!(&body[..], b"request");
	incoming.send_update(2, borrowed).await.unwrap();
	incoming.send_response(-7, b"custom").await.unwrap();
	assert_eq!(&within(request.recv_update()).await.unwrap().unwrap().body[..], borrowed);
	let response = within(request.recv_response()).await.unwrap();
	assert_eq!((response.header.service_id, &response.body[..]), (-7, &b"custom"[..]));

	let config = Config::default();
	let (a, b) = UnixSeqpacketTransport::pair(&config).unwrap();
	let (client, mut server) = (peerwire::Peer::spawn(a, &config), peerwire::Peer::spawn(b, &config));
	let mut request = client.send_request(1, b"request").await.unwrap();
	let (incoming, body) = within(server.recv_message()).await.unwrap().into_request().unwrap();
	assert_eq!(&body.data[..], b"request");
	incoming.send_update(2, borrowed).await.unwrap();
	incoming.send_response(-7, b"custom").await.unwrap();
	assert_eq!(&within(request.recv_update()).await.unwrap().unwrap().body.data[..], borrowed);
	let response = within(request.recv_response()).await.unwrap();
	assert_eq!((response.header.service_id, &response.body.data[..]), (-7, &b"custom"[..]));
}

/// Every input, the same on both body types.
#[test]
fn both_body_types_take_the_same_inputs() {
	fn both(input: impl IntoBody<Bytes> + IntoBody<UnixBody> + Clone) -> (Bytes, UnixBody) {
		(input.clone().into_body(), input.into_body())
	}
	let borrowed: &[u8] = b"abc";
	let inputs: [(Bytes, UnixBody); 6] = [
		both(b"abc"),
		both(borrowed),
		both("abc"),
		both(String::from("abc")),
		both(b"abc".to_vec()),
		both(Bytes::from_static(b"abc")),
	];
	for (bytes, unix) in inputs {
		assert_eq!(&bytes[..], b"abc");
		assert_eq!(unix.as_bytes(), b"abc");
		assert!(unix.fds.is_empty());
	}
	// A UnixBody is a body of its own type, descriptors and all.
	let file = std::fs::File::open("/dev/null").unwrap();
	let body: UnixBody = UnixBody::new(b"x", [file]).into_body();
	assert_eq!(body.fd_count(), 1);
}

/// `TcpPeer::connect(addr, &config)` and `TcpListener::bind(addr, &config)`: one way to pass
/// `Config`, by reference, and `Display` for what is known about the remote.
#[tokio::test]
async fn connect_and_bind_take_the_config_by_reference() {
	let config = Config::default().with_max_body_len_read(1 << 20);
	let mut listener = TcpListener::bind("127.0.0.1:0", &config).await.unwrap();
	let address = listener.local_addr().unwrap();
	let (client, server) = tokio::join!(TcpPeer::connect(address, &config), listener.accept());
	let (_client, client_info) = client.unwrap();
	let (_server, server_info) = server.unwrap();
	assert_eq!(client_info.to_string(), format!("tcp://{address}"));
	assert!(server_info.to_string().starts_with("tcp://127.0.0.1:"), "{server_info}");
	assert_eq!(listener.config(), &config);

	let path = socket_path("spellings-unix");
	let mut listener = UnixStreamListener::bind(&path, &config).await.unwrap();
	assert_eq!(listener.local_addr().unwrap().as_deref(), Some(path.as_path()));
	let (client, server) = tokio::join!(peerwire::UnixStreamPeer::connect(&path, &config), listener.accept());
	let (_client, client_info) = client.unwrap();
	let (_server, server_info) = server.unwrap();
	let me = format!("uid {}, pid {}", rustix::process::getuid().as_raw(), std::process::id());
	assert_eq!(client_info.to_string(), format!("unix://{} ({me})", path.display()));
	assert_eq!(server_info.to_string(), format!("unix ({me})"));
}

/// One constructor name on every transport: `from_socket(socket, &config)`, `pair(&config)`.
#[tokio::test]
async fn transports_are_made_with_from_socket() {
	let config = Config::default();
	let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
	let (stream, accepted) =
		tokio::join!(tokio::net::TcpStream::connect(listener.local_addr().unwrap()), listener.accept());
	let client = TcpTransport::from_socket(stream.unwrap(), &config).unwrap();
	let server = TcpTransport::from_socket(accepted.unwrap().0, &config).unwrap();
	let (client, mut server) = (peerwire::Peer::spawn(client, &config), peerwire::Peer::spawn(server, &config));
	client.send_stream(1, "tcp").await.unwrap();
	assert!(matches!(within(server.recv_message()).await.unwrap(), ReceivedMessage::Stream(_)));

	let (a, b) = tokio::net::UnixStream::pair().unwrap();
	let _unix = (UnixStreamTransport::from_socket(a, &config).unwrap(), UnixStreamTransport::from_socket(b, &config));
	let _unix_pair = UnixStreamTransport::pair(&config).unwrap();
	let (a, b) = tokio_seqpacket::UnixSeqpacket::pair().unwrap();
	let _seqpacket =
		(UnixSeqpacketTransport::from_socket(a, &config).unwrap(), UnixSeqpacketTransport::from_socket(b, &config));
	let _seqpacket_pair = UnixSeqpacketTransport::pair(&config).unwrap();
	let _memory = peerwire::MemoryTransport::<Bytes>::pair(&config);
}

/// `UnixBody::new(data, fds)`, the fizyr-rpc spelling, carries the descriptors.
#[tokio::test]
async fn unix_body_new_takes_data_and_descriptors() {
	let config = Config::default();
	let path = socket_path("spellings-seqpacket");
	let mut listener = UnixSeqpacketListener::bind(&path, &config).await.unwrap();
	assert_eq!(listener.local_addr().unwrap().as_deref(), Some(path.as_path()));
	let (client, server) = tokio::join!(UnixSeqpacketPeer::connect(&path, &config), listener.accept());
	let (client, _) = client.unwrap();
	let (mut server, _) = server.unwrap();

	let mut file = common::temp_file("spellings");
	file.write_all(b"through the descriptor").unwrap();
	client.send_stream(1, UnixBody::new(b"data", vec![file])).await.unwrap();
	let ReceivedMessage::Stream(message) = within(server.recv_message()).await.unwrap() else {
		panic!("expected a stream message");
	};
	assert_eq!(&message.body.data[..], b"data");
	let mut fds = message.body.fds.into_iter();
	let mut file = std::fs::File::from(fds.next().expect("a descriptor"));
	assert!(fds.next().is_none());
	let mut text = String::new();
	file.rewind().unwrap();
	file.read_to_string(&mut text).unwrap();
	assert_eq!(text, "through the descriptor");
}

/// An error response is an `Err` with `recv_response_ok` (and `into_result`), with the remote's
/// service id and text; a plain response is `Ok`.
#[tokio::test]
async fn an_error_response_comes_back_as_err() {
	let (client, mut server) = peerwire::transport::memory::pair::<Bytes>(&Config::default());
	let responder = tokio::spawn(async move {
		let (request, _) = server.recv_message().await.unwrap().into_request().unwrap();
		request.send_error_response("no such file").await.unwrap();
		let (request, _) = server.recv_message().await.unwrap().into_request().unwrap();
		request.send_response(-7, b"custom").await.unwrap();
		let (request, _) = server.recv_message().await.unwrap().into_request().unwrap();
		request.send_response(0, b"fine").await.unwrap();
		server
	});

	let error = within(client.send_request(1, "a").await.unwrap().recv_response_ok()).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::Remote);
	assert_eq!((error.remote_service_id(), error.remote_text()), (Some(-1), Some("no such file")));

	let response = within(client.send_request(1, "b").await.unwrap().recv_response()).await.unwrap();
	let error = response.into_result().unwrap_err();
	assert_eq!((error.remote_service_id(), error.remote_text()), (Some(-7), Some("custom")));

	let response = within(client.send_request(1, "c").await.unwrap().recv_response_ok()).await.unwrap();
	assert_eq!(&response.body[..], b"fine");
	let _server = responder.await.unwrap();
}

/// The update loop written with `?` reports a lost connection instead of taking it for the end
/// of the updates (as `while let Ok(Some(update))` does).
#[tokio::test]
async fn the_update_loop_reports_a_lost_connection() {
	let (client, mut remote) = common::RawRemote::connect(Config::default()).await;
	let mut request = client.send_request(1, "scan").await.unwrap();
	let opened = within(remote.recv()).await.expect("the request");
	let request_id = opened.header.request_id;
	remote.send(Message::responder_update(request_id, 1, "10%")).await;
	remote.send(Message::responder_update(request_id, 1, "20%")).await;
	// The remote goes away without a response.
	drop(remote);

	let mut seen = Vec::new();
	let updates = async {
		while let Some(update) = request.recv_update().await? {
			seen.push(update.body);
		}
		Ok::<_, peerwire::Error>(())
	};
	let error = within(updates).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::ConnectionClosed);
	assert_eq!(seen, [Bytes::from_static(b"10%"), Bytes::from_static(b"20%")]);
}

/// `Config`, `Backoff` and `Credentials` are built with setters (a struct literal no longer
/// compiles outside the crate: they are `#[non_exhaustive]`).
#[test]
fn configuration_is_built_with_setters() {
	let config = Config::default()
		.with_max_body_len_read(64 << 20)
		.with_max_body_len_write(32 << 20)
		.with_max_fds_read(4)
		.with_idle_timeout(Some(Duration::from_secs(60)));
	assert_eq!((config.max_body_len_read, config.max_body_len_write, config.max_fds_read), (64 << 20, 32 << 20, 4));
	assert_eq!(config.idle_timeout, Some(Duration::from_secs(60)));
	assert_eq!(config.write_queue, Config::default().write_queue);

	let backoff = Backoff::default().with_initial_delay(Duration::from_millis(5)).with_factor(3).with_jitter(false);
	assert_eq!(backoff.delay_after(3), Duration::from_millis(45));

	let credentials = Credentials::new(1000, 100).with_pid(Some(42));
	let info = peerwire::ConnectionInfo::default()
		.with_remote_address(Some(peerwire::RemoteAddress::Unix(None)))
		.with_credentials(Some(credentials));
	assert_eq!(info.to_string(), "unix (uid 1000, pid 42)");
}

/// `Reconnecting` over seqpacket: requests with descriptors go through, and one sent after the
/// server restarted goes over the new connection.
#[tokio::test]
async fn reconnecting_runs_over_seqpacket() {
	let config = Config::default();
	let path = socket_path("spellings-reconnect");
	let backoff = Backoff::default().with_initial_delay(Duration::from_millis(10)).with_jitter(false);
	let client: Reconnecting<UnixBody> = Reconnecting::unix_seqpacket(&path, &config, backoff);

	for round in 0..2u8 {
		let mut listener = UnixSeqpacketListener::bind(&path, &config).await.unwrap();
		let server = tokio::spawn(async move {
			let (mut peer, _) = listener.accept().await.unwrap();
			let (request, body) = peer.recv_message().await.unwrap().into_request().unwrap();
			let fds = body.fds.len();
			request.send_response(0, format!("{} with {fds}", String::from_utf8_lossy(&body.data))).await.unwrap();
			peer.flush().await.unwrap();
			peer.close();
			peer.closed().await;
		});
		let file = std::fs::File::open("/dev/null").unwrap();
		let mut request =
			within(client.send_request(1, UnixBody::new(format!("round {round}"), [file]))).await.unwrap();
		let response = within(request.recv_response_ok()).await.unwrap();
		assert_eq!(&response.body.data[..], format!("round {round} with 1").as_bytes());
		within(server).await.unwrap();
		within(client.closed()).await;
	}
	assert_eq!(client.generation(), 2);
}

/// A message's body, spelled with a literal, for a message built by hand.
#[test]
fn messages_take_the_same_bodies() {
	let message = Message::<UnixBody>::response(3, -7, b"custom");
	assert_eq!(message.body.as_bytes(), b"custom");
	let message = Message::<Bytes>::stream(0, 1, &b"abc"[..]);
	assert_eq!(&message.body[..], b"abc");
}
