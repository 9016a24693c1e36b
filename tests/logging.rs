//! What peerwire logs about a connection: a span per connection naming it (address, or pid and
//! uid of a Unix peer, and a connection number), its start and its end at `info`, once each.
//!
//! A tiny `tracing` subscriber records spans and events; the runtime is current-thread, so the
//! spans entered by the peer tasks are on the thread-local stack of the one thread.

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::raw::stream_frame;
use common::{socket_path, within};
use peerwire::{Config, TcpListener, TcpPeer, UnixStreamListener, UnixStreamPeer};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

/// One event: its level, its message and other fields, and the fields of the spans it is in.
#[derive(Debug, Clone)]
struct Captured {
	level: Level,
	message: String,
	spans: String,
}

#[derive(Default)]
struct State {
	next_id: u64,
	/// Fields of every span, and its parent.
	spans: HashMap<u64, (String, Option<u64>)>,
	events: Vec<Captured>,
	/// A span name this subscriber turns off (as a filter like `peerwire=warn` turns off the
	/// `info` connection span).
	off: Option<&'static str>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<State>>);

thread_local! {
	static ENTERED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

struct Fields<'a>(&'a mut String, Option<&'a mut String>);

impl Visit for Fields<'_> {
	fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
		match (field.name(), &mut self.1) {
			("message", Some(message)) => write!(message, "{value:?}").unwrap(),
			(name, _) => write!(self.0, " {name}={value:?}").unwrap(),
		}
	}
}

impl Capture {
	fn current() -> Option<u64> {
		ENTERED.with(|entered| entered.borrow().last().copied())
	}

	/// The fields of `span` and its ancestors, innermost first.
	fn span_fields(state: &State, mut span: Option<u64>) -> String {
		let mut all = String::new();
		while let Some(id) = span {
			let (fields, parent) = &state.spans[&id];
			all.push_str(fields);
			span = *parent;
		}
		all
	}

	fn events(&self) -> Vec<Captured> {
		self.0.lock().unwrap().events.clone()
	}

	/// The events, of any level, whose message (with its fields) begins with `start`.
	fn starting_with(&self, start: &str) -> Vec<Captured> {
		self.events().into_iter().filter(|event| event.message.starts_with(start)).collect()
	}

	/// The info (and above) events whose message is `message`.
	fn logged(&self, message: &str) -> Vec<Captured> {
		self.events().into_iter().filter(|event| event.message == message && event.level <= Level::INFO).collect()
	}
}

impl Subscriber for Capture {
	fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
		// Asked every time: what one test turns off, another (in the same process) wants.
		Interest::sometimes()
	}

	fn enabled(&self, metadata: &Metadata<'_>) -> bool {
		let off = self.0.lock().unwrap().off;
		metadata.target().starts_with("peerwire") && !(metadata.is_span() && off == Some(metadata.name()))
	}

	fn new_span(&self, attributes: &Attributes<'_>) -> Id {
		let mut fields = format!(" {}:", attributes.metadata().name());
		attributes.record(&mut Fields(&mut fields, None));
		let parent = if attributes.is_contextual() { Self::current() } else { attributes.parent().map(Id::into_u64) };
		let mut state = self.0.lock().unwrap();
		state.next_id += 1;
		let id = state.next_id;
		state.spans.insert(id, (fields, parent));
		Id::from_u64(id)
	}

	fn record(&self, span: &Id, values: &Record<'_>) {
		let mut state = self.0.lock().unwrap();
		let (fields, _) = state.spans.get_mut(&span.into_u64()).unwrap();
		values.record(&mut Fields(fields, None));
	}

	fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

	fn event(&self, event: &Event<'_>) {
		let mut fields = String::new();
		let mut message = String::new();
		event.record(&mut Fields(&mut fields, Some(&mut message)));
		let parent = if event.is_contextual() { Self::current() } else { event.parent().map(Id::into_u64) };
		let mut state = self.0.lock().unwrap();
		let spans = Self::span_fields(&state, parent);
		state.events.push(Captured { level: *event.metadata().level(), message: message + &fields, spans });
	}

	fn enter(&self, span: &Id) {
		ENTERED.with(|entered| entered.borrow_mut().push(span.into_u64()));
	}

	fn exit(&self, _span: &Id) {
		ENTERED.with(|entered| entered.borrow_mut().pop());
	}
}

/// The `conn=N` number in the fields of a span.
fn connection_number(spans: &str) -> u64 {
	let start = spans.find("conn=").expect("no connection number in the span") + "conn=".len();
	spans[start..].split(' ').next().unwrap().parse().unwrap()
}

/// Wait until `message` has been logged `count` times (the peer tasks log their end on their own).
async fn until_logged(capture: &Capture, message: &str, count: usize) -> Vec<Captured> {
	within(async {
		loop {
			let logged = capture.logged(message);
			if logged.len() >= count {
				return logged;
			}
			tokio::time::sleep(Duration::from_millis(10)).await;
		}
	})
	.await
}

#[tokio::test(flavor = "current_thread")]
async fn a_unix_connection_is_named_by_pid_and_number_and_logged_once_at_each_end() {
	let capture = Capture::default();
	let _guard = tracing::subscriber::set_default(capture.clone());
	let path = socket_path("logging");
	let mut listener = UnixStreamListener::bind(&path, &Config::default()).await.unwrap();
	let config = Config::default();
	let (client, server) = tokio::join!(UnixStreamPeer::connect(&path, &config), listener.accept());
	let (client, _) = client.unwrap();
	let (server, _) = server.unwrap();

	let pid = format!("pid {}", std::process::id());
	let accepted = capture.logged("accepted a connection");
	assert_eq!(accepted.len(), 1, "{accepted:?}");
	assert!(accepted[0].spans.contains(&pid), "no pid in the span: {}", accepted[0].spans);
	assert!(accepted[0].spans.contains("remote=unix (uid "), "{}", accepted[0].spans);
	let connected = capture.logged("connected");
	assert_eq!(connected.len(), 1, "{connected:?}");
	assert!(connected[0].spans.contains(&format!("remote=unix://{} (uid ", path.display())), "{}", connected[0].spans);
	assert!(connected[0].spans.contains(&pid), "{}", connected[0].spans);
	let (server_number, client_number) =
		(connection_number(&accepted[0].spans), connection_number(&connected[0].spans));
	assert_ne!(server_number, client_number);

	client.close();
	within(server.closed()).await;
	let closed_by_remote = until_logged(&capture, "connection closed by the remote", 1).await;
	let closed_locally = until_logged(&capture, "connection closed locally", 1).await;
	tokio::time::sleep(Duration::from_millis(50)).await;
	assert_eq!(capture.logged("connection closed by the remote").len(), 1, "{:?}", capture.events());
	assert_eq!(capture.logged("connection closed locally").len(), 1, "{:?}", capture.events());
	assert_eq!(connection_number(&closed_by_remote[0].spans), server_number);
	assert_eq!(connection_number(&closed_locally[0].spans), client_number);
	for event in [&closed_by_remote[0], &closed_locally[0]] {
		assert_eq!(event.level, Level::INFO);
	}
}

#[tokio::test(flavor = "current_thread")]
async fn a_tcp_connection_is_named_by_its_address() {
	let capture = Capture::default();
	let _guard = tracing::subscriber::set_default(capture.clone());
	let mut listener = TcpListener::bind("127.0.0.1:0", &Config::default()).await.unwrap();
	let address = listener.local_addr().unwrap();
	let config = Config::default();
	let (client, server) = tokio::join!(TcpPeer::connect(address, &config), listener.accept());
	let (_client, _) = client.unwrap();
	let (server, server_info) = server.unwrap();
	let connected = capture.logged("connected");
	assert!(connected[0].spans.contains(&format!("remote=tcp://{address}")), "{}", connected[0].spans);
	let accepted = capture.logged("accepted a connection");
	assert!(
		accepted[0].spans.contains(&format!("remote={}", server_info.remote_address.unwrap())),
		"{}",
		accepted[0].spans
	);
	server.close();
	until_logged(&capture, "connection closed by the remote", 1).await;
	until_logged(&capture, "connection closed locally", 1).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_refused_connection_is_logged_at_warn_with_its_credentials() {
	let capture = Capture::default();
	let _guard = tracing::subscriber::set_default(capture.clone());
	let uid = rustix::process::getuid().as_raw();
	let path = socket_path("refused");
	let mut listener = UnixStreamListener::bind(&path, &Config::default())
		.await
		.unwrap()
		.with_admission(peerwire::admission::uids([uid.wrapping_add(1)]));
	let accepting = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
	let (client, _) = UnixStreamPeer::connect(&path, &Config::default()).await.unwrap();
	within(client.closed()).await;
	let refused: Vec<_> = capture
		.events()
		.into_iter()
		.filter(|event| event.message.starts_with("refused a connection: the admission check does not allow it"))
		.collect();
	assert_eq!(refused.len(), 1, "{:?}", capture.events());
	assert_eq!(refused[0].level, Level::WARN);
	let fields = &refused[0].message;
	assert!(fields.contains(&format!(" uid={uid} ")), "{fields}");
	assert!(fields.contains(" gid="), "{fields}");
	assert!(fields.contains(&format!(" pid={}", std::process::id())), "{fields}");
	assert!(capture.logged("accepted a connection").is_empty(), "a refused connection was accepted");
	accepting.abort();
}

/// What the connection logs about the remote's messages carries the connection's span, also
/// when the read handle read them for the peer task (on the application's task, outside the
/// peer task's span), and when a handle's drop makes the log.
#[tokio::test(flavor = "current_thread")]
async fn what_the_read_handle_reads_is_logged_in_the_connection_span() {
	const REQUESTS: u32 = 300;
	let capture = Capture::default();
	let _guard = tracing::subscriber::set_default(capture.clone());
	let config = Config::default().with_max_open_requests(1);
	let (remote, ours) = tokio::io::duplex(4 << 20);
	let (read, write) = tokio::io::split(ours);
	let peer = peerwire::Peer::spawn(peerwire::StreamTransport::new(read, write, &config), &config);
	let (_remote_read, mut remote_write) = tokio::io::split(remote);
	let (mut read_handle, _write_handle) = peer.split();
	// Stream messages and requests, every request past the first refused (one may be open).
	// Written in turns while the read handle waits, so that it reads most of them itself.
	let mut streams = 0;
	let mut held = Vec::new();
	for id in 1..=REQUESTS {
		let mut bytes = stream_frame(4, 0, 7, b"stream");
		bytes.extend_from_slice(&stream_frame(0, id, 7, b"request"));
		tokio::io::AsyncWriteExt::write_all(&mut remote_write, &bytes).await.unwrap();
		// The stream message at least; the request may come with it, or be refused.
		match within(read_handle.recv_message()).await.unwrap() {
			peerwire::ReceivedMessage::Stream(_) => streams += 1,
			peerwire::ReceivedMessage::Request(request, _) => held.push(request),
		}
	}
	let refused = capture.starting_with("refused a request: too many open requests");
	assert!(refused.len() >= REQUESTS as usize / 2, "{} refusals logged ({streams} streams)", refused.len());
	let outside: Vec<_> = refused.iter().filter(|event| !event.spans.contains("conn=")).collect();
	assert!(outside.is_empty(), "{} of {} refusals logged outside the connection's span", outside.len(), refused.len());
	// The open request, dropped unanswered by the application's task.
	assert_eq!(held.len(), 1);
	drop(held);
	let dropped = capture.starting_with("received request dropped without a response");
	assert_eq!(dropped.len(), 1, "{dropped:?}");
	assert!(dropped[0].spans.contains("conn="), "logged outside the connection's span: {:?}", dropped[0]);
}

/// With the connection's span turned off by the application's filter, what the connection logs
/// on an application's task stays in the application's own span (it is not made a root event).
#[tokio::test(flavor = "current_thread")]
async fn with_the_connection_span_off_events_stay_in_the_callers_span() {
	let capture = Capture::default();
	capture.0.lock().unwrap().off = Some("peer");
	let _guard = tracing::subscriber::set_default(capture.clone());
	let app = tracing::info_span!(target: "peerwire::test", "app", task = "camera");
	let _entered = app.enter();
	let config = Config::default();
	let (remote, ours) = tokio::io::duplex(1 << 16);
	let (read, write) = tokio::io::split(ours);
	let mut peer = peerwire::Peer::spawn(peerwire::StreamTransport::new(read, write, &config), &config);
	let (_remote_read, mut remote_write) = tokio::io::split(remote);
	tokio::io::AsyncWriteExt::write_all(&mut remote_write, &stream_frame(0, 1, 7, b"request")).await.unwrap();
	let (request, _) = within(peer.recv_message()).await.unwrap().into_request().unwrap();
	drop(request);
	let dropped = capture.starting_with("received request dropped without a response");
	assert_eq!(dropped.len(), 1, "{dropped:?}");
	assert!(dropped[0].spans.contains("task=\"camera\""), "not in the application's span: {:?}", dropped[0]);
}
