//! Standard output: one line per event, for people or (with `--json`) one JSON object per line.
//!
//! The JSON lines are the stable interface. Every object has an `"event"` field first; messages
//! are `{"event":"message", ["conn":N,] ["direction":D,] "type":T, "request_id":N,
//! "service_id":N, "body_len":N, "fds":N, "body":TEXT | "body_hex":HEX, "truncated":BOOL}`
//! with exactly one of `body` (printable UTF-8) and `body_hex`.

use std::fmt::Write as _;
use std::io::Write;

use peerwire::{MessageHeader, MessageType};
use serde_json::Value;

/// The name of a message type, the same in both output formats.
pub fn type_name(message_type: MessageType) -> &'static str {
	match message_type {
		MessageType::Request => "request",
		MessageType::Response => "response",
		MessageType::RequesterUpdate => "requester_update",
		MessageType::ResponderUpdate => "responder_update",
		MessageType::Stream => "stream",
	}
}

/// The direction of a message through the tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
	ClientToServer,
	ServerToClient,
}

impl Direction {
	pub fn human(self) -> &'static str {
		match self {
			Self::ClientToServer => "client->server",
			Self::ServerToClient => "server->client",
		}
	}

	pub fn json(self) -> &'static str {
		match self {
			Self::ClientToServer => "client_to_server",
			Self::ServerToClient => "server_to_client",
		}
	}
}

/// A message to print: its header and as much of its body as is at hand.
#[derive(Debug)]
pub struct MessageView<'a> {
	pub conn: Option<u64>,
	pub direction: Option<Direction>,
	pub header: MessageHeader,
	/// The body, or its first bytes (the tap keeps only a preview).
	pub body: &'a [u8],
	/// The full length of the body.
	pub body_len: usize,
	pub fds: usize,
}

/// Prints events in the chosen format.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
	json: bool,
	/// Show at most this many bytes of a body.
	preview: usize,
}

impl Printer {
	pub fn new(json: bool, preview: Option<usize>) -> Self {
		Self { json, preview: preview.unwrap_or(usize::MAX) }
	}

	/// Print a message.
	pub fn message(&self, view: &MessageView<'_>) {
		let shown = &view.body[..view.body.len().min(self.preview)];
		let body = render(shown, shown.len() < view.body_len);
		if self.json {
			let mut object: Vec<(&str, Value)> = vec![("event", "message".into())];
			if let Some(conn) = view.conn {
				object.push(("conn", conn.into()));
			}
			if let Some(direction) = view.direction {
				object.push(("direction", direction.json().into()));
			}
			object.push(("type", type_name(view.header.message_type).into()));
			object.push(("request_id", view.header.request_id.into()));
			object.push(("service_id", view.header.service_id.into()));
			object.push(("body_len", view.body_len.into()));
			object.push(("fds", view.fds.into()));
			match body {
				Rendered::Text(text) => object.push(("body", text.into())),
				Rendered::Hex(hex) => object.push(("body_hex", hex.into())),
			};
			object.push(("truncated", (body_shown_len(shown, view.body_len) < view.body_len).into()));
			self.text_line(&json_object(&object));
		} else {
			let mut line = String::new();
			if let Some(conn) = view.conn {
				let _ = write!(line, "conn={conn} ");
			}
			if let Some(direction) = view.direction {
				let _ = write!(line, "{} ", direction.human());
			}
			let header = &view.header;
			let _ = write!(
				line,
				"{} id={} service={} len={}",
				type_name(header.message_type),
				header.request_id,
				header.service_id,
				view.body_len
			);
			if view.fds > 0 {
				let _ = write!(line, " fds={}", view.fds);
			}
			if view.body_len > 0 {
				match body {
					Rendered::Text(text) => {
						let _ = write!(line, " {text:?}");
					},
					Rendered::Hex(hex) => {
						let _ = write!(line, " hex:{hex}");
					},
				}
				let shown = body_shown_len(shown, view.body_len);
				if shown < view.body_len {
					let _ = write!(line, " ...(+{} bytes)", view.body_len - shown);
				}
			}
			self.text_line(&line);
		}
	}

	/// Print an event other than a message: `fields` become JSON members, or `key=value` pairs
	/// for people, except a non-null `error`, which ends the line after a colon.
	pub fn event(&self, event: &str, conn: Option<u64>, fields: &[(&str, Value)]) {
		if self.json {
			let mut object: Vec<(&str, Value)> = vec![("event", event.into())];
			if let Some(conn) = conn {
				object.push(("conn", conn.into()));
			}
			object.extend(fields.iter().map(|(key, value)| (*key, value.clone())));
			self.text_line(&json_object(&object));
		} else {
			let mut line = String::new();
			if let Some(conn) = conn {
				let _ = write!(line, "conn={conn} ");
			}
			line.push_str(event);
			let mut error = None;
			for (key, value) in fields {
				match value {
					Value::Null => {},
					Value::String(text) if *key == "error" => error = Some(text),
					Value::String(text) => {
						let _ = write!(line, " {key}={text}");
					},
					other => {
						let _ = write!(line, " {key}={other}");
					},
				}
			}
			if let Some(error) = error {
				let _ = write!(line, ": {error}");
			}
			self.text_line(&line);
		}
	}

	/// Print a line of either form, built only if it is the one printed; `json` lists the
	/// members of the object in order.
	pub fn either(&self, human: impl FnOnce() -> String, json: impl FnOnce() -> Vec<(&'static str, Value)>) {
		if self.json {
			self.text_line(&json_object(&json()));
		} else {
			self.text_line(&human());
		}
	}

	fn text_line(&self, line: &str) {
		let mut stdout = std::io::stdout().lock();
		if let Err(error) = writeln!(stdout, "{line}") {
			// Whoever read our output is gone (`| head`): stop, as if by SIGPIPE.
			if error.kind() == std::io::ErrorKind::BrokenPipe {
				std::process::exit(0);
			}
		}
	}
}

/// One JSON object on one line, its members in the order given (a `serde_json::Map` would sort
/// them, and "event" belongs first).
fn json_object(members: &[(&str, Value)]) -> String {
	let mut line = String::from("{");
	for (i, (key, value)) in members.iter().enumerate() {
		if i > 0 {
			line.push(',');
		}
		let _ = write!(line, "{}:{value}", Value::from(*key));
	}
	line.push('}');
	line
}

enum Rendered {
	Text(String),
	Hex(String),
}

/// How many body bytes a rendering of `shown` actually shows (text drops a cut-off character).
fn body_shown_len(shown: &[u8], body_len: usize) -> usize {
	match as_text(shown, shown.len() < body_len) {
		Some(text) => text.len(),
		None => shown.len(),
	}
}

/// `shown` as text if it is printable UTF-8 (ignoring a character cut off at the end when the
/// body is `truncated`), else as hex.
fn render(shown: &[u8], truncated: bool) -> Rendered {
	match as_text(shown, truncated) {
		Some(text) => Rendered::Text(text.to_string()),
		None => {
			let mut hex = String::with_capacity(shown.len() * 2);
			for byte in shown {
				let _ = write!(hex, "{byte:02x}");
			}
			Rendered::Hex(hex)
		},
	}
}

fn as_text(shown: &[u8], truncated: bool) -> Option<&str> {
	let text = match std::str::from_utf8(shown) {
		Ok(text) => text,
		// Cut in the middle of a character, which the preview limit may do.
		Err(error) if truncated && error.error_len().is_none() => {
			std::str::from_utf8(&shown[..error.valid_up_to()]).expect("valid up to here")
		},
		Err(_) => return None,
	};
	let printable = text.chars().all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'));
	printable.then_some(text)
}

#[cfg(test)]
mod tests {
	use super::*;

	fn text(bytes: &[u8], truncated: bool) -> Option<String> {
		match render(bytes, truncated) {
			Rendered::Text(text) => Some(text),
			Rendered::Hex(_) => None,
		}
	}

	#[test]
	fn json_members_keep_their_order_and_escape() {
		let line = json_object(&[("event", "message".into()), ("body", "a\"b\n".into()), ("n", 3.into())]);
		assert_eq!(line, r#"{"event":"message","body":"a\"b\n","n":3}"#);
		assert!(serde_json::from_str::<Value>(&line).is_ok());
	}

	#[test]
	fn text_or_hex() {
		assert_eq!(text(b"hello\n", false).as_deref(), Some("hello\n"));
		assert_eq!(text("grüß".as_bytes(), false).as_deref(), Some("grüß"));
		// Cut inside the ß: text up to the cut when truncated, hex when whole.
		assert_eq!(text(&"grüß".as_bytes()[..5], true).as_deref(), Some("grü"));
		assert_eq!(text(&"grüß".as_bytes()[..5], false), None);
		assert_eq!(text(b"\x00\x01", false), None);
		assert!(matches!(render(b"\x00\xff", false), Rendered::Hex(hex) if hex == "00ff"));
	}
}
