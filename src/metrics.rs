//! Publishing the counters through the [`metrics`] facade (the `metrics` feature).
//!
//! Each peer task copies its connection's counters once a second (and once more when the
//! connection ends) and adds what changed to process-wide metrics, so the hot path gains
//! nothing: no atomic operation per message, one lock and a few dozen calls to the recorder per
//! connection per second. Without a recorder installed the calls do nothing.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `peerwire_messages_received_total`, `peerwire_messages_sent_total` | counter | `type` |
//! | `peerwire_body_bytes_received_total`, `peerwire_body_bytes_sent_total` | counter | `type` |
//! | `peerwire_error_responses_received_total`, `peerwire_error_responses_sent_total` | counter | |
//! | `peerwire_auto_replies_total` | counter | |
//! | `peerwire_stray_messages_total` | counter | |
//! | `peerwire_protocol_errors_total` | counter | |
//! | `peerwire_send_blocked_microseconds_total`, `peerwire_read_paused_microseconds_total` | counter | |
//! | `peerwire_requests_open` | gauge | `direction` (`sent`, `received`) |
//! | `peerwire_connections_open` | gauge | |
//! | `peerwire_connections_accepted_total` | counter | |
//! | `peerwire_connections_refused_total` | counter | `reason` (`admission`, `limit`) |
//!
//! `type` is one of `request`, `response`, `requester_update`, `responder_update`, `stream`.
//! The names and labels are the same whatever the exporter; Prometheus shows them as listed.

use std::time::Duration;

use crate::stats::{ByType, ConnectionStats};

/// How often a peer task publishes its counters.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);

const TYPES: [&str; 5] = ["request", "response", "requester_update", "responder_update", "stream"];

fn by_type(counts: &ByType) -> [u64; 5] {
	[counts.request, counts.response, counts.requester_update, counts.responder_update, counts.stream]
}

/// What one connection has published so far.
#[derive(Debug, Default)]
pub(crate) struct Publisher {
	last: ConnectionStats,
	/// Counted in `peerwire_connections_open`.
	open: bool,
}

impl Publisher {
	/// Publish what changed since the last call.
	pub(crate) fn publish(&mut self, now: &ConnectionStats) {
		if !self.open {
			self.open = true;
			metrics::gauge!("peerwire_connections_open").increment(1.0);
		}
		let last = &self.last;
		for (direction, now, last) in [("received", &now.received, &last.received), ("sent", &now.sent, &last.sent)] {
			let messages = by_type(&now.messages).into_iter().zip(by_type(&last.messages));
			let bytes = by_type(&now.body_bytes).into_iter().zip(by_type(&last.body_bytes));
			for ((kind, (now_messages, last_messages)), (now_bytes, last_bytes)) in
				TYPES.iter().zip(messages).zip(bytes)
			{
				if now_messages > last_messages {
					let name = if direction == "sent" {
						"peerwire_messages_sent_total"
					} else {
						"peerwire_messages_received_total"
					};
					metrics::counter!(name, "type" => *kind).increment(now_messages - last_messages);
				}
				if now_bytes > last_bytes {
					let name = if direction == "sent" {
						"peerwire_body_bytes_sent_total"
					} else {
						"peerwire_body_bytes_received_total"
					};
					metrics::counter!(name, "type" => *kind).increment(now_bytes - last_bytes);
				}
			}
			if now.error_responses > last.error_responses {
				let name = if direction == "sent" {
					"peerwire_error_responses_sent_total"
				} else {
					"peerwire_error_responses_received_total"
				};
				metrics::counter!(name).increment(now.error_responses - last.error_responses);
			}
		}
		let counters = [
			("peerwire_auto_replies_total", now.auto_replies, last.auto_replies),
			("peerwire_stray_messages_total", now.stray_messages, last.stray_messages),
			("peerwire_protocol_errors_total", now.protocol_errors, last.protocol_errors),
			("peerwire_send_blocked_microseconds_total", micros(now.send_blocked), micros(last.send_blocked)),
			("peerwire_read_paused_microseconds_total", micros(now.read_paused), micros(last.read_paused)),
		];
		for (name, now, last) in counters {
			if now > last {
				metrics::counter!(name).increment(now - last);
			}
		}
		let gauges = [
			("sent", now.open_sent_requests, last.open_sent_requests),
			("received", now.open_received_requests, last.open_received_requests),
		];
		for (direction, now, last) in gauges {
			if now != last {
				metrics::gauge!("peerwire_requests_open", "direction" => direction).increment(now as f64 - last as f64);
			}
		}
		self.last = now.clone();
	}

	/// The connection has ended: publish the last changes, and take it out of the gauges.
	pub(crate) fn finish(&mut self, now: &ConnectionStats) {
		let mut ended = now.clone();
		ended.open_sent_requests = 0;
		ended.open_received_requests = 0;
		self.publish(&ended);
		metrics::gauge!("peerwire_connections_open").decrement(1.0);
	}
}

fn micros(duration: Duration) -> u64 {
	duration.as_micros().try_into().unwrap_or(u64::MAX)
}

/// A listener accepted a connection.
pub(crate) fn accepted() {
	metrics::counter!("peerwire_connections_accepted_total").increment(1);
}

/// A listener refused a connection, for `reason` (`admission` or `limit`).
pub(crate) fn refused(reason: &'static str) {
	metrics::counter!("peerwire_connections_refused_total", "reason" => reason).increment(1);
}
