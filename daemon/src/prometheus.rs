//! Prometheus text exposition (format 0.0.4), written by hand: a handful of
//! counters, gauges and histograms do not need a metrics library.

use std::fmt::{Display, Write as _};

/// A Prometheus text exposition being written.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Exposition {
            out: String::with_capacity(16 << 10),
        }
    }

    /// `# HELP` (when `help` is not empty) and `# TYPE` lines of a family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        if !help.is_empty() {
            let _ = writeln!(self.out, "# HELP {name} {help}");
        }
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    /// One sample, with labels (`[("op", "put")]`) or none.
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl Display,
    ) -> &mut Self {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// A counter family with one unlabelled sample.
    pub fn counter(&mut self, name: &str, help: &str, value: impl Display) -> &mut Self {
        self.family(name, "counter", help).sample(name, &[], value)
    }

    /// A gauge family with one unlabelled sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: impl Display) -> &mut Self {
        self.family(name, "gauge", help).sample(name, &[], value)
    }

    /// The samples of one histogram (its family line written separately):
    /// `counts[i]` observations fell in bucket `i` (upper bound `bounds[i]`;
    /// a count past the last bound goes to `+Inf`), `count` in all.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        bounds: &[impl Display],
        counts: impl IntoIterator<Item = u64>,
        sum: impl Display,
        count: u64,
    ) -> &mut Self {
        let mut cumulative = 0;
        let mut counts = counts.into_iter();
        for bound in bounds {
            cumulative += counts.next().unwrap_or(0);
            let _ = write!(self.out, "{name}_bucket");
            write_labels(&mut self.out, labels, Some(&bound.to_string()));
            let _ = writeln!(self.out, " {cumulative}");
        }
        let _ = write!(self.out, "{name}_bucket");
        write_labels(&mut self.out, labels, Some("+Inf"));
        let _ = writeln!(self.out, " {count}");
        let _ = write!(self.out, "{name}_sum");
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {sum}");
        let _ = write!(self.out, "{name}_count");
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {count}");
        self
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{k}=\"{v}\"");
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_families_samples_and_cumulative_histograms() {
        let mut e = Exposition::new();
        e.counter("c_total", "Things.", 3)
            .gauge("g", "", 1.5)
            .family("h_seconds", "histogram", "Latency.")
            .histogram(
                "h_seconds",
                &[("op", "get")],
                &[0.1, 1.0],
                [2, 3, 4],
                7.5,
                9,
            );
        let text = e.finish();
        assert_eq!(
            text,
            "# HELP c_total Things.\n# TYPE c_total counter\nc_total 3\n\
             # TYPE g gauge\ng 1.5\n\
             # HELP h_seconds Latency.\n# TYPE h_seconds histogram\n\
             h_seconds_bucket{op=\"get\",le=\"0.1\"} 2\n\
             h_seconds_bucket{op=\"get\",le=\"1\"} 5\n\
             h_seconds_bucket{op=\"get\",le=\"+Inf\"} 9\n\
             h_seconds_sum{op=\"get\"} 7.5\nh_seconds_count{op=\"get\"} 9\n"
        );
    }
}
