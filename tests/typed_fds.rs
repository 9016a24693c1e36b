//! Typed interfaces over Unix seqpacket, with file descriptors inside typed values
//! (`typed::Fd`): in requests, responses and stream messages, through one connection and through
//! a `Reconnecting` client; refused where they cannot go, and never taken from a message that did
//! not bring them.

mod common;

use std::io::{Read, Seek, Write};
use std::time::Duration;

use common::{socket_path, temp_file, within};
use peerwire::typed::{Fd, TypedBody};
use peerwire::{
	Backoff, Bytes, Config, ErrorKind, Peer, PeerHandle, Reconnecting, UnixBody, UnixSeqpacketListener,
	UnixSeqpacketTransport,
};
use serde::{Deserialize, Serialize};

/// A frame, its pixels in a file handed over by descriptor.
#[derive(Debug, Serialize, Deserialize)]
pub struct Frame {
	pub number: u32,
	pub buffer: Fd,
}

/// A file to store, by descriptor.
#[derive(Debug, Serialize, Deserialize)]
pub struct Store {
	pub name: String,
	pub file: Fd,
}

peerwire::interface! {
	/// A camera that hands out frames as descriptors.
	pub mod camera (format = peerwire::typed::Json) {
		/// Record frame N; the response carries it in a descriptor.
		service 1 record(u32) -> Frame {
			responder_updates {
				/// Progress in percent.
				1 progress(u8),
			}
		}
		/// Take a file (by descriptor); answers its length.
		service 2 store(Store) -> u64;
		/// Write a greeting into the file sent along.
		stream 10 greet(Fd);
	}
}

fn read_all(fd: Fd) -> String {
	let mut file = std::fs::File::from(fd.into_inner());
	file.rewind().unwrap();
	let mut text = String::new();
	file.read_to_string(&mut text).unwrap();
	text
}

/// The camera's side of one connection, over any body type.
async fn serve_camera<B: TypedBody>(server: PeerHandle<B>) {
	let mut server = camera::Server::from_read_handle(server.split().0);
	while let Ok(incoming) = server.recv().await {
		match incoming {
			camera::Incoming::Record(request, number) => {
				request.send_update(&camera::record::ResponderUpdate::Progress(50)).await.unwrap();
				let mut file = temp_file("typed-fds-frame");
				write!(file, "pixels of frame {number}").unwrap();
				request.send_response(&Frame { number, buffer: Fd::from(file) }).await.unwrap();
			},
			camera::Incoming::Store(request, store) => {
				let file = std::fs::File::from(store.file.into_inner());
				request.send_response(&file.metadata().unwrap().len()).await.unwrap();
			},
			camera::Incoming::Greet(fd) => {
				let mut file = std::fs::File::from(fd.into_inner());
				file.write_all(b"hello through a descriptor").unwrap();
			},
			camera::Incoming::Rejected(rejected) => panic!("rejected: {}", rejected.error),
		}
	}
}

fn seqpacket_pair() -> (PeerHandle<UnixBody>, PeerHandle<UnixBody>) {
	let config = Config::default();
	let (a, b) = UnixSeqpacketTransport::pair(&config).unwrap();
	(Peer::spawn(a, &config), Peer::spawn(b, &config))
}

#[tokio::test]
async fn descriptors_travel_in_requests_responses_and_stream_messages() {
	let (client, server) = seqpacket_pair();
	tokio::spawn(serve_camera(server));
	let camera = camera::Client::new(client.write_handle());

	// In a response, after a typed update.
	let mut recording = within(camera.record(&7)).await.unwrap();
	assert_eq!(within(recording.recv_update()).await.unwrap(), Some(camera::record::ResponderUpdate::Progress(50)));
	let frame = within(recording.recv_response()).await.unwrap();
	assert_eq!(frame.number, 7);
	assert_eq!(read_all(frame.buffer), "pixels of frame 7");

	// In a request; the sender keeps its own descriptor.
	let mut file = temp_file("typed-fds-store");
	file.write_all(&[0; 1234]).unwrap();
	let store = Store { name: "zeros".into(), file: Fd::from(file) };
	let length = within(within(camera.store(&store)).await.unwrap().recv_response()).await.unwrap();
	assert_eq!(length, 1234);
	assert!(store.file.0.try_clone().is_ok());

	// In a stream message.
	let file = temp_file("typed-fds-greet");
	let ours = file.try_clone().unwrap();
	within(camera.send_greet(&Fd::from(file))).await.unwrap();
	within(camera.flush()).await.unwrap();
	// The server writes after it reads the stream message: ask it something to know it has.
	within(within(camera.record(&1)).await.unwrap().recv_response()).await.unwrap();
	assert_eq!(read_all(Fd::from(ours)), "hello through a descriptor");
}

#[tokio::test]
async fn a_typed_client_over_a_reconnecting_seqpacket_client_sends_descriptors() {
	let config = Config::default();
	let path = socket_path("typed-fds-reconnect");
	let mut listener = UnixSeqpacketListener::bind(&path, &config).await.unwrap();
	tokio::spawn(async move {
		while let Ok((peer, _)) = listener.accept().await {
			tokio::spawn(serve_camera(peer));
		}
	});
	let backoff = Backoff::default().with_initial_delay(Duration::from_millis(10));
	let camera = camera::Client::new(Reconnecting::unix_seqpacket(&path, &config, backoff));
	let mut file = temp_file("typed-fds-reconnect-file");
	file.write_all(b"12345").unwrap();
	let store = Store { name: "five".into(), file: Fd::from(file) };
	assert_eq!(within(within(camera.store(&store)).await.unwrap().recv_response()).await.unwrap(), 5);
	let frame = within(within(camera.record(&3)).await.unwrap().recv_response()).await.unwrap();
	assert_eq!(read_all(frame.buffer), "pixels of frame 3");
}

#[tokio::test]
async fn a_descriptor_cannot_go_over_a_byte_stream() {
	let (client, _server) = peerwire::transport::memory::pair::<Bytes>(&Config::default());
	let camera = camera::Client::new(client.write_handle());
	let store = Store { name: "x".into(), file: Fd::from(temp_file("typed-fds-bytes")) };
	let error = within(camera.store(&store)).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::Encode);
	assert!(error.to_string().contains("seqpacket"), "{error}");
}

/// A remote that names a descriptor it did not send gets an error response; the typed server sees
/// the request as rejected, and nothing is taken from elsewhere.
#[tokio::test]
async fn a_body_naming_descriptors_that_did_not_come_is_rejected() {
	let (client, server) = seqpacket_pair();
	let mut server = camera::Server::from_read_handle(server.split().0);

	let missing = client.send_request(2, r#"{"name":"x","file":0}"#).await.unwrap();
	let out_of_range = client
		.send_request(2, UnixBody::new(r#"{"name":"x","file":1}"#, [temp_file("typed-fds-hostile")]))
		.await
		.unwrap();
	let frame_twice = client.send_request(1, UnixBody::new(b"1", [temp_file("typed-fds-unused")])).await.unwrap();
	for mut request in [missing, out_of_range] {
		let camera::Incoming::Rejected(rejected) = within(server.recv()).await.unwrap() else {
			panic!("expected a rejected request");
		};
		assert_eq!(rejected.error.kind(), ErrorKind::Decode);
		let response = within(request.recv_response()).await.unwrap();
		assert!(response.is_error_response(), "{response:?}");
	}
	// A descriptor the value has no place for is closed, not an error.
	let camera::Incoming::Record(request, number) = within(server.recv()).await.unwrap() else {
		panic!("expected a record request");
	};
	assert_eq!(number, 1);
	drop((request, frame_twice));

	// A position in range is not enough: it must be a descriptor of this message.
	let error_text = {
		let mut request = client.send_request(2, r#"{"name":"x","file":1}"#).await.unwrap();
		let camera::Incoming::Rejected(rejected) = within(server.recv()).await.unwrap() else {
			panic!("expected a rejected request");
		};
		assert!(rejected.error.to_string().contains("no file descriptor 1"), "{}", rejected.error);
		within(request.recv_response()).await.unwrap().error_text().map(String::from)
	};
	assert!(error_text.is_some_and(|text| text.contains("store")));
}
