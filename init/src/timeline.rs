//! Boot timeline: every phase logs its start and duration, and the whole timeline is saved
//! for the user (like `cloud-init analyze`).

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
#[derive(Debug)]
pub struct Timeline {
    start: Instant,
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
            phases: Vec::new(),
        }
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
        let mut s = String::from("# start(s)  duration(s)  result  phase\n");
        for p in &self.phases {
            let _ = writeln!(
                s,
                "{:>10.3}  {:>11.3}  {:<6}  {}",
                p.started_after.as_secs_f64(),
                p.duration.as_secs_f64(),
                if p.ok { "ok" } else { "FAILED" },
                p.name
            );
        }
        let _ = writeln!(s, "# total {:.3}s", self.start.elapsed().as_secs_f64());
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
    }
}
