//! Load-balancing strategies: pick one service among routable candidates.

use std::hash::{Hash, Hasher};

/// How a service is picked among candidates (DESIGN §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    LeastConnections,
    RoundRobin,
    Random,
    Weighted,
    ConsistentHash,
}

impl Strategy {
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "least_connections" => Strategy::LeastConnections,
            "round_robin" => Strategy::RoundRobin,
            "random" => Strategy::Random,
            "weighted" => Strategy::Weighted,
            "consistent_hash" => Strategy::ConsistentHash,
            other => {
                return Err(format!(
                    "unknown strategy {other:?} (least_connections, round_robin, random, weighted, consistent_hash)"
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::LeastConnections => "least_connections",
            Strategy::RoundRobin => "round_robin",
            Strategy::Random => "random",
            Strategy::Weighted => "weighted",
            Strategy::ConsistentHash => "consistent_hash",
        }
    }
}

/// What a strategy may look at for one candidate.
#[derive(Debug, Clone, Copy)]
pub struct CandidateInfo<'a> {
    pub id: &'a str,
    pub connections: u64,
    pub weight: u32,
}

/// Picks an index into `cands` (non-empty). `rr` is the round-robin counter value for this
/// candidate set; `hash_key` the consistent-hash input.
pub fn pick(strategy: Strategy, cands: &[CandidateInfo<'_>], rr: u64, hash_key: &str) -> usize {
    debug_assert!(!cands.is_empty());
    match strategy {
        Strategy::LeastConnections => {
            // Ties go round-robin so a burst of connects before the next load update spreads.
            let min = cands.iter().map(|c| c.connections).min().unwrap_or(0);
            let ties: Vec<usize> = (0..cands.len())
                .filter(|&i| cands[i].connections == min)
                .collect();
            ties[(rr % ties.len() as u64) as usize]
        }
        Strategy::RoundRobin => (rr % cands.len() as u64) as usize,
        Strategy::Random => rand::random_range(0..cands.len()),
        Strategy::Weighted => {
            // Weight 0 means "unset" in proto3: count it as 1.
            let total: u64 = cands.iter().map(|c| u64::from(c.weight.max(1))).sum();
            let mut x = rand::random_range(0..total);
            for (i, c) in cands.iter().enumerate() {
                let w = u64::from(c.weight.max(1));
                if x < w {
                    return i;
                }
                x -= w;
            }
            cands.len() - 1
        }
        Strategy::ConsistentHash => {
            // Rendezvous hashing: a key keeps its service while that service stays a candidate,
            // and only the keys of a removed service move.
            let mut best = 0;
            let mut best_score = 0u64;
            for (i, c) in cands.iter().enumerate() {
                let score = stable_hash(hash_key, c.id);
                if i == 0 || score > best_score {
                    best = i;
                    best_score = score;
                }
            }
            best
        }
    }
}

/// FNV-1a over both strings: stable across processes and builds (unlike `DefaultHasher`'s
/// unspecified algorithm), so every proxy maps a key to the same service.
fn stable_hash(a: &str, b: &str) -> u64 {
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            // Final avalanche so near-identical ids do not cluster.
            let mut h = self.0;
            h ^= h >> 33;
            h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
            h ^= h >> 33;
            h
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    a.hash(&mut h);
    b.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, connections: u64, weight: u32) -> CandidateInfo<'_> {
        CandidateInfo {
            id,
            connections,
            weight,
        }
    }

    #[test]
    fn least_connections_picks_min_and_rotates_ties() {
        let cs = [c("a", 3, 1), c("b", 1, 1), c("c", 1, 1)];
        assert_eq!(pick(Strategy::LeastConnections, &cs, 0, ""), 1);
        assert_eq!(pick(Strategy::LeastConnections, &cs, 1, ""), 2);
    }

    #[test]
    fn round_robin_cycles() {
        let cs = [c("a", 0, 1), c("b", 0, 1), c("c", 0, 1)];
        let picks: Vec<_> = (0..6)
            .map(|i| pick(Strategy::RoundRobin, &cs, i, ""))
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weighted_follows_weights() {
        let cs = [c("a", 0, 1), c("b", 0, 9)];
        let n = 5000;
        let b = (0..n)
            .filter(|_| pick(Strategy::Weighted, &cs, 0, "") == 1)
            .count();
        assert!(b > n * 8 / 10 && b < n * 97 / 100, "b picked {b}/{n}");
    }

    #[test]
    fn random_covers_all() {
        let cs = [c("a", 0, 1), c("b", 0, 1)];
        let mut seen = [false; 2];
        for _ in 0..200 {
            seen[pick(Strategy::Random, &cs, 0, "")] = true;
        }
        assert_eq!(seen, [true, true]);
    }

    #[test]
    fn consistent_hash_is_stable_and_minimal() {
        let cs = [c("a", 0, 1), c("b", 0, 1), c("c", 0, 1)];
        let keys: Vec<String> = (0..300).map(|i| format!("session-{i}")).collect();
        let before: Vec<&str> = keys
            .iter()
            .map(|k| cs[pick(Strategy::ConsistentHash, &cs, 7, k)].id)
            .collect();
        // Same answer regardless of order or counters.
        let rev = [c("c", 5, 1), c("b", 0, 1), c("a", 9, 1)];
        for (k, b) in keys.iter().zip(&before) {
            assert_eq!(rev[pick(Strategy::ConsistentHash, &rev, 0, k)].id, *b);
        }
        // Removing "c" moves only the keys that were on "c".
        let ab = [c("a", 0, 1), c("b", 0, 1)];
        for (k, b) in keys.iter().zip(&before) {
            let now = ab[pick(Strategy::ConsistentHash, &ab, 0, k)].id;
            if *b != "c" {
                assert_eq!(now, *b);
            }
        }
        // All three get some keys.
        for id in ["a", "b", "c"] {
            assert!(before.contains(&id));
        }
    }
}
