//! A `debug` span per request, child of the connection's span, with its direction, id and
//! service id, and at the end its outcome and duration: one test per outcome, captured by a
//! small subscriber. The runtime is current-thread, so every task (handles and peer tasks) runs
//! on the thread where the subscriber is the default.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::within;
use peerwire::{Config, PeerHandle};
use tokio::task::JoinHandle;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

#[derive(Debug, Clone, Default)]
struct Span {
	name: &'static str,
	parent: Option<u64>,
	fields: BTreeMap<&'static str, String>,
	closed: bool,
}

/// A logged event: level, message, and the span entered when it was logged.
type Logged = (Level, String, Option<u64>);

#[derive(Clone)]
struct Capture {
	max_level: Level,
	next_id: Arc<AtomicU64>,
	spans: Arc<Mutex<BTreeMap<u64, Span>>>,
	/// Events: level, message, and the span entered when it was logged.
	events: Arc<Mutex<Vec<Logged>>>,
}

thread_local! {
	static ENTERED: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Capture {
	fn new(max_level: Level) -> Self {
		Self { max_level, next_id: Arc::new(AtomicU64::new(1)), spans: Arc::default(), events: Arc::default() }
	}

	/// The request spans, by (direction, request id).
	fn requests(&self) -> BTreeMap<(String, u64), Span> {
		let spans = self.spans.lock().unwrap();
		spans
			.values()
			.filter(|span| span.name == "request")
			.map(|span| ((span.fields["direction"].clone(), span.fields["request_id"].parse().unwrap()), span.clone()))
			.collect()
	}

	fn name_of(&self, id: Option<u64>) -> Option<&'static str> {
		id.and_then(|id| self.spans.lock().unwrap().get(&id).map(|span| span.name))
	}
}

struct Fields<'a>(&'a mut BTreeMap<&'static str, String>);

impl Visit for Fields<'_> {
	fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
		self.0.insert(field.name(), format!("{value:?}"));
	}

	fn record_str(&mut self, field: &Field, value: &str) {
		self.0.insert(field.name(), value.to_string());
	}
}

impl Subscriber for Capture {
	fn enabled(&self, metadata: &Metadata<'_>) -> bool {
		*metadata.level() <= self.max_level
	}

	fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
		Some(tracing::level_filters::LevelFilter::from_level(self.max_level))
	}

	fn new_span(&self, attributes: &Attributes<'_>) -> Id {
		let id = self.next_id.fetch_add(1, Ordering::Relaxed);
		let mut span = Span {
			name: attributes.metadata().name(),
			parent: attributes.parent().map(Id::into_u64),
			..Span::default()
		};
		attributes.record(&mut Fields(&mut span.fields));
		self.spans.lock().unwrap().insert(id, span);
		Id::from_u64(id)
	}

	fn record(&self, span: &Id, values: &Record<'_>) {
		if let Some(span) = self.spans.lock().unwrap().get_mut(&span.into_u64()) {
			values.record(&mut Fields(&mut span.fields));
		}
	}

	fn record_follows_from(&self, _: &Id, _: &Id) {}
	fn event(&self, event: &Event<'_>) {
		let mut fields = BTreeMap::new();
		event.record(&mut Fields(&mut fields));
		let message = fields.remove("message").unwrap_or_default();
		let current = ENTERED.with(|entered| entered.borrow().last().copied());
		self.events.lock().unwrap().push((*event.metadata().level(), message, current));
	}

	fn enter(&self, id: &Id) {
		ENTERED.with(|entered| entered.borrow_mut().push(id.into_u64()));
	}

	fn exit(&self, id: &Id) {
		ENTERED.with(|entered| {
			let mut entered = entered.borrow_mut();
			if let Some(position) = entered.iter().rposition(|&entered| entered == id.into_u64()) {
				entered.remove(position);
			}
		});
	}

	fn try_close(&self, id: Id) -> bool {
		// Spans are never cloned by peerwire: the first close is the last.
		if let Some(span) = self.spans.lock().unwrap().get_mut(&id.into_u64()) {
			span.closed = true;
		}
		true
	}
}

fn runtime() -> tokio::runtime::Runtime {
	tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn pair() -> (PeerHandle, PeerHandle) {
	peerwire::transport::memory::pair(&Config::default())
}

/// Check a finished request span: its fields, its outcome, a duration, closed, and a child of
/// a connection span.
fn assert_finished(capture: &Capture, span: &Span, service_id: i32, outcome: &str) {
	assert_eq!(span.fields["service_id"], service_id.to_string(), "{span:?}");
	assert_eq!(span.fields["outcome"], outcome, "{span:?}");
	assert!(span.fields["duration_us"].parse::<u64>().is_ok(), "{span:?}");
	assert!(span.closed, "closed once finished: {span:?}");
	assert_eq!(capture.name_of(span.parent), Some("peer"), "a child of the connection span: {span:?}");
}

/// A server task that answers the next requests in turn: `Ok(body)` with a response, `Err(text)`
/// with an error response; it hands the handle back at the end.
fn answer(mut server: PeerHandle, answers: &'static [Result<&'static str, &'static str>]) -> JoinHandle<PeerHandle> {
	tokio::spawn(async move {
		for answer in answers {
			let (request, _) = server.recv_message().await.unwrap().into_request().unwrap();
			match answer {
				Ok(body) => request.send_response(0, *body).await.unwrap(),
				Err(text) => request.send_error_response(text).await.unwrap(),
			}
		}
		server
	})
}

#[test]
fn response_and_error_response_on_both_sides() {
	let capture = Capture::new(Level::DEBUG);
	let _guard = tracing::subscriber::set_default(capture.clone());
	runtime().block_on(async {
		let (client, server) = pair();
		let server = answer(server, &[Ok("ok"), Err("no")]);
		let mut first = client.send_request(5, "a").await.unwrap();
		within(first.recv_response()).await.unwrap();
		let mut second = client.send_request(6, "b").await.unwrap();
		within(second.recv_response()).await.unwrap();
		let (first, second) = (first.request_id() as u64, second.request_id() as u64);
		let _server = within(server).await.unwrap();

		let requests = capture.requests();
		assert_eq!(requests.len(), 4, "{requests:#?}");
		assert_finished(&capture, &requests[&("sent".into(), first)], 5, "response");
		assert_finished(&capture, &requests[&("received".into(), first)], 5, "response");
		assert_finished(&capture, &requests[&("sent".into(), second)], 6, "error response");
		assert_finished(&capture, &requests[&("received".into(), second)], 6, "error response");
		// The two sides are two connections, each with its own span.
		let sent_parent = requests[&("sent".into(), first)].parent;
		let received_parent = requests[&("received".into(), first)].parent;
		assert_ne!(sent_parent, received_parent);
	});
}

#[test]
fn dropped_handles() {
	let capture = Capture::new(Level::DEBUG);
	let _guard = tracing::subscriber::set_default(capture.clone());
	runtime().block_on(async {
		let (client, mut server) = pair();
		// A received request dropped without an answer is answered automatically.
		let mut request = client.send_request(7, "x").await.unwrap();
		let (received, _) = within(server.recv_message()).await.unwrap().into_request().unwrap();
		drop(received);
		assert!(within(request.recv_response()).await.unwrap().is_error_response());
		let id = request.request_id() as u64;
		let requests = capture.requests();
		assert_finished(&capture, &requests[&("received".into(), id)], 7, "dropped, answered automatically");
		assert_finished(&capture, &requests[&("sent".into(), id)], 7, "error response");

		// A sent request forgotten before its response.
		let request = client.send_request(8, "y").await.unwrap();
		let id = request.request_id() as u64;
		drop(request);
		let requests = capture.requests();
		assert_finished(&capture, &requests[&("sent".into(), id)], 8, "dropped");
		drop(server);
	});
}

#[test]
fn connection_closed() {
	let capture = Capture::new(Level::DEBUG);
	let _guard = tracing::subscriber::set_default(capture.clone());
	runtime().block_on(async {
		let (client, mut server) = pair();
		let mut request = client.send_request(9, "z").await.unwrap();
		let (received, _) = within(server.recv_message()).await.unwrap().into_request().unwrap();
		let id = request.request_id() as u64;
		// The server goes away with the request open.
		server.close();
		assert!(within(request.recv_response()).await.is_err());
		within(server.closed()).await;
		let requests = capture.requests();
		assert_finished(&capture, &requests[&("sent".into(), id)], 9, "connection closed");
		assert_finished(&capture, &requests[&("received".into(), id)], 9, "connection closed");
		drop(received);
		// Nothing more is recorded when the handle goes later.
		assert_eq!(capture.requests()[&("received".into(), id)].fields["outcome"], "connection closed");
	});
}

#[test]
fn no_request_span_when_filtered_at_info() {
	let capture = Capture::new(Level::INFO);
	let _guard = tracing::subscriber::set_default(capture.clone());
	runtime().block_on(async {
		let (client, server) = pair();
		let server = answer(server, &[Ok("ok")]);
		let mut request = client.send_request(1, "a").await.unwrap();
		within(request.recv_response()).await.unwrap();
		let _server = within(server).await.unwrap();
		assert!(capture.requests().is_empty());
		// The connection spans are at info, so they are there.
		assert!(capture.spans.lock().unwrap().values().any(|span| span.name == "peer"));
	});
}

#[test]
fn a_protocol_violation_warns_in_the_connection_span() {
	let capture = Capture::new(Level::DEBUG);
	let _guard = tracing::subscriber::set_default(capture.clone());
	runtime().block_on(async {
		let (peer, mut remote) = common::RawRemote::connect(Config::default()).await;
		let (mut read, _write) = peer.split();
		remote.send(peerwire::Message::request(3, 1, peerwire::Bytes::from_static(b"a"))).await;
		remote.send(peerwire::Message::request(3, 1, peerwire::Bytes::from_static(b"b"))).await;
		assert!(remote.recv().await.unwrap().is_error_response());
		let _request = within(read.recv_message()).await.unwrap();
		let address = remote.stream.local_addr().unwrap().to_string();
		let events = capture.events.lock().unwrap().clone();
		let spans = capture.spans.lock().unwrap().clone();
		let (_, _, span) = events
			.iter()
			.find(|(level, message, _)| *level == Level::WARN && message.contains("protocol violation"))
			.unwrap_or_else(|| panic!("a warning about the duplicate id: {events:#?}"));
		let span = &spans[&span.expect("logged inside a span")];
		assert_eq!(span.name, "peer");
		assert!(span.fields["remote"].contains(&address), "names the remote: {span:?}");
	});
}
