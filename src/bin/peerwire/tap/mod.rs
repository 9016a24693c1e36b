//! `peerwire tap`: a transparent proxy that prints the messages passing through it.
//!
//! What passes is forwarded exactly as received, never re-encoded, so the tap changes nothing
//! for the peers whatever byte order they speak: bytes as read on byte streams ([`stream`]),
//! datagrams with their descriptors on seqpacket sockets ([`datagram`]). A copy of what passes
//! is decoded for display, keeping only a preview of each body: the tap's memory does not grow
//! with body sizes on byte streams.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use peerwire::__plumbing::{SocketFile, raise_send_buffer, remove_stale_socket};
use peerwire::codec::Endian;
use peerwire::message::HEADER_LEN;
use peerwire::{AcceptError, AcceptRetry};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_seqpacket::UnixSeqpacket;

use crate::address::Address;
use crate::failure::{Failure, describe_io};
use crate::listen::shutdown_token;
use crate::output::{Direction, Printer};
use crate::stats::{self, TapCounts, TapPair};
use crate::{Global, TapArgs};

mod datagram;
mod stream;

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Settings every relayed connection shares.
#[derive(Debug)]
struct Tap {
	upstream: Address,
	endian: Endian,
	max_body_len: usize,
	preview: usize,
	printer: Printer,
	quiet: bool,
	/// Whether --stats was given: then each connection's counts are printed as it closes.
	stats: bool,
	board: Mutex<Board>,
}

/// What the tap counted: its open connections and the sum of those closed.
#[derive(Debug, Default)]
struct Board {
	/// The open connections by number, with the name of their client.
	open: BTreeMap<u64, (String, Arc<Relayed>)>,
	/// Every connection closed so far, summed.
	closed: TapPair,
	/// Connections relayed so far.
	connections: u64,
}

/// The counts of one relayed connection, each direction updated by its pump.
#[derive(Debug)]
struct Relayed {
	conn: u64,
	client_to_server: Mutex<TapCounts>,
	server_to_client: Mutex<TapCounts>,
}

impl Relayed {
	/// The counts of one direction, to update.
	fn direction(&self, direction: Direction) -> MutexGuard<'_, TapCounts> {
		let counts = match direction {
			Direction::ClientToServer => &self.client_to_server,
			Direction::ServerToClient => &self.server_to_client,
		};
		counts.lock().unwrap_or_else(PoisonError::into_inner)
	}

	fn snapshot(&self) -> TapPair {
		TapPair {
			client_to_server: *self.direction(Direction::ClientToServer),
			server_to_client: *self.direction(Direction::ServerToClient),
		}
	}
}

/// A connection's place on the [`Board`]: on drop, its counts move to the closed sum.
struct Registered<'a> {
	tap: &'a Tap,
	conn: u64,
	relayed: Arc<Relayed>,
}

impl Drop for Registered<'_> {
	fn drop(&mut self) {
		let mut board = self.tap.board();
		board.open.remove(&self.conn);
		board.closed = board.closed.plus(&self.relayed.snapshot());
	}
}

impl Tap {
	fn board(&self) -> MutexGuard<'_, Board> {
		self.board.lock().unwrap_or_else(PoisonError::into_inner)
	}

	/// Count a connection and give it a place on the board until the returned guard drops.
	fn register(&self, conn: u64, client: &str) -> Registered<'_> {
		let relayed =
			Arc::new(Relayed { conn, client_to_server: Mutex::default(), server_to_client: Mutex::default() });
		let mut board = self.board();
		board.connections += 1;
		board.open.insert(conn, (client.to_string(), relayed.clone()));
		Registered { tap: self, conn, relayed }
	}

	/// Print the counts of every open connection and the total so far.
	fn print_stats(&self) {
		let (connections, open, closed) = {
			let board = self.board();
			let open: Vec<_> = board
				.open
				.iter()
				.map(|(conn, (client, relayed))| (*conn, client.clone(), relayed.snapshot()))
				.collect();
			(board.connections, open, board.closed)
		};
		let total = open.iter().fold(closed, |total, (_, _, counts)| total.plus(counts));
		stats::print_tap_total(&self.printer, connections, open.len(), &total);
		for (conn, client, counts) in &open {
			stats::print_tapped(&self.printer, *conn, client, counts, false);
		}
	}

	/// Report a frame or datagram that cannot be decoded (it is forwarded all the same).
	fn malformed(&self, relayed: &Relayed, conn: u64, direction: Direction, place: Place, error: &str) {
		relayed.direction(direction).malformed += 1;
		let (what, key, value) = match place {
			Place::Offset(offset) => (format!("malformed frame at byte offset {offset}"), "offset", offset),
			Place::Datagram(index) => (format!("malformed datagram #{index}"), "datagram", index),
		};
		self.printer.either(
			|| format!("conn={conn} {} {what}: {error}", direction.human()),
			|| {
				vec![
					("event", json!("malformed")),
					("conn", json!(conn)),
					("direction", json!(direction.json())),
					(key, json!(value)),
					("error", json!(error)),
				]
			},
		);
	}
}

/// Where something malformed was found.
#[derive(Debug, Clone, Copy)]
enum Place {
	/// The byte offset of a frame in its direction of a byte stream.
	Offset(u64),
	/// The index of a datagram in its direction, from 0.
	Datagram(u64),
}

enum RawListener {
	Tcp(tokio::net::TcpListener),
	Unix(tokio::net::UnixListener),
	Seqpacket(tokio_seqpacket::UnixSeqpacketListener),
}

/// An accepted client connection and how to name it.
enum Client {
	Stream(Reader, Writer, String),
	Seqpacket(UnixSeqpacket, String),
}

impl RawListener {
	/// Accept one connection. Failures of that connection alone (reset before it was accepted,
	/// say) are [`AcceptError::Connection`], which [`AcceptRetry`] skips.
	fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Result<Client, AcceptError>> {
		match self {
			Self::Tcp(listener) => {
				let (stream, address) = ready!(listener.poll_accept(cx)).map_err(AcceptError::from_accept)?;
				stream.set_nodelay(true).map_err(AcceptError::Connection)?;
				let (read, write) = stream.into_split();
				Poll::Ready(Ok(Client::Stream(Box::new(read), Box::new(write), format!("tcp://{address}"))))
			},
			Self::Unix(listener) => {
				let (stream, _) = ready!(listener.poll_accept(cx)).map_err(AcceptError::from_accept)?;
				let name = process_name(stream.peer_cred().ok().and_then(|cred| cred.pid()));
				let (read, write) = stream.into_split();
				Poll::Ready(Ok(Client::Stream(Box::new(read), Box::new(write), name)))
			},
			Self::Seqpacket(listener) => {
				let socket = ready!(listener.poll_accept(cx)).map_err(AcceptError::from_accept)?;
				let name = process_name(socket.peer_cred().ok().and_then(|cred| cred.pid()));
				Poll::Ready(Ok(Client::Seqpacket(socket, name)))
			},
		}
	}
}

fn process_name(pid: Option<i32>) -> String {
	match pid {
		Some(pid) => format!("process {pid}"),
		None => "a local process".to_string(),
	}
}

pub async fn run(args: TapArgs, global: &Global) -> Result<(), Failure> {
	if matches!(args.listen, Address::Tls(_)) || matches!(args.upstream, Address::Tls(_)) {
		return Err(Failure::usage(
			"the tap does not speak TLS: it would have to decrypt, which defeats the point; tap the plain side of a TLS proxy instead",
		));
	}
	let datagrams = matches!(args.listen, Address::Seqpacket(_));
	if datagrams != matches!(args.upstream, Address::Seqpacket(_)) {
		return Err(Failure::usage(format!(
			"cannot tap between {} and {}: message boundaries and descriptors of seqpacket sockets do not survive a byte stream",
			args.listen, args.upstream
		)));
	}
	let cannot = |error: io::Error| Failure::io(&format!("cannot listen on {}", args.listen), &error);
	let (listener, listening, socket_file) = match &args.listen {
		Address::Tcp(host_port) => {
			let listener = tokio::net::TcpListener::bind(host_port.as_str()).await.map_err(cannot)?;
			let local = listener.local_addr().map_err(cannot)?;
			(RawListener::Tcp(listener), format!("tcp://{local}"), None)
		},
		Address::Unix(path) => {
			remove_stale_socket(path).await.map_err(cannot)?;
			let listener = tokio::net::UnixListener::bind(path).map_err(cannot)?;
			(RawListener::Unix(listener), args.listen.to_string(), SocketFile::bound(path))
		},
		Address::Tls(_) => unreachable!("refused above"),
		Address::Seqpacket(path) => {
			remove_stale_socket(path).await.map_err(cannot)?;
			let listener = tokio_seqpacket::UnixSeqpacketListener::bind(path).map_err(cannot)?;
			(RawListener::Seqpacket(listener), args.listen.to_string(), SocketFile::bound(path))
		},
	};
	let mut listener = listener;
	let printer = Printer::new(global.json, Some(args.preview));
	let tap = Arc::new(Tap {
		upstream: args.upstream.clone(),
		endian: global.config().endian,
		max_body_len: global.max_body,
		preview: args.preview,
		printer,
		quiet: global.quiet,
		stats: args.stats.is_some(),
		board: Mutex::default(),
	});
	let fields = [("address", json!(listening)), ("upstream", json!(args.upstream.to_string()))];
	printer.event("listening", None, &fields);

	if let Some(period) = args.stats {
		tokio::spawn(print_stats(tap.clone(), period));
	}
	let shutdown = shutdown_token();
	let mut connections = 0u64;
	// The library's accept loop: skip failed connections, wait out running out of descriptors.
	let mut retry = AcceptRetry::new();
	while let Some(accepted) = retry.accept_until(&shutdown, |cx| listener.poll_accept(cx)).await {
		match accepted {
			Ok(client) => {
				connections += 1;
				tokio::spawn(relay(tap.clone(), connections, client));
			},
			// The listening socket failed in a way waiting does not cure; `retry` waits before the
			// next try, so this is printed at most once a second.
			Err(error) => eprintln!("peerwire: accepting a connection on {listening}: {}", describe_io(&error)),
		}
	}
	// The socket file goes before the socket closes, and only if it is still this tap's own.
	drop(socket_file);
	drop(listener);
	Ok(())
}

/// Print the tap's counts every `period`.
async fn print_stats(tap: Arc<Tap>, period: Duration) {
	let mut ticker = stats::ticker(Some(period));
	loop {
		stats::tick(&mut ticker).await;
		tap.print_stats();
	}
}

/// Connect one client to the upstream and forward both ways until both directions end.
async fn relay(tap: Arc<Tap>, conn: u64, client: Client) {
	let name = match &client {
		Client::Stream(_, _, name) | Client::Seqpacket(_, name) => name.clone(),
	};
	let fields = [("client", json!(name)), ("upstream", json!(tap.upstream.to_string()))];
	tap.printer.event("connected", Some(conn), &fields);
	let registered = tap.register(conn, &name);
	let relayed = &*registered.relayed;
	let upstream_failed = |error: io::Error| {
		let text =
			format!("cannot connect to {}: {}; closing the client's connection", tap.upstream, describe_io(&error));
		tap.printer.event("upstream_error", Some(conn), &[("error", json!(text))]);
	};

	let error = match client {
		Client::Stream(client_read, client_write, _) => {
			let (upstream_read, upstream_write) = match stream::connect(&tap.upstream).await {
				Ok(halves) => halves,
				Err(error) => return upstream_failed(error),
			};
			let c2s = stream::pump(&tap, conn, Direction::ClientToServer, client_read, upstream_write, relayed);
			let s2c = stream::pump(&tap, conn, Direction::ServerToClient, upstream_read, client_write, relayed);
			both(c2s, s2c).await
		},
		Client::Seqpacket(client, _) => {
			let Address::Seqpacket(path) = &tap.upstream else {
				unreachable!("checked before listening: both ends are seqpacket sockets");
			};
			let upstream = match UnixSeqpacket::connect(path).await {
				Ok(upstream) => upstream,
				Err(error) => return upstream_failed(error),
			};
			// The peers raised their buffers for the datagrams they send; the tap sends them too.
			// Best effort: a datagram over what the system allows ends the connection with
			// "message too large".
			for socket in [&client, &upstream] {
				let _ = raise_send_buffer(socket, HEADER_LEN.saturating_add(tap.max_body_len));
			}
			let c2s = datagram::pump(&tap, conn, Direction::ClientToServer, &client, &upstream, relayed);
			let s2c = datagram::pump(&tap, conn, Direction::ServerToClient, &upstream, &client, relayed);
			both(c2s, s2c).await
		},
	};
	let counts = relayed.snapshot();
	if tap.stats {
		stats::print_tapped(&tap.printer, conn, &name, &counts, true);
	}
	let fields = [
		("client_to_server_bytes", json!(counts.client_to_server.forwarded_bytes)),
		("server_to_client_bytes", json!(counts.server_to_client.forwarded_bytes)),
		("error", json!(error)),
	];
	tap.printer.event("closed", Some(conn), &fields);
}

/// Run both directions: each passes its end of stream on and stops; an error stops both.
async fn both(
	c2s: impl Future<Output = Result<(), String>>,
	s2c: impl Future<Output = Result<(), String>>,
) -> Option<String> {
	tokio::pin!(c2s, s2c);
	let (mut c2s_done, mut s2c_done) = (false, false);
	while !(c2s_done && s2c_done) {
		let result = tokio::select! {
			result = &mut c2s, if !c2s_done => { c2s_done = true; result },
			result = &mut s2c, if !s2c_done => { s2c_done = true; result },
		};
		if let Err(error) = result {
			return Some(error);
		}
	}
	None
}
