//! Boot timeline: every phase logs its start and duration, and the whole timeline is saved
//! for the user (like `cloud-init analyze`). It counts from the kernel's start of `/init` when
//! the kernel log tells when that was ([`Timeline::set_early`]): the row `early` is the time
//! before the first phase (loading the executable, the first mounts, the console).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// One finished phase.
#[derive(Debug, Clone)]
pub struct PhaseRecord {
    pub name: String,
    pub started_after: Duration,
    pub duration: Duration,
    pub ok: bool,
}

/// Collects phase timings since PID 1 started.
#[derive(Debug, Clone)]
pub struct Timeline {
    start: Instant,
    /// From the kernel's start of `/init` to `start`, when known.
    early: Option<Duration>,
    phases: Vec<PhaseRecord>,
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Timeline {
    pub fn new() -> Self {
        Timeline {
            start: Instant::now(),
            early: None,
            phases: Vec::new(),
        }
    }

    /// Records how long before this timeline's start the kernel started `/init`.
    pub fn set_early(&mut self, early: Duration) {
        self.early = Some(early);
    }

    /// Time since the timeline started (not counting `early`).
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Records phase `name`, started `started_after` the timeline's start, as still running
    /// now: for a phase that does not return when it succeeds (the hand-over), saved just
    /// before its end.
    pub fn record_running(&mut self, name: &str, started_after: Duration) {
        self.phases.push(PhaseRecord {
            name: name.to_string(),
            started_after,
            duration: self.start.elapsed().saturating_sub(started_after),
            ok: true,
        });
    }

    /// Runs `f` as phase `name`, logging its start and duration.
    pub fn phase<T, E: std::fmt::Display>(
        &mut self,
        name: &str,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let started_after = self.start.elapsed();
        log::info!("phase {name}: start at {:.3}s", started_after.as_secs_f64());
        let t0 = Instant::now();
        let r = f();
        let duration = t0.elapsed();
        match &r {
            Ok(_) => log::info!("phase {name}: done in {:.3}s", duration.as_secs_f64()),
            Err(e) => log::error!(
                "phase {name}: failed after {:.3}s: {e}",
                duration.as_secs_f64()
            ),
        }
        self.phases.push(PhaseRecord {
            name: name.to_string(),
            started_after,
            duration,
            ok: r.is_ok(),
        });
        r
    }

    pub fn phases(&self) -> &[PhaseRecord] {
        &self.phases
    }

    /// The timeline as text: one line per phase, then the total.
    pub fn render(&self) -> String {
        let early = self.early.unwrap_or_default();
        let mut s = String::from("# start(s)  duration(s)  result  phase\n");
        let mut row = |start: Duration, duration: Duration, ok: bool, name: &str| {
            let _ = writeln!(
                s,
                "{:>10.3}  {:>11.3}  {:<6}  {}",
                start.as_secs_f64(),
                duration.as_secs_f64(),
                if ok { "ok" } else { "FAILED" },
                name
            );
        };
        if self.early.is_some() {
            row(Duration::ZERO, early, true, "early");
        }
        for p in &self.phases {
            row(early + p.started_after, p.duration, p.ok, &p.name);
        }
        let _ = writeln!(
            s,
            "# total {:.3}s{}",
            (early + self.start.elapsed()).as_secs_f64(),
            if self.early.is_some() {
                " from the kernel's start of /init"
            } else {
                " from the first phase"
            }
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_phases_in_order_with_results() {
        let mut t = Timeline::new();
        let a: Result<u32, String> = t.phase("one", || Ok(1));
        let b: Result<u32, String> = t.phase("two", || Err("boom".to_string()));
        assert_eq!(a, Ok(1));
        assert!(b.is_err());
        let names: Vec<_> = t.phases().iter().map(|p| (p.name.as_str(), p.ok)).collect();
        assert_eq!(names, vec![("one", true), ("two", false)]);
        let text = t.render();
        assert!(text.contains(" ok      one"));
        assert!(text.contains(" FAILED  two"));
        assert!(text.contains("# total"));
        assert!(!text.contains("early"));
    }

    #[test]
    fn the_early_time_and_a_running_phase_count_in_the_total() {
        let mut t = Timeline::new();
        let _: Result<(), String> = t.phase("one", || Ok(()));
        t.set_early(Duration::from_millis(250));
        let at = t.elapsed();
        std::thread::sleep(Duration::from_millis(20));
        t.record_running("handover", at);
        let text = t.render();
        let rows: Vec<Vec<&str>> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows[0], ["0.000", "0.250", "ok", "early"]);
        assert_eq!(rows[1][3], "one");
        assert!(rows[1][0].parse::<f64>().unwrap() >= 0.25, "{text}");
        assert_eq!(rows[2][3], "handover");
        assert!(rows[2][1].parse::<f64>().unwrap() >= 0.02, "{text}");
        let total: f64 = text
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("# total "))
            .and_then(|l| l.split('s').next())
            .unwrap()
            .parse()
            .unwrap();
        assert!(total >= 0.27, "{text}");
        assert!(
            text.ends_with("from the kernel's start of /init\n"),
            "{text}"
        );
    }
}
