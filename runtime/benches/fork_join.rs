//! What one parallel loop costs beyond its work: rayon's fork-join against `runtime::pool`,
//! two tasks of 50 µs on 2 threads, after serial pauses of 0–400 µs between loops (a decode
//! step runs about four loops per layer with short pauses between them).
//!
//! Run: `cargo bench -p tinygptv-runtime --bench fork_join` (on a quiet machine: the figures
//! are wall-clock).

use std::time::Instant;

use rayon::prelude::*;

fn spin(us: f64) {
    let t = Instant::now();
    while t.elapsed().as_secs_f64() * 1e6 < us {}
}

/// Mean wall time per iteration beyond `work + gap`, in µs.
fn overhead(iters: usize, work: f64, gap: f64, run: impl Fn(&(dyn Fn(usize) + Sync))) -> f64 {
    let task = |_: usize| spin(work);
    let t = Instant::now();
    for _ in 0..iters {
        run(&task);
        spin(gap);
    }
    t.elapsed().as_secs_f64() * 1e6 / iters as f64 - work - gap
}

fn main() {
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build_global()
        .expect("rayon pool");
    let work = 50.0;
    println!("2 threads, 2 tasks of {work} µs per loop: overhead per loop (µs)");
    println!("pause µs   rayon   runtime::pool");
    for gap in [0.0, 20.0, 100.0, 400.0] {
        let iters = 4000;
        let r = overhead(iters, work, gap, |f| {
            (0..2).into_par_iter().for_each(f);
        });
        let p = overhead(iters, work, gap, |f| runtime::pool::for_each_index(2, f));
        println!("{gap:>9.0} {r:>7.2} {p:>15.2}");
    }
}
