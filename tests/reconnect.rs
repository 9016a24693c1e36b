//! The reconnecting client: a server that crashes and comes back on the same address, backoff
//! that grows and stops at its cap, giving up after the last attempt, and callers that share one
//! round of attempts. Every await is bounded, so a hang fails the test instead of stalling it.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{socket_path, within};
use peerwire::{
	Acceptor, Backoff, Config, ErrorKind, Listener, Peer, PeerHandle, ReceivedMessage, Reconnecting, TcpListener,
	Transport, UnixStreamListener,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Answers with the request body.
const ECHO: i32 = 1;
/// Never answered while the connection lives.
const HOLD: i32 = 2;
/// The stream message a server sends on each new connection: its incarnation and the
/// connection's number.
const HELLO: i32 = 7;
/// The request a server opens on a new connection when asked to.
const ASK: i32 = 9;

/// Where a test server listens; the same place after a restart.
#[derive(Debug, Clone)]
enum At {
	Tcp(SocketAddr),
	Unix(PathBuf),
}

impl At {
	async fn fresh_tcp() -> At {
		// Bind port 0 to learn a free port; the server binds it again.
		let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
		At::Tcp(probe.local_addr().unwrap())
	}

	fn fresh_unix() -> At {
		At::Unix(socket_path("reconnect"))
	}

	fn client(&self, backoff: Backoff) -> (Reconnecting, Arc<AtomicU32>) {
		let attempts = Arc::new(AtomicU32::new(0));
		let counter = attempts.clone();
		let at = self.clone();
		let client = Reconnecting::new(backoff, move || {
			counter.fetch_add(1, Ordering::SeqCst);
			let at = at.clone();
			async move {
				let peer = match at {
					At::Tcp(address) => peerwire::TcpPeer::connect(address, &Config::default()).await?.0,
					At::Unix(path) => peerwire::UnixStreamPeer::connect(path, &Config::default()).await?.0,
				};
				Ok(peer)
			}
		});
		(client, attempts)
	}
}

/// A backoff quick enough for tests over real sockets.
fn quick() -> Backoff {
	Backoff::default()
		.with_initial_delay(Duration::from_millis(20))
		.with_factor(2)
		.with_max_delay(Duration::from_millis(200))
		.with_max_attempts(None)
		.with_jitter(false)
}

/// A server that can crash: its peer tasks are run here, so aborting them drops every
/// connection at once, without a goodbye and without answering what is open.
struct Server {
	/// The accept loop, which owns the listener.
	accept: JoinHandle<()>,
	peers: Arc<Mutex<Vec<JoinHandle<()>>>>,
	tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
	/// Responses (or error texts) to the ASK requests this server opened.
	answers: mpsc::Receiver<String>,
}

impl Server {
	async fn start(at: &At, incarnation: u32, ask: bool) -> Server {
		match at {
			At::Tcp(address) => {
				Self::serve(TcpListener::bind(address, &Config::default()).await.unwrap(), incarnation, ask)
			},
			At::Unix(path) => {
				Self::serve(UnixStreamListener::bind(path, &Config::default()).await.unwrap(), incarnation, ask)
			},
		}
	}

	fn serve<A>(mut listener: Listener<A>, incarnation: u32, ask: bool) -> Server
	where
		A: Acceptor,
		A::Transport: Transport<Body = Bytes>,
	{
		let peers = Arc::new(Mutex::new(Vec::new()));
		let tasks = Arc::new(Mutex::new(Vec::new()));
		let (answer_tx, answers) = mpsc::channel(16);
		let accept = {
			let peers = peers.clone();
			let tasks = tasks.clone();
			tokio::spawn(async move {
				for n in 1.. {
					let Ok(transport) = listener.accept_transport().await else { continue };
					let (peer, handle) = Peer::new(transport, listener.config());
					peers.lock().unwrap().push(tokio::spawn(async move {
						let _ = peer.run().await;
					}));
					let serving = tokio::spawn(serve_connection(
						handle,
						format!("{incarnation}.{n}"),
						ask,
						answer_tx.clone(),
						tasks.clone(),
					));
					tasks.lock().unwrap().push(serving);
				}
			})
		};
		Server { accept, peers, tasks, answers }
	}

	/// Drop every connection and the listener at once, as a crash would.
	async fn crash(self) {
		// Stop listening first, so that no client gets in again meanwhile. Then the peers, so
		// that no request handle dropped afterwards can still be answered.
		self.accept.abort();
		let _ = within(self.accept).await;
		for group in [&self.peers, &self.tasks] {
			let handles: Vec<_> = group.lock().unwrap().drain(..).collect();
			for handle in handles {
				handle.abort();
				let _ = within(handle).await;
			}
		}
	}
}

async fn serve_connection(
	mut peer: PeerHandle,
	name: String,
	ask: bool,
	answers: mpsc::Sender<String>,
	tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
	let _ = peer.send_stream(HELLO, name.clone()).await;
	if ask {
		let write = peer.write_handle();
		tasks.lock().unwrap().push(tokio::spawn(async move {
			let Ok(mut request) = write.send_request(ASK, "anyone there?").await else { return };
			let answer = match request.recv_response().await {
				Ok(response) => response.error_text().map(String::from).unwrap_or_else(|| "answered".into()),
				Err(error) => format!("{:?}", error.kind()),
			};
			let _ = answers.send(answer).await;
		}));
	}
	while let Ok(message) = peer.recv_message().await {
		let ReceivedMessage::Request(mut request, body) = message else { continue };
		match request.service_id() {
			ECHO => drop(request.send_response(0, body).await),
			HOLD => tasks.lock().unwrap().push(tokio::spawn(async move {
				// Held until the connection ends.
				while let Ok(Some(_)) = request.recv_update().await {}
			})),
			_ => drop(request.send_error_response("unknown service").await),
		}
	}
}

async fn echo(client: &Reconnecting, text: &'static str) -> Result<Bytes, peerwire::Error> {
	let mut request = client.send_request(ECHO, text).await?;
	Ok(request.recv_response().await?.body)
}

async fn restart_fails_open_requests_then_reconnects(at: At) {
	let server = Server::start(&at, 1, false).await;
	let (client, attempts) = at.client(quick());

	assert_eq!(within(echo(&client, "before")).await.unwrap(), "before");
	assert_eq!(client.generation(), 1);
	assert_eq!(attempts.load(Ordering::SeqCst), 1);

	// Two requests left open: one the server holds, one it is still to answer.
	let mut held = within(client.send_request(HOLD, "")).await.unwrap();
	// The echo behind it on the same connection shows the server has the held request.
	assert_eq!(within(echo(&client, "after hold")).await.unwrap(), "after hold");

	let crashed_at = Instant::now();
	server.crash().await;

	// The open request fails promptly, with a connection error, not a hang.
	let error = tokio::time::timeout(Duration::from_secs(2), held.recv_response()).await.expect("hung").unwrap_err();
	assert_eq!(error.kind(), ErrorKind::ConnectionClosed, "{error}");
	assert!(crashed_at.elapsed() < Duration::from_secs(2));

	// A new request while the server is down waits, retrying with backoff...
	let pending = {
		let client = client.clone();
		tokio::spawn(async move { echo(&client, "after restart").await })
	};
	tokio::time::sleep(Duration::from_millis(300)).await;
	assert!(!pending.is_finished());
	let failed = attempts.load(Ordering::SeqCst) - 1;
	// 20 + 40 + 80 + 160 ms fit in 300 ms: at least three attempts, far fewer than a busy loop.
	assert!((3..=8).contains(&failed), "{failed} attempts while down");

	// ...and succeeds on the new connection once the server is back on the same address.
	let _server = Server::start(&at, 2, false).await;
	assert_eq!(within(pending).await.unwrap().unwrap(), "after restart");
	assert_eq!(client.generation(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_server_restart() {
	restart_fails_open_requests_then_reconnects(At::fresh_tcp().await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_server_restart() {
	let at = At::fresh_unix();
	restart_fails_open_requests_then_reconnects(at.clone()).await;
	if let At::Unix(path) = at {
		let _ = std::fs::remove_file(path);
	}
}

/// A connect function that always fails, recording when it was called.
fn refused(
	calls: Arc<Mutex<Vec<Instant>>>,
) -> impl Fn() -> std::future::Ready<Result<PeerHandle, peerwire::Error>> + Send + Sync + 'static {
	move || {
		calls.lock().unwrap().push(Instant::now());
		let error = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused by the test");
		std::future::ready(Err(error.into()))
	}
}

fn gaps(calls: &Mutex<Vec<Instant>>) -> Vec<Duration> {
	calls.lock().unwrap().windows(2).map(|pair| pair[1] - pair[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn backoff_delays_grow_and_are_capped_then_it_gives_up() {
	let calls = Arc::new(Mutex::new(Vec::new()));
	let backoff = Backoff::default()
		.with_initial_delay(Duration::from_millis(100))
		.with_factor(2)
		.with_max_delay(Duration::from_secs(1))
		.with_max_attempts(Some(8))
		.with_jitter(false);
	let client = Reconnecting::new(backoff, refused(calls.clone()));

	let error = within(client.write_handle()).await.unwrap_err();
	let millis: Vec<_> = gaps(&calls).iter().map(Duration::as_millis).collect();
	assert_eq!(millis, [100, 200, 400, 800, 1000, 1000, 1000]);

	// A clear error: the kind of the last failure, and how many attempts were made.
	assert_eq!(error.kind(), ErrorKind::Io);
	assert_eq!(error.io_error().map(std::io::Error::kind), Some(std::io::ErrorKind::ConnectionRefused));
	let text = error.to_string();
	assert!(
		text.contains("gave up after 8 failed connection attempts") && text.contains("refused by the test"),
		"{text}"
	);
	assert_eq!(client.generation(), 0);

	// The next call starts a new round, from the shortest wait.
	calls.lock().unwrap().clear();
	within(client.write_handle()).await.unwrap_err();
	assert_eq!(gaps(&calls)[..2], [Duration::from_millis(100), Duration::from_millis(200)]);
}

#[tokio::test(start_paused = true)]
async fn jittered_delays_stay_between_half_and_the_full_delay() {
	let calls = Arc::new(Mutex::new(Vec::new()));
	let backoff = quick().with_max_attempts(Some(12)).with_jitter(true);
	let client = Reconnecting::new(backoff.clone(), refused(calls.clone()));
	within(client.write_handle()).await.unwrap_err();
	for (n, gap) in gaps(&calls).into_iter().enumerate() {
		let full = backoff.delay_after(n as u32 + 1);
		assert!(gap >= full / 2 && gap <= full, "wait {n}: {gap:?} outside [{:?}, {full:?}]", full / 2);
	}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_against_a_closed_port_gives_a_clear_error() {
	let at = At::fresh_tcp().await; // nothing listens there
	let (client, attempts) = at.client(quick().with_max_attempts(Some(3)));
	let error = within(client.send_request(ECHO, "nobody home")).await.unwrap_err();
	assert_eq!(attempts.load(Ordering::SeqCst), 3);
	assert_eq!(error.kind(), ErrorKind::Io);
	assert_eq!(error.io_error().map(std::io::Error::kind), Some(std::io::ErrorKind::ConnectionRefused));
	assert!(error.to_string().contains("gave up after 3 failed connection attempts"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn callers_waiting_during_a_round_share_its_outcome() {
	// Two failures, then a connection (in memory).
	let calls = Arc::new(AtomicU32::new(0));
	let counter = calls.clone();
	let remotes = Arc::new(Mutex::new(Vec::new()));
	let keep = remotes.clone();
	let client = Reconnecting::new(quick(), move || {
		let n = counter.fetch_add(1, Ordering::SeqCst);
		let result = if n < 2 {
			Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into())
		} else {
			let (local, remote) = peerwire::transport::memory::pair::<Bytes>(&Config::default());
			keep.lock().unwrap().push(remote);
			Ok(local)
		};
		std::future::ready(result)
	});
	let callers: Vec<_> = (0..8)
		.map(|_| {
			let client = client.clone();
			tokio::spawn(async move { client.write_handle().await })
		})
		.collect();
	let mut handles = Vec::new();
	for caller in callers {
		handles.push(within(caller).await.unwrap().unwrap());
	}
	assert_eq!(calls.load(Ordering::SeqCst), 3);
	assert!(handles.iter().all(|handle| handle.same_peer(&handles[0])));
	assert_eq!(client.generation(), 1);

	// A round that gives up fails everyone who waited for it, with one round of attempts.
	let calls = Arc::new(Mutex::new(Vec::new()));
	let client = Reconnecting::new(quick().with_max_attempts(Some(4)), refused(calls.clone()));
	let callers: Vec<_> = (0..8)
		.map(|_| {
			let client = client.clone();
			tokio::spawn(async move { client.write_handle().await })
		})
		.collect();
	for caller in callers {
		let error = within(caller).await.unwrap().unwrap_err();
		assert!(error.to_string().contains("gave up after 4"), "{error}");
	}
	assert_eq!(calls.lock().unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_connection_hands_out_each_connection_once() {
	let at = At::fresh_tcp().await;
	let server = Server::start(&at, 1, false).await;
	let (client, _) = at.client(quick());

	let mut first = within(client.next_connection()).await.unwrap();
	assert_eq!(first.generation(), 1);
	let hello = within(first.recv_message()).await.unwrap().into_stream().unwrap();
	assert_eq!((hello.header.service_id, &hello.body[..]), (HELLO, &b"1.1"[..]));

	// The read half is taken: the next call waits for a new connection...
	let next = {
		let client = client.clone();
		tokio::spawn(async move { client.next_connection().await })
	};
	tokio::time::sleep(Duration::from_millis(100)).await;
	assert!(!next.is_finished());

	// ...which comes after the server restarts, even though no one reads the first connection.
	server.crash().await;
	let _server = Server::start(&at, 2, false).await;
	let mut second = within(next).await.unwrap().unwrap();
	assert_eq!(second.generation(), 2);
	let hello = within(second.recv_message()).await.unwrap().into_stream().unwrap();
	assert_eq!(&hello.body[..], b"2.1");

	// The first connection reports its end, and requests go over the second.
	let error = within(first.recv_message()).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::ConnectionClosed);
	assert_eq!(within(echo(&client, "on the second")).await.unwrap(), "on the second");
	assert!(second.write_handle().same_peer(&within(client.write_handle()).await.unwrap()));
	assert_eq!(client.generation(), 2);
}

/// A `Connection` dropped while its connection is live hands the read half back: the next
/// `next_connection` returns the same connection, and a request from the remote waits for it
/// instead of being answered with an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_hands_its_read_half_back() {
	let at = At::fresh_tcp().await;
	let mut server = Server::start(&at, 1, true).await;
	let (client, _) = at.client(quick());

	let mut first = within(client.next_connection()).await.unwrap();
	let hello = within(first.recv_message()).await.unwrap().into_stream().unwrap();
	assert_eq!(&hello.body[..], b"1.1");
	// A receive loop that ends early, before the server's request arrives or is taken.
	drop(first);

	let mut again = within(client.next_connection()).await.unwrap();
	assert_eq!(again.generation(), 1);
	let (request, body) = within(again.recv_message()).await.unwrap().into_request().unwrap();
	assert_eq!((request.service_id(), &body[..]), (ASK, &b"anyone there?"[..]));
	request.send_response(0, "here").await.unwrap();
	assert_eq!(within(server.answers.recv()).await.unwrap(), "answered");
	assert_eq!(client.generation(), 1);

	// Once the connection has ended, a dropped `Connection` is let go, and the next call makes a
	// new connection.
	let closing = within(client.write_handle()).await.unwrap();
	closing.close();
	closing.closed().await;
	drop(again);
	let third = within(client.next_connection()).await.unwrap();
	assert_eq!(third.generation(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_is_replaced_on_the_next_send() {
	let at = At::fresh_tcp().await;
	let _server = Server::start(&at, 1, false).await;
	let (client, _) = at.client(quick());
	let first = within(client.write_handle()).await.unwrap();
	// Close it locally; the next send notices, whether the peer task has stopped yet or not.
	first.close();
	assert_eq!(within(echo(&client, "fresh")).await.unwrap(), "fresh");
	assert_eq!(client.generation(), 2);
	assert!(!within(client.write_handle()).await.unwrap().same_peer(&first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_only_client_answers_requests_from_the_remote_at_once() {
	let at = At::fresh_tcp().await;
	let mut server = Server::start(&at, 1, true).await;
	let (client, _) = at.client(quick());
	let client = client.send_only();

	assert_eq!(within(echo(&client, "hi")).await.unwrap(), "hi");
	// The server's request is not left waiting for a reader that will never come.
	assert_eq!(within(server.answers.recv()).await.unwrap(), peerwire::DROPPED_REQUEST_TEXT);

	let error = within(client.next_connection()).await.unwrap_err();
	assert_eq!(error.io_error().map(std::io::Error::kind), Some(std::io::ErrorKind::Unsupported));
}

/// `flush` answers for everything queued through the client: a command queued on a connection
/// that then ended is reported, even once a later send has made a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_reports_a_connection_lost_with_messages_queued_on_it() {
	let mut listener = TcpListener::bind("127.0.0.1:0", &Config::default()).await.unwrap();
	let at = At::Tcp(listener.local_addr().unwrap());
	let (client, _) = at.client(quick());

	// Connection 1: a command is queued, then the server drops the connection.
	let (sent, accepted) = tokio::join!(client.send_stream(1, "set_speed"), listener.accept());
	sent.unwrap();
	let (server, _) = accepted.unwrap();
	let first = client.write_handle().await.unwrap();
	server.close();
	drop(server);
	within(first.closed()).await;

	// The next send finds the connection closed and makes connection 2.
	let (sent, accepted) = tokio::join!(client.send_stream(10, "stop"), listener.accept());
	sent.unwrap();
	let (_server, _) = accepted.unwrap();
	assert!(!client.write_handle().await.unwrap().same_peer(&first));

	// "set_speed" was queued on a connection that ended: it may be lost, and flush says so once.
	let error = within(client.flush()).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::ConnectionClosed, "{error}");
	within(client.flush()).await.unwrap();
}
