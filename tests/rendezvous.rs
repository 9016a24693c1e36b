//! The rendezvous example's server, checked: matching in arrival order, one pair at a time per
//! channel, deleting a channel or a namespace under waiting requests, timeouts, and a job queue
//! with several workers where each job is delivered exactly once. Every wait is bounded.

mod common;

#[path = "../examples/rendezvous/client.rs"]
mod client;
#[path = "../examples/rendezvous/server.rs"]
mod server;
#[path = "../examples/rendezvous/wire.rs"]
mod wire;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use client::{Client, Failure, outcome};
use common::{WAIT, within};
use peerwire::{Config, PeerHandle, SentRequestHandle, TcpListener, TcpPeer};
use tokio::time::Instant;
use wire::Channel;

struct Server {
	address: SocketAddr,
	task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
	fn drop(&mut self) {
		self.task.abort();
	}
}

async fn start() -> Server {
	let listener = TcpListener::bind("127.0.0.1:0", &Config::default()).await.unwrap();
	let address = listener.local_addr().unwrap();
	Server { address, task: tokio::spawn(server::serve(listener)) }
}

impl Server {
	/// A client on a connection of its own, and the connection's handle.
	async fn connect(&self) -> (Client, PeerHandle) {
		let (peer, _) = within(TcpPeer::connect(self.address, &Config::default())).await.unwrap();
		(Client::new(peer.write_handle()), peer)
	}

	async fn client(&self) -> Client {
		let (client, peer) = self.connect().await;
		// The write handle in the client keeps the connection up.
		drop(peer);
		client
	}
}

/// Wait until `channel` has `puts` puts and `gets` gets waiting.
async fn waiting(client: &Client, channel: &Channel, puts: u32, gets: u32) {
	within(async {
		while client.status(channel).await.unwrap() != (puts, gets) {
			tokio::time::sleep(Duration::from_millis(5)).await;
		}
	})
	.await
}

async fn response(request: &mut SentRequestHandle) -> Result<bytes::Bytes, Failure> {
	outcome(within(request.recv_response()).await.unwrap())
}

/// Whether `request` is still waiting after a short while.
async fn still_waiting(request: &mut SentRequestHandle) -> bool {
	let result = request.recv_response_timeout(Duration::from_millis(100)).await;
	matches!(result, Err(error) if error.is_timeout())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_are_taken_in_arrival_order_one_pair_at_a_time() {
	let server = start().await;
	let channel = Channel::new("orders", "paper");
	let observer = server.client().await;

	// Three producers, each on its own connection, arriving in a known order.
	let mut puts = Vec::new();
	for n in 1..=3 {
		let producer = server.client().await;
		puts.push(within(producer.send_put(&channel, format!("sheet {n}"), None)).await.unwrap());
		waiting(&observer, &channel, n, 0).await;
	}

	let consumer = server.client().await;
	for n in 1..=3 {
		// One get takes the oldest put, and only that one completes.
		assert_eq!(within(consumer.get(&channel, None)).await.unwrap(), format!("sheet {n}"));
		response(&mut puts[n - 1]).await.unwrap();
		for later in &mut puts[n..] {
			assert!(still_waiting(later).await);
		}
		waiting(&observer, &channel, 3 - n as u32, 0).await;
	}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_are_served_in_arrival_order() {
	let server = start().await;
	let channel = Channel::new("orders", "ink");
	let observer = server.client().await;

	let mut gets = Vec::new();
	for n in 1..=3 {
		let consumer = server.client().await;
		gets.push(within(consumer.send_get(&channel, None)).await.unwrap());
		waiting(&observer, &channel, 0, n).await;
	}

	// One client's puts keep their order too, sent without waiting in between.
	let producer = server.client().await;
	let mut puts = Vec::new();
	for n in 1..=3 {
		puts.push(within(producer.send_put(&channel, format!("drop {n}"), None)).await.unwrap());
	}
	for (n, get) in gets.iter_mut().enumerate() {
		assert_eq!(response(get).await.unwrap(), format!("drop {}", n + 1));
	}
	for put in &mut puts {
		response(put).await.unwrap();
	}
	waiting(&observer, &channel, 0, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_are_matched_only_by_namespace_and_name() {
	let server = start().await;
	let client = server.client().await;
	let mut put = within(client.send_put(&Channel::new("a", "x"), "for a/x", None)).await.unwrap();
	waiting(&client, &Channel::new("a", "x"), 1, 0).await;

	for other in [Channel::new("a", "y"), Channel::new("b", "x")] {
		let result = within(client.get(&other, Some(Duration::from_millis(50)))).await;
		assert!(matches!(result, Err(Failure::TimedOut)), "{other}: {result:?}");
	}
	assert!(still_waiting(&mut put).await);
	assert_eq!(within(client.get(&Channel::new("a", "x"), None)).await.unwrap(), "for a/x");
	response(&mut put).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_channel_fails_its_waiting_requests_only() {
	let server = start().await;
	let client = server.client().await;
	let doomed = Channel::new("demo", "doomed");
	let spared = Channel::new("demo", "spared");

	let mut put = within(client.send_put(&doomed, "never taken", None)).await.unwrap();
	let mut get = within(client.send_get(&doomed, None)).await.unwrap();
	// The get took the put at once; now two more wait on the doomed channel.
	assert_eq!(response(&mut get).await.unwrap(), "never taken");
	response(&mut put).await.unwrap();
	let mut gets: Vec<_> = Vec::new();
	for _ in 0..2 {
		gets.push(within(client.send_get(&doomed, None)).await.unwrap());
	}
	let mut other = within(client.send_get(&spared, None)).await.unwrap();
	waiting(&client, &doomed, 0, 2).await;
	waiting(&client, &spared, 0, 1).await;

	assert!(within(client.delete_channel(&doomed)).await.unwrap());
	for get in &mut gets {
		assert!(matches!(response(get).await, Err(Failure::Deleted)));
	}
	assert!(still_waiting(&mut other).await);
	// Gone, and made afresh on next use.
	assert!(!within(client.delete_channel(&doomed)).await.unwrap());
	waiting(&client, &doomed, 0, 0).await;
	within(client.put(&spared, "still here", None)).await.unwrap();
	assert_eq!(response(&mut other).await.unwrap(), "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_fails_every_waiting_request_in_it() {
	let server = start().await;
	let client = server.client().await;
	let mut doomed = vec![
		within(client.send_get(&Channel::new("ns1", "a"), None)).await.unwrap(),
		within(client.send_put(&Channel::new("ns1", "b"), "b", None)).await.unwrap(),
		within(client.send_put(&Channel::new("ns1", "b"), "b again", None)).await.unwrap(),
	];
	let mut spared = within(client.send_get(&Channel::new("ns2", "a"), None)).await.unwrap();
	waiting(&client, &Channel::new("ns1", "b"), 2, 0).await;
	waiting(&client, &Channel::new("ns2", "a"), 0, 1).await;

	assert_eq!(within(client.delete_namespace("ns1")).await.unwrap(), 2);
	for request in &mut doomed {
		assert!(matches!(response(request).await, Err(Failure::Deleted)));
	}
	assert!(still_waiting(&mut spared).await);
	assert_eq!(within(client.delete_namespace("ns1")).await.unwrap(), 0);
	within(client.put(&Channel::new("ns2", "a"), "spared", None)).await.unwrap();
	assert_eq!(response(&mut spared).await.unwrap(), "spared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_times_out_and_leaves_nothing_behind() {
	let server = start().await;
	let client = server.client().await;
	let channel = Channel::new("demo", "slow");

	let started = Instant::now();
	let result = within(client.get(&channel, Some(Duration::from_millis(150)))).await;
	assert!(matches!(result, Err(Failure::TimedOut)), "{result:?}");
	let elapsed = started.elapsed();
	assert!(elapsed >= Duration::from_millis(150) && elapsed < Duration::from_secs(2), "{elapsed:?}");

	// A put that times out is withdrawn: a later get does not receive it.
	let result = within(client.put(&channel, "too late", Some(Duration::from_millis(100)))).await;
	assert!(matches!(result, Err(Failure::TimedOut)), "{result:?}");
	waiting(&client, &channel, 0, 0).await;

	// A short timeout expires while a longer one keeps waiting, and the put goes to that one.
	let mut patient = within(client.send_get(&channel, Some(WAIT))).await.unwrap();
	let mut hasty = within(client.send_get(&channel, Some(Duration::from_millis(100)))).await.unwrap();
	assert!(matches!(response(&mut hasty).await, Err(Failure::TimedOut)));
	within(client.put(&channel, "for the patient one", None)).await.unwrap();
	assert_eq!(response(&mut patient).await.unwrap(), "for the patient one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_queue_with_several_workers_delivers_each_job_exactly_once() {
	const WORKERS: usize = 4;
	const JOBS: usize = 40;
	let server = start().await;
	let queue = Channel::new("jobs", "render");
	let observer = server.client().await;

	let mut workers = tokio::task::JoinSet::new();
	for _ in 0..WORKERS {
		let (worker, queue) = (server.client().await, queue.clone());
		workers.spawn(async move {
			let mut done = Vec::new();
			loop {
				match worker.get(&queue, Some(Duration::from_millis(500))).await {
					Ok(job) => done.push(String::from_utf8(job.to_vec()).unwrap()),
					Err(Failure::TimedOut) => return done,
					Err(failure) => panic!("worker failed: {failure}"),
				}
			}
		});
	}
	waiting(&observer, &queue, 0, WORKERS as u32).await;

	// Two producers, each putting its jobs one after the other.
	let mut producers = tokio::task::JoinSet::new();
	for producer in 0..2 {
		let (client, queue) = (server.client().await, queue.clone());
		producers.spawn(async move {
			for job in (producer..JOBS).step_by(2) {
				client.put(&queue, format!("job {job}"), None).await.unwrap();
			}
		});
	}
	within(producers.join_all()).await;

	let done = within(workers.join_all()).await;
	let all: Vec<&String> = done.iter().flatten().collect();
	let unique: HashSet<&String> = all.iter().copied().collect();
	assert_eq!(all.len(), JOBS, "every job delivered once: {done:?}");
	assert_eq!(unique.len(), JOBS);
	assert!(done.iter().all(|jobs| !jobs.is_empty()), "every worker got work: {done:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_went_away_is_skipped() {
	let server = start().await;
	let channel = Channel::new("jobs", "gone");
	let observer = server.client().await;

	let (leaving, leaving_peer) = server.connect().await;
	let _abandoned = within(leaving.send_get(&channel, None)).await.unwrap();
	waiting(&observer, &channel, 0, 1).await;
	let staying = server.client().await;
	let mut get = within(staying.send_get(&channel, None)).await.unwrap();
	waiting(&observer, &channel, 0, 2).await;

	// The first consumer's connection ends while its get waits.
	leaving_peer.close();
	drop(leaving);
	within(leaving_peer.closed()).await;
	// Once the server's side of that connection has seen its end of stream, the status no longer
	// counts the get as waiting (no fixed wait: `waiting` asks until it is so).
	waiting(&observer, &channel, 0, 1).await;

	within(observer.put(&channel, "the only job", None)).await.unwrap();
	assert_eq!(response(&mut get).await.unwrap(), "the only job");
	waiting(&observer, &channel, 0, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_is_refused() {
	let server = start().await;
	let (_, peer) = server.connect().await;
	let mut request = within(peer.send_request(wire::GET, "nonsense")).await.unwrap();
	assert!(matches!(response(&mut request).await, Err(Failure::Refused(reason)) if reason.contains("too short")));
	let client = Client::new(peer.write_handle());
	let result = within(client.get(&Channel::new("", "x"), None)).await;
	assert!(matches!(result, Err(Failure::Refused(_))), "{result:?}");
}
