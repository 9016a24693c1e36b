//! A broker between a delivery app and a fulfilment partner, with its callbacks awaited in
//! line: the app, the broker and the partner run as tasks in one process, over TCP loopback.
//!
//! `cargo run --example broker`: the app announces regions; the broker subscribes to each (a
//! request that stays open, streaming orders as responder updates), offers each order to the
//! partner with 5 s to accept, then asks the app for it and awaits the grant.
//!
//! `cargo run --example broker -- --restart`: the app crashes while an order waits for its
//! grant. Every open request fails at once with a connection error, the broker reconnects with
//! backoff, and carries on with the new orders of the restarted app.

mod app;
mod broker;
mod model;
mod partner;

use std::sync::Arc;
use std::time::Duration;

use peerwire::Backoff;

use app::App;
use model::{AppEvent, BrokerEvent, Event, Events, Order};
use partner::{Answer, Partner};

/// How long the example waits for any one thing before it calls it a failure.
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> Result<(), peerwire::Error> {
	let restart = std::env::args().skip(1).any(|arg| arg == "--restart");
	let (log, mut events) = model::log();

	let rule: partner::Rule = Arc::new(|order: &Order| match order.item.as_str() {
		"anvil" => Answer::Decline("we do not carry anvils".into()),
		"piano" => Answer::Slow(Duration::from_secs(8)),
		"lamp" => Answer::Slow(Duration::from_millis(300)),
		_ => Answer::Accept,
	});
	let partner = Partner::start("127.0.0.1:0", rule, log.clone()).await?;
	let app = App::start("127.0.0.1:0", &["north", "south"], log.clone()).await?;
	let address = app.address();

	let backoff = Backoff::default()
		.with_initial_delay(Duration::from_millis(100))
		.with_max_delay(Duration::from_secs(1))
		.with_max_attempts(Some(20));
	let settings = broker::Settings { partner_timeout: Duration::from_secs(5) };
	let app_client = broker::app_client(address, backoff.clone(), log.clone());
	let partner_client = broker::partner_client(partner.address(), backoff);
	let broker = tokio::spawn(broker::run(app_client, partner_client, settings, log.clone()));

	subscribed(&mut events, 2).await;
	if restart {
		restart_scenario(app, &mut events, &log).await?;
	} else {
		orders_scenario(app, &mut events).await;
	}
	broker.abort();
	partner.stop();
	Ok(())
}

/// Orders flow: taken and granted, declined by the partner, timed out at the partner, refused
/// by the app, and a region announced on the way.
async fn orders_scenario(app: App, events: &mut Events) {
	app.publish(Order::new(1, "north", "flowers")).await;
	app.publish(Order::new(2, "south", "pizza")).await;
	app.publish(Order::new(3, "north", "anvil")).await;
	println!("--- order 4 is a piano: the partner takes 8 s to answer, the broker gives it 5 s");
	app.publish(Order::new(4, "south", "piano")).await;
	app.publish(Order::new(5, "north", "lamp")).await;
	// Someone else gets the lamp while the partner thinks about it.
	app.close_order(5);
	for id in [1, 2, 3, 5] {
		outcome(events, id).await;
	}

	println!("--- the app opens a new region");
	app.announce_region("east").await;
	subscribed(events, 1).await;
	app.publish(Order::new(6, "east", "books")).await;
	outcome(events, 6).await;

	outcome(events, 4).await;
	events.drain(Duration::from_millis(100)).await;
	println!("--- done: every order has an outcome, each decided by straight-line code in handle_order");
}

/// The app crashes while an order waits for its grant, and comes back on the same address.
async fn restart_scenario(app: App, events: &mut Events, log: &model::Log) -> Result<(), peerwire::Error> {
	let address = app.address();
	app.publish(Order::new(1, "north", "flowers")).await;
	outcome(events, 1).await;

	println!("--- the app will sit on the grant of order 2, then crash");
	app.hold_grant(2);
	app.publish(Order::new(2, "south", "pizza")).await;
	events
		.until(PATIENCE, |event| matches!(event, Event::App(AppEvent::AcceptAsked(2))).then_some(()))
		.await
		.expect("a grant asked for");
	let crashed = tokio::time::Instant::now();
	app.crash().await;
	outcome(events, 2).await;
	println!("--- order 2 failed {:?} after the crash, instead of waiting for ever", crashed.elapsed());

	// Down for a second: the broker keeps trying, waiting longer each time.
	events.drain(Duration::from_secs(1)).await;
	println!("--- the app restarts on {address}");
	let app = App::start(address, &["north", "south"], log.clone()).await?;
	events
		.until(PATIENCE, |event| matches!(event, Event::Broker(BrokerEvent::Connected { generation: 2 })).then_some(()))
		.await
		.expect("the broker to reconnect");
	subscribed(events, 2).await;
	app.publish(Order::new(3, "north", "books")).await;
	outcome(events, 3).await;
	events.drain(Duration::from_millis(100)).await;
	println!("--- done. Lost with the crash: the open subscriptions and order 2's grant (the new app");
	println!("    has never heard of order 2). Recovered: the connection, by the broker's reconnecting");
	println!("    client, and with it new subscriptions and new orders.");
	Ok(())
}

/// Wait until the app has seen `count` more subscriptions.
async fn subscribed(events: &mut Events, count: usize) {
	for _ in 0..count {
		events
			.until(PATIENCE, |event| matches!(event, Event::App(AppEvent::Subscribed(_))).then_some(()))
			.await
			.expect("a subscription");
	}
}

async fn outcome(events: &mut Events, id: u64) {
	events.outcome(id, PATIENCE).await.expect("an outcome");
}
