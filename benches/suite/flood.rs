//! Scenario 5: a writer floods stream messages at a reader that takes at most 10,000 a second.
//! With bounded queues the process's peak memory is reached once the queues are full and stays
//! there; with an unbounded queue anywhere it grows with the length of the flood.
//!
//! Each flood runs in a child process of its own (this binary, re-run with `--flood-child`), so
//! its memory figures start from a clean process instead of whatever earlier scenarios left in
//! the allocator. Writer and reader share that process: its peak covers the queues on both
//! sides of the connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::contender::{BoxError, Client, Contender, Result, Server};
use crate::transport::Transport;

/// A flood that grows past this is stopped: the point is made.
const LIMIT_KIB: u64 = 2 << 20;

/// Growth over the whole flood that is bounded whatever the timing: far above what peerwire's
/// default budgets allow for 64-byte messages, far below what an unbounded queue reaches.
const ALLOWANCE_KIB: u64 = 32 << 10;

#[derive(Debug, Clone)]
pub struct FloodPlan {
	pub duration: Duration,
	/// When the first peak is read; the second is read at the end.
	pub checkpoint: Duration,
}

#[derive(Debug, Clone)]
pub struct FloodReport {
	/// Resident memory after connecting, before the flood.
	pub before_kib: u64,
	/// The process's peak resident memory at the checkpoint and at the end.
	pub peak_at_checkpoint_kib: u64,
	pub peak_at_end_kib: u64,
	pub sent: u64,
	pub received: u64,
	/// How long the writer ran.
	pub ran_for: Duration,
	/// Set when the flood was stopped early for growing past the limit.
	pub stopped_early: bool,
}

impl FloodReport {
	/// The peak did not move between the checkpoint and the end (within 1 MiB or 5 %), or the
	/// whole flood grew the process by less than [`ALLOWANCE_KIB`]. The second test holds on a
	/// loaded machine too, where the queues may not be full yet at an early checkpoint.
	pub fn bounded(&self) -> bool {
		let growth = self.peak_at_end_kib.saturating_sub(self.peak_at_checkpoint_kib);
		let total = self.peak_at_end_kib.saturating_sub(self.before_kib);
		!self.stopped_early && (growth <= (1 << 10).max(self.peak_at_checkpoint_kib / 20) || total <= ALLOWANCE_KIB)
	}

	fn to_line(&self) -> String {
		format!(
			"{} {} {} {} {} {} {}",
			self.before_kib,
			self.peak_at_checkpoint_kib,
			self.peak_at_end_kib,
			self.sent,
			self.received,
			self.ran_for.as_millis(),
			self.stopped_early
		)
	}

	fn from_line(line: &str) -> Option<Self> {
		let fields: Vec<&str> = line.split_whitespace().collect();
		let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
		Some(Self {
			before_kib: number(0)?,
			peak_at_checkpoint_kib: number(1)?,
			peak_at_end_kib: number(2)?,
			sent: number(3)?,
			received: number(4)?,
			ran_for: Duration::from_millis(number(5)?),
			stopped_early: fields.get(6)?.parse().ok()?,
		})
	}
}

/// Resident and peak resident memory of this process, in KiB.
fn memory() -> Result<(u64, u64)> {
	let status = std::fs::read_to_string("/proc/self/status")?;
	let field = |name: &str| -> Result<u64> {
		let line = status.lines().find(|line| line.starts_with(name)).ok_or("no such field in /proc/self/status")?;
		Ok(line[name.len()..].trim().trim_end_matches("kB").trim().parse()?)
	};
	Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// The flood itself, in the child process. Memory is read by a thread of its own at fixed
/// times, since the writer may spend seconds waiting for room (a TCP window reopens only once the
/// reader has drained a good part of it).
pub async fn flood<C: Contender>(transport: Transport, plan: &FloodPlan) -> Result<FloodReport> {
	let server = Server::slow();
	let received = server.received.clone();
	let mut client = C::connect(transport, server).await?;
	let (before_kib, _) = memory()?;
	let stop = Arc::new(AtomicBool::new(false));
	let sampler = {
		let (plan, stop) = (plan.clone(), stop.clone());
		std::thread::spawn(move || sample(&plan, &stop))
	};
	let body = Bytes::from(vec![0; 64]);
	let start = Instant::now();
	let mut sent = 0;
	let writer = async {
		while !stop.load(Ordering::Relaxed) {
			client.send_stream(body.clone()).await?;
			sent += 1;
		}
		Ok::<_, BoxError>(())
	};
	// Either the sampler stops the writer, or the writer is waiting for room at the end.
	if let Ok(result) = tokio::time::timeout(plan.duration, writer).await {
		result?;
	}
	let ran_for = start.elapsed();
	stop.store(true, Ordering::Relaxed);
	let (peak_at_checkpoint_kib, peak_at_end_kib, stopped_early) =
		tokio::task::spawn_blocking(move || sampler.join()).await?.map_err(|_| "sampler panicked")??;
	Ok(FloodReport {
		before_kib,
		peak_at_checkpoint_kib,
		peak_at_end_kib,
		sent,
		received: received.load(Ordering::Relaxed),
		ran_for,
		stopped_early,
	})
}

/// The peak at the checkpoint and at the end, and whether the limit was hit; sets `stop` at the
/// end or at the limit.
fn sample(plan: &FloodPlan, stop: &AtomicBool) -> Result<(u64, u64, bool)> {
	let start = Instant::now();
	let mut at_checkpoint = None;
	loop {
		std::thread::sleep(Duration::from_millis(10));
		let (rss, peak) = memory()?;
		if start.elapsed() >= plan.checkpoint && at_checkpoint.is_none() {
			at_checkpoint = Some(peak);
		}
		let over = rss > LIMIT_KIB;
		if over || stop.load(Ordering::Relaxed) || start.elapsed() >= plan.duration {
			stop.store(true, Ordering::Relaxed);
			return Ok((at_checkpoint.unwrap_or(peak), peak, over));
		}
	}
}

/// In the parent: run one flood in a fresh child process.
pub fn run_in_child(
	contender: &str,
	transport: Transport,
	plan: &FloodPlan,
) -> std::result::Result<FloodReport, String> {
	let output = std::process::Command::new(std::env::current_exe().map_err(|error| error.to_string())?)
		.args(["--flood-child", contender, transport.name()])
		.args([plan.duration.as_millis().to_string(), plan.checkpoint.as_millis().to_string()])
		.stderr(std::process::Stdio::inherit())
		.output()
		.map_err(|error| error.to_string())?;
	let stdout = String::from_utf8_lossy(&output.stdout);
	let last = stdout.lines().last().unwrap_or_default();
	if let Some(error) = last.strip_prefix("error ") {
		return Err(error.to_string());
	}
	FloodReport::from_line(last).ok_or_else(|| format!("child exited with {}: {stdout:?}", output.status))
}

/// The child's `main`: `--flood-child CONTENDER TRANSPORT DURATION_MS CHECKPOINT_MS`.
pub fn child_main(args: &[String]) -> std::process::ExitCode {
	let parsed = (|| {
		let entry = crate::contender::by_name(args.first()?)?;
		let transport = Transport::from_name(args.get(1)?)?;
		let millis = |i: usize| Some(Duration::from_millis(args.get(i)?.parse().ok()?));
		Some((entry, transport, FloodPlan { duration: millis(2)?, checkpoint: millis(3)? }))
	})();
	let Some((entry, transport, plan)) = parsed else {
		println!("error bad arguments: {args:?}");
		return std::process::ExitCode::FAILURE;
	};
	match entry.flood(transport, &plan) {
		Ok(report) => println!("{}", report.to_line()),
		Err(error) => println!("error {error}"),
	}
	std::process::ExitCode::SUCCESS
}
