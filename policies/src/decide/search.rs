//! Phase 2's exact search: the acceptance graph of the surviving countries and a branch and
//! bound over its cliques for the largest admissible set.

use crate::date::Date;
use crate::policy::{Acceptance, Policy};
use crate::registry::Registry;

/// The acceptance graph of the survivor countries.
pub(super) struct Graph<'p> {
    pub(super) policies: &'p [&'p Policy],
    pub(super) agencies: &'p [u64],
    /// acceptance[a][b]: does a accept b.
    pub(super) acceptance: Vec<Vec<Acceptance>>,
    /// Bit b of mutual[a]: a and b accept each other (a != b).
    mutual: Vec<u64>,
    pub(super) purpose: String,
    pub(super) date: Date,
}

impl<'p> Graph<'p> {
    pub(super) fn build(
        registry: &Registry,
        policies: &'p [&'p Policy],
        agencies: &'p [u64],
        purpose: &str,
        date: Date,
    ) -> Graph<'p> {
        let n = policies.len();
        let acceptance: Vec<Vec<Acceptance>> = (0..n)
            .map(|a| {
                (0..n)
                    .map(|b| policies[a].accepts(registry, &policies[b].country, purpose, date))
                    .collect()
            })
            .collect();
        let mutual = (0..n)
            .map(|a| {
                (0..n)
                    .filter(|&b| {
                        b != a && acceptance[a][b].accepted() && acceptance[b][a].accepted()
                    })
                    .fold(0u64, |m, b| m | (1 << b))
            })
            .collect();
        Graph {
            policies,
            agencies,
            acceptance,
            mutual,
            purpose: purpose.to_string(),
            date,
        }
    }

    pub(super) fn agencies_in(&self, set: u64) -> u64 {
        members(set).map(|i| self.agencies[i]).sum()
    }

    /// The greatest subset of a mutually-accepting set whose members' minimums all hold:
    /// minimums only grow harder as members leave, so removing failing members until none
    /// fails reaches the unique largest feasible subset.
    fn feasible_core(&self, mut set: u64) -> u64 {
        loop {
            let total = self.agencies_in(set);
            let count = u64::from(set.count_ones());
            let failing = members(set)
                .filter(|&i| {
                    self.policies[i].min_participants > total
                        || self.policies[i].min_distinct_countries > count
                })
                .fold(0u64, |m, i| m | (1 << i));
            if failing == 0 {
                return set;
            }
            set &= !failing;
        }
    }

    /// The spec's order as one additive weight: a set's weight is `agencies << 72 | countries
    /// << 64 | bit (63 - i) for each country i`, so comparing weights compares agencies, then
    /// countries, then (the highest differing bit being the earliest differing country) which
    /// set holds the country that appears earliest in the request.
    fn weight(&self, set: u64) -> u128 {
        members(set)
            .map(|i| (u128::from(self.agencies[i]) << 72) + (1u128 << 64) + (1u128 << (63 - i)))
            .sum()
    }

    /// An upper bound on the weight of any clique within `p`: color `p` greedily into sets of
    /// countries no two of which accept each other (a clique holds at most one of each), and
    /// add the heaviest country of each color.
    fn color_bound(&self, mut p: u64) -> u128 {
        let mut bound = 0;
        while p != 0 {
            let mut class = 0u64;
            let mut candidates = p;
            while candidates != 0 {
                let v = candidates.trailing_zeros() as usize;
                candidates &= candidates - 1;
                if self.mutual[v] & class == 0 {
                    class |= 1 << v;
                }
            }
            bound += members(class)
                .map(|i| self.weight(1 << i))
                .max()
                .unwrap_or(0);
            p &= !class;
        }
        bound
    }

    /// Branch and bound over the cliques of the mutual-acceptance graph that extend `r` with
    /// countries of `p`. Every feasible set lies in a clique, and `evaluate` maps a clique to
    /// the best set it holds (for admission, its feasible core: minimums only grow harder as
    /// members leave, so removing failing members until none fails reaches the largest feasible
    /// subset, which holds every other). A branch is cut only when no clique in it can weigh
    /// more than the best found, so the search is exact.
    fn search(
        &self,
        r: u64,
        mut p: u64,
        evaluate: &dyn Fn(u64) -> u64,
        best: &mut Option<(u128, u64)>,
    ) {
        if p == 0 {
            let set = evaluate(r);
            let w = self.weight(set);
            if set != 0 && best.is_none_or(|(b, _)| w > b) {
                *best = Some((w, set));
            }
            return;
        }
        let base = self.weight(r);
        while p != 0 {
            if best.is_some_and(|(b, _)| base + self.color_bound(p) <= b) {
                return;
            }
            let v = p.trailing_zeros() as usize;
            let bit = 1u64 << v;
            self.search(r | bit, p & self.mutual[v], evaluate, best);
            p &= !bit;
        }
    }

    fn all(&self) -> u64 {
        let n = self.policies.len();
        if n == 64 { u64::MAX } else { (1u64 << n) - 1 }
    }

    /// The admissible set with the most agencies, then countries, then earliest countries.
    pub(super) fn best_admissible(&self) -> Option<u64> {
        let mut best = None;
        self.search(
            0,
            self.all(),
            &|clique| self.feasible_core(clique),
            &mut best,
        );
        best.map(|(_, set)| set)
    }

    /// The best mutually-accepting set containing `k`, minimums ignored.
    pub(super) fn best_clique_with(&self, k: usize) -> u64 {
        let mut best = None;
        self.search(1 << k, self.mutual[k], &|clique| clique, &mut best);
        best.map_or(1 << k, |(_, set)| set)
    }
}

pub(super) fn members(set: u64) -> impl Iterator<Item = usize> {
    (0..64).filter(move |i| set & (1u64 << i) != 0)
}
