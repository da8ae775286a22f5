//! The topology of a task graph in compressed sparse rows: successors and predecessors of node
//! `i` are contiguous slices, ids are dense `u32` indices, nothing is hashed.
//!
//! Invariants of a built [`Dag`]: every edge's ends are in range; there is no cycle (checked by
//! [`Dag::new`]); each node's successors keep the order the edges were given in, or the order
//! set by [`Dag::sort_successors_by_key`], which is the order the executor releases them in.

use std::fmt;

/// Number of priority bands the pool keeps ready queues for.
pub const BANDS: usize = 4;

/// A successor entry is the successor's index in its low 30 bits (so node indices stay below
/// `2^30`) and its in-degree in the top two when it is 1, 2 or 3 (0: 4 or more, read from the
/// predecessor offsets): the executor counts a released node against its in-degree without a
/// load from another array, which would depend on this one, per edge.
pub(crate) const NODE_BITS: u32 = 30;
/// The index bits of a successor entry (see [`NODE_BITS`]).
pub(crate) const NODE_MASK: u32 = (1 << NODE_BITS) - 1;

/// Why a list of edges is not a DAG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DagError {
    /// An edge names a node index that does not exist.
    OutOfRange {
        /// The edge's source.
        from: u32,
        /// The edge's target.
        to: u32,
        /// How many nodes there are.
        nodes: u32,
    },
    /// An edge from a node to itself.
    SelfLoop(u32),
    /// The graph has a cycle; `on_cycle` are the nodes that could never become ready.
    Cycle {
        /// Nodes on or behind a cycle (never ready).
        on_cycle: Vec<u32>,
    },
    /// `2^30` nodes or more, or more edges than a `u32` index can hold.
    TooLarge,
}

impl fmt::Display for DagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DagError::OutOfRange { from, to, nodes } => {
                write!(f, "edge {from} -> {to} names a node outside 0..{nodes}")
            }
            DagError::SelfLoop(n) => write!(f, "node {n} depends on itself"),
            DagError::Cycle { on_cycle } => {
                write!(f, "cycle among {} nodes", on_cycle.len())
            }
            DagError::TooLarge => write!(f, "2^30 nodes or more, or u32::MAX edges or more"),
        }
    }
}

impl std::error::Error for DagError {}

/// An immutable, acyclic task topology.
#[derive(Debug, Clone)]
pub struct Dag {
    succ_off: Box<[u32]>,
    /// Successor entries: node indices with small in-degrees (see `NODE_BITS`).
    succ: Box<[u32]>,
    pred_off: Box<[u32]>,
    pred: Box<[u32]>,
    /// Priority band per node (higher runs first); empty when every node is in `uniform_band`.
    band: Box<[u8]>,
    uniform_band: u8,
    roots: Box<[u32]>,
    /// Rank per node (the remaining critical path); empty when the graph is unranked.
    rank: Box<[u64]>,
}

impl Dag {
    /// Builds the topology of `nodes` nodes from `edges` (`(from, to)`: `to` waits for `from`).
    /// Duplicate edges are kept once. Fails on an index out of range, a self-loop or a cycle.
    pub fn new(nodes: usize, edges: &[(u32, u32)]) -> Result<Dag, DagError> {
        let n = u32::try_from(nodes).map_err(|_| DagError::TooLarge)?;
        if n > NODE_MASK || u32::try_from(edges.len()).is_err() {
            return Err(DagError::TooLarge);
        }
        for &(from, to) in edges {
            if from >= n || to >= n {
                return Err(DagError::OutOfRange { from, to, nodes: n });
            }
            if from == to {
                return Err(DagError::SelfLoop(from));
            }
        }
        let (succ_off, mut succ) = csr(nodes, edges.iter().map(|&(f, t)| (f, t)));
        dedup_rows(&succ_off, &mut succ);
        let (succ_off, succ) = compact(&succ_off, &succ);
        let (pred_off, pred) = csr(
            nodes,
            (0..nodes).flat_map(|i| {
                let (a, b) = (succ_off[i] as usize, succ_off[i + 1] as usize);
                succ[a..b].iter().map(move |&s| (s, i as u32))
            }),
        );
        let mut succ = succ;
        for s in succ.iter_mut() {
            let j = *s as usize;
            let in_degree = pred_off[j + 1] - pred_off[j];
            if in_degree <= 3 {
                *s |= in_degree << NODE_BITS;
            }
        }
        let roots: Box<[u32]> = (0..n)
            .filter(|&i| pred_off[i as usize] == pred_off[i as usize + 1])
            .collect();
        let dag = Dag {
            succ_off,
            succ,
            pred_off,
            pred,
            band: Box::new([]),
            uniform_band: 0,
            roots,
            rank: Box::new([]),
        };
        let topo = dag.topological_order();
        if topo.len() != nodes {
            let mut seen = vec![false; nodes];
            for &t in &topo {
                seen[t as usize] = true;
            }
            let on_cycle = (0..n).filter(|&i| !seen[i as usize]).collect();
            return Err(DagError::Cycle { on_cycle });
        }
        Ok(dag)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.succ_off.len() - 1
    }

    /// Whether the graph has no node.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of (distinct) edges.
    pub fn edge_count(&self) -> usize {
        self.succ.len()
    }

    /// The nodes that `node` releases when it finishes, in release order.
    #[inline]
    pub fn successors(&self, node: u32) -> Successors<'_> {
        Successors(self.release_list(node).iter())
    }

    /// `node`'s successor entries, in release order (see [`NODE_BITS`]).
    #[inline]
    pub(crate) fn release_list(&self, node: u32) -> &[u32] {
        let i = node as usize;
        &self.succ[self.succ_off[i] as usize..self.succ_off[i + 1] as usize]
    }

    /// The nodes that `node` waits for.
    #[inline]
    pub fn predecessors(&self, node: u32) -> &[u32] {
        let i = node as usize;
        &self.pred[self.pred_off[i] as usize..self.pred_off[i + 1] as usize]
    }

    /// Number of predecessors of `node`.
    #[inline]
    pub fn in_degree(&self, node: u32) -> u32 {
        let i = node as usize;
        self.pred_off[i + 1] - self.pred_off[i]
    }

    /// Every node's in-degree, in node order (without a bounds check per node).
    pub fn in_degrees(&self) -> impl ExactSizeIterator<Item = u32> + '_ {
        self.pred_off.windows(2).map(|w| w[1] - w[0])
    }

    /// Nodes without predecessors.
    pub fn roots(&self) -> &[u32] {
        &self.roots
    }

    /// A topological order (every node after all of its predecessors), computed on demand
    /// (Kahn's algorithm, O(nodes + edges)); shorter than `len()` only while a graph under
    /// construction has a cycle.
    pub fn topological_order(&self) -> Vec<u32> {
        let n = self.len();
        let mut indeg: Vec<u32> = (0..n)
            .map(|i| self.pred_off[i + 1] - self.pred_off[i])
            .collect();
        let mut topo: Vec<u32> = Vec::with_capacity(n);
        topo.extend_from_slice(&self.roots);
        let mut head = 0;
        while head < topo.len() {
            let u = topo[head];
            head += 1;
            for s in self.successors(u) {
                indeg[s as usize] -= 1;
                if indeg[s as usize] == 0 {
                    topo.push(s);
                }
            }
        }
        topo
    }

    /// The bit of the band every node has (`1 << band`), or 0 if their bands differ.
    pub(crate) fn uniform_bit(&self) -> u8 {
        if self.band.is_empty() {
            1 << self.uniform_band
        } else {
            0
        }
    }

    /// The priority band of `node` (0 ..= `BANDS - 1`; higher runs first).
    #[inline]
    pub fn band(&self, node: u32) -> u8 {
        if self.band.is_empty() {
            self.uniform_band
        } else {
            self.band[node as usize]
        }
    }

    /// Ranks the nodes (e.g. by remaining critical path): a ranked graph's ready nodes are
    /// queued in the pool's shared ready heap, and every worker takes the highest (band, rank)
    /// first — a global list schedule, for graphs of coarse tasks whose durations are known.
    /// An unranked graph (the default) uses the lock-free deques only.
    pub fn set_ranks(&mut self, ranks: impl IntoIterator<Item = u64>) {
        let r: Vec<u64> = ranks.into_iter().collect();
        assert_eq!(r.len(), self.len(), "one rank per node");
        self.rank = r.into_boxed_slice();
    }

    /// The rank of `node`, if the graph is ranked.
    #[inline]
    pub fn rank(&self, node: u32) -> Option<u64> {
        self.rank.get(node as usize).copied()
    }

    /// Whether the graph is ranked (see [`Dag::set_ranks`]).
    #[inline]
    pub fn is_ranked(&self) -> bool {
        !self.rank.is_empty()
    }

    /// Sets every node's priority band (values above `BANDS - 1` are clamped).
    pub fn set_bands(&mut self, bands: impl IntoIterator<Item = u8>) {
        let b: Vec<u8> = bands.into_iter().map(|b| b.min(BANDS as u8 - 1)).collect();
        assert_eq!(b.len(), self.len(), "one band per node");
        match b.first() {
            Some(&first) if b.iter().all(|&x| x == first) => {
                self.uniform_band = first;
                self.band = Box::new([]);
            }
            _ => self.band = b.into_boxed_slice(),
        }
    }

    /// Reorders each node's successors by `key` (descending: the largest key is released
    /// first and is the one its finisher runs inline).
    pub fn sort_successors_by_key<K: Ord>(&mut self, mut key: impl FnMut(u32) -> K) {
        for i in 0..self.len() {
            let (a, b) = (self.succ_off[i] as usize, self.succ_off[i + 1] as usize);
            if b - a > 1 {
                self.succ[a..b].sort_by_key(|&s| std::cmp::Reverse(key(s & NODE_MASK)));
            }
        }
    }

    /// Bytes held by this topology (for memory accounting).
    pub fn heap_bytes(&self) -> usize {
        4 * (self.succ_off.len()
            + self.succ.len()
            + self.pred_off.len()
            + self.pred.len()
            + self.roots.len())
            + self.band.len()
            + 8 * self.rank.len()
    }
}

/// The successors of a node, in release order (see [`Dag::successors`]).
#[derive(Debug, Clone)]
pub struct Successors<'a>(std::slice::Iter<'a, u32>);

impl Iterator for Successors<'_> {
    type Item = u32;
    #[inline]
    fn next(&mut self) -> Option<u32> {
        self.0.next().map(|&s| s & NODE_MASK)
    }
    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl DoubleEndedIterator for Successors<'_> {
    #[inline]
    fn next_back(&mut self) -> Option<u32> {
        self.0.next_back().map(|&s| s & NODE_MASK)
    }
}

impl ExactSizeIterator for Successors<'_> {}

/// Counting-sort a stream of `(row, value)` pairs into CSR offsets and values (stable: values
/// keep their order within a row). Uses the offsets array itself as the fill cursor, so the
/// only memory is the result.
fn csr(rows: usize, pairs: impl Iterator<Item = (u32, u32)> + Clone) -> (Box<[u32]>, Box<[u32]>) {
    let mut off = vec![0u32; rows + 1];
    for (r, _) in pairs.clone() {
        off[r as usize + 1] += 1;
    }
    for i in 0..rows {
        off[i + 1] += off[i];
    }
    // off[r] is now the start of row r; filling advances it to the end of row r, which is
    // the start of row r + 1: shifting right by one restores the offsets.
    let mut vals = vec![0u32; off[rows] as usize];
    for (r, v) in pairs {
        let slot = &mut off[r as usize];
        vals[*slot as usize] = v;
        *slot += 1;
    }
    off.copy_within(0..rows, 1);
    off[0] = 0;
    (off.into_boxed_slice(), vals.into_boxed_slice())
}

/// Marks repeated values within a row with `u32::MAX` (keeping the first occurrence).
fn dedup_rows(off: &[u32], vals: &mut [u32]) {
    for i in 0..off.len() - 1 {
        let row = &mut vals[off[i] as usize..off[i + 1] as usize];
        if row.len() < 2 {
            continue;
        }
        if row.len() <= 8 {
            for j in 1..row.len() {
                if row[..j].contains(&row[j]) {
                    row[j] = u32::MAX;
                }
            }
        } else {
            let mut seen: Vec<u32> = row.to_vec();
            seen.sort_unstable();
            if seen.windows(2).all(|w| w[0] != w[1]) {
                continue;
            }
            let mut kept = std::collections::BTreeSet::new();
            for v in row.iter_mut() {
                if !kept.insert(*v) {
                    *v = u32::MAX;
                }
            }
        }
    }
}

/// Drops the `u32::MAX` markers left by `dedup_rows`.
fn compact(off: &[u32], vals: &[u32]) -> (Box<[u32]>, Box<[u32]>) {
    if !vals.contains(&u32::MAX) {
        return (off.into(), vals.into());
    }
    let mut new_off = Vec::with_capacity(off.len());
    let mut new_vals = Vec::with_capacity(vals.len());
    new_off.push(0);
    for i in 0..off.len() - 1 {
        new_vals.extend(
            vals[off[i] as usize..off[i + 1] as usize]
                .iter()
                .copied()
                .filter(|&v| v != u32::MAX),
        );
        new_off.push(new_vals.len() as u32);
    }
    (new_off.into_boxed_slice(), new_vals.into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_csr_and_topo_order() {
        let d = Dag::new(4, &[(0, 1), (0, 2), (1, 3), (2, 3), (0, 1)]).unwrap();
        assert_eq!(d.successors(0).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(d.successors(1).collect::<Vec<_>>(), [3]);
        assert_eq!(d.predecessors(3), &[1, 2]);
        assert_eq!(d.roots(), &[0]);
        assert_eq!(d.edge_count(), 4);
        let pos: Vec<usize> = (0..4)
            .map(|n| d.topological_order().iter().position(|&x| x == n).unwrap())
            .collect();
        assert!(pos[0] < pos[1] && pos[1] < pos[3] && pos[2] < pos[3]);
    }

    #[test]
    fn rejects_cycles_and_bad_edges() {
        assert!(matches!(
            Dag::new(3, &[(0, 1), (1, 2), (2, 1)]),
            Err(DagError::Cycle { on_cycle }) if on_cycle == vec![1, 2]
        ));
        assert_eq!(Dag::new(2, &[(0, 0)]).unwrap_err(), DagError::SelfLoop(0));
        assert_eq!(Dag::new(1 << 30, &[]).unwrap_err(), DagError::TooLarge);
        assert!(matches!(
            Dag::new(2, &[(0, 5)]),
            Err(DagError::OutOfRange { to: 5, .. })
        ));
    }

    /// Successor entries carry small in-degrees (see `NODE_BITS`): what `successors` and
    /// `in_degree` report is unchanged by them.
    #[test]
    fn successor_entries_keep_their_nodes_whatever_the_in_degree() {
        // Node 0 feeds nodes 1..=5; node k (1..=5) has k predecessors among 0 and 6..=9.
        let mut edges = Vec::new();
        for k in 1..=5u32 {
            edges.push((0, k));
            for p in 6..5 + k {
                edges.push((p, k));
            }
        }
        let d = Dag::new(10, &edges).unwrap();
        assert_eq!(d.successors(0).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        for k in 1..=5u32 {
            assert_eq!(d.in_degree(k), k);
            for &p in d.predecessors(k) {
                assert!(d.successors(p).any(|s| s == k), "{p} -> {k}");
            }
        }
        assert_eq!(d.successors(8).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(d.successors(6).rev().collect::<Vec<_>>(), [5, 4, 3, 2]);
    }

    #[test]
    fn sorts_successors_descending() {
        let mut d = Dag::new(4, &[(0, 1), (0, 2), (0, 3)]).unwrap();
        d.sort_successors_by_key(|s| [0, 5, 1, 9][s as usize]);
        assert_eq!(d.successors(0).collect::<Vec<_>>(), [3, 1, 2]);
    }
}
