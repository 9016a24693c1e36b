//! Rendezvous channels: a small broker server where a producer's put waits until a consumer's
//! get takes it, and a get waits until a put comes. Clients address channels by namespace and
//! name; producers and consumers are matched in arrival order, one pair at a time per channel.
//!
//! `cargo run --example rendezvous`: the server and its clients run as tasks in one process
//! over TCP loopback: a rendezvous each way, a job queue with three workers, a get that times
//! out, and a namespace deleted under a waiting get.

mod client;
mod server;
mod wire;

use std::time::Duration;

use client::{Client, Failure};
use peerwire::{Config, TcpListener, TcpPeer};
use wire::Channel;

#[tokio::main]
async fn main() -> Result<(), peerwire::Error> {
	let listener = TcpListener::bind("127.0.0.1:0", &Config::default()).await?;
	let address = listener.local_addr()?;
	println!("[server]   listening on {address}");
	let server = tokio::spawn(server::serve(listener));
	// Every party has a connection of its own.
	let connect = || async move {
		TcpPeer::connect(address, &Config::default()).await.map(|(peer, _)| Client::new(peer.write_handle()))
	};

	println!("--- a get waits for a put");
	let greetings = Channel::new("demo", "greetings");
	let consumer = connect().await?;
	let waiting = tokio::spawn({
		let greetings = greetings.clone();
		async move { consumer.get(&greetings, None).await }
	});
	tokio::time::sleep(Duration::from_millis(200)).await;
	println!("[consumer] still waiting after 200 ms");
	let producer = connect().await?;
	producer.put(&greetings, "hello", None).await.map_err(to_error)?;
	println!("[producer] put \"hello\": taken");
	let got = waiting.await.expect("consumer task").map_err(to_error)?;
	println!("[consumer] got {:?}", String::from_utf8_lossy(&got));

	println!("--- a put waits for a get");
	let putting = tokio::spawn({
		let (producer, greetings) = (producer.clone(), greetings.clone());
		async move { producer.put(&greetings, "are you there?", None).await }
	});
	tokio::time::sleep(Duration::from_millis(200)).await;
	println!("[producer] still waiting after 200 ms");
	let consumer = connect().await?;
	let got = consumer.get(&greetings, None).await.map_err(to_error)?;
	println!("[consumer] got {:?}", String::from_utf8_lossy(&got));
	putting.await.expect("producer task").map_err(to_error)?;
	println!("[producer] put: taken");

	println!("--- a job queue: three workers, nine jobs, each job done once");
	let jobs = Channel::new("jobs", "render");
	let mut workers = tokio::task::JoinSet::new();
	for worker in 1..=3 {
		let (client, jobs) = (connect().await?, jobs.clone());
		workers.spawn(async move {
			let mut done = 0;
			// A worker waits for work; half a second without any, and it goes home.
			loop {
				match client.get(&jobs, Some(Duration::from_millis(500))).await {
					Ok(job) => {
						println!("[worker {worker}] took {}", String::from_utf8_lossy(&job));
						tokio::time::sleep(Duration::from_millis(30)).await;
						done += 1;
					},
					Err(Failure::TimedOut) => break,
					Err(failure) => {
						println!("[worker {worker}] {failure}");
						break;
					},
				}
			}
			println!("[worker {worker}] no more work: did {done} job(s)");
			done
		});
	}
	for job in 1..=9 {
		producer.put(&jobs, format!("job {job}"), None).await.map_err(to_error)?;
	}
	println!("[producer] all nine jobs taken");
	let done: u32 = workers.join_all().await.into_iter().sum();
	println!("[workers]  {done} jobs done in all");

	println!("--- a get that times out");
	let empty = Channel::new("demo", "empty");
	match consumer.get(&empty, Some(Duration::from_millis(300))).await {
		Err(Failure::TimedOut) => println!("[consumer] nothing came within 300 ms: timed out"),
		other => println!("[consumer] unexpected: {other:?}"),
	}

	println!("--- deleting a namespace fails the requests waiting in it");
	let doomed = Channel::new("demo", "doomed");
	let waiting = tokio::spawn({
		let (consumer, doomed) = (consumer.clone(), doomed.clone());
		async move { consumer.get(&doomed, None).await }
	});
	while producer.status(&doomed).await.map_err(to_error)? != (0, 1) {
		tokio::time::sleep(Duration::from_millis(10)).await;
	}
	let deleted = producer.delete_namespace("demo").await.map_err(to_error)?;
	println!("[producer] deleted namespace demo ({deleted} channels)");
	match waiting.await.expect("consumer task") {
		Err(Failure::Deleted) => println!("[consumer] the waiting get failed: channel deleted"),
		other => println!("[consumer] unexpected: {other:?}"),
	}

	server.abort();
	println!("--- done");
	Ok(())
}

fn to_error(failure: Failure) -> peerwire::Error {
	match failure {
		Failure::Connection(error) => error,
		other => std::io::Error::other(other.to_string()).into(),
	}
}
