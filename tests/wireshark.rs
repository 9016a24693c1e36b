//! The Wireshark dissector (tools/wireshark/peerwire.lua) on real traffic: peerwire connections
//! over loopback, captured with dumpcap, decoded by tshark with the script, and every decoded
//! message compared with what was sent. Little and big endian, each by preference and detected;
//! by port and by the heuristic on ports not configured; a message split across TCP segments
//! (inside the header, and inside the body), several messages in one segment, and text data
//! that must not be taken for peerwire. The dissector's Info column is compared with the lines
//! `peerwire tap` prints for the same connection.
//!
//! Needs `tshark` and `dumpcap` and the right to capture on `lo` (root, or dumpcap's
//! capabilities). Without them the test says it is skipped and passes, unless
//! `PEERWIRE_REQUIRE_TSHARK=1` (as in CI), which makes their absence a failure.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::cli::Background;
use common::raw::stream_frame;
use peerwire::{Bytes, Config, Endian, MessageType, TcpListener, TcpPeer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/wireshark/peerwire.lua");
/// Generous, but finite: a bug fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(10);

/// What the dissector shows of one message, and what the test expects it to show.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shown {
	to_server: bool,
	message_type: u32,
	request_id: u32,
	service_id: i32,
	body_len: u32,
	preview: Preview,
	truncated: bool,
	byte_order: &'static str,
}

/// The body preview: `peerwire.body` (text) or `peerwire.body_hex`, or neither for no body.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Preview {
	Empty,
	Text(String),
	Hex(String),
}

/// A decoded message and where tshark found it.
#[derive(Debug, Clone)]
struct Decoded {
	/// The server port of its connection (every server here has one connection).
	server_port: u16,
	frame: u64,
	/// The `tcp.segment.count` of each PDU reassembled in its frame (none: the frame alone).
	reassembled_from: Vec<u64>,
	shown: Shown,
}

#[test]
fn tshark_decodes_a_capture_of_both_byte_orders() {
	if let Some(reason) = tools_missing() {
		return skip(&reason);
	}
	let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
	let little = Config::default().with_endian(Endian::Little);
	let big = Config::default().with_endian(Endian::Big);

	// Every socket is bound before the capture starts: its filter names their ports.
	let (mut little_server, mut big_server, mut raw_server, junk_server) = runtime.block_on(async {
		(
			TcpListener::bind("127.0.0.1:0", &little).await.unwrap(),
			TcpListener::bind("127.0.0.1:0", &big).await.unwrap(),
			TcpListener::bind("127.0.0.1:0", &little).await.unwrap(),
			std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
		)
	});
	let little_port = little_server.local_addr().unwrap().port();
	let big_port = big_server.local_addr().unwrap().port();
	let raw_port = raw_server.local_addr().unwrap().port();
	let junk_port = junk_server.local_addr().unwrap().port();
	// The little-endian connection passes through `peerwire tap`, to compare its lines.
	let tap = Tap::start(little_port);
	let tap_port = tap.port;

	let directory = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
	let file = directory.join(format!("wireshark-{}.pcapng", std::process::id()));
	let ports = [tap_port, little_port, big_port, raw_port, junk_port];
	let mut capture = match Capture::start(&ports) {
		Ok(capture) => capture,
		Err(reason) => return skip(&format!("cannot capture on lo: {reason}")),
	};

	let mut expected: BTreeMap<u16, Vec<Shown>> = BTreeMap::new();
	runtime.block_on(async {
		let through_tap = SocketAddr::from(([127, 0, 0, 1], tap_port));
		let shown = exchange(&mut little_server, through_tap, &little, "little").await;
		expected.insert(tap_port, shown.clone());
		expected.insert(little_port, shown);
		let direct = SocketAddr::from(([127, 0, 0, 1], big_port));
		expected.insert(big_port, exchange(&mut big_server, direct, &big, "big").await);
		expected.insert(raw_port, raw_writes(&mut raw_server).await);
	});
	junk(&junk_server);
	// Everything sent is on the wire; once a marker sent after it is captured, so is it all.
	capture.sync(b"end of test traffic");
	capture.stop(&file);
	let tap_lines = tap.stop();

	let all_servers: Vec<u16> = expected.keys().copied().chain([junk_port]).collect();
	let little_ports = [tap_port, little_port, raw_port];
	let list = |ports: &[u16]| ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
	let runs: [(&str, Vec<String>, Vec<u16>); 4] = [
		// The preference fixes the order; the big-endian connection is refused by the heuristic
		// (which tries little only), and the junk by everything.
		("little, by port", prefs("little", &list(&little_ports)), little_ports.to_vec()),
		("big, by port", prefs("big", &big_port.to_string()), vec![big_port]),
		// No ports: the heuristic finds every connection and the order is detected per connection.
		("auto, by the heuristic", prefs("auto", ""), expected.keys().copied().collect()),
		// Every port configured, order detected: the junk is shown as malformed, not decoded.
		("auto, by port", prefs("auto", &list(&all_servers)), expected.keys().copied().collect()),
	];
	for (name, prefs, decoded_ports) in &runs {
		let decoded = tshark_json(&file, prefs, &all_servers);
		// In order in each direction; the two directions interleave as they happen to.
		for port in &all_servers {
			for to_server in [true, false] {
				let here = |shown: &Shown| shown.to_server == to_server;
				let got: Vec<&Shown> = decoded
					.iter()
					.filter(|message| message.server_port == *port && here(&message.shown))
					.map(|message| &message.shown)
					.collect();
				let want: Vec<&Shown> = match decoded_ports.contains(port) {
					true => expected[port].iter().filter(|shown| here(shown)).collect(),
					false => Vec::new(),
				};
				let (file, direction) = (file.display(), if to_server { "to" } else { "from" });
				assert_eq!(got, want, "{name}: the messages {direction} port {port} (capture kept: {file})");
			}
		}
		if *name == "auto, by the heuristic" {
			check_segments(&decoded, raw_port);
		}
	}
	check_malformed_junk(&file, junk_port, &list(&all_servers));
	check_info_against_tap(&file, tap_port, &tap_lines);
	let _ = std::fs::remove_file(&file);
}

/// The `-o` options of a run.
fn prefs(order: &str, ports: &str) -> Vec<String> {
	vec![format!("peerwire.byte_order:{order}"), format!("peerwire.tcp_ports:{ports}")]
}

/// A request with updates both ways and a response, an error response, and stream messages with
/// text, binary and long bodies both ways: connect to `address`, accept on `listener` (directly
/// or through the tap), and return what the dissector should show, in order.
async fn exchange(listener: &mut TcpListener, address: SocketAddr, config: &Config, order: &'static str) -> Vec<Shown> {
	let (client, server) = tokio::join!(TcpPeer::connect(address, config), listener.accept());
	let (mut client, _) = client.unwrap();
	let (mut server, _) = server.unwrap();
	let mut shown = Vec::new();
	let mut expect = |to_server, message_type: MessageType, request_id, service_id, body: &[u8], preview| {
		let body_len = u32::try_from(body.len()).unwrap();
		let truncated = matches!(&preview, Preview::Text(text) if text.len() < body.len())
			|| matches!(&preview, Preview::Hex(hex) if hex.len() / 2 < body.len());
		let (message_type, byte_order) = (message_type.to_u32(), order);
		shown.push(Shown { to_server, message_type, request_id, service_id, body_len, preview, truncated, byte_order });
	};
	let text = |text: &str| Preview::Text(text.to_string());

	let mut sent = client.send_request(5, "request body").await.unwrap();
	let id = sent.request_id();
	let (mut received, _) = within(server.recv_message()).await.unwrap().into_request().unwrap();
	expect(true, MessageType::Request, id, 5, b"request body", text("request body"));
	sent.send_update(11, "from requester").await.unwrap();
	within(received.recv_update()).await.unwrap().unwrap();
	expect(true, MessageType::RequesterUpdate, id, 11, b"from requester", text("from requester"));
	received.send_update(12, "from responder").await.unwrap();
	within(sent.recv_update()).await.unwrap().unwrap();
	expect(false, MessageType::ResponderUpdate, id, 12, b"from responder", text("from responder"));
	received.send_response(3, "response body").await.unwrap();
	within(sent.recv_response()).await.unwrap();
	expect(false, MessageType::Response, id, 3, b"response body", text("response body"));

	let mut sent = client.send_request(6, "").await.unwrap();
	let id = sent.request_id();
	let (received, _) = within(server.recv_message()).await.unwrap().into_request().unwrap();
	expect(true, MessageType::Request, id, 6, b"", Preview::Empty);
	received.send_error_response("it broke").await.unwrap();
	assert!(within(sent.recv_response()).await.unwrap().is_error_response());
	expect(false, MessageType::Response, id, -1, b"it broke", text("it broke"));

	// Text the tap quotes with escapes; binary, shown in hex; longer than the 64-byte preview,
	// in text (cut inside a two-byte character, which the preview drops) and in hex.
	let quoted = "say \"hi\"\n\tbye";
	let long_text = format!("a{}", "ü".repeat(40));
	let binary = Bytes::from_static(&[0, 1, 2, 0xff]);
	let long_binary = vec![0xfe; 70];
	client.send_stream(9, quoted).await.unwrap();
	expect(true, MessageType::Stream, 0, 9, quoted.as_bytes(), text(quoted));
	server.send_stream(7, binary.clone()).await.unwrap();
	expect(false, MessageType::Stream, 0, 7, &binary, Preview::Hex("000102ff".into()));
	client.send_stream(8, long_text.clone()).await.unwrap();
	expect(true, MessageType::Stream, 0, 8, long_text.as_bytes(), Preview::Text(format!("a{}", "ü".repeat(31))));
	server.send_stream(13, long_binary.clone()).await.unwrap();
	expect(false, MessageType::Stream, 0, 13, &long_binary, Preview::Hex("fe".repeat(64)));

	for (receiver, service_ids) in [(&mut server, [9, 8]), (&mut client, [7, 13])] {
		for service_id in service_ids {
			let message = within(receiver.recv_message()).await.unwrap().into_stream().unwrap();
			assert_eq!(message.header.service_id, service_id);
		}
	}
	client.close();
	server.close();
	shown
}

/// Frames written by hand on a raw socket with Nagle off, so that each write is a segment: a
/// stream message split inside its header (3 bytes first, too few even for the length), a
/// request split inside its body, then three messages in one write. The server (peerwire)
/// must receive them all, and its response comes back.
async fn raw_writes(listener: &mut TcpListener) -> Vec<Shown> {
	let address = listener.local_addr().unwrap();
	let (stream, accepted) = tokio::join!(tokio::net::TcpStream::connect(address), listener.accept());
	let mut stream = stream.unwrap();
	stream.set_nodelay(true).unwrap();
	let (mut server, _) = accepted.unwrap();

	let split_header = stream_frame(4, 0, 20, b"split in the header");
	let split_body = stream_frame(0, 40, 21, b"split in the body");
	let mut batch = stream_frame(2, 40, 22, b"batched 1");
	batch.extend(stream_frame(4, 0, 23, b"batched 2"));
	batch.extend(stream_frame(4, 0, 24, &[0, 1, 2, 0xff, 0xfe]));
	let pause = Duration::from_millis(100);
	stream.write_all(&split_header[..3]).await.unwrap();
	tokio::time::sleep(pause).await;
	let mut second = split_header[3..].to_vec();
	second.extend_from_slice(&split_body[..20]);
	stream.write_all(&second).await.unwrap();
	tokio::time::sleep(pause).await;
	stream.write_all(&split_body[20..]).await.unwrap();
	tokio::time::sleep(pause).await;
	stream.write_all(&batch).await.unwrap();

	let message = within(server.recv_message()).await.unwrap().into_stream().unwrap();
	assert_eq!(&message.body[..], b"split in the header");
	let (mut request, body) = within(server.recv_message()).await.unwrap().into_request().unwrap();
	assert_eq!((request.request_id(), &body[..]), (40, &b"split in the body"[..]));
	assert_eq!(&within(request.recv_update()).await.unwrap().unwrap().body[..], b"batched 1");
	for service_id in [23, 24] {
		let message = within(server.recv_message()).await.unwrap().into_stream().unwrap();
		assert_eq!(message.header.service_id, service_id);
	}
	request.send_response(0, "done").await.unwrap();
	let mut response = [0; 20];
	within(stream.read_exact(&mut response)).await.unwrap();
	assert_eq!(response.to_vec(), stream_frame(1, 40, 0, b"done"));

	let shown = |to_server, message_type, request_id, service_id, preview: &str, body_len| Shown {
		to_server,
		message_type,
		request_id,
		service_id,
		body_len,
		preview: Preview::Text(preview.to_string()),
		truncated: false,
		byte_order: "little",
	};
	vec![
		shown(true, 4, 0, 20, "split in the header", 19),
		shown(true, 0, 40, 21, "split in the body", 17),
		shown(true, 2, 40, 22, "batched 1", 9),
		shown(true, 4, 0, 23, "batched 2", 9),
		Shown { preview: Preview::Hex("000102fffe".into()), ..shown(true, 4, 0, 24, "", 5) },
		shown(false, 1, 40, 0, "done", 4),
	]
}

/// Data that is not peerwire, on two connections: HTTP, and a plausible length followed by an
/// unknown message type.
fn junk(listener: &std::net::TcpListener) {
	let address = listener.local_addr().unwrap();
	let not_a_type = [20, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
	for data in [&b"GET / HTTP/1.1\r\nHost: peerwire\r\n\r\n"[..], &not_a_type] {
		let mut client = std::net::TcpStream::connect(address).unwrap();
		let (mut server, _) = listener.accept().unwrap();
		client.write_all(data).unwrap();
		let mut seen = vec![0; data.len()];
		server.read_exact(&mut seen).unwrap();
	}
}

/// The split messages were reassembled from two segments each, and the batch was one segment
/// decoded into three messages.
fn check_segments(decoded: &[Decoded], raw_port: u16) {
	let raw: Vec<&Decoded> = decoded.iter().filter(|message| message.server_port == raw_port).collect();
	assert_eq!(raw[0].reassembled_from, [2], "split in the header: {:?}", raw[0]);
	assert_eq!(raw[1].reassembled_from, [2], "split in the body: {:?}", raw[1]);
	assert_ne!(raw[0].frame, raw[1].frame);
	for batched in &raw[2..5] {
		assert_eq!(batched.frame, raw[2].frame, "one segment, three messages: {batched:?}");
		assert_eq!(batched.reassembled_from, Vec::<u64>::new());
	}
}

/// With the junk's port configured, the dissector reports its data as malformed (and names no
/// message in it).
fn check_malformed_junk(file: &Path, junk_port: u16, ports: &str) {
	let mut args = vec!["-Y".to_string(), format!("tcp.port == {junk_port} && peerwire.malformed")];
	args.extend(["-T", "fields", "-e", "_ws.col.Info"].map(String::from));
	let lines = tshark(file, &prefs("auto", ports), &args);
	let lines: Vec<&str> = lines.lines().collect();
	assert_eq!(
		lines,
		[
			// "GET " read as a little-endian length.
			"malformed frame: body of 542393659 bytes is over the limit of 16777216 (preference peerwire.max_body)",
			"malformed frame: unknown message type 9",
		]
	);
}

/// The Info column of the connection through the tap, message by message, reads as the tap's
/// lines without their `conn=1 client->server ` prefix.
fn check_info_against_tap(file: &Path, tap_port: u16, tap_lines: &[String]) {
	let filter = format!("tcp.port == {tap_port} && peerwire");
	let args = ["-Y", &filter, "-T", "fields", "-e", "tcp.dstport", "-e", "_ws.col.Info"].map(String::from);
	let output = tshark(file, &prefs("auto", ""), &args);
	for (to_server, prefix) in [(true, "conn=1 client->server "), (false, "conn=1 server->client ")] {
		let from_tap: Vec<&str> = tap_lines.iter().filter_map(|line| line.strip_prefix(prefix)).collect();
		let from_tshark: Vec<&str> = output
			.lines()
			.filter_map(|line| line.split_once('\t'))
			.filter(|(port, _)| (port.parse::<u16>().unwrap() == tap_port) == to_server)
			.flat_map(|(_, info)| info.split("; "))
			.collect();
		assert!(!from_tap.is_empty(), "the tap printed messages: {tap_lines:#?}");
		assert_eq!(from_tshark, from_tap, "Info column against `peerwire tap` ({prefix})");
	}
}

/// Decode `file` with the script and `prefs`, as JSON, into the messages on the connections of
/// `servers`.
fn tshark_json(file: &Path, prefs: &[String], servers: &[u16]) -> Vec<Decoded> {
	let args = ["-Y", "peerwire", "-T", "json", "--no-duplicate-keys", "-j", "frame tcp tcp.segments peerwire"];
	let output = tshark(file, prefs, &args.map(String::from));
	let packets: Value = serde_json::from_str(&output).unwrap_or_else(|error| panic!("tshark JSON: {error}"));
	let mut decoded = Vec::new();
	for packet in packets.as_array().unwrap() {
		let layers = &packet["_source"]["layers"];
		let string = |value: &Value| value.as_str().unwrap_or_else(|| panic!("not a string: {value}")).to_string();
		let frame: u64 = string(&layers["frame"]["frame.number"]).parse().unwrap();
		let source: u16 = string(&layers["tcp"]["tcp.srcport"]).parse().unwrap();
		let destination: u16 = string(&layers["tcp"]["tcp.dstport"]).parse().unwrap();
		let (server_port, to_server) = if servers.contains(&destination) {
			(destination, true)
		} else {
			assert!(servers.contains(&source), "frame {frame} is on no server port");
			(source, false)
		};
		let reassembled_from = one_or_many(&layers["tcp.segments"])
			.iter()
			.map(|segments| string(&segments["tcp.segment.count"]).parse().unwrap())
			.collect();
		for message in one_or_many(&layers["peerwire"]) {
			// A malformed frame has no header fields: it decodes to nothing here.
			if message.get("peerwire.type").is_none() {
				continue;
			}
			let field = |name: &str| string(&message[format!("peerwire.{name}")]);
			let preview = match (message.get("peerwire.body"), message.get("peerwire.body_hex")) {
				(None, None) => Preview::Empty,
				(Some(text), None) => Preview::Text(string(text)),
				(None, Some(hex)) => Preview::Hex(string(hex)),
				(Some(_), Some(_)) => panic!("both a text and a hex preview: {message}"),
			};
			let byte_order = match field("byte_order").as_str() {
				"little" => "little",
				"big" => "big",
				other => panic!("byte order {other}"),
			};
			let shown = Shown {
				to_server,
				message_type: field("type").parse().unwrap(),
				request_id: field("request_id").parse().unwrap(),
				service_id: field("service_id").parse().unwrap(),
				body_len: field("body_length").parse().unwrap(),
				preview,
				truncated: message.get("peerwire.truncated").is_some_and(|value| value == "1"),
				byte_order,
			};
			// The length prefix counts the header and the body.
			assert_eq!(field("length").parse::<u32>().unwrap(), 12 + shown.body_len);
			decoded.push(Decoded { server_port, frame, reassembled_from: Vec::clone(&reassembled_from), shown });
		}
	}
	decoded
}

/// A JSON value that tshark gives as an object when alone and as an array when repeated.
fn one_or_many(value: &Value) -> Vec<Value> {
	match value {
		Value::Null => Vec::new(),
		Value::Array(values) => values.clone(),
		other => vec![other.clone()],
	}
}

/// Run tshark on `file` with the script, `prefs` as `-o` options and `args`; its standard output.
fn tshark(file: &Path, prefs: &[String], args: &[String]) -> String {
	let mut command = Command::new("tshark");
	command.arg("-n").arg("-r").arg(file).arg("-X").arg(format!("lua_script:{SCRIPT}"));
	for pref in prefs {
		command.arg("-o").arg(pref);
	}
	let output = command.args(args).stdin(Stdio::null()).output().expect("tshark runs");
	let stderr = String::from_utf8_lossy(&output.stderr);
	assert!(output.status.success(), "tshark {args:?} failed: {stderr}");
	// A Lua error does not fail tshark: it only prints it.
	assert!(!stderr.contains("Lua"), "tshark {args:?}: {stderr}");
	String::from_utf8(output.stdout).unwrap()
}

/// Why the test cannot run here, if it cannot.
fn tools_missing() -> Option<String> {
	for tool in ["tshark", "dumpcap"] {
		match Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status() {
			Ok(status) if status.success() => {},
			Ok(status) => return Some(format!("`{tool} --version` failed ({status})")),
			Err(_) => return Some(format!("{tool} not installed")),
		}
	}
	None
}

/// Say why the test is skipped, or fail with it if `PEERWIRE_REQUIRE_TSHARK=1`.
fn skip(reason: &str) {
	if std::env::var("PEERWIRE_REQUIRE_TSHARK").is_ok_and(|value| value == "1") {
		panic!("PEERWIRE_REQUIRE_TSHARK=1, but {reason}");
	}
	// Straight to standard error: the test harness captures `eprintln!` of passing tests, and
	// this line should be seen.
	let _ = writeln!(std::io::stderr(), "tshark_decodes_a_capture_of_both_byte_orders: skipped: {reason}");
}

async fn within<F: Future>(future: F) -> F::Output {
	tokio::time::timeout(WAIT, future).await.expect("timed out")
}

/// A running dumpcap, writing the capture to a pipe that the test reads, so that the test can
/// see when a packet has been captured (dumpcap flushes a pipe after every packet). dumpcap says
/// "Capturing on" before it has opened the interface, so that line is not enough.
struct Capture {
	child: Child,
	data: Arc<Mutex<Vec<u8>>>,
	reader: Option<JoinHandle<()>>,
	/// Probe datagrams go from `probe` to itself, on a port in the capture filter.
	probe: UdpSocket,
}

impl Capture {
	/// Capture TCP on `ports`, and return once the capture is running.
	fn start(ports: &[u16]) -> Result<Self, String> {
		let probe = UdpSocket::bind("127.0.0.1:0").map_err(|error| error.to_string())?;
		let probe_port = probe.local_addr().unwrap().port();
		let mut filter: Vec<String> = ports.iter().map(|port| format!("tcp port {port}")).collect();
		filter.push(format!("udp port {probe_port}"));
		let mut child = Command::new("dumpcap")
			.args(["-q", "-i", "lo", "-f", &filter.join(" or "), "-w", "-"])
			.stdin(Stdio::null())
			.stdout(Stdio::piped())
			.stderr(Stdio::piped())
			.spawn()
			.map_err(|error| format!("dumpcap does not start: {error}"))?;
		let mut stdout = child.stdout.take().unwrap();
		let data = Arc::new(Mutex::new(Vec::new()));
		let sink = data.clone();
		let reader = thread::spawn(move || {
			let mut buffer = [0; 64 * 1024];
			while let Ok(read) = stdout.read(&mut buffer) {
				if read == 0 {
					break;
				}
				sink.lock().unwrap().extend_from_slice(&buffer[..read]);
			}
		});
		let mut capture = Self { child, data, reader: Some(reader), probe };
		capture.try_sync(b"start of the capture")?;
		Ok(capture)
	}

	/// Send `marker` to the probe port until it shows up in the capture.
	fn try_sync(&mut self, marker: &[u8]) -> Result<(), String> {
		let marker = [marker, format!(" {}", std::process::id()).as_bytes()].concat();
		let target = self.probe.local_addr().unwrap();
		let start = Instant::now();
		while start.elapsed() < WAIT {
			self.probe.send_to(&marker, target).map_err(|error| error.to_string())?;
			thread::sleep(Duration::from_millis(50));
			if self.data.lock().unwrap().windows(marker.len()).any(|window| window == marker) {
				return Ok(());
			}
			if let Ok(Some(status)) = self.child.try_wait() {
				let mut stderr = String::new();
				let _ = self.child.stderr.take().unwrap().read_to_string(&mut stderr);
				return Err(format!("dumpcap exited ({status}): {}", stderr.trim()));
			}
		}
		Err(format!("no packet captured within {WAIT:?}"))
	}

	fn sync(&mut self, marker: &[u8]) {
		if let Err(error) = self.try_sync(marker) {
			panic!("the capture stopped working: {error}");
		}
	}

	/// Stop dumpcap as Ctrl-C does, so that the capture ends cleanly, and write it to `file`.
	fn stop(mut self, file: &Path) {
		let pid = rustix::process::Pid::from_child(&self.child);
		rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
		let status = self.child.wait().unwrap();
		assert!(status.success(), "dumpcap after SIGINT: {status}");
		self.reader.take().unwrap().join().unwrap();
		std::fs::write(file, &*self.data.lock().unwrap()).unwrap();
	}
}

impl Drop for Capture {
	fn drop(&mut self) {
		if self.reader.is_some() {
			let _ = self.child.kill();
			let _ = self.child.wait();
		}
	}
}

/// `peerwire tap` in front of a server, printing its lines for people.
struct Tap {
	process: Background,
	port: u16,
}

impl Tap {
	fn start(upstream_port: u16) -> Self {
		let upstream = format!("tcp://127.0.0.1:{upstream_port}");
		let process = Background::spawn(&["tap", "tcp://127.0.0.1:0", &upstream]);
		let first = process.line();
		// listening address=tcp://127.0.0.1:PORT upstream=...
		let port = first
			.split(' ')
			.find_map(|word| word.strip_prefix("address=tcp://127.0.0.1:"))
			.and_then(|port| port.parse().ok())
			.unwrap_or_else(|| panic!("the tap's first line: {first}"));
		Self { process, port }
	}

	/// Stop the tap and return what it printed after its first line.
	fn stop(self) -> Vec<String> {
		self.process.stop()
	}
}
