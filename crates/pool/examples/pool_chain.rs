//! Per-node cost of the pool alone (no nerv layer) on a chain: `cargo run --release -p
//! nerv-pool --example pool_chain`.
use nerv_pool::{Dag, NodeCx, NodeRunner, Pool, Verdict};
use std::sync::Arc;
use std::time::Instant;

struct Empty;
impl NodeRunner for Empty {
    fn run(&self, cx: &NodeCx<'_, Self>) -> Verdict {
        std::hint::black_box(cx.node());
        Verdict::Completed
    }
}

fn main() {
    let n = 1_000_000u32;
    let edges: Vec<(u32, u32)> = (1..n).map(|i| (i - 1, i)).collect();
    let dag = Arc::new(Dag::new(n as usize, &edges).unwrap());
    let pool = Pool::new(2, "bench");
    let mut v: Vec<f64> = (0..9)
        .map(|_| {
            let t = Instant::now();
            let h = pool.start(dag.clone(), Empty);
            h.wait();
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    println!("pool-only chain: {:.1} ns/node (median of 9)", v[4]);
}
