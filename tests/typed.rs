//! Typed interfaces over TCP and the in-memory transport: every service shape, streams, unknown
//! services, undecodable bodies, introspection, graceful shutdown, and interop with an untyped
//! fizyr-rpc peer.

#![cfg(all(feature = "json", feature = "msgpack"))]

mod common;

use std::time::Duration;

use common::{Kind, within};
use peerwire::server::{CancellationToken, SHUTTING_DOWN_TEXT, serve};
use peerwire::typed::{Json, MsgPack};
use peerwire::{Config, ErrorKind, PeerHandle, ReceivedMessage, TcpListener, TcpPeer};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Note {
	pub from: String,
	pub text: String,
}

peerwire::interface! {
	/// One service of every shape.
	pub mod shapes (format = Json) {
		/// No updates either way.
		service 1 plain(String) -> String;
		/// Requester updates only: chunks, then done; the response is the total length.
		service 2 upload(()) -> u64 {
			requester_updates {
				/// A chunk of data.
				1 chunk(Vec<u8>),
				/// No more chunks.
				2 done(()),
			}
		}
		/// Responder updates only: one step per unit of work.
		service 3 progress(u32) -> String {
			responder_updates {
				/// A finished step.
				1 step(u32),
			}
		}
		/// Updates both ways: every line said is heard back upper-cased.
		service 4 chat(String) -> usize {
			requester_updates {
				1 say(String),
				2 bye(()),
			}
			responder_updates {
				1 heard(String),
			}
		}
		/// A note, one way.
		stream 10 note(Note);
	}
}

peerwire::interface! {
	/// What a newer client knows: the same services plus one the server has never heard of.
	pub mod newer (format = Json) {
		service 1 plain(String) -> String;
		service 99 brand_new(()) -> ();
		stream 11 unheard(String);
	}
}

peerwire::interface! {
	/// The same plain service in a compact binary format.
	pub mod compact (format = MsgPack) {
		service 1 plain(Note) -> Note;
	}
}

/// The server side of `shapes`, as an application would write it. Returns what it saw that was
/// not a request: notes and rejections.
async fn serve_shapes(peer: PeerHandle) -> Vec<String> {
	let mut server = shapes::Server::new(peer.split().0);
	let mut seen = Vec::new();
	while let Ok(incoming) = server.recv().await {
		match incoming {
			shapes::Incoming::Plain(request, text) => request.send_response(&format!("plain: {text}")).await.unwrap(),
			shapes::Incoming::Upload(mut request, ()) => {
				tokio::spawn(async move {
					let mut total = 0u64;
					while let Some(update) = request.recv_update().await.unwrap() {
						match update {
							shapes::upload::RequesterUpdate::Chunk(chunk) => total += chunk.len() as u64,
							shapes::upload::RequesterUpdate::Done(()) => break,
						}
					}
					request.send_response(&total).await.unwrap();
				});
			},
			shapes::Incoming::Progress(request, steps) => {
				for step in 1..=steps {
					request.send_update(&shapes::progress::ResponderUpdate::Step(step)).await.unwrap();
				}
				request.send_response(&"all done".to_string()).await.unwrap();
			},
			shapes::Incoming::Chat(mut request, greeting) => {
				tokio::spawn(async move {
					let mut lines = 0;
					request.send_update(&shapes::chat::ResponderUpdate::Heard(greeting.to_uppercase())).await.unwrap();
					while let Some(shapes::chat::RequesterUpdate::Say(line)) = request.recv_update().await.unwrap() {
						lines += 1;
						request.send_update(&shapes::chat::ResponderUpdate::Heard(line.to_uppercase())).await.unwrap();
					}
					request.send_response(&lines).await.unwrap();
				});
			},
			shapes::Incoming::Note(note) => seen.push(format!("note from {}: {}", note.from, note.text)),
			shapes::Incoming::Rejected(rejected) => seen.push(format!("rejected {:?}", rejected.error.kind())),
		}
	}
	seen
}

/// A (client, server) pair over `kind`, or over the in-memory transport for `None`.
async fn pair(kind: Option<Kind>) -> (PeerHandle, PeerHandle) {
	match kind {
		Some(kind) => common::connected(kind).await,
		None => peerwire::transport::memory::pair(&Config::default()),
	}
}

async fn every_service_shape(kind: Option<Kind>) {
	let (client, server) = pair(kind).await;
	let server = tokio::spawn(serve_shapes(server));
	let api = shapes::Client::new(client.write_handle());

	// No updates.
	let mut plain = api.plain(&"hi".to_string()).await.unwrap();
	assert_eq!(within(plain.recv_response()).await.unwrap(), "plain: hi");

	// Requester updates.
	let mut upload = api.upload(&()).await.unwrap();
	for chunk in [vec![1u8; 10], vec![2; 20], vec![3; 12]] {
		upload.send_update(&shapes::upload::RequesterUpdate::Chunk(chunk)).await.unwrap();
	}
	upload.send_update(&shapes::upload::RequesterUpdate::Done(())).await.unwrap();
	assert_eq!(within(upload.recv_response()).await.unwrap(), 42);

	// Responder updates.
	let mut progress = api.progress(&3).await.unwrap();
	let mut steps = Vec::new();
	while let Some(shapes::progress::ResponderUpdate::Step(step)) = within(progress.recv_update()).await.unwrap() {
		steps.push(step);
	}
	assert_eq!(steps, [1, 2, 3]);
	assert_eq!(within(progress.recv_response()).await.unwrap(), "all done");

	// Both.
	let mut chat = api.chat(&"hello".to_string()).await.unwrap();
	let heard = |update: Option<shapes::chat::ResponderUpdate>| match update {
		Some(shapes::chat::ResponderUpdate::Heard(line)) => line,
		None => panic!("no update"),
	};
	assert_eq!(heard(within(chat.recv_update()).await.unwrap()), "HELLO");
	for line in ["one", "two"] {
		chat.send_update(&shapes::chat::RequesterUpdate::Say(line.into())).await.unwrap();
		assert_eq!(heard(within(chat.recv_update()).await.unwrap()), line.to_uppercase());
	}
	chat.send_update(&shapes::chat::RequesterUpdate::Bye(())).await.unwrap();
	assert_eq!(within(chat.recv_response()).await.unwrap(), 2);

	// A stream message.
	api.send_note(&Note { from: "client".into(), text: "hello".into() }).await.unwrap();

	// A newer client: an unknown service gets an automatic error response naming it, and an
	// unknown stream is handed to the server as rejected.
	let newer = newer::Client::new(client.write_handle());
	let error = within(newer.brand_new(&()).await.unwrap().recv_response()).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::Remote);
	assert!(error.remote_text().unwrap().contains("service 99"), "{error}");
	newer.send_unheard(&"psst".into()).await.unwrap();

	// A body that does not decode: the error response names the service.
	let mut bad = client.send_request(1, "not json").await.unwrap();
	let response = within(bad.recv_response()).await.unwrap();
	let text = response.error_text().unwrap().into_owned();
	assert!(text.contains("request of service `plain` (1)"), "{text}");

	// The connection is still fine.
	assert_eq!(within(api.plain(&"again".into()).await.unwrap().recv_response()).await.unwrap(), "plain: again");

	// Every handle gone (request handles keep a connection open too), the server sees the end.
	drop((api, newer, client, bad, plain, upload, progress, chat));
	let seen = within(server).await.unwrap();
	assert_eq!(
		seen,
		[
			"note from client: hello",
			"rejected UnknownService", // service 99
			"rejected UnknownService", // stream 11
			"rejected Decode",         // service 1 with a bad body
		]
	);
}

#[tokio::test]
async fn every_service_shape_over_tcp() {
	every_service_shape(Some(Kind::Tcp)).await
}

#[tokio::test]
async fn every_service_shape_in_memory() {
	every_service_shape(None).await
}

#[tokio::test]
async fn a_bad_update_or_response_fails_that_call_only() {
	let (client, mut server) = pair(None).await;
	let api = shapes::Client::new(client.write_handle());
	let mut progress = api.progress(&1).await.unwrap();
	let (request, _) = within(server.recv_message()).await.unwrap().into_request().unwrap();
	request.send_update(7, "\"undeclared\"").await.unwrap();
	request.send_update(1, "\"not a number\"").await.unwrap();
	request.send_response(0, "[]").await.unwrap();

	assert_eq!(within(progress.recv_update()).await.unwrap_err().kind(), ErrorKind::UnknownService);
	let error = within(progress.recv_update()).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::Decode);
	assert!(error.to_string().contains("responder update 1 of service `progress` (3)"), "{error}");
	let error = within(progress.recv_response()).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::Decode);
	assert!(error.to_string().contains("response of service `progress` (3)"), "{error}");
}

#[tokio::test]
async fn msgpack_bodies_round_trip() {
	let (client, server) = pair(Some(Kind::Unix)).await;
	tokio::spawn(async move {
		let mut server = compact::Server::new(server.split().0);
		while let Ok(compact::Incoming::Plain(request, note)) = server.recv().await {
			let reply = Note { from: "server".into(), text: note.text.chars().rev().collect() };
			request.send_response(&reply).await.unwrap();
		}
	});
	let api = compact::Client::new(client.write_handle());
	let note = Note { from: "client".into(), text: "stressed".into() };
	let reply = within(api.plain(&note).await.unwrap().recv_response()).await.unwrap();
	assert_eq!(reply, Note { from: "server".into(), text: "desserts".into() });
}

#[test]
fn introspection_lists_everything_declared() {
	let info = shapes::INTERFACE;
	assert_eq!(info.name, "shapes");
	assert_eq!(info.format, "json");
	assert_eq!(info.doc.trim(), "One service of every shape.");
	let services: Vec<_> = info.services.iter().map(|service| (service.id, service.name)).collect();
	assert_eq!(services, [(1, "plain"), (2, "upload"), (3, "progress"), (4, "chat")]);
	let upload = &info.services[1];
	assert_eq!(upload.request, "()");
	assert_eq!(upload.response, "u64");
	let updates: Vec<_> = upload.requester_updates.iter().map(|update| (update.id, update.name, update.body)).collect();
	assert_eq!(updates, [(1, "chunk", "Vec<u8>"), (2, "done", "()")]);
	assert_eq!(upload.requester_updates[0].doc.trim(), "A chunk of data.");
	assert!(upload.responder_updates.is_empty());
	assert_eq!(info.services[3].responder_updates[0].name, "heard");
	assert_eq!(info.streams.len(), 1);
	assert_eq!((info.streams[0].id, info.streams[0].name, info.streams[0].body), (10, "note", "Note"));
	assert_eq!(compact::INTERFACE.format, "msgpack");
}

#[tokio::test]
async fn graceful_shutdown_finishes_requests_in_flight_and_refuses_new_ones() {
	let listener = TcpListener::bind("127.0.0.1:0", &Config::default()).await.unwrap();
	let address = listener.local_addr().unwrap();
	let shutdown = CancellationToken::new();
	let (started_tx, mut started) = tokio::sync::mpsc::channel(8);
	let server = tokio::spawn(serve(listener, shutdown.clone(), Duration::from_secs(5), move |message, _peer| {
		let started = started_tx.clone();
		async move {
			if let ReceivedMessage::Request(request, body) = message {
				started.send(()).await.unwrap();
				// A slow request: it must be allowed to finish after the shutdown began.
				tokio::time::sleep(Duration::from_millis(300)).await;
				request.send_response(0, body).await.unwrap();
			}
		}
	}));

	let (mut client, _) = TcpPeer::connect(address, &Config::default()).await.unwrap();
	let mut slow = client.send_request(1, "in flight").await.unwrap();
	within(started.recv()).await.unwrap();
	shutdown.cancel();

	// New requests on the open connection are refused with a clear error response...
	let mut late = client.send_request(1, "too late").await.unwrap();
	let refused = within(late.recv_response()).await.unwrap();
	assert_eq!(refused.error_text().as_deref(), Some(SHUTTING_DOWN_TEXT));
	// ...the one in flight completes...
	assert_eq!(within(slow.recv_response()).await.unwrap().body, "in flight");
	// ...then the server closes the connection and returns.
	assert!(within(client.recv_message()).await.unwrap_err().is_connection_closed());
	within(server).await.unwrap();
	// And it accepts nothing any more.
	assert!(TcpPeer::connect(address, &Config::default()).await.is_err());
}

#[tokio::test]
async fn a_handler_past_the_grace_period_is_aborted_and_its_request_answered() {
	let listener = TcpListener::bind("127.0.0.1:0", &Config::default()).await.unwrap();
	let address = listener.local_addr().unwrap();
	let shutdown = CancellationToken::new();
	let server =
		tokio::spawn(serve(listener, shutdown.clone(), Duration::from_millis(200), |message, _peer| async move {
			if let ReceivedMessage::Request(_request, _) = message {
				std::future::pending::<()>().await;
			}
		}));
	let (client, _) = TcpPeer::connect(address, &Config::default()).await.unwrap();
	let mut stuck = client.send_request(1, "").await.unwrap();
	tokio::time::sleep(Duration::from_millis(50)).await;
	shutdown.cancel();
	let response = within(stuck.recv_response()).await.unwrap();
	assert_eq!(response.error_text().as_deref(), Some(peerwire::DROPPED_REQUEST_TEXT));
	within(server).await.unwrap();
}

/// The typed layer does not change the wire: an untyped fizyr-rpc 0.8 client calls a typed
/// peerwire server with JSON bodies it writes itself, and a typed peerwire client calls an
/// untyped fizyr-rpc server.
#[tokio::test]
async fn typed_peers_talk_to_an_untyped_fizyr_rpc_peer() {
	let fizyr_config = || {
		let mut config = fizyr_rpc::StreamConfig::default();
		config.max_body_len_read = 1 << 20;
		config.max_body_len_write = 1 << 20;
		config
	};

	// fizyr-rpc client -> typed peerwire server.
	let mut listener = TcpListener::bind("127.0.0.1:0", &Config::default()).await.unwrap();
	let address = listener.local_addr().unwrap();
	let server = tokio::spawn(async move {
		let (peer, _) = listener.accept().await.unwrap();
		serve_shapes(peer).await
	});
	let (fizyr, _) = fizyr_rpc::TcpPeer::connect(address, fizyr_config()).await.unwrap();
	let mut request = fizyr.send_request(3, &b"2"[..]).await.unwrap();
	for step in [b"1", b"2"] {
		let update = within(request.recv_update()).await.unwrap();
		assert_eq!((update.header.service_id, &update.body[..]), (1, &step[..]));
	}
	let response = within(request.recv_response()).await.unwrap();
	assert_eq!(&response.body[..], b"\"all done\"");
	fizyr.send_stream(10, &br#"{"from":"fizyr","text":"hi"}"#[..]).await.unwrap();
	drop(request);
	drop(fizyr);
	assert_eq!(within(server).await.unwrap(), ["note from fizyr: hi"]);

	// typed peerwire client -> fizyr-rpc server.
	let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
	let address = socket.local_addr().unwrap();
	let mut listener = fizyr_rpc::TcpListener::new(socket, fizyr_config());
	let server = tokio::spawn(async move {
		let (mut peer, _) = listener.accept().await.unwrap();
		let fizyr_rpc::ReceivedMessage::Request(request, body) = peer.recv_message().await.unwrap() else {
			panic!("expected a request");
		};
		assert_eq!(request.service_id(), 4);
		assert_eq!(&body[..], b"\"hey\"");
		request.send_update(1, &b"\"HEY\""[..]).await.unwrap();
		request.send_response(0, &b"0"[..]).await.unwrap();
		peer
	});
	let (client, _) = TcpPeer::connect(address, &Config::default()).await.unwrap();
	let api = shapes::Client::new(client.write_handle());
	let mut chat = api.chat(&"hey".into()).await.unwrap();
	assert!(
		matches!(within(chat.recv_update()).await.unwrap(), Some(shapes::chat::ResponderUpdate::Heard(line)) if line == "HEY")
	);
	assert_eq!(within(chat.recv_response()).await.unwrap(), 0);
	let _peer = within(server).await.unwrap();
}
