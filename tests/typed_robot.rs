//! Typed interfaces fit for robot control (issue "order kept, nothing lost at exit, mistakes
//! caught at compile time"): body-less commands, error responses naming the service, typed
//! errors, flush and close on typed clients, typed clients over `Reconnecting` across a server
//! restart, and update enums that compare.

#![cfg(feature = "json")]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::within;
use peerwire::server::{CancellationToken, serve};
use peerwire::typed::{Json, TypedError};
use peerwire::{Backoff, Bytes, Config, ErrorKind, PeerHandle, Reconnecting, TcpListener, TcpPeer};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
	pub x: f64,
	pub y: f64,
}

peerwire::interface! {
	/// A robot arm, declared with only what every version of the macro understands.
	pub mod plain_arm (format = Json) {
		/// Move to a target, reporting progress.
		service 1 move_to(Target) -> Target {
			responder_updates {
				/// How far along, in percent.
				1 progress(u8),
			}
		}
		/// Go to the home position.
		service 2 home(()) -> ();
		/// Stop at once.
		stream 10 stop(());
	}
}

/// An untyped error response to a typed call reads `NAME (ID): TEXT`, not the error marker -1.
#[tokio::test]
async fn an_error_response_names_the_service() {
	let (client, mut server) = peerwire::transport::memory::pair::<Bytes>(&Config::default());
	let arm = plain_arm::Client::new(client.write_handle());
	let mut moving = arm.move_to(&Target { x: 1.0, y: 2.0 }).await.unwrap();
	let (request, _) = within(server.recv_message()).await.unwrap().into_request().unwrap();
	request.send_error_response("calibration sensor not found").await.unwrap();
	let error = within(moving.recv_response()).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::Remote);
	assert_eq!(error.remote_text(), Some("calibration sensor not found"));
	assert_eq!(error.to_string(), "move_to (1): calibration sensor not found");
}

/// An untyped peer (or `peerwire send ... 10 ''`) sends `()` messages with an empty body; a typed
/// server takes them.
#[tokio::test]
async fn a_unit_body_accepts_an_empty_body_from_an_untyped_peer() {
	let (client, server) = peerwire::transport::memory::pair(&Config::default());
	let mut server = plain_arm::Server::new(server.split().0);
	client.send_stream(10, "").await.unwrap();
	assert!(matches!(within(server.recv()).await.unwrap(), plain_arm::Incoming::Stop(())));
	let mut home = client.send_request(2, "").await.unwrap();
	let plain_arm::Incoming::Home(request, ()) = within(server.recv()).await.unwrap() else {
		panic!("expected a home request");
	};
	request.send_response(&()).await.unwrap();
	let response = within(home.recv_response()).await.unwrap();
	assert!(!response.is_error_response(), "{:?}", response.error_text());
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ArmError {
	NotCalibrated { sensor: String },
	OutOfReach,
}

peerwire::interface! {
	/// A robot arm, with everything the issue asked for.
	pub mod arm (format = Json) {
		/// Move to a target, reporting progress; the update blocks in the other order.
		service 1 move_to(Target) -> Target, error ArmError {
			responder_updates {
				/// How far along, in percent.
				1 progress(u8),
			}
			requester_updates {
				/// Change the speed on the way.
				1 speed(f64),
			}
		}
		/// Go to the home position: no request body.
		service 2 home -> ();
		/// Where the arm is.
		service 3 position() -> Target;
		/// Stop at once: no body.
		stream 10 stop;
		/// Something to log.
		stream 11 log(String);
	}
}

/// Serves `arm` on one connection: `move_to` fails for targets out of reach (x > 10) with a
/// typed error and for x < 0 with a plain text, reports progress otherwise.
async fn serve_arm(peer: PeerHandle) -> Vec<String> {
	let mut server = arm::Server::new(peer.split().0);
	let mut seen = Vec::new();
	while let Ok(incoming) = server.recv().await {
		match incoming {
			arm::Incoming::MoveTo(request, target) if target.x > 10.0 => {
				request.send_error(&ArmError::OutOfReach).await.unwrap()
			},
			arm::Incoming::MoveTo(request, target) if target.x < 0.0 => {
				request.send_error_text("calibration sensor not found").await.unwrap()
			},
			arm::Incoming::MoveTo(request, target) => {
				for percent in [50, 100] {
					request.send_update(&arm::move_to::ResponderUpdate::Progress(percent)).await.unwrap();
				}
				request.send_response(&target).await.unwrap();
			},
			arm::Incoming::Home(request, ()) => request.send_response(&()).await.unwrap(),
			arm::Incoming::Position(request, ()) => request.send_response(&Target { x: 0.0, y: 0.0 }).await.unwrap(),
			arm::Incoming::Stop(()) => seen.push("stop".to_string()),
			arm::Incoming::Log(line) => seen.push(line),
			arm::Incoming::Rejected(rejected) => seen.push(format!("rejected: {}", rejected.error)),
		}
	}
	seen
}

/// A service declared with `error E` fails with the decoded `E`; a plain-text error response to
/// it is `TypedError::Other` naming the service. The update enums compare with `assert_eq!`.
#[tokio::test]
async fn typed_errors_and_comparable_updates() {
	let (client, server) = peerwire::transport::memory::pair(&Config::default());
	tokio::spawn(serve_arm(server));
	let arm = arm::Client::new(client.write_handle());

	let mut moving = arm.move_to(&Target { x: 1.0, y: 2.0 }).await.unwrap();
	assert_eq!(within(moving.recv_update()).await.unwrap(), Some(arm::move_to::ResponderUpdate::Progress(50)));
	assert_eq!(within(moving.recv_update()).await.unwrap(), Some(arm::move_to::ResponderUpdate::Progress(100)));
	assert_eq!(within(moving.recv_update()).await.unwrap(), None);
	assert_eq!(within(moving.recv_response()).await.unwrap(), Target { x: 1.0, y: 2.0 });

	let mut far = arm.move_to(&Target { x: 11.0, y: 0.0 }).await.unwrap();
	match within(far.recv_response()).await {
		Err(TypedError::Remote(error)) => assert_eq!(error, ArmError::OutOfReach),
		other => panic!("expected the typed error, got {other:?}"),
	}

	let mut uncalibrated = arm.move_to(&Target { x: -1.0, y: 0.0 }).await.unwrap();
	let error = within(uncalibrated.recv_response()).await.unwrap_err();
	let other = error.other().expect("an untyped error");
	assert_eq!(other.kind(), ErrorKind::Remote);
	assert_eq!(error.to_string(), "move_to (1): calibration sensor not found");
}

/// Body-less messages are empty on the wire, and a `()` response is too.
#[tokio::test]
async fn body_less_messages_have_empty_bodies() {
	let (client, mut server) = peerwire::transport::memory::pair::<Bytes>(&Config::default());
	let arm = arm::Client::new(client.write_handle());
	arm.send_stop().await.unwrap();
	let stop = within(server.recv_message()).await.unwrap().into_stream().unwrap();
	assert_eq!((stop.header.service_id, stop.body.len()), (10, 0));

	let mut home = arm.home().await.unwrap();
	let (request, body) = within(server.recv_message()).await.unwrap().into_request().unwrap();
	assert_eq!((request.service_id(), body.len()), (2, 0));
	// The typed server answers `()` with an empty body; an untyped `null` is accepted too.
	request.send_response(0, "null").await.unwrap();
	within(home.recv_response()).await.unwrap();

	let mut position = arm.position().await.unwrap();
	let (request, body) = within(server.recv_message()).await.unwrap().into_request().unwrap();
	assert_eq!((request.service_id(), body.len()), (3, 0));
	drop(request);
	assert_eq!(within(position.recv_response()).await.unwrap_err().kind(), ErrorKind::Remote);

	let (client, server) = peerwire::transport::memory::pair(&Config::default());
	tokio::spawn(serve_arm(server));
	let home = arm::Client::new(client.write_handle()).home().await.unwrap();
	let response = within(home.into_inner().recv_response()).await.unwrap();
	assert!(!response.is_error_response() && response.body.is_empty(), "{response:?}");
}

/// A typed client has `flush`, `close` and `closed`: a last command sent, flushed and the
/// connection closed arrives, over a real socket.
#[tokio::test]
async fn a_typed_client_flushes_and_closes() {
	let (client, server) = common::connected(common::Kind::Tcp).await;
	let served = tokio::spawn(serve_arm(server));
	let arm = arm::Client::new(client.write_handle());
	drop(client);
	arm.send_log(&"last words".into()).await.unwrap();
	arm.send_stop().await.unwrap();
	within(arm.flush()).await.unwrap();
	arm.close();
	within(arm.closed()).await;
	assert!(arm.send_stop().await.unwrap_err().is_connection_closed());
	assert_eq!(within(served).await.unwrap(), ["last words", "stop"]);
}

/// A TCP server of `arm` that shuts down when `shutdown` is cancelled.
async fn start_arm_server(address: SocketAddr, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
	let listener = TcpListener::bind(address, &Config::default()).await.unwrap();
	tokio::spawn(serve(listener, shutdown, Duration::from_secs(1), |message, _peer| async move {
		if let arm::Incoming::Position(request, ()) = arm::Incoming::from_message(message).await {
			request.send_response(&Target { x: 3.0, y: 4.0 }).await.unwrap();
		}
	}))
}

/// A typed client over `Reconnecting`, made once, keeps working across a server restart; a
/// typed client over one connection's write handle does not.
#[tokio::test]
async fn a_typed_client_over_reconnecting_survives_a_server_restart() {
	let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
	let address = probe.local_addr().unwrap();
	drop(probe);
	let backoff = Backoff::default().with_initial_delay(Duration::from_millis(20)).with_jitter(false);
	let reconnecting = Reconnecting::tcp(address, &Config::default(), backoff).send_only();
	let arm = arm::Client::new(reconnecting.clone());

	let shutdown = CancellationToken::new();
	let server = start_arm_server(address, shutdown.clone()).await;
	let position = within(async { arm.position().await?.recv_response().await }).await.unwrap();
	assert_eq!(position, Target { x: 3.0, y: 4.0 });
	let (single, _) = TcpPeer::connect(address, &Config::default()).await.unwrap();
	let single = arm::Client::new(single.write_handle());

	// Restart.
	shutdown.cancel();
	within(server).await.unwrap();
	within(single.closed()).await;
	let shutdown = CancellationToken::new();
	let server = start_arm_server(address, shutdown.clone()).await;

	assert!(single.position().await.unwrap_err().is_connection_closed());
	let position = within(async { arm.position().await?.recv_response().await }).await.unwrap();
	assert_eq!(position, Target { x: 3.0, y: 4.0 });
	assert_eq!(reconnecting.generation(), 2);
	arm.send_stop().await.unwrap();
	within(arm.flush()).await.unwrap();
	arm.close();
	within(arm.closed()).await;
	shutdown.cancel();
	within(server).await.unwrap();
}

/// An untyped fizyr-rpc 0.8 client calling a typed peerwire service that fails gets an error
/// response whose body is readable text: JSON for a typed error, the text for an untyped one.
/// And an empty body is a body-less command.
#[tokio::test]
async fn a_fizyr_rpc_client_reads_typed_errors_as_text() {
	let mut listener = TcpListener::bind("127.0.0.1:0", &Config::default()).await.unwrap();
	let address = listener.local_addr().unwrap();
	let server = tokio::spawn(async move {
		let (peer, _) = listener.accept().await.unwrap();
		serve_arm(peer).await
	});
	let (fizyr, _) = fizyr_rpc::TcpPeer::connect(address, fizyr_rpc::StreamConfig::default()).await.unwrap();

	let mut request = fizyr.send_request(1, &br#"{"x":11.0,"y":0.0}"#[..]).await.unwrap();
	let response = within(request.recv_response()).await.unwrap();
	assert_eq!(response.header.service_id, -1);
	assert_eq!(std::str::from_utf8(&response.body).unwrap(), r#""OutOfReach""#);

	let mut request = fizyr.send_request(1, &br#"{"x":-1.0,"y":0.0}"#[..]).await.unwrap();
	let response = within(request.recv_response()).await.unwrap();
	assert_eq!(response.header.service_id, -1);
	assert_eq!(std::str::from_utf8(&response.body).unwrap(), "calibration sensor not found");

	let mut request = fizyr.send_request(2, &b""[..]).await.unwrap();
	let response = within(request.recv_response()).await.unwrap();
	assert_eq!((response.header.service_id, response.body.len()), (0, 0));

	fizyr.send_stream(10, &b""[..]).await.unwrap();
	drop(request);
	drop(fizyr);
	assert_eq!(within(server).await.unwrap(), ["stop"]);
}
