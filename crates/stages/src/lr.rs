//! Learning-rate schedules: linear warm-up from 0, then linear or cosine decay to `min_ratio`·peak.

/// How the rate decays after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decay {
    Constant,
    Linear,
    Cosine,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub peak: f64,
    pub warmup_steps: usize,
    pub decay: Decay,
    /// The final rate as a fraction of `peak` (0 decays to zero).
    pub min_ratio: f64,
}

impl LrSchedule {
    /// The rate for 0-based `step` of a stage of `total` steps. Warm-up step k (0-based) gets
    /// `peak·(k+1)/warmup`, so the first update is never at rate 0; decay then runs from `peak`
    /// at the end of warm-up to `min_ratio·peak` at the last step.
    pub fn at(&self, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = total.saturating_sub(self.warmup_steps).saturating_sub(1);
        let t = if span == 0 {
            1.0
        } else {
            ((step - self.warmup_steps) as f64 / span as f64).min(1.0)
        };
        let floor = self.min_ratio * self.peak;
        match self.decay {
            Decay::Constant => self.peak,
            Decay::Linear => self.peak - (self.peak - floor) * t,
            Decay::Cosine => {
                floor + (self.peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(decay: Decay) -> LrSchedule {
        LrSchedule {
            peak: 1e-3,
            warmup_steps: 4,
            decay,
            min_ratio: 0.0,
        }
    }

    #[test]
    fn warmup_then_decay_known_values() {
        let s = sched(Decay::Linear);
        let v: Vec<f64> = (0..10).map(|k| s.at(k, 10)).collect();
        let want = [
            0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3, 0.8e-3, 0.6e-3, 0.4e-3, 0.2e-3, 0.0,
        ];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{v:?}");
        }
        let c = sched(Decay::Cosine);
        assert!((c.at(4, 10) - 1e-3).abs() < 1e-15);
        assert!((c.at(9, 10)).abs() < 1e-15);
        // t = 2/5: (1 + cos(0.4π))/2 · peak.
        assert!(
            (c.at(6, 10) - 0.654_508_497_187_473_7e-3).abs() < 1e-15,
            "{}",
            c.at(6, 10)
        );
        assert_eq!(sched(Decay::Constant).at(9, 10), 1e-3);
    }

    #[test]
    fn never_negative_and_bounded_by_peak() {
        for decay in [Decay::Constant, Decay::Linear, Decay::Cosine] {
            let s = LrSchedule {
                peak: 2e-4,
                warmup_steps: 3,
                decay,
                min_ratio: 0.1,
            };
            for total in [1, 2, 3, 4, 50] {
                for k in 0..total {
                    let r = s.at(k, total);
                    assert!(r > 0.0 && r <= 2e-4 + 1e-18, "{decay:?} {k}/{total}: {r}");
                }
            }
        }
    }
}
