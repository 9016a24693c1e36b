//! The broker example's logic, checked: orders flow from the app through the partner and back,
//! the partner's deadline (shortened here), and the app crashing mid-way: every open request
//! fails promptly, the broker reconnects with backoff and carries on. Every wait is bounded.

#[path = "../examples/broker/app.rs"]
mod app;
#[path = "../examples/broker/broker.rs"]
mod broker;
#[path = "../examples/broker/model.rs"]
mod model;
#[path = "../examples/broker/partner.rs"]
mod partner;

use std::sync::Arc;
use std::time::Duration;

use app::App;
use model::{AppEvent, BrokerEvent, Event, Events, Order, Outcome, PartnerEvent};
use partner::{Answer, Partner};
use peerwire::{Backoff, ErrorKind};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Generous, but finite: a bug fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(10);

fn backoff() -> Backoff {
	Backoff::default()
		.with_initial_delay(Duration::from_millis(20))
		.with_factor(2)
		.with_max_delay(Duration::from_millis(200))
		.with_max_attempts(Some(100))
		.with_jitter(false)
}

/// Partner rules: "anvil" declined, "slow" answered after 2 s, anything else taken at once.
fn rule() -> partner::Rule {
	Arc::new(|order: &Order| match order.item.as_str() {
		"anvil" => Answer::Decline("no anvils".into()),
		"slow" => Answer::Slow(Duration::from_secs(2)),
		"lamp" => Answer::Slow(Duration::from_millis(200)),
		_ => Answer::Accept,
	})
}

struct World {
	app: Option<App>,
	events: Events,
	broker: JoinHandle<Result<(), peerwire::Error>>,
	_partner: Partner,
	log: model::Log,
}

impl World {
	/// An app serving `regions`, a partner, and a broker whose partner deadline is `timeout`,
	/// once the broker has subscribed to every region.
	async fn start(regions: &[&str], timeout: Duration) -> World {
		let (log, mut events) = model::log();
		let partner = Partner::start("127.0.0.1:0", rule(), log.clone()).await.unwrap();
		let app = App::start("127.0.0.1:0", regions, log.clone()).await.unwrap();
		let app_client = broker::app_client(app.address(), backoff(), log.clone());
		let partner_client = broker::partner_client(partner.address(), backoff());
		let settings = broker::Settings { partner_timeout: timeout };
		let broker = tokio::spawn(broker::run(app_client, partner_client, settings, log.clone()));
		for _ in regions {
			expect(&mut events, "a subscription", |event| matches!(event, Event::App(AppEvent::Subscribed(_)))).await;
		}
		World { app: Some(app), events, broker, _partner: partner, log }
	}

	fn app(&self) -> &App {
		self.app.as_ref().unwrap()
	}

	async fn outcome(&mut self, id: u64) -> Outcome {
		self.events.outcome(id, WAIT).await.unwrap_or_else(|| panic!("no outcome for order {id}"))
	}
}

async fn expect(events: &mut Events, what: &str, pick: impl Fn(&Event) -> bool) {
	events.until(WAIT, |event| pick(event).then_some(())).await.unwrap_or_else(|| panic!("expected {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_flow_from_app_to_partner_and_back() {
	let mut world = World::start(&["north", "south"], WAIT).await;
	world.app().publish(Order::new(1, "north", "flowers")).await;
	world.app().publish(Order::new(2, "south", "pizza")).await;
	world.app().publish(Order::new(3, "north", "anvil")).await;
	world.app().publish(Order::new(4, "south", "lamp")).await;
	// Taken elsewhere while the partner thinks about it.
	world.app().close_order(4);

	assert!(matches!(world.outcome(1).await, Outcome::Granted));
	assert!(matches!(world.outcome(2).await, Outcome::Granted));
	assert!(matches!(world.outcome(3).await, Outcome::PartnerDeclined(reason) if reason == "no anvils"));
	assert!(matches!(world.outcome(4).await, Outcome::AppRefused(reason) if reason.contains("no longer open")));
	// The partner hears that order 4 fell through.
	expect(&mut world.events, "order 4 withdrawn", |event| matches!(event, Event::Partner(PartnerEvent::Cancelled(4))))
		.await;

	// A region announced later is subscribed to, and its orders flow too.
	world.app().announce_region("east").await;
	expect(
		&mut world.events,
		"a subscription to east",
		|event| matches!(event, Event::App(AppEvent::Subscribed(region)) if region == "east"),
	)
	.await;
	world.app().publish(Order::new(5, "east", "books")).await;
	assert!(matches!(world.outcome(5).await, Outcome::Granted));
	assert!(!world.broker.is_finished());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_past_its_deadline_gets_the_order_withdrawn() {
	// The example gives the partner 5 s; 300 ms here. The partner answers "slow" after 2 s.
	let timeout = Duration::from_millis(300);
	let mut world = World::start(&["north"], timeout).await;
	let published = Instant::now();
	world.app().publish(Order::new(1, "north", "slow")).await;
	world.app().publish(Order::new(2, "north", "flowers")).await;

	// The slow order does not hold up the next one.
	assert!(matches!(world.outcome(2).await, Outcome::Granted));
	assert!(matches!(world.outcome(1).await, Outcome::PartnerTimedOut(after) if after == timeout));
	let elapsed = published.elapsed();
	assert!(elapsed >= timeout && elapsed < Duration::from_millis(1500), "timed out after {elapsed:?}");
	expect(&mut world.events, "order 1 withdrawn", |event| matches!(event, Event::Partner(PartnerEvent::Cancelled(1))))
		.await;

	// The app was never asked for the order the partner did not take in time, and the partner's
	// late answer (at 2 s) changes nothing.
	tokio::time::sleep(Duration::from_secs(2)).await;
	expect(&mut world.events, "order 2 asked for", |event| matches!(event, Event::App(AppEvent::AcceptAsked(2)))).await;
	let asked_for_1 = world
		.events
		.until(Duration::from_millis(100), |event| matches!(event, Event::App(AppEvent::AcceptAsked(1))).then_some(()))
		.await;
	assert!(asked_for_1.is_none());
	assert!(!world.broker.is_finished());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_restart_fails_open_requests_promptly_and_the_broker_carries_on() {
	let mut world = World::start(&["north", "south"], WAIT).await;
	let address = world.app().address();
	world.app().publish(Order::new(1, "north", "flowers")).await;
	assert!(matches!(world.outcome(1).await, Outcome::Granted));

	// Order 2 waits for a grant the app sits on when it crashes.
	world.app().hold_grant(2);
	world.app().publish(Order::new(2, "south", "pizza")).await;
	expect(&mut world.events, "order 2 asked for", |event| matches!(event, Event::App(AppEvent::AcceptAsked(2)))).await;
	let crashed = Instant::now();
	world.app.take().unwrap().crash().await;

	// Every open request fails promptly with a connection error: the grant and both subscriptions.
	let outcome = world.events.outcome(2, Duration::from_secs(2)).await.expect("order 2 hung after the crash");
	assert!(matches!(&outcome, Outcome::Failed(error) if error.kind() == ErrorKind::ConnectionClosed), "{outcome:?}");
	for _ in 0..2 {
		let ended = |event: &Event| match event {
			Event::Broker(BrokerEvent::SubscriptionEnded { error, .. }) => Some(error.kind()),
			_ => None,
		};
		let kind =
			world.events.until(Duration::from_secs(2), ended).await.expect("a subscription hung after the crash");
		assert_eq!(kind, ErrorKind::ConnectionClosed);
	}
	expect(&mut world.events, "the broker to notice", |event| {
		matches!(event, Event::Broker(BrokerEvent::Disconnected(_)))
	})
	.await;
	assert!(crashed.elapsed() < Duration::from_secs(2), "{:?}", crashed.elapsed());

	// While the app is down the broker retries, with backoff: a few attempts, not a busy loop.
	tokio::time::sleep(Duration::from_millis(400)).await;
	let mut failed = 0;
	while world
		.events
		.until(Duration::ZERO, |event| matches!(event, Event::Broker(BrokerEvent::ConnectFailed { .. })).then_some(()))
		.await
		.is_some()
	{
		failed += 1;
	}
	assert!((2..=10).contains(&failed), "{failed} failed attempts in 400 ms");

	// The app comes back on the same address; the broker reconnects, subscribes again and
	// carries on with new orders.
	let app = App::start(address, &["north", "south"], world.log.clone()).await.unwrap();
	expect(&mut world.events, "a second connection", |event| {
		matches!(event, Event::Broker(BrokerEvent::Connected { generation: 2 }))
	})
	.await;
	for _ in 0..2 {
		expect(&mut world.events, "a new subscription", |event| matches!(event, Event::App(AppEvent::Subscribed(_))))
			.await;
	}
	app.publish(Order::new(3, "south", "books")).await;
	assert!(matches!(world.outcome(3).await, Outcome::Granted));
	assert!(!world.broker.is_finished());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_gives_up_when_the_app_stays_away() {
	let (log, mut events) = model::log();
	events.print = false;
	let partner = Partner::start("127.0.0.1:0", rule(), log.clone()).await.unwrap();
	let app = App::start("127.0.0.1:0", &["north"], log.clone()).await.unwrap();
	let address = app.address();
	app.crash().await;
	let app_client = broker::app_client(address, backoff().with_max_attempts(Some(3)), log.clone());
	let partner_client = broker::partner_client(partner.address(), backoff());
	let broker = broker::run(app_client, partner_client, broker::Settings::default(), log);
	let error = tokio::time::timeout(WAIT, broker).await.expect("the broker hung").unwrap_err();
	assert_eq!(error.kind(), ErrorKind::Io);
	assert!(error.to_string().contains("gave up after 3 failed connection attempts"), "{error}");
}
