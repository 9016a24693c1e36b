//! `peerwire listen`: accept connections, print every message received, answer requests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use peerwire::CancellationToken;
use peerwire::transport::SocketPermissions;
use peerwire::{
	Acceptor, ConnectionInfo, ConnectionStats, Listener, Message, MessageHeader, MessageType, PeerHandle,
	ReceivedMessage, TcpListener, TlsIdentity, TlsListener, TlsRoots, TlsServerConfig, Transport,
	UnixSeqpacketListener, UnixStreamListener, admission,
};
use serde_json::json;

use crate::address::Address;
use crate::connect::CliBody;
use crate::failure::{Failure, describe};
use crate::output::{MessageView, Printer};
use crate::stats;
use crate::{Global, ListenArgs};

/// How requests are answered.
#[derive(Debug)]
struct Answers {
	echo: bool,
	canned: HashMap<i32, Bytes>,
}

impl Answers {
	fn load(args: &ListenArgs) -> Result<Self, Failure> {
		let mut canned = HashMap::new();
		for respond in &args.responds {
			let body = crate::body::BodySource::File(respond.file.clone()).load()?;
			canned.insert(respond.service_id, body);
		}
		Ok(Self { echo: args.echo, canned })
	}
}

pub async fn run(args: ListenArgs, global: &Global) -> Result<(), Failure> {
	let config = global.config().with_frame_timeout(args.frame_timeout).with_idle_timeout(args.idle_timeout);
	let limit = args.max_connections;
	let period = args.stats;
	let printer = Printer::new(global.json, Some(args.preview));
	let answers = Arc::new(Answers::load(&args)?);
	let cannot = |error: peerwire::Error| {
		Failure::peer(&error, format!("cannot listen on {}: {}", args.address, describe(&error)))
	};
	let permissions = permissions(&args)?;
	let check = admission_check(&args, printer)?;
	let unix_only = |option: &str| Failure::usage(format!("{option} is for unix:// and seqpacket:// addresses only"));
	let tls_only = |option: &str| Failure::usage(format!("{option} is for tls:// addresses only"));
	if !matches!(args.address, Address::Tls(_)) && (global.tls.ca.is_some() || global.tls.cert.is_some()) {
		return Err(tls_only(if global.tls.ca.is_some() { "--ca" } else { "--cert" }));
	}
	match &args.address {
		Address::Tcp(host_port) => {
			if permissions.is_some() {
				return Err(unix_only("--mode"));
			}
			let mut listener = TcpListener::bind(host_port.as_str(), &config).await.map_err(cannot)?;
			listener.set_max_connections(limit);
			// Port 0 becomes a real port: say which.
			let local = listener.local_addr().map_err(cannot)?;
			serve(listener, &format!("tcp://{local}"), check, answers, printer, period).await
		},
		Address::Tls(host_port) => {
			if permissions.is_some() {
				return Err(unix_only("--mode"));
			}
			let tls = server_tls(global)?;
			let mut listener = TlsListener::bind(host_port.as_str(), tls, &config).await.map_err(cannot)?;
			listener.set_max_connections(limit);
			let local = listener.local_addr().map_err(cannot)?;
			serve(listener, &format!("tls://{local}"), check, answers, printer, period).await
		},
		Address::Unix(path) => {
			let mut listener = match permissions {
				Some(permissions) => UnixStreamListener::bind_with_permissions(path, permissions, &config).await,
				None => UnixStreamListener::bind(path, &config).await,
			}
			.map_err(cannot)?;
			listener.set_max_connections(limit);
			serve(listener, &args.address.to_string(), check, answers, printer, period).await
		},
		Address::Seqpacket(path) => {
			let mut listener = match permissions {
				Some(permissions) => UnixSeqpacketListener::bind_with_permissions(path, permissions, &config).await,
				None => UnixSeqpacketListener::bind(path, &config).await,
			}
			.map_err(cannot)?;
			listener.set_max_connections(limit);
			serve(listener, &args.address.to_string(), check, answers, printer, period).await
		},
	}
}

/// A mode written in octal, as chmod takes it: `660`, `0660`, `0o660`.
pub fn parse_mode(text: &str) -> Result<u32, String> {
	let digits = text.strip_prefix("0o").unwrap_or(text);
	match u32::from_str_radix(digits, 8) {
		Ok(mode) if mode <= 0o777 => Ok(mode),
		_ => Err(format!("{text} is not a file mode: expected octal digits up to 777, like 660")),
	}
}

/// The group of `--group`: a number, or a name looked up in /etc/group.
fn group_id(group: &str) -> Result<u32, Failure> {
	if let Ok(gid) = group.parse() {
		return Ok(gid);
	}
	let groups = std::fs::read_to_string("/etc/group")
		.map_err(|error| Failure::io("cannot read /etc/group to look up --group", &error))?;
	groups
		.lines()
		.filter_map(|line| {
			let mut fields = line.split(':');
			let name = fields.next()?;
			let gid = fields.nth(1)?.parse().ok()?;
			Some((name, gid))
		})
		.find_map(|(name, gid)| (name == group).then_some(gid))
		.ok_or_else(|| Failure::usage(format!("--group {group}: no such group in /etc/group; give its number instead")))
}

fn permissions(args: &ListenArgs) -> Result<Option<SocketPermissions>, Failure> {
	let Some(mode) = args.mode else {
		return Ok(None);
	};
	let permissions = SocketPermissions::mode(mode);
	Ok(Some(match &args.group {
		Some(group) => permissions.with_group(group_id(group)?),
		None => permissions,
	}))
}

/// The server side of TLS from the command line: --cert and --key, and --ca for mutual TLS.
fn server_tls(global: &Global) -> Result<TlsServerConfig, Failure> {
	let bad = |error: peerwire::Error| Failure::usage(describe(&error));
	let (Some(cert), Some(key)) = (&global.tls.cert, &global.tls.key) else {
		return Err(Failure::usage("listening on tls:// needs the server's certificate: --cert FILE --key FILE"));
	};
	let identity = TlsIdentity::from_pem_files(cert, key).map_err(bad)?;
	match &global.tls.ca {
		Some(ca) => TlsServerConfig::mutual(identity, TlsRoots::from_pem_file(ca).map_err(bad)?).map_err(bad),
		None => TlsServerConfig::new(identity).map_err(bad),
	}
}

/// A check over what is known of a client.
type Check = Box<dyn Fn(&ConnectionInfo) -> bool + Send + Sync>;

/// The admission check of the --allow-* options, which prints each refusal; `None` without them.
fn admission_check(args: &ListenArgs, printer: Printer) -> Result<Option<Check>, Failure> {
	let mut checks: Vec<Check> = Vec::new();
	if !args.allow_uids.is_empty() {
		checks.push(Box::new(admission::uids(args.allow_uids.iter().copied())));
	}
	if !args.allow_gids.is_empty() {
		checks.push(Box::new(admission::gids(args.allow_gids.iter().copied())));
	}
	if !args.allow_ips.is_empty() {
		checks.push(Box::new(admission::ip_addresses(args.allow_ips.iter().copied())));
	}
	if !args.allow_names.is_empty() {
		checks.push(Box::new(admission::certificate_names(args.allow_names.iter().cloned())));
	}
	if checks.is_empty() {
		return Ok(None);
	}
	Ok(Some(Box::new(move |info: &ConnectionInfo| {
		let admitted = checks.iter().any(|check| check(info));
		if !admitted {
			printer.event("refused", None, &connection_fields(info));
		}
		admitted
	})))
}

/// What the "connected" and "refused" lines say about a client.
fn connection_fields(info: &ConnectionInfo) -> Vec<(&'static str, serde_json::Value)> {
	let remote = info.remote_address.as_ref().map(ToString::to_string);
	let credentials = info.credentials;
	let mut fields = vec![
		("remote", json!(remote)),
		("uid", json!(credentials.map(|c| c.uid))),
		("gid", json!(credentials.map(|c| c.gid))),
		("pid", json!(credentials.and_then(|c| c.pid))),
	];
	if let Some(certificate) = &info.peer_certificate {
		fields.push(("certificate", json!(certificate.subject)));
	}
	fields
}

/// The counters of each open connection as its task last published them, by connection
/// number, for `--stats`. The connection tasks publish instead of the printer asking their
/// handles: a handle kept here would keep its connection open.
#[derive(Debug, Default)]
struct Board(Mutex<BTreeMap<u64, (String, ConnectionStats)>>);

impl Board {
	fn snapshot(&self) -> BTreeMap<u64, (String, ConnectionStats)> {
		self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
	}
}

/// One connection's entry on the [`Board`], removed when its task ends or is cancelled.
struct Posting {
	board: Arc<Board>,
	conn: u64,
	remote: String,
}

impl Posting {
	fn publish(&self, stats: ConnectionStats) {
		let mut entries = self.board.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
		// The name is copied once; after that, publishing is a lock and a copy of the counters.
		match entries.get_mut(&self.conn) {
			Some(entry) => entry.1 = stats,
			None => {
				entries.insert(self.conn, (self.remote.clone(), stats));
			},
		}
	}
}

impl Drop for Posting {
	fn drop(&mut self) {
		self.board.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.conn);
	}
}

/// Print the listener's counters and those of every open connection every `period`.
async fn print_stats(printer: Printer, listener: peerwire::ListenerStatsHandle, board: Arc<Board>, period: Duration) {
	let mut ticker = stats::ticker(Some(period));
	loop {
		stats::tick(&mut ticker).await;
		stats::print_listener(&printer, &listener.get());
		for (conn, (remote, counts)) in board.snapshot() {
			stats::print_connection(&printer, conn, &remote, &counts, false);
		}
	}
}

/// Accept until interrupted. The listener removes its socket file when it is dropped.
async fn serve<A>(
	mut listener: Listener<A>,
	address: &str,
	check: Option<Check>,
	answers: Arc<Answers>,
	printer: Printer,
	period: Option<Duration>,
) -> Result<(), Failure>
where
	A: Acceptor,
	<A::Transport as Transport>::Body: CliBody,
{
	if let Some(check) = check {
		listener.set_admission(check);
	}
	printer.event("listening", None, &[("address", json!(address))]);
	let board = period.map(|period| {
		let board = Arc::new(Board::default());
		tokio::spawn(print_stats(printer, listener.stats_handle(), board.clone(), period));
		board
	});
	let shutdown = shutdown_token();
	let mut connections = 0u64;
	let token = shutdown.clone();
	// The library's accept loop: failed connections skipped, the listener's own failures waited out.
	peerwire::server::serve_with(listener, shutdown, |peer, info| {
		connections += 1;
		let conn = connections;
		printer.event("connected", Some(conn), &connection_fields(&info));
		let (token, answers) = (token.clone(), answers.clone());
		let posting = board.as_ref().map(|board| Posting { board: board.clone(), conn, remote: info.to_string() });
		async move {
			// Interrupted: the connection closes as the process exits.
			tokio::select! {
				() = connection(conn, peer, answers, printer, posting, period) => {},
				() = token.cancelled() => {},
			}
		}
	})
	.await;
	Ok(())
}

/// Print what one connection sends and answer its requests, until it closes. With `--stats`,
/// publish the connection's counters on `posting` after each message and every `period` (so
/// that what was sent since shows), and print them a last time before the "closed" line.
async fn connection<B: CliBody>(
	conn: u64,
	mut peer: PeerHandle<B>,
	answers: Arc<Answers>,
	printer: Printer,
	posting: Option<Posting>,
	period: Option<Duration>,
) {
	let print = |message: &Message<B>| print_message(&printer, conn, message.header, &message.body);
	let mut ticker = stats::ticker(period);
	let publish = |peer: &PeerHandle<B>| {
		if let Some(posting) = &posting {
			posting.publish(peer.stats());
		}
	};
	// On the board from the start, so that a connection shows before its first message.
	publish(&peer);
	let error = loop {
		// `recv_message` is cancel-safe: a tick loses no message.
		let received = tokio::select! {
			received = peer.recv_message() => received,
			() = stats::tick(&mut ticker) => {
				publish(&peer);
				continue;
			},
		};
		match received {
			Ok(ReceivedMessage::Stream(message)) => print(&message),
			Ok(ReceivedMessage::Request(mut request, body)) => {
				let service_id = request.service_id();
				let header = MessageHeader::new(MessageType::Request, request.request_id(), service_id);
				print_message(&printer, conn, header, &body);
				// Requester updates that came with the request are shown before it is answered;
				// later ones find it closed (the protocol drops them quietly).
				while let Some(Ok(Some(update))) = ready_now(request.recv_update()) {
					print(&update);
				}
				// A failed answer means the connection is going; the next receive says why.
				let _ = match answers.canned.get(&service_id) {
					Some(canned) => answer(&request, canned.clone()).await,
					None if answers.echo => answer(&request, Bytes::copy_from_slice(body.as_bytes())).await,
					None => {
						let text = format!(
							"peerwire listen has no answer for service {service_id} (start it with --echo or --respond {service_id}=FILE)"
						);
						request.send_error_response(&text).await
					},
				};
			},
			Err(error) => break error,
		}
		publish(&peer);
	};
	if let Some(posting) = &posting {
		stats::print_connection(&printer, conn, &posting.remote, &peer.stats(), true);
	}
	let reason = (!error.is_closed_by_remote()).then(|| describe(&error));
	printer.event("closed", Some(conn), &[("error", json!(reason))]);
}

/// Poll `future` once and return its output if it is ready now. A zero `timeout` would do the
/// same at the cost of a timer, which the runtime only fires on its next turn (a 1 ms wait on
/// every request).
fn ready_now<F: Future>(future: F) -> Option<F::Output> {
	let future = std::pin::pin!(future);
	match future.poll(&mut Context::from_waker(Waker::noop())) {
		Poll::Ready(output) => Some(output),
		Poll::Pending => None,
	}
}

async fn answer<B: CliBody>(request: &peerwire::ReceivedRequestHandle<B>, body: Bytes) -> Result<(), peerwire::Error> {
	match B::build(body, &[]) {
		Ok(body) => request.send_response(0, body).await,
		Err(_) => request.send_error_response("peerwire listen could not build the response").await,
	}
}

fn print_message<B: CliBody>(printer: &Printer, conn: u64, header: MessageHeader, body: &B) {
	printer.message(&MessageView {
		conn: Some(conn),
		direction: None,
		header,
		body: body.as_bytes(),
		body_len: body.len(),
		fds: body.fd_count(),
	});
}

/// Cancelled on Ctrl-C or SIGTERM, so that accept loops end and socket files are cleaned up.
pub fn shutdown_token() -> CancellationToken {
	let shutdown = CancellationToken::new();
	let interrupted = shutdown.clone();
	tokio::spawn(async move {
		shutdown_signal().await;
		interrupted.cancel();
	});
	shutdown
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
	let terminate = async {
		match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
			Ok(mut signal) => {
				signal.recv().await;
			},
			Err(_) => std::future::pending().await,
		}
	};
	tokio::select! {
		_ = tokio::signal::ctrl_c() => {},
		() = terminate => {},
	}
}
