//! Summaries of repeated measurements, percentiles, and the figures of the report.

use serde_json::{Value, json};

/// Median, min and max of the repeats of one measurement (and the repeats themselves).
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) reps: Vec<f64>,
}

impl Summary {
    /// Summary of `reps` (at least one value).
    pub(crate) fn of(reps: &[f64]) -> Self {
        let mut sorted = reps.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Self {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            reps: reps.to_vec(),
        }
    }

    pub(crate) fn json(&self) -> Value {
        json!({"median": self.median, "min": self.min, "max": self.max, "reps": self.reps})
    }
}

/// Nearest-rank percentile `q` (0..=1) of `samples`.
pub(crate) fn percentile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = (q * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// Per-repetition `q` percentiles of `reps` (one sample set per repetition).
pub(crate) fn per_rep(reps: &[Vec<f64>], q: f64) -> Vec<f64> {
    reps.iter().map(|s| percentile(s, q)).collect()
}

/// The samples of all repetitions together: their count, p50, p99 and max.
pub(crate) fn pooled(reps: &[Vec<f64>]) -> Value {
    let all: Vec<f64> = reps.iter().flatten().copied().collect();
    json!({
        "n": all.len(),
        "p50": percentile(&all, 0.5),
        "p99": percentile(&all, 0.99),
        "max": percentile(&all, 1.0),
    })
}

/// The p50 and p99 figures (milliseconds) of a latency measured in several repetitions,
/// each against the same percentile of a baseline measured in the same repetitions: ids
/// `{id}.p50` and `{id}.p99`, names and baseline labels suffixed with the percentile.
/// `p99_target`, when given, holds the p99 figure.
pub(crate) fn percentile_pair(
    id: &str,
    name: &str,
    samples: &[Vec<f64>],
    baseline: &str,
    base: &[Vec<f64>],
    p99_target: Option<Target>,
) -> [Figure; 2] {
    let figure = |q: f64, label: &str| {
        Figure::new(
            &format!("{id}.{label}"),
            &format!("{name} {label}"),
            Unit::Ms,
            &per_rep(samples, q),
        )
        .baseline(&format!("{baseline}, {label}"), Unit::Ms, &per_rep(base, q))
    };
    let p99 = figure(0.99, "p99");
    [
        figure(0.5, "p50"),
        match p99_target {
            Some(t) => p99.target(t),
            None => p99,
        },
    ]
}

/// Unit of a figure, which decides how it is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Operations per second.
    PerSec,
    /// Milliseconds.
    Ms,
    /// Seconds.
    Secs,
    /// Bytes.
    Bytes,
    /// A dimensionless factor.
    Factor,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Self::PerSec => "per_second",
            Self::Ms => "milliseconds",
            Self::Secs => "seconds",
            Self::Bytes => "bytes",
            Self::Factor => "factor",
        }
    }

    pub(crate) fn fmt(self, v: f64) -> String {
        if !v.is_finite() {
            return "n/a".into();
        }
        match self {
            Self::PerSec if v >= 100.0 => format!("{}/s", group(v.round())),
            Self::PerSec => format!("{v:.1}/s"),
            Self::Ms if v < 1.0 => format!("{:.0} µs", v * 1000.0),
            Self::Ms if v < 10.0 => format!("{v:.2} ms"),
            Self::Ms => format!("{v:.1} ms"),
            Self::Secs if v < 1.0 => Self::Ms.fmt(v * 1000.0),
            Self::Secs => format!("{v:.2} s"),
            Self::Bytes if v.abs() >= 10_000.0 => format!("{:.1} KB", v / 1000.0),
            Self::Bytes => format!("{v:.0} B"),
            Self::Factor => format!("{v:.2}x"),
        }
    }
}

fn group(v: f64) -> String {
    let s = format!("{v:.0}");
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// What a figure is held to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// The ratio to the baseline must be at least this.
    RatioAtLeast(f64),
    /// The ratio to the baseline must be at most this.
    RatioAtMost(f64),
    /// The value must be below this (in the figure's unit).
    ValueBelow(f64),
    /// The value must be at most this (in the figure's unit).
    ValueAtMost(f64),
}

impl Target {
    fn describe(self, unit: Unit) -> String {
        match self {
            Self::RatioAtLeast(r) => format!("ratio >= {r}"),
            Self::RatioAtMost(r) => format!("ratio <= {r}"),
            Self::ValueBelow(v) => format!("< {}", unit.fmt(v)),
            Self::ValueAtMost(v) => format!("<= {}", unit.fmt(v)),
        }
    }

    fn check(self, value: f64, ratio: Option<f64>) -> Option<bool> {
        match self {
            Self::RatioAtLeast(r) => ratio.map(|x| x >= r),
            Self::RatioAtMost(r) => ratio.map(|x| x <= r),
            Self::ValueBelow(v) => Some(value < v),
            Self::ValueAtMost(v) => Some(value <= v),
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone)]
pub(crate) struct Figure {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) unit: Unit,
    /// `None` when the figure could not be measured; `note` says why.
    pub(crate) value: Option<Summary>,
    /// Label and summary of the baseline measured in the same run.
    pub(crate) baseline: Option<(String, Unit, Summary)>,
    /// Ratio value / baseline, computed per repeat.
    pub(crate) ratio: Option<Summary>,
    pub(crate) target: Option<Target>,
    /// External reference point (not measured here).
    pub(crate) anchor: Option<String>,
    pub(crate) note: Option<String>,
}

impl Figure {
    pub(crate) fn new(id: &str, name: &str, unit: Unit, value: &[f64]) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            unit,
            value: Some(Summary::of(value)),
            baseline: None,
            ratio: None,
            target: None,
            anchor: None,
            note: None,
        }
    }

    /// A figure that could not be measured.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "every figure is measurable today; the report still renders one that is not"
        )
    )]
    pub(crate) fn unavailable(id: &str, name: &str, unit: Unit, why: &str) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            unit,
            value: None,
            baseline: None,
            ratio: None,
            target: None,
            anchor: None,
            note: Some(why.into()),
        }
    }

    /// Adds a baseline (one value per repeat, same order as the figure's repeats) and the
    /// per-repeat ratio.
    pub(crate) fn baseline(mut self, label: &str, unit: Unit, base: &[f64]) -> Self {
        if let Some(v) = &self.value {
            let ratios: Vec<f64> = v.reps.iter().zip(base).map(|(a, b)| a / b).collect();
            self.ratio = Some(Summary::of(&ratios));
        }
        self.baseline = Some((label.into(), unit, Summary::of(base)));
        self
    }

    pub(crate) fn target(mut self, t: Target) -> Self {
        self.target = Some(t);
        self
    }

    pub(crate) fn anchor(mut self, a: &str) -> Self {
        self.anchor = Some(a.into());
        self
    }

    pub(crate) fn note(mut self, n: &str) -> Self {
        self.note = Some(n.into());
        self
    }

    /// Pass/fail of the median against the target, if there is one.
    pub(crate) fn verdict(&self) -> Option<bool> {
        let t = self.target?;
        let v = self.value.as_ref()?;
        t.check(v.median, self.ratio.as_ref().map(|r| r.median))
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "unit": self.unit.name(),
            "value": self.value.as_ref().map(Summary::json),
            "baseline": self.baseline.as_ref().map(|(label, unit, s)| {
                let mut j = s.json();
                j["label"] = json!(label);
                j["unit"] = json!(unit.name());
                j
            }),
            "ratio": self.ratio.as_ref().map(Summary::json),
            "target": self.target.map(|t| t.describe(self.unit)),
            "pass": self.verdict(),
            "anchor": self.anchor,
            "note": self.note,
            "status": if self.value.is_some() { "measured" } else { "not available" },
        })
    }

    /// Table cells: figure, value, baseline, ratio, target, result. In a `quick` run the
    /// sizes are too small for a verdict: a figure with a target reads `info`, never
    /// PASS or FAIL.
    pub(crate) fn cells(&self, quick: bool) -> [String; 6] {
        let value = match &self.value {
            Some(v) if v.reps.len() > 1 => format!(
                "{} [{} – {}]",
                self.unit.fmt(v.median),
                self.unit.fmt(v.min),
                self.unit.fmt(v.max)
            ),
            Some(v) => self.unit.fmt(v.median),
            None => self.note.clone().unwrap_or_else(|| "not available".into()),
        };
        let baseline = self.baseline.as_ref().map_or_else(
            || "—".into(),
            |(l, u, s)| format!("{} ({l})", u.fmt(s.median)),
        );
        let ratio = self.ratio.as_ref().map_or_else(
            || "—".into(),
            |r| {
                if r.reps.len() > 1 {
                    format!("{:.3} [{:.3} – {:.3}]", r.median, r.min, r.max)
                } else {
                    format!("{:.3}", r.median)
                }
            },
        );
        let target = self
            .target
            .map_or_else(|| "—".into(), |t| t.describe(self.unit));
        let result = match (self.value.is_some(), self.verdict()) {
            (false, _) => "n/a".into(),
            (true, Some(_)) if quick => "info".into(),
            (true, Some(true)) => "PASS".into(),
            (true, Some(false)) => "FAIL".into(),
            (true, None) => "info".into(),
        };
        [self.name.clone(), value, baseline, ratio, target, result]
    }
}

/// Prints `figures` as an aligned text table (`quick`: see [`Figure::cells`]).
pub(crate) fn print_table(figures: &[Figure], quick: bool) {
    let header = [
        "figure".to_owned(),
        "value: median [min – max]".to_owned(),
        "baseline, same run (median)".to_owned(),
        "ratio: median [min – max]".to_owned(),
        "target".to_owned(),
        "result".to_owned(),
    ];
    let rows: Vec<[String; 6]> = figures.iter().map(|f| f.cells(quick)).collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String; 6]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        println!("| {} |", parts.join(" | "));
    };
    line(&header);
    let sep: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    println!("|-{}-|", sep.join("-|-"));
    for r in &rows {
        line(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_and_percentiles() {
        let s = Summary::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        assert_eq!(Summary::of(&[4.0, 1.0, 9.0]).median, 4.0);
        assert!(Summary::of(&[]).median.is_nan());
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
    }

    #[test]
    fn ratio_is_per_repeat_and_targets_judge_the_median() {
        let f = Figure::new("x", "1. x", Unit::PerSec, &[10.0, 30.0, 20.0])
            .baseline("raw", Unit::PerSec, &[100.0, 100.0, 40.0])
            .target(Target::RatioAtLeast(0.2));
        let r = f.ratio.as_ref().unwrap();
        assert_eq!((r.median, r.min, r.max), (0.3, 0.1, 0.5));
        assert_eq!(f.verdict(), Some(true));
        let j = f.json();
        assert_eq!(j["pass"], true);
        assert_eq!(j["value"]["median"], 20.0);
        let missing = Figure::unavailable("y", "3. y", Unit::Ms, "not available (why)")
            .target(Target::ValueBelow(100.0));
        assert_eq!(missing.verdict(), None);
        assert_eq!(missing.json()["status"], "not available");
        assert_eq!(missing.cells(false)[1], "not available (why)");
        assert_eq!(missing.cells(false)[5], "n/a");
        assert_eq!(f.cells(false)[5], "PASS");
        // A quick run gives no verdict, passing or failing.
        assert_eq!(f.cells(true)[5], "info");
        let failing =
            Figure::new("z", "1. z", Unit::Ms, &[500.0]).target(Target::ValueBelow(100.0));
        assert_eq!(failing.cells(false)[5], "FAIL");
        assert_eq!(failing.cells(true)[5], "info");
    }

    #[test]
    fn units_print_readably() {
        assert_eq!(Unit::PerSec.fmt(12_345.4), "12,345/s");
        assert_eq!(Unit::Ms.fmt(0.25), "250 µs");
        assert_eq!(Unit::Secs.fmt(0.5), "500.0 ms");
        assert_eq!(Unit::Bytes.fmt(1234.0), "1234 B");
        assert_eq!(Unit::Factor.fmt(f64::NAN), "n/a");
    }
}
