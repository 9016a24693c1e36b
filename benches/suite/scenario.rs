//! The timed scenarios: what traffic each drives through a [`Client`], what it measures, and
//! what peerwire is expected to reach against the others.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::contender::{Client, Contender, Result, Server};
use crate::transport::Transport;

/// How long each run warms up and then measures.
#[derive(Debug, Clone)]
pub struct Plan {
	pub warmup: Duration,
	pub measure: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
	/// Sequential requests with 16-byte bodies, one in flight.
	RoundTrip,
	/// 64 requests with 16-byte bodies in flight on one connection.
	InFlight,
	/// One-way stream messages with 64-byte bodies, counted where they are received.
	Stream,
	/// Requests and responses with 4 MiB bodies, one in flight.
	Bulk,
	/// Round trip and 64 in flight against a server that spawns a task per request, as
	/// application code does: request in, `tokio::spawn`, response sent from the task.
	Spawned,
}

/// Which contender a target compares peerwire with, and the bound on the ratio
/// peerwire / that contender.
#[derive(Debug, Clone, Copy)]
pub struct Target {
	pub against: &'static str,
	pub bound: f64,
	/// The transports it holds for: byte streams (TCP, Unix stream, TLS), datagrams
	/// (seqpacket), or both.
	pub on: On,
}

/// Which transports a target is set for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
	All,
	Streams,
	Datagrams,
}

impl On {
	pub fn covers(self, datagrams: bool) -> bool {
		match self {
			On::All => true,
			On::Streams => !datagrams,
			On::Datagrams => datagrams,
		}
	}
}

/// One number a scenario reports.
#[derive(Debug)]
pub struct Metric {
	pub name: &'static str,
	pub unit: Unit,
	pub targets: &'static [Target],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
	Micros,
	PerSecond,
	MibPerSecond,
}

impl Unit {
	/// Whether a larger number is better, which decides the direction of a target's bound.
	pub fn higher_is_better(self) -> bool {
		self != Unit::Micros
	}
}

const FIZYR: &str = "fizyr-rpc";
const RAW_TOKIO: &str = "raw tokio";
const RAW_BLOCKING: &str = "raw blocking";
const WINDOW: usize = 64;
const BULK_LEN: usize = 4 << 20;

impl Scenario {
	pub const ALL: &[Scenario] =
		&[Scenario::RoundTrip, Scenario::InFlight, Scenario::Stream, Scenario::Bulk, Scenario::Spawned];

	pub fn metrics(self) -> &'static [Metric] {
		match self {
			Scenario::RoundTrip => &[
				Metric {
					name: "round trip, median",
					unit: Unit::Micros,
					// Issue 12: at most 1.1x the blocking floor on every transport.
					targets: &[
						Target { against: FIZYR, bound: 1.0, on: On::All },
						Target { against: RAW_BLOCKING, bound: 1.1, on: On::All },
					],
				},
				Metric { name: "round trip, p99", unit: Unit::Micros, targets: &[] },
			],
			Scenario::InFlight => &[Metric {
				name: "64 in flight",
				unit: Unit::PerSecond,
				// Issue 12: at least 0.5x raw tokio on the byte streams, 1.0x raw on seqpacket.
				targets: &[
					Target { against: FIZYR, bound: 2.0, on: On::All },
					Target { against: RAW_TOKIO, bound: 0.5, on: On::Streams },
					Target { against: RAW_TOKIO, bound: 1.0, on: On::Datagrams },
				],
			}],
			Scenario::Stream => &[Metric {
				name: "stream, 64 B",
				unit: Unit::PerSecond,
				// Issue 12: at least 0.8x raw tokio on the byte streams, 1.0x raw on seqpacket.
				targets: &[
					Target { against: FIZYR, bound: 20.0, on: On::All },
					Target { against: RAW_TOKIO, bound: 0.8, on: On::Streams },
					Target { against: RAW_TOKIO, bound: 1.0, on: On::Datagrams },
				],
			}],
			Scenario::Bulk => &[Metric {
				name: "4 MiB echo",
				unit: Unit::MibPerSecond,
				// Issue 12: at least 0.95x raw tokio.
				targets: &[Target { against: RAW_TOKIO, bound: 0.95, on: On::All }],
			}],
			// Measured, with no target yet: what a task per request costs each contender.
			Scenario::Spawned => &[
				Metric { name: "task per request: round trip, median", unit: Unit::Micros, targets: &[] },
				Metric { name: "task per request: 64 in flight", unit: Unit::PerSecond, targets: &[] },
			],
		}
	}

	/// Whether the scenario can run on `transport` (4 MiB is more than one datagram carries).
	pub fn applies_to(self, transport: Transport) -> bool {
		self != Scenario::Bulk || BULK_LEN <= transport.max_body()
	}

	/// Whether the scenario runs for `contender`: a server that spawns tasks needs a runtime,
	/// which the blocking baseline does not have (its server is a thread that blocks).
	pub fn runs_for(self, contender: &str) -> bool {
		self != Scenario::Spawned || contender != RAW_BLOCKING
	}

	/// The scenario's name in run labels (and for `--only`).
	pub fn label(self) -> &'static str {
		match self {
			Scenario::RoundTrip => "round-trip",
			Scenario::InFlight => "in-flight",
			Scenario::Stream => "stream",
			Scenario::Bulk => "bulk",
			Scenario::Spawned => "spawned",
		}
	}

	/// One run: connect, warm up, measure; one value per metric.
	pub async fn run<C: Contender>(self, transport: Transport, plan: &Plan) -> Result<Vec<f64>> {
		let server = Server { spawn: self == Scenario::Spawned, ..Server::default() };
		let received = server.received.clone();
		let mut client = C::connect(transport, server).await?;
		match self {
			Scenario::RoundTrip => round_trip(&mut client, plan).await,
			Scenario::InFlight => in_flight(&mut client, plan).await.map(|rate| vec![rate]),
			Scenario::Stream => {
				let received = || received.load(std::sync::atomic::Ordering::Relaxed);
				stream(&mut client, plan, received).await.map(|rate| vec![rate])
			},
			Scenario::Bulk => bulk(&mut client, plan).await.map(|rate| vec![rate / (1 << 20) as f64]),
			Scenario::Spawned => {
				// The two measurements one after the other on one connection, each with its
				// own warm-up.
				let median = round_trip(&mut client, plan).await?[0];
				Ok(vec![median, in_flight(&mut client, plan).await?])
			},
		}
	}
}

/// A warm-up, then a measured window over a running count.
struct Window {
	warm_until: Instant,
	measure: Duration,
	start: Option<(Instant, u64)>,
}

impl Window {
	fn new(plan: &Plan) -> Self {
		Self { warm_until: Instant::now() + plan.warmup, measure: plan.measure, start: None }
	}

	/// Given the count so far, the rate per second once the measured window is over.
	fn check(&mut self, count: u64) -> Option<f64> {
		let now = Instant::now();
		match self.start {
			None if now >= self.warm_until => self.start = Some((now, count)),
			Some((start, at_start)) if now - start >= self.measure => {
				return Some((count - at_start) as f64 / (now - start).as_secs_f64());
			},
			_ => {},
		}
		None
	}

	fn measuring(&self) -> bool {
		self.start.is_some()
	}
}

fn body(len: usize) -> Bytes {
	(0..len).map(|i| (i % 251) as u8).collect()
}

/// Scenario 1: the median and 99th percentile of sequential round trips, in microseconds.
async fn round_trip(client: &mut impl Client, plan: &Plan) -> Result<Vec<f64>> {
	let body = body(16);
	let mut window = Window::new(plan);
	let mut latencies = Vec::new();
	while window.check(0).is_none() {
		let start = Instant::now();
		client.start(body.clone()).await?;
		let response = client.finish().await?;
		let elapsed = start.elapsed();
		if response != body {
			return Err("response differs from request".into());
		}
		if window.measuring() {
			latencies.push(elapsed.as_secs_f64() * 1e6);
		}
	}
	latencies.sort_by(f64::total_cmp);
	Ok(vec![crate::report::quantile(&latencies, 0.5), crate::report::quantile(&latencies, 0.99)])
}

/// Scenario 2: requests per second with 64 in flight.
async fn in_flight(client: &mut impl Client, plan: &Plan) -> Result<f64> {
	let body = body(16);
	for _ in 0..WINDOW {
		client.start(body.clone()).await?;
	}
	let mut window = Window::new(plan);
	let mut done = 0;
	loop {
		if client.finish().await?.len() != body.len() {
			return Err("response differs from request".into());
		}
		done += 1;
		if let Some(rate) = window.check(done) {
			return Ok(rate);
		}
		client.start(body.clone()).await?;
	}
}

/// Scenario 3: stream messages per second, counted by the receiver.
///
/// A window in which the receiver counted nothing gives [`Stalled`]: a finding about the
/// contender (or about a loaded machine in a short window), reported as such, not a broken run.
async fn stream(client: &mut impl Client, plan: &Plan, received: impl Fn() -> u64) -> Result<f64> {
	let body = body(64);
	let mut window = Window::new(plan);
	loop {
		for _ in 0..16 {
			client.send_stream(body.clone()).await?;
		}
		// A sender whose writes never return `Pending` (a buffered writer with room, a socket
		// with room) would otherwise keep its worker to itself, and on a loaded machine the
		// receiver's task may not run at all in a short window. Every contender yields alike.
		tokio::task::yield_now().await;
		match window.check(received()) {
			// fizyr-rpc does this at times: its peer task polls its read loop before its command
			// loop, so under a steady flow the reads use up tokio's budget on every poll and what
			// was read is never handed on.
			Some(0.0) => return Err(Stalled.into()),
			Some(rate) => return Ok(rate),
			None => {},
		}
	}
}

/// The receiver counted nothing in the measured window.
#[derive(Debug)]
pub struct Stalled;

impl std::fmt::Display for Stalled {
	fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
		f.write_str("stalled: nothing received in the measured window")
	}
}

impl std::error::Error for Stalled {}

/// Scenario 4: bytes per second through 4 MiB echoes (request and response both counted).
async fn bulk(client: &mut impl Client, plan: &Plan) -> Result<f64> {
	let body = body(BULK_LEN);
	let mut window = Window::new(plan);
	let mut bytes = 0;
	loop {
		// A 4 MiB echo takes milliseconds; a broken contender may hang in either half.
		let echo = async {
			client.start(body.clone()).await?;
			client.finish().await
		};
		let response = tokio::time::timeout(Duration::from_secs(3), echo).await.map_err(|_| "no echo within 3 s")??;
		// Spot checks only: every byte is checked by the integrity run.
		let intact = response.len() == body.len()
			&& [0, body.len() / 2, body.len() - 64].iter().all(|&at| response[at..at + 64] == body[at..at + 64]);
		if !intact {
			return Err("response corrupted".into());
		}
		bytes += 2 * BULK_LEN as u64;
		if let Some(rate) = window.check(bytes) {
			return Ok(rate);
		}
	}
}

/// One echo of a `len`-byte body with every byte compared; the time it took.
pub async fn integrity<C: Contender>(transport: Transport, len: usize) -> Result<Duration> {
	// A pattern that does not repeat at any power-of-two stride, so shifted or duplicated
	// chunks show up.
	let mut state = 0x9e37_79b9_7f4a_7c15_u64;
	let body: Bytes = (0..len)
		.map(|_| {
			state ^= state << 13;
			state ^= state >> 7;
			state ^= state << 17;
			state as u8
		})
		.collect();
	let mut client = C::connect(transport, Server::default()).await?;
	let start = Instant::now();
	client.start(body.clone()).await?;
	let response = client.finish().await?;
	let elapsed = start.elapsed();
	if response.len() != body.len() {
		return Err(format!("response has {} bytes, not {}", response.len(), body.len()).into());
	}
	if let Some(at) = response.iter().zip(body.iter()).position(|(a, b)| a != b) {
		return Err(format!("first difference at byte {at}").into());
	}
	Ok(elapsed)
}
