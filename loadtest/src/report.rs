//! Shared arithmetic and printing for the scenarios: percentiles, median and min–max over runs, the table.

use serde_json::{Value, json};

/// Median, min and max of one measurement over the runs.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// Over the runs' values (NaN, for "not measured in this run", is left out; all NaN gives NaN).
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut sorted: Vec<f64> = values.into_iter().filter(|v| !v.is_nan()).collect();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return Self {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        Self {
            median: sorted[sorted.len() / 2],
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        }
    }

    pub fn json(self) -> Value {
        json!({"median": finite(self.median), "min": finite(self.min), "max": finite(self.max)})
    }
}

/// `Some(test(value))`, or `None` when the value was not measured (NaN).
pub fn verdict(value: f64, test: impl FnOnce(f64) -> bool) -> Option<bool> {
    (!value.is_nan()).then(|| test(value))
}

fn finite(value: f64) -> Value {
    if value.is_finite() {
        json!(value)
    } else {
        Value::Null
    }
}

/// Nearest-rank percentile of `values` (sorted here); NaN when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// One row of the printed table.
pub struct Row {
    pub label: String,
    pub spread: Spread,
    pub unit: &'static str,
}

impl Row {
    pub fn new(label: impl Into<String>, spread: Spread, unit: &'static str) -> Self {
        Self {
            label: label.into(),
            spread,
            unit,
        }
    }
}

/// Prints the table: measurement, median, min – max.
pub fn print_table(rows: &[Row]) {
    let width = rows
        .iter()
        .map(|r| r.label.chars().count())
        .max()
        .unwrap_or(0)
        .max(11);
    println!();
    println!(
        "{:<width$} {:>12} {:>26}",
        "measurement", "median", "min – max"
    );
    // A phase that was skipped leaves NaN: its rows are left out.
    for row in rows.iter().filter(|r| !r.spread.median.is_nan()) {
        let Spread { median, min, max } = row.spread;
        println!(
            "{:<width$} {median:>12.1} {:<7} {min:>10.1} – {max:.1}",
            row.label, row.unit
        );
    }
    println!();
}

/// Verdict lines against the targets; `None` is a target whose phase did not run.
pub fn print_verdicts(verdicts: &[(String, Option<bool>)]) {
    for (text, met) in verdicts {
        let word = match met {
            Some(true) => "met:   ",
            Some(false) => "MISSED:",
            None => "not measured:",
        };
        println!("  {word} {text}");
    }
    println!();
}
