//! A robot arm behind a typed interface, server and client in one process over TCP: a request
//! with progress updates, a typed error, a body-less command, a client that reconnects after a
//! server restart, and a flush before exit so that the last command is not lost.
//!
//! `cargo run --example robot_arm --features json`

use std::time::Duration;

use peerwire::server::{CancellationToken, serve};
use peerwire::typed::TypedError;
use peerwire::{Backoff, Config, Reconnecting, TcpListener};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
	pub x: f64,
	pub y: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ArmError {
	OutOfReach { reach: f64 },
	NotCalibrated,
}

peerwire::interface! {
	/// A robot arm.
	pub mod arm (format = peerwire::typed::Json) {
		/// Move to a target, reporting progress; answers where the arm ended up.
		service 1 move_to(Target) -> Target, error ArmError {
			responder_updates {
				/// How far along, in percent.
				1 progress(u8),
			}
		}
		/// Go to the home position (no request body).
		service 2 home -> ();
		/// Stop at once (no body).
		stream 10 stop;
	}
}

const REACH: f64 = 10.0;

/// Serve the arm until `shutdown` is cancelled.
async fn run_server(listener: TcpListener, shutdown: CancellationToken) {
	serve(listener, shutdown, Duration::from_secs(1), |message, _peer| async move {
		match arm::Incoming::from_message(message).await {
			arm::Incoming::MoveTo(request, target) if target.x.hypot(target.y) > REACH => {
				let _ = request.send_error(&ArmError::OutOfReach { reach: REACH }).await;
			},
			arm::Incoming::MoveTo(request, target) => {
				for percent in [25, 50, 75, 100] {
					let _ = request.send_update(&arm::move_to::ResponderUpdate::Progress(percent)).await;
				}
				let _ = request.send_response(&target).await;
			},
			arm::Incoming::Home(request, ()) => drop(request.send_response(&()).await),
			arm::Incoming::Stop(()) => println!("[arm] stop"),
			arm::Incoming::Rejected(rejected) => println!("[arm] rejected: {}", rejected.error),
		}
	})
	.await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
	let listener = TcpListener::bind("127.0.0.1:0", &Config::default()).await?;
	let address = listener.local_addr()?;
	let shutdown = CancellationToken::new();
	let server = tokio::spawn(run_server(listener, shutdown.clone()));

	// One typed client for the whole run: it reconnects when the server comes back.
	let connection = Reconnecting::tcp(address, &Config::default(), Backoff::default()).send_only();
	let arm = arm::Client::new(connection);

	let mut moving = arm.move_to(&Target { x: 3.0, y: 4.0 }).await?;
	while let Some(arm::move_to::ResponderUpdate::Progress(percent)) = moving.recv_update().await? {
		println!("[client] {percent}%");
	}
	println!("[client] arrived at {:?}", moving.recv_response().await?);

	match arm.move_to(&Target { x: 30.0, y: 0.0 }).await?.recv_response().await {
		Err(TypedError::Remote(ArmError::OutOfReach { reach })) => println!("[client] out of reach ({reach})"),
		other => println!("[client] unexpected: {other:?}"),
	}

	// The server restarts on the same address; the same client carries on.
	shutdown.cancel();
	server.await?;
	let shutdown = CancellationToken::new();
	let server = tokio::spawn(run_server(TcpListener::bind(address, &Config::default()).await?, shutdown.clone()));
	arm.home().await?.recv_response().await?;
	println!("[client] home, after a server restart");

	// A last command: `send_stop` returns once it is queued, so flush before exit.
	arm.send_stop().await?;
	arm.flush().await?;
	arm.close();
	arm.closed().await;

	shutdown.cancel();
	server.await?;
	Ok(())
}
