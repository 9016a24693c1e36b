//! `--stats` of `listen` and `tap`: the periodic summaries, in both output formats.
//!
//! Both commands print every interval: `listen` a `listener_stats` line and a `stats` line per
//! open connection (the library's [`ConnectionStats`] as its connection task last published
//! them), `tap` a `stats` line per open connection and a `total_stats` line. A connection's
//! counts are printed once more, with `"final":true`, just before its `closed` line.
//!
//! In JSON the traffic of one direction is an object shaped like the library's [`Traffic`]:
//! `{"messages":{"request":N,"response":N,"requester_update":N,"responder_update":N,
//! "stream":N,"total":N},"body_bytes":{...},"error_responses":N}`; the tap adds `"malformed"`
//! and `"forwarded_bytes"`.

use std::fmt::Write as _;
use std::time::Duration;

use peerwire::{ByType, ConnectionStats, ListenerStats, MessageType, Traffic};
use serde_json::{Value, json};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::output::{Printer, type_name};

/// The interval of `--stats` given without a value.
pub const DEFAULT_INTERVAL: &str = "10s";

const TYPES: [MessageType; 5] = [
	MessageType::Request,
	MessageType::Response,
	MessageType::RequesterUpdate,
	MessageType::ResponderUpdate,
	MessageType::Stream,
];

/// A timer that fires every `period`, first one `period` from now; `None` never fires, so
/// that `tokio::select!` can wait on it whether or not `--stats` was given.
pub fn ticker(period: Option<Duration>) -> Option<Interval> {
	period.map(|period| {
		let mut interval = tokio::time::interval_at(Instant::now() + period, period);
		// A summary late because the process was busy is printed once, not caught up on.
		interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
		interval
	})
}

/// Wait for the next tick of `ticker`, forever if there is none.
pub async fn tick(ticker: &mut Option<Interval>) {
	match ticker {
		Some(interval) => {
			interval.tick().await;
		},
		None => std::future::pending().await,
	}
}

/// Count one message of `message_type` in `by_type`.
pub fn add(by_type: &mut ByType, message_type: MessageType, count: u64) {
	let slot = match message_type {
		MessageType::Request => &mut by_type.request,
		MessageType::Response => &mut by_type.response,
		MessageType::RequesterUpdate => &mut by_type.requester_update,
		MessageType::ResponderUpdate => &mut by_type.responder_update,
		MessageType::Stream => &mut by_type.stream,
	};
	*slot += count;
}

/// Count one message seen passing, as the library counts the messages of a connection.
pub fn count(traffic: &mut Traffic, message_type: MessageType, service_id: i32, body_len: usize) {
	add(&mut traffic.messages, message_type, 1);
	add(&mut traffic.body_bytes, message_type, body_len as u64);
	if message_type == MessageType::Response && service_id < 0 {
		traffic.error_responses += 1;
	}
}

/// `traffic` plus `more`, field by field.
pub fn sum(traffic: &Traffic, more: &Traffic) -> Traffic {
	let plus = |a: &ByType, b: &ByType| ByType {
		request: a.request + b.request,
		response: a.response + b.response,
		requester_update: a.requester_update + b.requester_update,
		responder_update: a.responder_update + b.responder_update,
		stream: a.stream + b.stream,
	};
	let mut total = Traffic::default();
	total.messages = plus(&traffic.messages, &more.messages);
	total.body_bytes = plus(&traffic.body_bytes, &more.body_bytes);
	total.error_responses = traffic.error_responses + more.error_responses;
	total
}

fn by_type_json(by_type: &ByType) -> Value {
	let mut object = serde_json::Map::new();
	for message_type in TYPES {
		object.insert(type_name(message_type).into(), by_type.get(message_type).into());
	}
	object.insert("total".into(), by_type.total().into());
	Value::Object(object)
}

/// One direction's traffic as JSON (see the module docs).
pub fn traffic_json(traffic: &Traffic) -> serde_json::Map<String, Value> {
	let mut object = serde_json::Map::new();
	object.insert("messages".into(), by_type_json(&traffic.messages));
	object.insert("body_bytes".into(), by_type_json(&traffic.body_bytes));
	object.insert("error_responses".into(), traffic.error_responses.into());
	object
}

/// One direction's traffic for people: `3 messages (request:3), 33 body bytes`, the types
/// seen only.
pub fn traffic_human(traffic: &Traffic) -> String {
	let total = traffic.messages.total();
	let mut text = format!("{total} message{}", if total == 1 { "" } else { "s" });
	let seen: Vec<String> = TYPES
		.iter()
		.filter(|&&message_type| traffic.messages.get(message_type) > 0)
		.map(|&message_type| format!("{}:{}", type_name(message_type), traffic.messages.get(message_type)))
		.collect();
	if !seen.is_empty() {
		let _ = write!(text, " ({})", seen.join(" "));
	}
	let _ = write!(text, ", {} body bytes", traffic.body_bytes.total());
	if traffic.error_responses > 0 {
		let _ = write!(text, ", {} error responses", traffic.error_responses);
	}
	text
}

fn millis(duration: Duration) -> u64 {
	u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The `listener_stats` line of `listen`.
pub fn print_listener(printer: &Printer, stats: &ListenerStats) {
	let fields = [
		("accepted", json!(stats.accepted)),
		("refused_by_admission", json!(stats.refused_by_admission)),
		("refused_by_limit", json!(stats.refused_by_limit)),
		("open", json!(stats.open)),
	];
	printer.event("listener_stats", None, &fields);
}

/// The `stats` line of one connection of `listen`; `last` for the one printed as it closes.
pub fn print_connection(printer: &Printer, conn: u64, remote: &str, stats: &ConnectionStats, last: bool) {
	printer.either(
		|| {
			format!(
				"conn={conn} {} remote={remote}: in {}; out {}; open requests in {} (peak {}), out {} (peak {}); \
				 auto replies {}, stray {}, protocol errors {}; send blocked {} ms, read paused {} ms",
				if last { "final_stats" } else { "stats" },
				traffic_human(&stats.received),
				traffic_human(&stats.sent),
				stats.open_received_requests,
				stats.peak_received_requests,
				stats.open_sent_requests,
				stats.peak_sent_requests,
				stats.auto_replies,
				stats.stray_messages,
				stats.protocol_errors,
				millis(stats.send_blocked),
				millis(stats.read_paused),
			)
		},
		|| {
			vec![
				("event", json!("stats")),
				("conn", json!(conn)),
				("remote", json!(remote)),
				("received", Value::Object(traffic_json(&stats.received))),
				("sent", Value::Object(traffic_json(&stats.sent))),
				("open_received_requests", json!(stats.open_received_requests)),
				("peak_received_requests", json!(stats.peak_received_requests)),
				("open_sent_requests", json!(stats.open_sent_requests)),
				("peak_sent_requests", json!(stats.peak_sent_requests)),
				("auto_replies", json!(stats.auto_replies)),
				("stray_messages", json!(stats.stray_messages)),
				("protocol_errors", json!(stats.protocol_errors)),
				("send_blocked_ms", json!(millis(stats.send_blocked))),
				("read_paused_ms", json!(millis(stats.read_paused))),
				("final", json!(last)),
			]
		},
	);
}

/// What the tap counted in one direction of a connection (or of all of them).
#[derive(Debug, Default, Clone, Copy)]
pub struct TapCounts {
	/// Messages decoded, by type, and their body bytes.
	pub traffic: Traffic,
	/// Frames (byte streams) or datagrams (seqpacket) that could not be decoded.
	pub malformed: u64,
	/// Bytes forwarded, framing included.
	pub forwarded_bytes: u64,
}

impl TapCounts {
	/// These counts plus `more`.
	pub fn plus(&self, more: &Self) -> Self {
		Self {
			traffic: sum(&self.traffic, &more.traffic),
			malformed: self.malformed + more.malformed,
			forwarded_bytes: self.forwarded_bytes + more.forwarded_bytes,
		}
	}

	fn json(&self) -> Value {
		let mut object = traffic_json(&self.traffic);
		object.insert("malformed".into(), self.malformed.into());
		object.insert("forwarded_bytes".into(), self.forwarded_bytes.into());
		Value::Object(object)
	}

	fn human(&self) -> String {
		format!(
			"{}, {} malformed, {} bytes forwarded",
			traffic_human(&self.traffic),
			self.malformed,
			self.forwarded_bytes
		)
	}
}

/// Both directions of a tapped connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct TapPair {
	pub client_to_server: TapCounts,
	pub server_to_client: TapCounts,
}

impl TapPair {
	/// These counts plus `more`, direction by direction.
	pub fn plus(&self, more: &Self) -> Self {
		Self {
			client_to_server: self.client_to_server.plus(&more.client_to_server),
			server_to_client: self.server_to_client.plus(&more.server_to_client),
		}
	}

	fn human(&self) -> String {
		format!("client->server {}; server->client {}", self.client_to_server.human(), self.server_to_client.human())
	}
}

/// The `stats` line of one tapped connection; `last` for the one printed as it closes.
pub fn print_tapped(printer: &Printer, conn: u64, client: &str, counts: &TapPair, last: bool) {
	printer.either(
		|| format!("conn={conn} {} client={client}: {}", if last { "final_stats" } else { "stats" }, counts.human()),
		|| {
			vec![
				("event", json!("stats")),
				("conn", json!(conn)),
				("client", json!(client)),
				("client_to_server", counts.client_to_server.json()),
				("server_to_client", counts.server_to_client.json()),
				("final", json!(last)),
			]
		},
	);
}

/// The `total_stats` line of the tap: every connection since it started, open or closed.
pub fn print_tap_total(printer: &Printer, connections: u64, open: usize, counts: &TapPair) {
	printer.either(
		|| format!("total_stats connections={connections} open={open}: {}", counts.human()),
		|| {
			vec![
				("event", json!("total_stats")),
				("connections", json!(connections)),
				("open", json!(open)),
				("client_to_server", counts.client_to_server.json()),
				("server_to_client", counts.server_to_client.json()),
			]
		},
	);
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn traffic_in_both_formats() {
		let mut traffic = Traffic::default();
		count(&mut traffic, MessageType::Request, 7, 11);
		count(&mut traffic, MessageType::Request, 7, 4);
		count(&mut traffic, MessageType::Response, -1, 5);
		assert_eq!(traffic_human(&traffic), "3 messages (request:2 response:1), 20 body bytes, 1 error responses");
		let json = Value::Object(traffic_json(&traffic));
		assert_eq!(json["messages"]["request"], 2);
		assert_eq!(json["messages"]["total"], 3);
		assert_eq!(json["body_bytes"]["request"], 15);
		assert_eq!(json["body_bytes"]["stream"], 0);
		assert_eq!(json["error_responses"], 1);
		let twice = sum(&traffic, &traffic);
		assert_eq!((twice.messages.total(), twice.body_bytes.response, twice.error_responses), (6, 10, 2));
	}
}
