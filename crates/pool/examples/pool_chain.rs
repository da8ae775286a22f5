//! Per-node cost of the pool alone (no nerv layer), 10^6 nodes on 2 workers: `cargo run
//! --release -p nerv-pool --example pool_chain [chain|wavefront]` (default: chain).
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
    let shape = std::env::args().nth(1).unwrap_or_else(|| "chain".into());
    let (n, edges): (u32, Vec<(u32, u32)>) = match shape.as_str() {
        "chain" => (1_000_000, (1..1_000_000).map(|i| (i - 1, i)).collect()),
        "wavefront" => {
            let k = 1000u32;
            let mut e = Vec::new();
            for r in 0..k {
                for c in 0..k {
                    if r > 0 {
                        e.push(((r - 1) * k + c, r * k + c));
                    }
                    if c > 0 {
                        e.push((r * k + c - 1, r * k + c));
                    }
                }
            }
            (k * k, e)
        }
        other => panic!("unknown shape {other} (chain, wavefront)"),
    };
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
    println!("pool-only {shape}: {:.1} ns/node (median of 9)", v[4]);
}
