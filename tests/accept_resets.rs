//! Clients that reset their connection before the server accepts it (SO_LINGER 0, then close)
//! must not disturb the listener: each is skipped inside `accept`, and a well-behaved client is
//! served as promptly as without them.
//!
//! In its own test binary: the timings below must not share two cores with other tests.
//! Unix stream sockets are not covered: a Unix client that closes before `accept` leaves a
//! connection the server still accepts without error (there is no reset to produce).

mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::within;
use peerwire::server::{CancellationToken, serve};
use peerwire::{Config, PeerHandle, ReceivedMessage, TcpListener, TcpPeer};

/// The median echo round trip of well-behaved clients, resets or not. (Before the fix, every
/// failed accept slept 100 ms, so most echoes during resets took longer than that.)
const PROMPT: Duration = Duration::from_millis(50);
/// The longest any one echo may take: generous, for a loaded machine, yet far below the 10 s
/// that a backlog of 100 resets cost before the fix.
const AT_MOST: Duration = Duration::from_secs(1);

/// Connect to `address` and reset the connection at once: SO_LINGER 0 makes close send an RST.
fn reset_client(address: SocketAddr) {
	let stream = TcpStream::connect(address).unwrap();
	rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO)).unwrap();
	drop(stream);
}

/// Connect, then echo `rounds` requests, each within [`AT_MOST`] (the first one includes
/// waiting to be accepted); their times go to `took`.
async fn echo_promptly(address: SocketAddr, rounds: usize, what: &str, took: &mut Vec<Duration>) {
	let started = Instant::now();
	let (client, _) = within(TcpPeer::connect(address, &Config::default())).await.unwrap();
	for round in 0..rounds {
		took.push(echo_once(&client, round, started, what).await);
	}
}

async fn echo_once(client: &PeerHandle, round: usize, started: Instant, what: &str) -> Duration {
	let started = if round == 0 { started } else { Instant::now() };
	let mut request = client.send_request(1, format!("round {round}")).await.unwrap();
	let response = within(request.recv_response()).await.unwrap();
	let took = started.elapsed();
	assert_eq!(response.body, format!("round {round}"));
	assert!(took < AT_MOST, "{what}: echo round {round} took {took:?}");
	took
}

/// The median of `took` is under [`PROMPT`].
fn assert_prompt(mut took: Vec<Duration>, what: &str) {
	took.sort();
	let median = took[took.len() / 2];
	assert!(median < PROMPT, "{what}: median echo {median:?} over {} echoes (slowest {:?})", took.len(), took.last());
}

/// An echo server on `listener`, until the returned token is cancelled.
fn echo_server(listener: TcpListener) -> (CancellationToken, tokio::task::JoinHandle<()>) {
	let shutdown = CancellationToken::new();
	let server = tokio::spawn(serve(listener, shutdown.clone(), Duration::from_secs(1), |message, _| async move {
		if let ReceivedMessage::Request(request, body) = message {
			let _ = request.send_response(0, body).await;
		}
	}));
	(shutdown, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_before_accept_do_not_delay_other_clients() {
	let listener = TcpListener::bind("127.0.0.1:0", &Config::default()).await.unwrap();
	let address = listener.local_addr().unwrap();

	// 100 clients reset while nothing accepts yet: every one of them is in the backlog, reset,
	// when the server starts.
	thread::spawn(move || (0..100).for_each(|_| reset_client(address))).join().unwrap();
	let (shutdown, server) = echo_server(listener);
	let mut took = Vec::new();
	echo_promptly(address, 20, "after a backlog of 100 resets", &mut took).await;
	assert_prompt(took, "after a backlog of 100 resets");

	// Resets keep coming while fresh clients connect.
	let stop = Arc::new(AtomicBool::new(false));
	let resets = Arc::new(AtomicUsize::new(0));
	let resetter = thread::spawn({
		let (stop, resets) = (stop.clone(), resets.clone());
		move || {
			while !stop.load(Ordering::Relaxed) {
				for _ in 0..10 {
					reset_client(address);
					resets.fetch_add(1, Ordering::Relaxed);
				}
				thread::sleep(Duration::from_millis(5));
			}
		}
	});
	let mut client = 0;
	let mut took = Vec::new();
	while client < 20 || resets.load(Ordering::Relaxed) < 300 {
		echo_promptly(address, 5, &format!("client {client} during a stream of resets"), &mut took).await;
		client += 1;
	}
	stop.store(true, Ordering::Relaxed);
	resetter.join().unwrap();
	assert_prompt(took, "during a stream of resets");

	// The server is still whole, and shuts down as usual.
	echo_promptly(address, 1, "after the resets", &mut Vec::new()).await;
	shutdown.cancel();
	within(server).await.unwrap();
}
