//! What every contender provides, and the list of contenders the suite runs.
//!
//! A contender is a way to speak the protocol: a library, or hand-written socket code. It hands
//! the scenarios a connected [`Client`] whose server side (an echo for requests, a counter for
//! stream messages) runs in the background. The scenarios only ever talk through [`Client`], so
//! every contender runs exactly the same traffic.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::flood::{FloodPlan, FloodReport};
use crate::report::Outcome;
use crate::scenario::{Plan, Scenario, Stalled};
use crate::transport::Transport;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, BoxError>;

/// The largest body any scenario sends (the 64 MiB integrity check), with room to spare.
pub const MAX_BODY: usize = 96 << 20;

/// The client end of a connection.
pub trait Client: Send + 'static {
	/// Send a request without waiting for its response.
	fn start(&mut self, body: Bytes) -> impl Future<Output = Result<()>> + Send;

	/// Wait for the response to the oldest request still open and return its body.
	fn finish(&mut self) -> impl Future<Output = Result<Bytes>> + Send;

	/// Send a one-way stream message.
	fn send_stream(&mut self, body: Bytes) -> impl Future<Output = Result<()>> + Send;
}

/// A client of one of two types, for a contender whose client depends on the transport (byte
/// bodies on streams, bodies that can carry descriptors on seqpacket).
#[cfg_attr(not(feature = "unix-seqpacket"), allow(dead_code, reason = "only seqpacket clients are `Right`"))]
pub enum Either<A, B> {
	Left(A),
	Right(B),
}

impl<A: Client, B: Client> Client for Either<A, B> {
	async fn start(&mut self, body: Bytes) -> Result<()> {
		match self {
			Either::Left(client) => client.start(body).await,
			Either::Right(client) => client.start(body).await,
		}
	}

	async fn finish(&mut self) -> Result<Bytes> {
		match self {
			Either::Left(client) => client.finish().await,
			Either::Right(client) => client.finish().await,
		}
	}

	async fn send_stream(&mut self, body: Bytes) -> Result<()> {
		match self {
			Either::Left(client) => client.send_stream(body).await,
			Either::Right(client) => client.send_stream(body).await,
		}
	}
}

/// A way to speak the protocol.
pub trait Contender: 'static {
	const NAME: &'static str;
	type Client: Client;

	/// Connect a client over `transport`, with `server` answering on the other end.
	fn connect(transport: Transport, server: Server) -> impl Future<Output = Result<Self::Client>> + Send;

	/// Whether it can run over `transport` at all: the baselines and fizyr-rpc have no TLS.
	fn speaks(transport: Transport) -> bool {
		transport.is_plain()
	}
}

/// What the server end of every contender does: echo each request's body as the response, and
/// count stream messages; a slow server sleeps 1 ms after every 10 stream messages (so it takes
/// at most 10,000 a second, far fewer than any writer sends). A spawning server answers each
/// request from a task of its own (`tokio::spawn`), the way application code usually does,
/// instead of in its read loop.
#[derive(Clone, Default)]
pub struct Server {
	pub received: Arc<AtomicU64>,
	pub slow: bool,
	pub spawn: bool,
}

impl Server {
	pub fn slow() -> Self {
		Self { slow: true, ..Self::default() }
	}

	/// Call for each stream message received.
	pub async fn on_stream(&self) {
		let count = self.received.fetch_add(1, Ordering::Relaxed) + 1;
		if self.slow && count % 10 == 0 {
			tokio::time::sleep(Duration::from_millis(1)).await;
		}
	}
}

/// A contender as the suite's main loop sees it: every scenario behind one object, each run on a
/// fresh runtime so that nothing (a stuck task, a leaked connection) carries over between runs.
pub trait Entry: Sync {
	fn name(&self) -> &'static str;
	fn speaks(&self, transport: Transport) -> bool;
	fn run(&self, scenario: Scenario, transport: Transport, plan: &Plan) -> Outcome;
	fn integrity(&self, transport: Transport, len: usize) -> std::result::Result<Duration, String>;
	fn flood(&self, transport: Transport, plan: &FloodPlan) -> std::result::Result<FloodReport, String>;
}

struct Of<C>(PhantomData<fn() -> C>);

impl<C: Contender> Entry for Of<C> {
	fn name(&self) -> &'static str {
		C::NAME
	}

	fn speaks(&self, transport: Transport) -> bool {
		C::speaks(transport)
	}

	fn run(&self, scenario: Scenario, transport: Transport, plan: &Plan) -> Outcome {
		let plan = plan.clone();
		let limit = plan.warmup + plan.measure + Duration::from_secs(20);
		match on_fresh_runtime(limit, async move { scenario.run::<C>(transport, &plan).await }) {
			Ok(values) => Outcome::Measured(values),
			Err(error) if error.is::<Stalled>() => Outcome::Stalled,
			Err(error) => Outcome::Failed(error.to_string()),
		}
	}

	fn integrity(&self, transport: Transport, len: usize) -> std::result::Result<Duration, String> {
		on_fresh_runtime(Duration::from_secs(60), crate::scenario::integrity::<C>(transport, len))
			.map_err(|error| error.to_string())
	}

	fn flood(&self, transport: Transport, plan: &FloodPlan) -> std::result::Result<FloodReport, String> {
		let plan = plan.clone();
		on_fresh_runtime(plan.duration + Duration::from_secs(20), async move {
			crate::flood::flood::<C>(transport, &plan).await
		})
		.map_err(|error| error.to_string())
	}
}

/// Every contender, in the order of the report's columns.
pub fn all() -> [&'static dyn Entry; 4] {
	use crate::library::{Fizyr, Peerwire};
	use crate::raw::{RawBlocking, RawTokio};
	[
		&Of::<Peerwire>(PhantomData),
		&Of::<Fizyr>(PhantomData),
		&Of::<RawTokio>(PhantomData),
		&Of::<RawBlocking>(PhantomData),
	]
}

pub fn by_name(name: &str) -> Option<&'static dyn Entry> {
	all().into_iter().find(|entry| entry.name() == name)
}

/// The runtime setup for every contender: tokio multi-thread with 2 workers (one per core of the
/// reference machine); the future runs as a task on a worker, as application code would.
fn on_fresh_runtime<T: Send + 'static>(
	limit: Duration,
	future: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
	let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
	let result = runtime.block_on(async {
		match tokio::time::timeout(limit, tokio::spawn(future)).await {
			Err(_) => Err(format!("timed out after {limit:?}").into()),
			Ok(Err(join)) => Err(format!("task failed: {join}").into()),
			Ok(Ok(result)) => result,
		}
	});
	// How the run used the workers, on the progress output (stderr): raw tokio's echoes keep
	// both ends on one worker (about 1.1 s / 0.0 s), and a run that wakes the second worker for
	// every turn shows as two busy ones.
	let metrics = runtime.metrics();
	let busy: Vec<String> = (0..metrics.num_workers())
		.map(|worker| format!("{:.2} s", metrics.worker_total_busy_duration(worker).as_secs_f64()))
		.collect();
	eprintln!("  workers busy: {}", busy.join(" / "));
	// Drops whatever is left (a contender's tasks after a failure) and closes its sockets.
	runtime.shutdown_timeout(Duration::from_secs(1));
	result
}
