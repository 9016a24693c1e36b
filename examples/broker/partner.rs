//! The fulfilment partner: takes or declines each order the broker offers, in its own time.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use peerwire::{Config, Error, PeerHandle, ReceivedMessage, TcpListener};
use tokio::task::JoinSet;

use crate::model::{Log, Order, PartnerEvent, partner_service, text};

/// How the partner answers an offer.
#[derive(Debug, Clone)]
pub enum Answer {
	/// Takes it at once.
	Accept,
	/// Says no, with a reason.
	Decline(String),
	/// Takes it, but only after this long.
	Slow(Duration),
}

pub type Rule = Arc<dyn Fn(&Order) -> Answer + Send + Sync>;

pub struct Partner {
	address: SocketAddr,
	tasks: JoinSet<()>,
}

impl Partner {
	/// Listen on `address` (port 0 for any), answering offers by `rule`.
	pub async fn start(address: impl tokio::net::ToSocketAddrs, rule: Rule, log: Log) -> Result<Partner, Error> {
		let mut listener = TcpListener::bind(address, &Config::default()).await?;
		let address = listener.local_addr()?;
		let mut tasks = JoinSet::new();
		tasks.spawn(async move {
			let mut connections = JoinSet::new();
			while let Ok((peer, _)) = listener.accept().await {
				connections.spawn(serve(peer, rule.clone(), log.clone()));
			}
		});
		Ok(Partner { address, tasks })
	}

	pub fn address(&self) -> SocketAddr {
		self.address
	}

	/// Stop listening and drop every connection.
	pub fn stop(mut self) {
		self.tasks.abort_all();
	}
}

async fn serve(mut peer: PeerHandle, rule: Rule, log: Log) {
	// One task per offer: a slow answer does not hold up the next offer.
	let mut offers = JoinSet::new();
	while let Ok(message) = peer.recv_message().await {
		let ReceivedMessage::Request(request, body) = message else { continue };
		match request.service_id() {
			partner_service::FULFIL => {
				let Some(order) = Order::decode(&body) else {
					let _ = request.send_error_response("not an order").await;
					continue;
				};
				log.say(PartnerEvent::Offered(order.clone()));
				let answer = rule(&order);
				offers.spawn(async move {
					let _ = match answer {
						Answer::Accept => request.send_response(0, "on our way").await,
						Answer::Decline(reason) => request.send_error_response(&reason).await,
						Answer::Slow(after) => {
							tokio::time::sleep(after).await;
							request.send_response(0, "on our way, finally").await
						},
					};
				});
			},
			partner_service::CANCEL => {
				if let Ok(id) = text(&body).parse() {
					log.say(PartnerEvent::Cancelled(id));
				}
				let _ = request.send_response(0, "").await;
			},
			other => {
				let _ = request.send_error_response(&format!("unknown service {other}")).await;
			},
		}
		while offers.try_join_next().is_some() {}
	}
}
