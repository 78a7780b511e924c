//! Dropping the copies of a message that arrive more than once: an edge gets a routed message
//! once per subscription of its own that matches, and keeps the first.
//!
//! Each origin numbers its messages from 1, in order. Copies of one message arrive close
//! together, so a window of the last [`WINDOW`] numbers per origin is enough; anything older
//! than the window counts as seen. Sans-IO: callers pass the clock.

use std::collections::HashMap;
use std::hash::Hash;

/// How many of an origin's most recent numbers are remembered.
pub const WINDOW: u64 = 4096;

const WORDS: usize = (WINDOW / 64) as usize;

/// The numbers one origin sent that were already taken, within the window.
#[derive(Debug, Clone)]
pub struct SeenWindow {
    highest: u64,
    bits: [u64; WORDS],
}

impl Default for SeenWindow {
    fn default() -> Self {
        SeenWindow { highest: 0, bits: [0; WORDS] }
    }
}

impl SeenWindow {
    /// True the first time `seq` is offered, false for a copy (or a number older than the
    /// window). 0 is never a valid number.
    pub fn accept(&mut self, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        if seq > self.highest {
            if seq - self.highest >= WINDOW {
                self.bits = [0; WORDS];
            } else {
                for n in self.highest + 1..seq {
                    self.set(n, false);
                }
            }
            self.highest = seq;
            self.set(seq, true);
            return true;
        }
        if self.highest - seq >= WINDOW || self.get(seq) {
            return false;
        }
        self.set(seq, true);
        true
    }

    /// Whether `seq` was taken, as far as the window knows: unlike [`SeenWindow::accept`], a
    /// number older than the window counts as not seen.
    pub fn seen(&self, seq: u64) -> bool {
        seq != 0 && seq <= self.highest && self.highest - seq < WINDOW && self.get(seq)
    }

    fn get(&self, n: u64) -> bool {
        let i = (n % WINDOW) as usize;
        self.bits[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, n: u64, on: bool) {
        let i = (n % WINDOW) as usize;
        if on {
            self.bits[i / 64] |= 1 << (i % 64);
        } else {
            self.bits[i / 64] &= !(1 << (i % 64));
        }
    }
}

/// A window per origin; origins silent for a while are forgotten.
#[derive(Debug)]
pub struct Dedupe<K> {
    origins: HashMap<K, (SeenWindow, u64)>,
}

impl<K> Default for Dedupe<K> {
    fn default() -> Self {
        Dedupe { origins: HashMap::new() }
    }
}

impl<K: Hash + Eq> Dedupe<K> {
    /// True the first time `origin` offers `seq`.
    pub fn accept(&mut self, origin: K, seq: u64, now_ms: u64) -> bool {
        let (window, last) = self.origins.entry(origin).or_default();
        *last = now_ms;
        window.accept(seq)
    }

    /// Whether `origin` offered `seq` (within the window; an older number counts as not seen).
    pub fn seen(&self, origin: &K, seq: u64) -> bool {
        self.origins.get(origin).is_some_and(|(window, _)| window.seen(seq))
    }

    /// Forgets origins not heard from for `idle_ms` (a node that stopped, or restarted under a
    /// new incarnation).
    pub fn forget_idle(&mut self, now_ms: u64, idle_ms: u64) {
        self.origins.retain(|_, (_, last)| now_ms.saturating_sub(*last) < idle_ms);
    }

    pub fn origins(&self) -> usize {
        self.origins.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seen_asks_without_taking_and_forgets_past_the_window() {
        let mut d: Dedupe<&str> = Dedupe::default();
        assert!(!d.seen(&"a", 1), "nothing from a yet");
        assert!(d.accept("a", 5, 0));
        assert!(d.seen(&"a", 5));
        assert!(!d.seen(&"a", 4), "a gap");
        assert!(!d.seen(&"a", 6), "above the highest");
        assert!(!d.seen(&"a", 0));
        assert!(!d.seen(&"b", 5), "another origin");
        assert!(d.accept("a", 4, 0), "asking took nothing");
        assert!(d.accept("a", 5 + WINDOW, 0));
        assert!(!d.seen(&"a", 5), "older than the window: not known to be seen");
        assert!(!d.accept("a", 5, 0), "while accept counts it as seen");
        assert!(d.seen(&"a", 5 + WINDOW));
    }

    #[test]
    fn the_first_copy_is_taken_and_the_others_dropped() {
        let mut w = SeenWindow::default();
        assert!(!w.accept(0));
        assert!(w.accept(1));
        assert!(!w.accept(1));
        assert!(w.accept(3), "a gap is fine");
        assert!(w.accept(2), "and filled later");
        assert!(!w.accept(2));
        assert!(w.accept(3 + WINDOW), "a jump past the window");
        assert!(!w.accept(3), "older than the window: counted as seen");
        assert!(w.accept(WINDOW + 10));
        assert!(w.accept(WINDOW + 5), "inside the window and new");
        assert!(!w.accept(WINDOW + 5));
        assert!(w.accept(u64::MAX));
        assert!(!w.accept(u64::MAX));
    }

    #[test]
    fn origins_are_separate_and_idle_ones_forgotten() {
        let mut d = Dedupe::default();
        assert!(d.accept("a", 1, 0));
        assert!(d.accept("b", 1, 0));
        assert!(!d.accept("a", 1, 10));
        d.forget_idle(1_000, 500);
        assert_eq!(d.origins(), 0);
        assert!(d.accept("a", 1, 1_000), "a forgotten origin starts anew");
    }

    proptest! {
        /// Every number arrives two or three times, copies shuffled within a short distance:
        /// each is taken exactly once.
        #[test]
        fn each_number_is_taken_once(n in 1u64..3000, copies in 2usize..4, seed in any::<u64>()) {
            let mut arrivals: Vec<(u64, u64)> = Vec::new();
            let mut rng = seed;
            for seq in 1..=n {
                for _ in 0..copies {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    arrivals.push((seq * 16 + (rng >> 60), seq));
                }
            }
            arrivals.sort();
            let mut w = SeenWindow::default();
            let taken: Vec<u64> = arrivals.iter().filter(|(_, s)| w.accept(*s)).map(|(_, s)| *s).collect();
            let mut sorted = taken.clone();
            sorted.sort_unstable();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), n as usize);
            prop_assert_eq!(taken.len(), n as usize);
        }
    }
}
