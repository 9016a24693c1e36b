//! What the app, the broker and the partner say to each other (service ids and the order's
//! text encoding), and the events each reports, which the example prints and the tests check.

// Shared with tests/broker.rs, which uses another part of it than the example does.
#![allow(dead_code)]

use std::fmt;
use std::time::Duration;

use tokio::sync::mpsc;

/// Requests the broker sends the app.
pub mod app_service {
	/// Body: a region. Stays open; each new order in the region comes as a responder update of
	/// kind [`super::ORDER`].
	pub const SUBSCRIBE: i32 = 1;
	/// Body: an order id. The response is the grant; an error response refuses.
	pub const ACCEPT: i32 = 2;
	/// Stream message from the app. Body: a region it now serves.
	pub const REGION: i32 = 1;
}

/// Requests the broker sends the partner.
pub mod partner_service {
	/// Body: an order. The response accepts it; an error response declines.
	pub const FULFIL: i32 = 1;
	/// Body: an order id. The broker withdraws an order it offered.
	pub const CANCEL: i32 = 2;
}

/// The update kind of an order on a subscription.
pub const ORDER: i32 = 1;

/// A delivery order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
	pub id: u64,
	pub region: String,
	pub item: String,
}

impl Order {
	pub fn new(id: u64, region: &str, item: &str) -> Self {
		Self { id, region: region.into(), item: item.into() }
	}

	/// `id|region|item`.
	pub fn encode(&self) -> String {
		format!("{}|{}|{}", self.id, self.region, self.item)
	}

	pub fn decode(body: &[u8]) -> Option<Self> {
		let text = std::str::from_utf8(body).ok()?;
		let mut fields = text.splitn(3, '|');
		let id = fields.next()?.parse().ok()?;
		Some(Self { id, region: fields.next()?.into(), item: fields.next()?.into() })
	}
}

impl fmt::Display for Order {
	fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
		write!(f, "#{} {} ({})", self.id, self.item, self.region)
	}
}

/// A body as text, for printing.
pub fn text(body: &[u8]) -> String {
	String::from_utf8_lossy(body).into_owned()
}

/// The reason in an error response, if the message is one.
pub fn refusal(response: &peerwire::Message) -> Option<String> {
	response
		.is_error_response()
		.then(|| response.error_text().map(String::from).unwrap_or_else(|| text(&response.body)))
}

/// What happened to an order, as the broker sees it.
#[derive(Debug, Clone)]
pub enum Outcome {
	/// The partner took it and the app granted it.
	Granted,
	/// The partner said no.
	PartnerDeclined(String),
	/// The partner did not answer in time; the offer was withdrawn.
	PartnerTimedOut(Duration),
	/// The app refused the grant; the partner was told.
	AppRefused(String),
	/// Something failed on the way, for example the connection to the app.
	Failed(peerwire::Error),
}

impl fmt::Display for Outcome {
	fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
		match self {
			Self::Granted => write!(f, "granted by the app, the partner delivers"),
			Self::PartnerDeclined(reason) => write!(f, "the partner declined: {reason}"),
			Self::PartnerTimedOut(after) => write!(f, "the partner did not answer within {after:?}; offer withdrawn"),
			Self::AppRefused(reason) => write!(f, "the app refused: {reason}; the partner was told"),
			Self::Failed(error) => write!(f, "failed: {error}"),
		}
	}
}

#[derive(Debug, Clone)]
pub enum AppEvent {
	Listening(std::net::SocketAddr),
	BrokerConnected,
	Subscribed(String),
	Published { order: Order, subscribers: usize },
	AcceptAsked(u64),
	Granted(u64),
	Refused(u64),
	Crashed,
}

#[derive(Debug, Clone)]
pub enum PartnerEvent {
	Offered(Order),
	Cancelled(u64),
}

#[derive(Debug, Clone)]
pub enum BrokerEvent {
	Connected { generation: u64 },
	ConnectFailed { attempt: u32, error: peerwire::Error },
	Disconnected(peerwire::Error),
	Subscribed(String),
	SubscriptionEnded { region: String, error: peerwire::Error },
	Order { order: Order, outcome: Outcome },
}

#[derive(Debug, Clone)]
pub enum Event {
	App(AppEvent),
	Partner(PartnerEvent),
	Broker(BrokerEvent),
}

impl fmt::Display for Event {
	fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
		match self {
			Self::App(event) => match event {
				AppEvent::Listening(address) => write!(f, "[app]     listening on {address}"),
				AppEvent::BrokerConnected => write!(f, "[app]     a broker connected"),
				AppEvent::Subscribed(region) => write!(f, "[app]     the broker subscribed to {region}"),
				AppEvent::Published { order, subscribers } => {
					write!(f, "[app]     new order {order}, sent to {subscribers} subscriber(s)")
				},
				AppEvent::AcceptAsked(id) => write!(f, "[app]     the broker asks for order #{id}"),
				AppEvent::Granted(id) => write!(f, "[app]     order #{id} granted"),
				AppEvent::Refused(id) => write!(f, "[app]     order #{id} refused: no longer open"),
				AppEvent::Crashed => write!(f, "[app]     *** crashed: every connection dropped ***"),
			},
			Self::Partner(event) => match event {
				PartnerEvent::Offered(order) => write!(f, "[partner] offered {order}"),
				PartnerEvent::Cancelled(id) => write!(f, "[partner] order #{id} withdrawn by the broker"),
			},
			Self::Broker(event) => match event {
				BrokerEvent::Connected { generation } => {
					write!(f, "[broker]  connected to the app (connection {generation})")
				},
				BrokerEvent::ConnectFailed { attempt, error } => {
					write!(f, "[broker]  connecting to the app, attempt {attempt}: {error}")
				},
				BrokerEvent::Disconnected(error) => write!(f, "[broker]  lost the app: {error}"),
				BrokerEvent::Subscribed(region) => write!(f, "[broker]  subscribed to orders in {region}"),
				BrokerEvent::SubscriptionEnded { region, error } => {
					write!(f, "[broker]  subscription to {region} ended: {error}")
				},
				BrokerEvent::Order { order, outcome } => write!(f, "[broker]  order {order}: {outcome}"),
			},
		}
	}
}

impl From<AppEvent> for Event {
	fn from(event: AppEvent) -> Self {
		Self::App(event)
	}
}

impl From<PartnerEvent> for Event {
	fn from(event: PartnerEvent) -> Self {
		Self::Partner(event)
	}
}

impl From<BrokerEvent> for Event {
	fn from(event: BrokerEvent) -> Self {
		Self::Broker(event)
	}
}

/// Where the parties report what they do. A report no one has room for is dropped: this is a
/// log, and it must never hold up the parties.
#[derive(Debug, Clone)]
pub struct Log(mpsc::Sender<Event>);

impl Log {
	pub fn say(&self, event: impl Into<Event>) {
		let _ = self.0.try_send(event.into());
	}
}

/// The reading end of the log.
pub struct Events {
	events: mpsc::Receiver<Event>,
	/// Events read but not picked yet, oldest first.
	backlog: Vec<Event>,
	/// Print each event as it is read.
	pub print: bool,
}

pub fn log() -> (Log, Events) {
	let (sender, events) = mpsc::channel(4096);
	(Log(sender), Events { events, backlog: Vec::new(), print: true })
}

impl Events {
	/// The first event, read or still to come, that `pick` picks, waiting at most `within`;
	/// `None` if none came in time.
	pub async fn until<T>(&mut self, within: Duration, mut pick: impl FnMut(&Event) -> Option<T>) -> Option<T> {
		for (n, event) in self.backlog.iter().enumerate() {
			if let Some(picked) = pick(event) {
				self.backlog.remove(n);
				return Some(picked);
			}
		}
		let deadline = tokio::time::Instant::now() + within;
		loop {
			let event = tokio::time::timeout_at(deadline, self.events.recv()).await.ok()??;
			if self.print {
				println!("{event}");
			}
			match pick(&event) {
				Some(picked) => return Some(picked),
				None => self.backlog.push(event),
			}
		}
	}

	/// The outcome of order `id`.
	pub async fn outcome(&mut self, id: u64, within: Duration) -> Option<Outcome> {
		self.until(within, |event| match event {
			Event::Broker(BrokerEvent::Order { order, outcome }) if order.id == id => Some(outcome.clone()),
			_ => None,
		})
		.await
	}

	/// Print whatever arrives for `during`.
	pub async fn drain(&mut self, during: Duration) {
		self.until(during, |_| None::<()>).await;
	}
}
