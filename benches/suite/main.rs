//! The benchmark suite: peerwire side by side with fizyr-rpc 0.8 and two hand-written baselines,
//! on every transport, in one run, printing a markdown report with the ratio table. What it
//! measures and the results: BENCHMARKS.md.
//!
//! ```text
//! cargo bench --bench suite --features unix-seqpacket              # the full suite (~6 minutes)
//! cargo bench --bench suite --features unix-seqpacket -- --quick   # smoke run: each scenario briefly
//! cargo test --all-features --bench suite -- --quick               # the smoke run in CI (debug build)
//! cargo bench --bench suite -- --reps 3                            # fewer (or more) repetitions
//! cargo bench --bench suite -- --only "bulk tcp peerwire"          # only the runs whose labels match
//! cargo bench --bench suite --features unix-seqpacket,tls -- --only tls   # TLS against plain TCP
//! cargo bench --bench suite -- --trace debug                       # with a tracing subscriber
//! ```
//!
//! `--trace info` or `--trace debug` installs a `tracing-subscriber` formatter writing to a sink
//! at that level, to measure what peerwire's logs and per-request spans cost: at `info` the
//! request spans are filtered out, at `debug` every request opens and closes one. Without it no
//! subscriber is installed.
//!
//! Without the `unix-seqpacket` feature only TCP and Unix stream run; the `tls` feature adds
//! peerwire over TLS (the other contenders have no TLS), each run paired with peerwire over plain
//! TCP in the same repetition (run as well when `--only` leaves it out) for the TLS / TCP table. Progress goes to stderr,
//! the report to stdout. The exit status is non-zero when something that must work failed (a
//! peerwire or baseline run that errors, the integrity check, a peerwire flood that errors or is
//! not bounded), never for a missed performance target nor for a baseline that measured nothing
//! in its window (shown as "stalled"): timings on shared machines are not a gate.

mod contender;
mod flood;
mod library;
mod raw;
mod report;
mod scenario;
mod transport;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use flood::FloodPlan;
use report::{PEERWIRE, Results, Run};
use scenario::{Plan, Scenario};
use transport::Transport;

/// The body of the integrity check.
const INTEGRITY_LEN: usize = 64 << 20;

struct Options {
	quick: bool,
	reps: usize,
	/// Words every label of a run must contain (case-insensitive), e.g. "bulk tcp".
	only: Vec<String>,
	plan: Plan,
	flood: FloodPlan,
	/// The level of the tracing subscriber to install, if any.
	trace: Option<tracing::Level>,
}

impl Options {
	fn parse(args: &[String]) -> Result<Self, String> {
		let quick = args.iter().any(|arg| arg == "--quick");
		let mut options = if quick {
			Options {
				quick,
				reps: 1,
				only: Vec::new(),
				plan: Plan { warmup: Duration::from_millis(20), measure: Duration::from_millis(50) },
				flood: FloodPlan { duration: Duration::from_millis(600), checkpoint: Duration::from_millis(200) },
				trace: None,
			}
		} else {
			Options {
				quick,
				reps: 5,
				only: Vec::new(),
				plan: Plan { warmup: Duration::from_millis(200), measure: Duration::from_secs(1) },
				flood: FloodPlan { duration: Duration::from_secs(10), checkpoint: Duration::from_secs(2) },
				trace: None,
			}
		};
		let mut args = args.iter();
		while let Some(arg) = args.next() {
			match arg.as_str() {
				// `cargo bench` passes --bench to every bench binary.
				"--quick" | "--bench" => {},
				"--reps" => {
					options.reps =
						args.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0).ok_or("--reps needs a count")?
				},
				"--only" => {
					let words = args.next().ok_or("--only needs words to match")?;
					options.only = words.split_whitespace().map(str::to_lowercase).collect();
				},
				"--trace" => {
					options.trace = match args.next().map(String::as_str) {
						Some("off") => None,
						Some("info") => Some(tracing::Level::INFO),
						Some("debug") => Some(tracing::Level::DEBUG),
						_ => return Err("--trace needs a level: off, info or debug".into()),
					}
				},
				other => {
					return Err(format!(
						"unknown argument {other:?}; use --quick, --reps N, --only WORDS, --trace LEVEL"
					));
				},
			}
		}
		Ok(options)
	}

	/// Whether the run labelled `label` is selected by `--only`: every word must begin one of
	/// the label's words ("unix" selects both unix transports, "stream" only the scenario).
	fn selects(&self, label: &str) -> bool {
		let label = label.to_lowercase();
		self.only.iter().all(|word| label.split_whitespace().any(|token| token.starts_with(word.as_str())))
	}
}

fn main() -> ExitCode {
	let args: Vec<String> = std::env::args().skip(1).collect();
	if args.first().is_some_and(|arg| arg == "--flood-child") {
		return flood::child_main(&args[1..]);
	}
	let options = match Options::parse(&args) {
		Ok(options) => options,
		Err(error) => {
			eprintln!("{error}");
			return ExitCode::FAILURE;
		},
	};
	if let Some(level) = options.trace {
		// Formatted in full (the work a real subscriber does), then thrown away.
		tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::sink).init();
	}
	let started = Instant::now();
	let load_before = load_average();
	let results = run(&options);
	print_report(&options, &results, &load_before, started.elapsed());
	if results.broken(options.quick) {
		eprintln!("something that must work failed: see the report");
		return ExitCode::FAILURE;
	}
	ExitCode::SUCCESS
}

fn run(options: &Options) -> Results {
	let entries = contender::all();
	let mut results = Results { contenders: entries.iter().map(|entry| entry.name()).collect(), ..Default::default() };
	for rep in 0..options.reps {
		for &scenario in Scenario::ALL {
			for &transport in Transport::ALL {
				// Rotate the order so that no contender always runs first (or right after the
				// same neighbour).
				for i in 0..entries.len() {
					let entry = entries[(i + rep) % entries.len()];
					let label = format!("{} {} {}", scenario.label(), transport.name(), entry.name());
					if !scenario.applies_to(transport)
						|| !entry.speaks(transport)
						|| !scenario.runs_for(entry.name())
						|| !options.selects(&label)
					{
						continue;
					}
					if !transport.is_plain() {
						// The plain TCP run of the same repetition, for the TLS / TCP ratio.
						let tcp = format!("{} {} {}", scenario.label(), Transport::Tcp.name(), entry.name());
						if !options.selects(&tcp) {
							let outcome = entry.run(scenario, Transport::Tcp, &options.plan);
							eprintln!("[{}/{}] {tcp} (beside {label}): {outcome:?}", rep + 1, options.reps);
							let contender = entry.name();
							results.runs.push(Run { rep, scenario, transport: Transport::Tcp, contender, outcome });
						}
					}
					let outcome = entry.run(scenario, transport, &options.plan);
					eprintln!("[{}/{}] {label}: {outcome:?}", rep + 1, options.reps);
					results.runs.push(Run { rep, scenario, transport, contender: entry.name(), outcome });
				}
			}
		}
	}
	let peerwire = contender::by_name(PEERWIRE).expect("peerwire is a contender");
	for &transport in Transport::ALL {
		let label = format!("integrity {} {PEERWIRE}", transport.name());
		if INTEGRITY_LEN <= transport.max_body() && options.selects(&label) {
			let result = peerwire.integrity(transport, INTEGRITY_LEN);
			eprintln!("{label}: {result:?}");
			results.integrity.push((transport, INTEGRITY_LEN, result));
		}
	}
	// Only the libraries have queues to bound; the baselines have none.
	for &transport in Transport::ALL {
		for contender in [PEERWIRE, "fizyr-rpc"] {
			let label = format!("flood {} {contender}", transport.name());
			let speaks = contender::by_name(contender).is_some_and(|entry| entry.speaks(transport));
			if speaks && options.selects(&label) {
				let report = flood::run_in_child(contender, transport, &options.flood);
				eprintln!("{label}: {report:?}");
				results.floods.push((transport, contender, report));
			}
		}
	}
	results
}

fn print_report(options: &Options, results: &Results, load_before: &str, elapsed: Duration) {
	let cpu = std::fs::read_to_string("/proc/cpuinfo")
		.ok()
		.and_then(|info| {
			info.lines()
				.find(|line| line.starts_with("model name"))
				.map(|line| line.split(':').nth(1).unwrap_or("").trim().to_string())
		})
		.unwrap_or_else(|| "unknown".into());
	let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
	let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
	println!(
		"## peerwire benchmark suite{}\n",
		if options.quick { " (quick smoke run: timings mean nothing)" } else { "" }
	);
	println!("- machine: {cpu}, {cores} cores, Linux {}", kernel.trim());
	println!("- load average (1, 5, 15 min) before: {load_before}; after: {}", load_average());
	println!(
		"- {} repetitions; each run warms up {:?} then measures {:?}, on a fresh tokio multi-thread runtime with 2 workers",
		options.reps, options.plan.warmup, options.plan.measure
	);
	let trace =
		options.trace.map_or("none".to_string(), |level| format!("tracing-subscriber fmt to a sink, at {level}"));
	println!("- tracing subscriber: {trace}");
	println!("- whole suite took {:.0} s\n", elapsed.as_secs_f64());
	println!("{}", results.ratio_table());
	if let Some(table) = results.security_table() {
		println!(
			"peerwire over TLS against peerwire over plain TCP, same repetition (TLS / TCP: above 1 is slower for µs, faster for rates):\n"
		);
		println!("{table}");
	}
	println!("{}", results.integrity_table());
	println!(
		"Flood of 64-byte stream messages at a reader taking at most 10,000 a second; peak = VmHWM of the process:\n"
	);
	println!("{}", results.flood_table(options.flood.checkpoint));
}

fn load_average() -> String {
	let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
	load.split_whitespace().take(3).collect::<Vec<_>>().join(", ")
}
