//! The broker: follows the app's regions, offers each new order to the fulfilment partner with
//! a deadline, and asks the app for every order the partner takes.
//!
//! Everything is straight-line async code. An order is one function, [`handle_order`], whose
//! state is its local variables; a region is one loop over its subscription's updates; the
//! app's connection is one loop over its messages, around which [`run`] reconnects.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use peerwire::{Backoff, Config, Error, PeerWriteHandle, ReceivedMessage, Reconnecting, TcpPeer};
use tokio::task::JoinSet;

use crate::model::{BrokerEvent, Log, Order, Outcome, app_service, partner_service, refusal, text};

/// What the broker is told to do.
#[derive(Debug, Clone)]
pub struct Settings {
	/// How long the partner has to take an order.
	pub partner_timeout: Duration,
}

impl Default for Settings {
	fn default() -> Self {
		Self { partner_timeout: Duration::from_secs(5) }
	}
}

/// The broker's client of the app: reconnects with `backoff`, and reports each failed attempt.
pub fn app_client(address: SocketAddr, backoff: Backoff, log: Log) -> Reconnecting {
	let attempts = Arc::new(AtomicU32::new(0));
	Reconnecting::new(backoff, move || {
		let (attempts, log) = (attempts.clone(), log.clone());
		async move {
			match TcpPeer::connect(address, &Config::default()).await {
				Ok((peer, _info)) => {
					attempts.store(0, Ordering::Relaxed);
					Ok(peer)
				},
				Err(error) => {
					let attempt = attempts.fetch_add(1, Ordering::Relaxed) + 1;
					log.say(BrokerEvent::ConnectFailed { attempt, error: error.clone() });
					Err(error)
				},
			}
		}
	})
}

/// The broker's client of the partner: it only sends.
pub fn partner_client(address: SocketAddr, backoff: Backoff) -> Reconnecting {
	Reconnecting::tcp(address, &Config::default(), backoff).send_only()
}

/// Broker orders between the app and the partner until the app cannot be reached any more (the
/// app client's [`Backoff::max_attempts`]).
pub async fn run(app: Reconnecting, partner: Reconnecting, settings: Settings, log: Log) -> Result<(), Error> {
	// The regions of every connection, and their orders: dropped (so aborted) with `run`.
	let mut regions = JoinSet::new();
	loop {
		// Connects (again) as needed, waiting by the backoff policy between failed attempts.
		let mut connection = app.next_connection().await?;
		log.say(BrokerEvent::Connected { generation: connection.generation() });
		// The app announces its regions on every new connection; nothing of the last connection
		// carries over, so each region is subscribed to afresh.
		let error = loop {
			let message = match connection.recv_message().await {
				Ok(message) => message,
				Err(error) => break error,
			};
			match message {
				ReceivedMessage::Stream(message) if message.header.service_id == app_service::REGION => {
					let region = text(&message.body);
					let follow = follow_region(
						connection.write_handle(),
						partner.clone(),
						region,
						settings.clone(),
						log.clone(),
					);
					regions.spawn(follow);
				},
				ReceivedMessage::Stream(_) => {},
				ReceivedMessage::Request(request, _) => {
					let _ = request.send_error_response("the broker takes no requests").await;
				},
			}
			while regions.try_join_next().is_some() {}
		};
		// Every request open on that connection has failed with it: subscriptions and grants
		// alike. Their tasks report and end by themselves; the broker reconnects meanwhile.
		log.say(BrokerEvent::Disconnected(error));
	}
}

/// Follow the orders of one region until the subscription ends, handling each order in a task
/// of its own so that a slow partner does not hold up the next order.
async fn follow_region(app: PeerWriteHandle, partner: Reconnecting, region: String, settings: Settings, log: Log) {
	let mut orders = JoinSet::new();
	let ended = async {
		let mut subscription = app.send_request(app_service::SUBSCRIBE, region.clone()).await?;
		log.say(BrokerEvent::Subscribed(region.clone()));
		// Updates are read as they come: unread ones would stall the whole connection.
		while let Some(update) = subscription.recv_update().await? {
			let Some(order) = Order::decode(&update.body) else { continue };
			let (app, partner, settings, log) = (app.clone(), partner.clone(), settings.clone(), log.clone());
			orders.spawn(async move {
				let outcome = handle_order(&app, &partner, &order, &settings).await.unwrap_or_else(Outcome::Failed);
				log.say(BrokerEvent::Order { order, outcome });
			});
			while orders.try_join_next().is_some() {}
		}
		// The app answered the subscription: it stopped serving the region.
		let response = subscription.recv_response().await?;
		Err::<(), _>(std::io::Error::other(format!("region closed by the app: {}", text(&response.body))).into())
	};
	if let Err(error) = ended.await {
		log.say(BrokerEvent::SubscriptionEnded { region, error });
	}
	// Each order ends by itself: the partner has a deadline, and a request to the app fails as
	// soon as the connection does.
	while orders.join_next().await.is_some() {}
}

/// One order, from offer to grant: the partner gets `partner_timeout` to take it, then the app
/// is asked for it. If it falls through after the partner took it, the partner is told.
pub async fn handle_order(
	app: &PeerWriteHandle,
	partner: &Reconnecting,
	order: &Order,
	settings: &Settings,
) -> Result<Outcome, Error> {
	let mut offer = partner.send_request(partner_service::FULFIL, order.encode()).await?;
	let taken = match offer.recv_response_timeout(settings.partner_timeout).await {
		Ok(taken) => taken,
		Err(error) if error.is_timeout() => {
			// The partner may still say yes later; dropping the handle ignores that answer, and
			// withdrawing the offer tells the partner not to deliver.
			drop(offer);
			withdraw(partner, order, settings).await;
			return Ok(Outcome::PartnerTimedOut(settings.partner_timeout));
		},
		Err(error) => return Err(error),
	};
	if let Some(reason) = refusal(&taken) {
		return Ok(Outcome::PartnerDeclined(reason));
	}

	// The grant is awaited on the connection the order came from: a new connection would reach
	// an app that has never heard of this order.
	let grant = async {
		let mut accept = app.send_request(app_service::ACCEPT, order.id.to_string()).await?;
		accept.recv_response().await
	};
	match grant.await {
		Ok(grant) => match refusal(&grant) {
			None => Ok(Outcome::Granted),
			Some(reason) => {
				withdraw(partner, order, settings).await;
				Ok(Outcome::AppRefused(reason))
			},
		},
		Err(error) => {
			withdraw(partner, order, settings).await;
			Err(error)
		},
	}
}

/// Tell the partner an order is off. Best effort, within the partner's deadline.
async fn withdraw(partner: &Reconnecting, order: &Order, settings: &Settings) {
	let cancel = async {
		let mut request = partner.send_request(partner_service::CANCEL, order.id.to_string()).await?;
		request.recv_response().await
	};
	let _ = tokio::time::timeout(settings.partner_timeout, cancel).await;
}
