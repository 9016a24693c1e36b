//! Everything measured, in one structure, and the tables made from it.
//!
//! A cell shows the median over the repetitions and its spread (half the range, as a share of
//! the median). A ratio is peerwire / the other contender, taken per repetition (the contenders
//! of one repetition run back to back, so their conditions match) and summarised as the median
//! with the lowest and highest in brackets.

use std::fmt::Write as _;
use std::time::Duration;

use crate::flood::FloodReport;
use crate::scenario::{Metric, Scenario, Unit};
use crate::transport::Transport;

pub const PEERWIRE: &str = "peerwire";

/// One run of one scenario.
pub struct Run {
	pub rep: usize,
	pub scenario: Scenario,
	pub transport: Transport,
	pub contender: &'static str,
	pub outcome: Outcome,
}

/// What one run of one scenario gave.
#[derive(Debug)]
pub enum Outcome {
	/// One value per metric of the scenario.
	Measured(Vec<f64>),
	/// The receiver counted nothing in the measured window. Shown as "stalled"; it breaks the
	/// suite only for peerwire in a full run (in a quick run's short window on a loaded machine
	/// it says nothing).
	Stalled,
	/// The run did not work: an error, a wrong response, a timeout.
	Failed(String),
}

#[derive(Default)]
pub struct Results {
	pub contenders: Vec<&'static str>,
	pub runs: Vec<Run>,
	pub integrity: Vec<(Transport, usize, Result<Duration, String>)>,
	pub floods: Vec<(Transport, &'static str, Result<FloodReport, String>)>,
}

/// The `q` quantile of sorted values (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
	if sorted.is_empty() {
		return f64::NAN;
	}
	let rank = (q * sorted.len() as f64).ceil() as usize;
	sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median, and the spread as half the range over the median.
fn summarise(values: &[f64]) -> (f64, f64) {
	let mut sorted = values.to_vec();
	sorted.sort_by(f64::total_cmp);
	let median = quantile(&sorted, 0.5);
	let spread = if median > 0.0 { (sorted[sorted.len() - 1] - sorted[0]) / 2.0 / median } else { 0.0 };
	(median, spread)
}

fn format_value(value: f64, unit: Unit) -> String {
	match unit {
		Unit::Micros => format!("{value:.1} µs"),
		Unit::PerSecond if value >= 1e6 => format!("{:.2} M/s", value / 1e6),
		Unit::PerSecond => format!("{:.1} k/s", value / 1e3),
		Unit::MibPerSecond => format!("{value:.0} MiB/s"),
	}
}

impl Results {
	/// Each repetition's value of one metric for one contender; `Err` for a failed run.
	fn values(
		&self,
		scenario: Scenario,
		metric: usize,
		transport: Transport,
		contender: &str,
	) -> Vec<(usize, Result<f64, &str>)> {
		self.runs
			.iter()
			.filter(|run| run.scenario == scenario && run.transport == transport && run.contender == contender)
			.map(|run| {
				let value = match &run.outcome {
					Outcome::Measured(values) => Ok(values[metric]),
					Outcome::Stalled => Err("stalled"),
					Outcome::Failed(error) => Err(error.as_str()),
				};
				(run.rep, value)
			})
			.collect()
	}

	fn cell(&self, scenario: Scenario, metric: usize, transport: Transport, contender: &str) -> String {
		let values = self.values(scenario, metric, transport, contender);
		let good: Vec<f64> = values.iter().filter_map(|(_, value)| value.ok()).collect();
		let failed: Vec<&str> = values.iter().filter_map(|(_, value)| value.err()).collect();
		if good.is_empty() {
			return match failed.first() {
				Some(&"stalled") => "stalled".into(),
				Some(error) => format!("**fails** ({error})"),
				None => "—".into(),
			};
		}
		let (median, spread) = summarise(&good);
		let mut cell = format!("{} ±{:.0}%", format_value(median, scenario.metrics()[metric].unit), spread * 100.0);
		if !failed.is_empty() {
			let _ = write!(cell, " ({} of {} runs fail: {})", failed.len(), values.len(), failed[0]);
		}
		cell
	}

	/// The per-repetition ratios peerwire / `other`, summarised as (median, lowest, highest).
	pub fn ratio(
		&self,
		scenario: Scenario,
		metric: usize,
		transport: Transport,
		other: &str,
	) -> Option<(f64, f64, f64)> {
		let others = self.values(scenario, metric, transport, other);
		let mut ratios: Vec<f64> = self
			.values(scenario, metric, transport, PEERWIRE)
			.into_iter()
			.filter_map(|(rep, value)| {
				let (_, theirs) = others.iter().find(|(their_rep, _)| *their_rep == rep)?;
				Some(value.ok()? / theirs.ok()?)
			})
			.collect();
		if ratios.is_empty() {
			return None;
		}
		ratios.sort_by(f64::total_cmp);
		Some((quantile(&ratios, 0.5), ratios[0], ratios[ratios.len() - 1]))
	}

	fn targets(&self, scenario: Scenario, metric_index: usize, transport: Transport, metric: &Metric) -> String {
		if metric.targets.is_empty() {
			return "none (measured only)".into();
		}
		let verdicts: Vec<String> = metric
			.targets
			.iter()
			.filter(|target| target.on.covers(transport.is_datagram()))
			.map(|target| {
				let (sign, met) = match self.ratio(scenario, metric_index, transport, target.against) {
					None => (if metric.unit.higher_is_better() { "≥" } else { "≤" }, "n/a"),
					Some((ratio, ..)) if metric.unit.higher_is_better() => {
						("≥", if ratio >= target.bound { "met" } else { "**missed**" })
					},
					Some((ratio, ..)) => ("≤", if ratio <= target.bound { "met" } else { "**missed**" }),
				};
				format!("{sign} {}× {}: {met}", target.bound, target.against)
			})
			.collect();
		verdicts.join("; ")
	}

	/// The main table: every metric, transport and contender, with the ratios and targets.
	pub fn ratio_table(&self) -> String {
		let others: Vec<&str> = self.contenders.iter().copied().filter(|name| *name != PEERWIRE).collect();
		let mut out = String::new();
		let headers: Vec<String> = ["metric", "transport"]
			.into_iter()
			.map(String::from)
			.chain(self.contenders.iter().map(|name| name.to_string()))
			.chain(others.iter().map(|name| format!("{PEERWIRE} / {name}")))
			.chain(["targets (ratio of medians)".into()])
			.collect();
		let _ = writeln!(out, "| {} |", headers.join(" | "));
		let _ = writeln!(out, "|{}", "---|".repeat(headers.len()));
		for &scenario in Scenario::ALL {
			for (index, metric) in scenario.metrics().iter().enumerate() {
				for &transport in Transport::ALL {
					if !self.runs.iter().any(|run| run.scenario == scenario && run.transport == transport) {
						continue;
					}
					let mut row = vec![metric.name.to_string(), transport.name().to_string()];
					row.extend(self.contenders.iter().map(|name| self.cell(scenario, index, transport, name)));
					row.extend(others.iter().map(|name| match self.ratio(scenario, index, transport, name) {
						Some((median, low, high)) => format!("{median:.2} ({low:.2}–{high:.2})"),
						None => "—".into(),
					}));
					row.push(self.targets(scenario, index, transport, metric));
					let _ = writeln!(out, "| {} |", row.join(" | "));
				}
			}
		}
		out
	}

	/// peerwire over each transport that is not plain (TLS) beside peerwire over plain TCP, with
	/// the per-repetition ratio; `None` when no such run was made.
	pub fn security_table(&self) -> Option<String> {
		let secured: Vec<Transport> = Transport::ALL
			.iter()
			.copied()
			.filter(|transport| !transport.is_plain() && self.runs.iter().any(|run| run.transport == *transport))
			.collect();
		if secured.is_empty() {
			return None;
		}
		let mut out = String::from(
			"| metric | transport | peerwire tcp | peerwire over it | it / tcp |\n|---|---|---|---|---|\n",
		);
		for transport in secured {
			for &scenario in Scenario::ALL {
				for (index, metric) in scenario.metrics().iter().enumerate() {
					if !self.runs.iter().any(|run| run.scenario == scenario && run.transport == transport) {
						continue;
					}
					let tcp = self.values(scenario, index, Transport::Tcp, PEERWIRE);
					let mut ratios: Vec<f64> = self
						.values(scenario, index, transport, PEERWIRE)
						.into_iter()
						.filter_map(|(rep, value)| {
							let (_, plain) = tcp.iter().find(|(plain_rep, _)| *plain_rep == rep)?;
							Some(value.ok()? / plain.ok()?)
						})
						.collect();
					ratios.sort_by(f64::total_cmp);
					let ratio = match ratios.as_slice() {
						[] => "—".to_string(),
						[low, .., high] => format!("{:.2} ({low:.2}–{high:.2})", quantile(&ratios, 0.5)),
						[only] => format!("{only:.2}"),
					};
					let _ = writeln!(
						out,
						"| {} | {} | {} | {} | {ratio} |",
						metric.name,
						transport.name(),
						self.cell(scenario, index, Transport::Tcp, PEERWIRE),
						self.cell(scenario, index, transport, PEERWIRE),
					);
				}
			}
		}
		Some(out)
	}

	pub fn integrity_table(&self) -> String {
		let mut out = String::from("| transport | peerwire echo of | result |\n|---|---|---|\n");
		for (transport, len, result) in &self.integrity {
			let result = match result {
				Ok(elapsed) => format!("every byte intact ({:.0} ms)", elapsed.as_secs_f64() * 1e3),
				Err(error) => format!("**fails**: {error}"),
			};
			let _ = writeln!(out, "| {} | {} MiB | {result} |", transport.name(), len >> 20);
		}
		out
	}

	pub fn flood_table(&self, checkpoint: Duration) -> String {
		let mut out = format!(
			"| transport | contender | RSS before | peak after {checkpoint:?} | peak at end | flood length | sent | received | bounded |\n|---|---|---|---|---|---|---|---|---|\n"
		);
		let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
		for (transport, contender, report) in &self.floods {
			let row = match report {
				Ok(report) => format!(
					"{} | {} | {} | {:.1} s{} | {} | {} | {}",
					mib(report.before_kib),
					mib(report.peak_at_checkpoint_kib),
					mib(report.peak_at_end_kib),
					report.ran_for.as_secs_f64(),
					if report.stopped_early { " (stopped: over 2 GiB)" } else { "" },
					report.sent,
					report.received,
					if report.bounded() { "yes" } else { "**no**" },
				),
				Err(error) => format!("**fails**: {error} | | | | | |"),
			};
			let _ = writeln!(out, "| {} | {contender} | {row} |", transport.name());
		}
		out
	}

	/// Whether something that must work did not: a peerwire or baseline run that failed, the
	/// integrity check, or a peerwire flood that failed or was not bounded. fizyr-rpc failing is
	/// a finding, not a broken suite; so is a stalled baseline, and a stalled peerwire run in a
	/// quick run, whose windows are too short to mean anything on a loaded machine.
	pub fn broken(&self, quick: bool) -> bool {
		self.runs.iter().any(|run| match run.outcome {
			Outcome::Measured(_) => false,
			Outcome::Stalled => run.contender == PEERWIRE && !quick,
			Outcome::Failed(_) => run.contender != "fizyr-rpc",
		}) || self.integrity.iter().any(|(_, _, result)| result.is_err())
			|| self.floods.iter().any(|(_, contender, report)| {
				*contender == PEERWIRE && !report.as_ref().is_ok_and(FloodReport::bounded)
			})
	}
}
