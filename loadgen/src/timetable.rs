//! The open model's due times, I/O-free: a rate curve (constant, or the stages of
//! `--stages`), and arrivals on it (evenly spaced, or Poisson).
//!
//! The curve is piecewise linear: `r(t)` moves linearly from point to point, and
//! `Λ(t)`, its integral, is how many messages are due by `t`. With uniform arrivals
//! message `i` is due when `Λ(t) = i`; on a ramp that is a quadratic in `t`, solved
//! exactly per segment, so the sends in any interval differ from the integral over
//! it by less than one message, whatever the ramp (no stepping, no drift).
//!
//! Poisson arrivals are a unit-rate Poisson process mapped through `Λ⁻¹` (time
//! rescaling, exact for any rate curve). The run sends `round(Λ(T))` messages, as
//! the uniform run does, so the count is conditioned on that total: given `n`
//! arrivals, a Poisson process's points are `n` sorted uniforms on `[0, Λ(T))`,
//! made here as the normalised partial sums of `n + 1` exponential gaps. The
//! normalising sum needs one pass over the seeded generator, made when the
//! timetable is built, before the run (about 10 ns a message); the second pass
//! yields the times in order, with no memory per message.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// How arrivals are spread over the curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Arrivals {
    /// Message `i` due exactly when the integral reaches `i`.
    Uniform,
    /// Exponential gaps at the current rate, from a generator seeded with `seed`.
    Poisson { seed: u64 },
}

/// One piece of the rate curve: from `start_s` to `end_s` the rate moves linearly
/// from `rate_from` to `rate_to`. A zero-length piece is a step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Segment {
    pub start_s: f64,
    pub end_s: f64,
    pub rate_from: f64,
    pub rate_to: f64,
}

impl Segment {
    fn duration(&self) -> f64 {
        self.end_s - self.start_s
    }

    /// Messages due in this piece: the trapezoid under it.
    fn area(&self) -> f64 {
        (self.rate_from + self.rate_to) / 2.0 * self.duration()
    }

    /// Time into the piece at which `x` messages of it are due: the root of
    /// `r0·τ + a/2·τ² = x`, in the form that neither cancels nor divides by a
    /// zero slope. `x` is within `0..=area`.
    fn time_of(&self, x: f64) -> f64 {
        if x <= 0.0 {
            return 0.0;
        }
        let d = self.duration();
        let r0 = self.rate_from;
        let slope = (self.rate_to - r0) / d;
        let disc = (r0 * r0 + 2.0 * slope * x).max(0.0);
        let denom = r0 + disc.sqrt();
        if denom <= 0.0 {
            return d;
        }
        (2.0 * x / denom).clamp(0.0, d)
    }
}

/// A piecewise-linear rate curve, messages per second against seconds from the
/// start of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateCurve {
    segments: Vec<Segment>,
}

impl RateCurve {
    /// `rate` for `duration` seconds.
    pub fn constant(rate: f64, duration: f64) -> RateCurve {
        RateCurve::stages(rate, &[(duration, rate)])
    }

    /// k6's stages: from `start_rate`, each `(duration, target)` ramps linearly to
    /// `target` over `duration` seconds (a zero duration is a step).
    pub fn stages(start_rate: f64, stages: &[(f64, f64)]) -> RateCurve {
        let mut t = 0.0;
        let mut rate = start_rate;
        let segments = stages
            .iter()
            .map(|&(duration, target)| {
                let s = Segment {
                    start_s: t,
                    end_s: t + duration,
                    rate_from: rate,
                    rate_to: target,
                };
                t += duration;
                rate = target;
                s
            })
            .collect();
        RateCurve { segments }
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The curve's length in seconds.
    pub fn duration(&self) -> f64 {
        self.segments.last().map_or(0.0, |s| s.end_s)
    }

    /// `Λ(T)`: all the messages the curve asks for.
    pub fn integral(&self) -> f64 {
        self.segments.iter().map(Segment::area).sum()
    }

    /// `Λ(t)`: messages due by `t` seconds.
    pub fn integral_to(&self, t: f64) -> f64 {
        self.segments
            .iter()
            .take_while(|s| s.start_s < t)
            .map(|s| {
                if t >= s.end_s {
                    return s.area();
                }
                let tau = t - s.start_s;
                let slope = (s.rate_to - s.rate_from) / s.duration();
                s.rate_from * tau + slope * tau * tau / 2.0
            })
            .sum()
    }
}

/// One due time: seconds from the start, and the curve segment (stage) it is in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Due {
    pub offset_s: f64,
    pub segment: u32,
}

/// The due times of an open-model run.
#[derive(Debug, Clone, PartialEq)]
pub struct Timetable {
    curve: RateCurve,
    arrivals: Arrivals,
    /// Poisson: `Λ(T)` over the sum of the `total + 1` gaps.
    poisson_scale: f64,
}

impl Timetable {
    /// The timetable of `curve`. With Poisson arrivals this draws every gap once
    /// (the normalising pass), so build it before the run's clock starts.
    pub fn new(curve: RateCurve, arrivals: Arrivals) -> Timetable {
        let mut t = Timetable {
            curve,
            arrivals,
            poisson_scale: 1.0,
        };
        if let Arrivals::Poisson { seed } = arrivals {
            let mut rng = SmallRng::seed_from_u64(seed);
            let sum: f64 = (0..=t.total()).map(|_| exponential(&mut rng)).sum();
            t.poisson_scale = t.curve.integral() / sum;
        }
        t
    }

    pub fn curve(&self) -> &RateCurve {
        &self.curve
    }

    /// Messages in the run: the curve's integral, rounded, so every one is due
    /// before the curve ends.
    pub fn total(&self) -> u64 {
        self.curve.integral().round() as u64
    }

    /// Every message's due time, in order.
    pub fn due_times(&self) -> DueTimes<'_> {
        let total = self.total();
        let positions = match self.arrivals {
            Arrivals::Uniform => Positions::Uniform,
            Arrivals::Poisson { seed } => Positions::Poisson {
                rng: SmallRng::seed_from_u64(seed),
                scale: self.poisson_scale,
                partial: 0.0,
            },
        };
        DueTimes {
            curve: &self.curve,
            total,
            next: 0,
            segment: 0,
            before_segment: 0.0,
            positions,
        }
    }
}

/// An exponential variate of mean 1.
fn exponential(rng: &mut SmallRng) -> f64 {
    // `random` is in [0, 1), so the logarithm's argument is in (0, 1].
    -(1.0 - rng.random::<f64>()).ln()
}

/// Where the next message sits on the integral's axis.
#[derive(Debug)]
enum Positions {
    Uniform,
    Poisson {
        rng: SmallRng,
        /// `Λ(T)` over the sum of all `total + 1` gaps.
        scale: f64,
        /// Gaps drawn so far.
        partial: f64,
    },
}

/// The iterator of [`Timetable::due_times`]: walks the curve forward once.
#[derive(Debug)]
pub struct DueTimes<'a> {
    curve: &'a RateCurve,
    total: u64,
    next: u64,
    segment: usize,
    /// `Λ` at the start of `segment`.
    before_segment: f64,
    positions: Positions,
}

impl Iterator for DueTimes<'_> {
    type Item = Due;

    fn next(&mut self) -> Option<Due> {
        if self.next >= self.total {
            return None;
        }
        let i = self.next;
        self.next += 1;
        let target = match &mut self.positions {
            Positions::Uniform => i as f64,
            Positions::Poisson {
                rng,
                scale,
                partial,
            } => {
                *partial += exponential(rng);
                *partial * *scale
            }
        };
        // A message due exactly at a segment's end belongs to the next one
        // (segments are `[start, end)`); empty segments are passed over.
        let segs = self.curve.segments();
        while self.segment + 1 < segs.len()
            && target >= self.before_segment + segs[self.segment].area()
        {
            self.before_segment += segs[self.segment].area();
            self.segment += 1;
        }
        let s = &segs[self.segment];
        let x = (target - self.before_segment).min(s.area());
        Some(Due {
            offset_s: s.start_s + s.time_of(x),
            segment: self.segment as u32,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.total - self.next) as usize;
        (left, Some(left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends due in each whole second of `tt`.
    fn per_second(tt: &Timetable) -> Vec<u64> {
        let mut counts = vec![0u64; tt.curve().duration().ceil() as usize];
        for d in tt.due_times() {
            counts[d.offset_s.floor() as usize] += 1;
        }
        counts
    }

    #[test]
    fn a_constant_rate_is_the_old_timetable() {
        let tt = Timetable::new(RateCurve::constant(50.0, 2.0), Arrivals::Uniform);
        assert_eq!(tt.total(), 100);
        let d: Vec<_> = tt.due_times().collect();
        assert_eq!(d.len(), 100);
        assert_eq!(d[0].offset_s, 0.0);
        assert!((d[1].offset_s - 0.02).abs() < 1e-12);
        assert!((d[99].offset_s - 1.98).abs() < 1e-12);
        assert!(d.iter().all(|d| d.segment == 0));
    }

    #[test]
    fn each_second_sends_the_integral_of_the_curve() {
        // The figure: a ramp to 100, a ramp to 5,000, a hold, a ramp down.
        let curve = RateCurve::stages(
            0.0,
            &[(5.0, 100.0), (5.0, 5000.0), (10.0, 5000.0), (5.0, 0.0)],
        );
        let tt = Timetable::new(curve.clone(), Arrivals::Uniform);
        assert_eq!(tt.total(), (250.0f64 + 12750.0 + 50000.0 + 12500.0) as u64);
        let counts = per_second(&tt);
        assert_eq!(counts.iter().sum::<u64>(), tt.total());
        for (k, &n) in counts.iter().enumerate() {
            let want = curve.integral_to(k as f64 + 1.0) - curve.integral_to(k as f64);
            // Whole messages against a fractional integral: under one apart, which
            // is within 1% once a second holds 100 or more.
            assert!(
                (n as f64 - want).abs() < 1.0,
                "second {k}: {n} sent, {want} due"
            );
        }
    }

    #[test]
    fn steps_and_zero_rate_stretches_send_nothing_and_keep_their_index() {
        // 1 s at 0, a step to 100 for 1 s, a step down to 0 for 1 s, 1 s at 10.
        let curve = RateCurve::stages(
            0.0,
            &[
                (1.0, 0.0),
                (0.0, 100.0),
                (1.0, 100.0),
                (0.0, 0.0),
                (1.0, 0.0),
                (0.0, 10.0),
                (1.0, 10.0),
            ],
        );
        let tt = Timetable::new(curve, Arrivals::Uniform);
        assert_eq!(tt.total(), 110);
        let mut per_segment = [0u64; 7];
        for d in tt.due_times() {
            per_segment[d.segment as usize] += 1;
            assert!(
                (1.0..2.0).contains(&d.offset_s) || (3.0..4.0).contains(&d.offset_s),
                "{d:?} in a zero-rate stretch"
            );
        }
        assert_eq!(per_segment, [0, 0, 100, 0, 0, 0, 10]);
    }

    #[test]
    fn a_ramp_puts_messages_where_the_integral_says() {
        // 0 → 200/s over 1 s: Λ(t) = 100 t², message i at sqrt(i / 100).
        let tt = Timetable::new(RateCurve::stages(0.0, &[(1.0, 200.0)]), Arrivals::Uniform);
        for (i, d) in tt.due_times().enumerate() {
            assert!(
                (d.offset_s - (i as f64 / 100.0).sqrt()).abs() < 1e-9,
                "{i}: {d:?}"
            );
        }
        // Downwards from --start-rate: 200 → 0 over 1 s, Λ(t) = 200 t − 100 t².
        let tt = Timetable::new(RateCurve::stages(200.0, &[(1.0, 0.0)]), Arrivals::Uniform);
        let d: Vec<_> = tt.due_times().collect();
        assert_eq!(d.len(), 100);
        for (i, d) in d.iter().enumerate() {
            let want = 1.0 - (1.0 - i as f64 / 100.0).sqrt();
            assert!((d.offset_s - want).abs() < 1e-9, "{i}: {d:?}");
        }
    }

    fn gaps(tt: &Timetable) -> Vec<f64> {
        let t: Vec<f64> = tt.due_times().map(|d| d.offset_s).collect();
        t.windows(2).map(|w| w[1] - w[0]).collect()
    }

    fn coefficient_of_variation(x: &[f64]) -> f64 {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        var.sqrt() / mean
    }

    #[test]
    fn poisson_gaps_at_1000_per_second_vary_as_much_as_they_average() {
        // 200,000 gaps: the CV's standard error is about 0.003.
        for seed in [1, 2, 3] {
            let tt = Timetable::new(
                RateCurve::constant(1000.0, 200.0),
                Arrivals::Poisson { seed },
            );
            let g = gaps(&tt);
            assert_eq!(g.len(), 199_999);
            let cv = coefficient_of_variation(&g);
            eprintln!(
                "Poisson at 1000/s, seed {seed}: CV of {} gaps = {cv:.4}",
                g.len()
            );
            assert!((cv - 1.0).abs() < 0.05, "seed {seed}: CV {cv}");
            let mean = g.iter().sum::<f64>() / g.len() as f64;
            assert!((mean - 0.001).abs() < 0.00002, "mean gap {mean}");
        }
        let uniform = Timetable::new(RateCurve::constant(1000.0, 10.0), Arrivals::Uniform);
        assert!(coefficient_of_variation(&gaps(&uniform)) < 1e-6);
    }

    #[test]
    fn the_same_seed_gives_the_same_times_and_another_seed_others() {
        let curve = RateCurve::stages(0.0, &[(2.0, 500.0), (2.0, 500.0)]);
        let times = |seed| -> Vec<Due> {
            Timetable::new(curve.clone(), Arrivals::Poisson { seed })
                .due_times()
                .collect()
        };
        assert_eq!(times(7), times(7));
        assert_ne!(times(7), times(8));
        let t = times(7);
        assert_eq!(t.len(), 1500);
        assert!(
            t.windows(2).all(|w| w[0].offset_s <= w[1].offset_s),
            "in order"
        );
        assert!(t.iter().all(|d| (0.0..4.0).contains(&d.offset_s)));
    }

    #[test]
    fn poisson_on_a_ramp_follows_the_rate() {
        // 0 → 2,000/s over 10 s: each second carries its integral, give or take
        // Poisson noise (the standard deviation is at most sqrt(2000) ≈ 45).
        let curve = RateCurve::stages(0.0, &[(10.0, 2000.0)]);
        let tt = Timetable::new(curve.clone(), Arrivals::Poisson { seed: 11 });
        for (k, &n) in per_second(&tt).iter().enumerate() {
            let want = curve.integral_to(k as f64 + 1.0) - curve.integral_to(k as f64);
            let sd = want.sqrt();
            assert!(
                (n as f64 - want).abs() < 5.0 * sd + 1.0,
                "second {k}: {n} vs {want}"
            );
        }
    }
}
