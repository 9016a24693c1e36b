//! A module dispatcher in one process: the motor module runs as its own task behind an in-memory
//! peer, the application talks to it with requests (with progress updates) and commands, then
//! shuts it down cleanly.
//!
//! `cargo run --example modules --features json`

mod motor;

use std::time::Duration;

use motor::{Motor, Speed, motor as api};
use peerwire::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), peerwire::Error> {
	let (app, module) = peerwire::transport::memory::pair(&peerwire::Config::default());
	let shutdown = CancellationToken::new();
	let grace = Duration::from_secs(2);
	let module = tokio::spawn(motor::run_module(module, Motor::new(), shutdown.clone(), grace));

	let motor = api::Client::new(app.write_handle());
	println!(
		"[app] motor interface: {} services, {} streams",
		api::INTERFACE.services.len(),
		api::INTERFACE.streams.len()
	);

	// Commands are handled in the order sent; this request is not ordered after the command, so the
	// move may take its first step at the old speed (see `motor::run_module`).
	motor.send_set_speed(&Speed { steps_per_second: 200 }).await?;
	let mut moving = motor.move_to(&5).await?;
	while let Some(api::move_to::ResponderUpdate::Moved(position)) = moving.recv_update().await? {
		println!("[app] moved to {position}");
	}
	println!("[app] arrived at {}", moving.recv_response().await?);

	// Shut down while a move is in flight: it may finish within the grace period, and requests
	// after the shutdown are refused.
	let mut last_move = motor.move_to(&100).await?;
	tokio::time::sleep(Duration::from_millis(20)).await;
	println!("[app] shutting the module down");
	shutdown.cancel();
	match motor.position(&()).await?.recv_response().await {
		Ok(position) => println!("[app] position: {position}"),
		Err(error) => println!("[app] position refused: {error}"),
	}
	println!("[app] last move ended at {}", last_move.recv_response().await?);

	module.await.expect("module task");
	app.closed().await;
	println!("[app] module stopped, connection closed");
	Ok(())
}
