//! The delivery app: announces the regions it serves, streams each new order to the brokers
//! subscribed to its region, and grants each order to the first broker that asks for it.
//!
//! It runs its connections' peer tasks itself, so that [`App::crash`] can drop them all at once,
//! without a goodbye and without answering what is open: a crash, as the broker sees it.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use peerwire::{
	Config, Error, Peer, PeerHandle, PeerWriteHandle, ReceivedMessage, ReceivedRequestWriteHandle, TcpListener,
};
use tokio::task::JoinHandle;

use crate::model::{AppEvent, Log, ORDER, Order, app_service, text};

pub struct App {
	address: SocketAddr,
	state: Arc<Mutex<State>>,
	/// The accept loop, which owns the listener.
	accept: JoinHandle<()>,
	/// The peer task of each connection.
	peers: Tasks,
	/// A task per connection, and held requests.
	tasks: Tasks,
	log: Log,
}

type Tasks = Arc<Mutex<Vec<JoinHandle<()>>>>;

#[derive(Default)]
struct State {
	regions: Vec<String>,
	brokers: Vec<PeerWriteHandle>,
	/// Open SUBSCRIBE requests: the region, and the handle that sends it orders.
	subscribers: Vec<(String, ReceivedRequestWriteHandle)>,
	/// Orders not yet granted.
	open: HashMap<u64, Order>,
	/// Orders whose ACCEPT the app sits on without answering.
	held: HashSet<u64>,
}

impl App {
	/// Listen on `address` (port 0 for any) and serve `regions`.
	pub async fn start(address: impl tokio::net::ToSocketAddrs, regions: &[&str], log: Log) -> Result<App, Error> {
		let mut listener = TcpListener::bind(address, &Config::default()).await?;
		let address = listener.local_addr()?;
		log.say(AppEvent::Listening(address));
		let state = State { regions: regions.iter().map(|region| region.to_string()).collect(), ..State::default() };
		let state = Arc::new(Mutex::new(state));
		let (peers, tasks) = (Tasks::default(), Tasks::default());

		let accept = tokio::spawn({
			let (state, peers, tasks, log) = (state.clone(), peers.clone(), tasks.clone(), log.clone());
			async move {
				loop {
					let Ok(transport) = listener.accept_transport().await else { continue };
					let (peer, handle) = Peer::new(transport, listener.config());
					peers.lock().unwrap().push(tokio::spawn(async move {
						let _ = peer.run().await;
					}));
					let serving = tokio::spawn(serve(handle, state.clone(), tasks.clone(), log.clone()));
					tasks.lock().unwrap().push(serving);
				}
			}
		});
		Ok(App { address, state, accept, peers, tasks, log })
	}

	pub fn address(&self) -> SocketAddr {
		self.address
	}

	/// Serve one more region, and tell every connected broker.
	pub async fn announce_region(&self, region: &str) {
		let brokers = {
			let mut state = self.state.lock().unwrap();
			state.regions.push(region.to_string());
			state.brokers.clone()
		};
		for broker in brokers {
			let _ = broker.send_stream(app_service::REGION, region.to_string()).await;
		}
	}

	/// Offer a new order to every broker subscribed to its region; returns how many got it.
	pub async fn publish(&self, order: Order) -> usize {
		let subscribers: Vec<_> = {
			let mut state = self.state.lock().unwrap();
			state.open.insert(order.id, order.clone());
			state
				.subscribers
				.iter()
				.filter(|(region, _)| *region == order.region)
				.map(|(_, handle)| handle.clone())
				.collect()
		};
		let mut reached = 0;
		for subscriber in subscribers {
			if subscriber.send_update(ORDER, order.encode()).await.is_ok() {
				reached += 1;
			}
		}
		self.log.say(AppEvent::Published { order, subscribers: reached });
		reached
	}

	/// Take order `id` off the market (another broker got it first): asking for it is refused.
	pub fn close_order(&self, id: u64) {
		self.state.lock().unwrap().open.remove(&id);
	}

	/// Sit on the ACCEPT for order `id` without answering (the app is busy, or about to crash).
	pub fn hold_grant(&self, id: u64) {
		self.state.lock().unwrap().held.insert(id);
	}

	/// Crash: drop every connection and stop listening, answering nothing that is open.
	pub async fn crash(self) {
		// Stop listening first, so that no broker gets in again meanwhile. Then the peer tasks:
		// once they are gone, the request handles dropped after them can no longer send
		// anything (not even the error response of an unanswered request).
		self.accept.abort();
		let _ = self.accept.await;
		for group in [&self.peers, &self.tasks] {
			let tasks: Vec<_> = group.lock().unwrap().drain(..).collect();
			for task in tasks {
				task.abort();
				let _ = task.await;
			}
		}
		*self.state.lock().unwrap() = State::default();
		self.log.say(AppEvent::Crashed);
	}
}

/// Serve one broker's connection until it ends.
async fn serve(mut peer: PeerHandle, state: Arc<Mutex<State>>, tasks: Tasks, log: Log) {
	log.say(AppEvent::BrokerConnected);
	let regions = {
		let mut state = state.lock().unwrap();
		state.brokers.push(peer.write_handle());
		state.regions.clone()
	};
	for region in regions {
		let _ = peer.send_stream(app_service::REGION, region).await;
	}
	while let Ok(message) = peer.recv_message().await {
		let ReceivedMessage::Request(request, body) = message else { continue };
		let body = text(&body);
		match request.service_id() {
			app_service::SUBSCRIBE => {
				let known = state.lock().unwrap().regions.contains(&body);
				if !known {
					let _ = request.send_error_response(&format!("no region {body}")).await;
					continue;
				}
				// The write half keeps the request open: it is answered only when the app stops
				// serving the region, which this app never does. Orders already open in the
				// region go out first; later ones from `publish`.
				let subscriber = request.write_handle();
				let open: Vec<_> = {
					let mut state = state.lock().unwrap();
					state.subscribers.push((body.clone(), subscriber.clone()));
					state.open.values().filter(|order| order.region == body).cloned().collect()
				};
				log.say(AppEvent::Subscribed(body));
				for order in open {
					let _ = subscriber.send_update(ORDER, order.encode()).await;
				}
			},
			app_service::ACCEPT => {
				let Ok(id) = body.parse::<u64>() else {
					let _ = request.send_error_response("not an order id").await;
					continue;
				};
				log.say(AppEvent::AcceptAsked(id));
				let (held, granted) = {
					let mut state = state.lock().unwrap();
					(state.held.contains(&id), !state.held.contains(&id) && state.open.remove(&id).is_some())
				};
				if held {
					// Kept, unanswered, until the connection ends.
					let mut request = request;
					tasks
						.lock()
						.unwrap()
						.push(tokio::spawn(async move { while let Ok(Some(_)) = request.recv_update().await {} }));
				} else if granted {
					log.say(AppEvent::Granted(id));
					let _ = request.send_response(0, format!("order {id} is yours")).await;
				} else {
					log.say(AppEvent::Refused(id));
					let _ = request.send_error_response(&format!("order {id} is no longer open")).await;
				}
			},
			other => {
				let _ = request.send_error_response(&format!("unknown service {other}")).await;
			},
		}
	}
}
