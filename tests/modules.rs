//! The module-dispatcher example's motor module, driven as the example drives it.

#[path = "../examples/modules/motor.rs"]
#[allow(dead_code)]
mod motor;

mod common;

use std::time::Duration;

use common::within;
use motor::{Motor, Speed, motor as api};
use peerwire::server::{CancellationToken, SHUTTING_DOWN_TEXT};

#[tokio::test]
async fn the_motor_module_moves_takes_commands_and_shuts_down_cleanly() {
	let (app, module) = peerwire::transport::memory::pair(&peerwire::Config::default());
	let shutdown = CancellationToken::new();
	let module = tokio::spawn(motor::run_module(module, Motor::new(), shutdown.clone(), Duration::from_secs(5)));
	let motor = api::Client::new(app.write_handle());

	motor.send_set_speed(&Speed { steps_per_second: 1000 }).await.unwrap();
	let mut moving = motor.move_to(&-3).await.unwrap();
	let mut positions = Vec::new();
	while let Some(api::move_to::ResponderUpdate::Moved(position)) = within(moving.recv_update()).await.unwrap() {
		positions.push(position);
	}
	assert_eq!(positions, [-1, -2, -3]);
	assert_eq!(within(moving.recv_response()).await.unwrap(), -3);
	assert_eq!(within(motor.position(&()).await.unwrap().recv_response()).await.unwrap(), -3);

	// A move in flight when the shutdown comes finishes; a new request is refused.
	let mut last = motor.move_to(&7).await.unwrap();
	within(last.recv_update()).await.unwrap();
	shutdown.cancel();
	let error = within(motor.position(&()).await.unwrap().recv_response()).await.unwrap_err();
	assert_eq!(error.remote_text(), Some(SHUTTING_DOWN_TEXT));
	assert_eq!(within(last.recv_response()).await.unwrap(), 7);

	// The module task ends and the connection is closed: nothing hangs.
	within(module).await.unwrap();
	within(app.closed()).await;
}
