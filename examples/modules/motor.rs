//! A motor module: a typed interface and the handler that serves it, runnable inside any process
//! over the in-memory transport (or over a socket, unchanged).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use peerwire::server::{CancellationToken, serve_connection};
use peerwire::{PeerHandle, PeerWriteHandle, ReceivedMessage};
use serde::{Deserialize, Serialize};

/// Where the motor is, in millimetres.
pub type Position = i64;

peerwire::interface! {
	/// Control of one linear motor.
	pub mod motor (format = peerwire::typed::Json) {
		/// Move to a position, reporting each millimetre-step; answers the final position.
		service 1 move_to(Position) -> Position {
			responder_updates {
				/// The position reached so far.
				1 moved(Position),
			}
		}
		/// Where is the motor now?
		service 2 position(()) -> Position;
		/// Command: set the speed in steps per second.
		stream 10 set_speed(Speed);
	}
}

/// The body of the `set_speed` command.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Speed {
	pub steps_per_second: u32,
}

/// The module's state, shared by its handlers.
#[derive(Debug)]
pub struct Motor {
	position: Position,
	step_time: Duration,
}

impl Motor {
	pub fn new() -> Arc<Mutex<Self>> {
		Arc::new(Mutex::new(Self { position: 0, step_time: Duration::from_millis(10) }))
	}
}

/// Serve the motor interface on `peer` until the connection ends or `shutdown` is cancelled;
/// a move in progress then has `grace` to finish.
///
/// `serve_connection` runs commands (stream messages such as `set_speed`) one after another, in
/// the order they were sent, so a later command always wins. Requests (`move_to`, `position`)
/// run concurrently with each other and with the commands: a `move_to` sent right after a
/// `set_speed` may take its first step before the new speed is set. That is why a move reads the
/// step time again before every step, instead of once when it starts.
pub async fn run_module(peer: PeerHandle, motor: Arc<Mutex<Motor>>, shutdown: CancellationToken, grace: Duration) {
	serve_connection(peer, shutdown, grace, move |message, _peer: PeerWriteHandle| handle(message, motor.clone())).await
}

/// One message: a request or a command.
async fn handle(message: ReceivedMessage, motor: Arc<Mutex<Motor>>) {
	let result = match motor::Incoming::from_message(message).await {
		motor::Incoming::MoveTo(request, target) => {
			let mut position = motor.lock().unwrap().position;
			loop {
				if position == target {
					break request.send_response(&position).await;
				}
				let step_time = motor.lock().unwrap().step_time;
				tokio::time::sleep(step_time).await;
				position += (target - position).signum();
				motor.lock().unwrap().position = position;
				if let Err(error) = request.send_update(&motor::move_to::ResponderUpdate::Moved(position)).await {
					break Err(error);
				}
			}
		},
		motor::Incoming::Position(request, ()) => {
			let position = motor.lock().unwrap().position;
			request.send_response(&position).await
		},
		motor::Incoming::SetSpeed(speed) => {
			let steps = speed.steps_per_second.max(1);
			motor.lock().unwrap().step_time = Duration::from_secs(1) / steps;
			Ok(())
		},
		motor::Incoming::Rejected(rejected) => {
			eprintln!("[motor] rejected: {}", rejected.error);
			Ok(())
		},
	};
	if let Err(error) = result {
		eprintln!("[motor] {error}");
	}
}
