//! A spin-then-park worker pool for the many short parallel loops of decoding.
//!
//! A decode step runs about four parallel loops per layer (the input projections, attention
//! heads, the output and down projections), each a few hundred microseconds long. With rayon,
//! a worker that finds no work goes to sleep after a few rounds of `sched_yield`, and on a VM
//! waking it again goes through the hypervisor: on the 2-vCPU test VM a fork-join of two
//! 50 µs tasks costs 12 µs more than the work with no pause between loops and 27 µs after a
//! 20 µs pause (`bench/REPORT.md`). Here the workers keep polling the job counter for a while
//! after each loop ([`SPIN`]), yielding now and then so that other threads still run, and only
//! then park; the calling thread works on the loop too.
//!
//! One loop runs at a time. A call made while the pool is busy (from another thread, or from
//! inside a pool task) or from a rayon task runs on rayon instead, so the pool never waits on
//! itself.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// How long an idle worker polls for the next loop before it parks.
const SPIN: Duration = Duration::from_micros(300);
/// Polls between two `yield_now` calls while spinning.
const POLLS_PER_YIELD: u32 = 64;

/// The loop being run: `f(i)` for `i` in `0..n`.
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    n: usize,
}

struct Shared {
    /// Bumped once per loop, after `job` is written.
    epoch: AtomicU64,
    job: UnsafeCell<Job>,
    /// The next index to take.
    next: AtomicUsize,
    /// Workers that have not finished the current loop.
    active: AtomicUsize,
    /// A task panicked during the current loop.
    panicked: AtomicBool,
    /// Workers parked on `wake`.
    sleeping: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the owner of `busy` while no worker reads it (every worker
// has finished the previous loop: `active` is 0), and read by workers only between the epoch
// bump (Release / SeqCst) and their `active` decrement; `f` is `Sync`.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

struct Pool {
    shared: &'static Shared,
    workers: usize,
    busy: AtomicBool,
}

static POOL: OnceLock<Pool> = OnceLock::new();

/// The pool, started on first use with one worker less than rayon's thread count (the caller
/// is the last worker). With more threads than the CPU runs at once it has no workers and every
/// loop runs on rayon: a polling worker that the OS has put aside holds up each loop, and
/// polling takes the CPU from the threads that work (`-t 4` on 2 vCPUs: pp64 82 vs 94–99 t/s,
/// tg 14–18 vs 19–20 with rayon).
fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            epoch: AtomicU64::new(0),
            job: UnsafeCell::new(Job { f: &|_| {}, n: 0 }),
            next: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleeping: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }));
        let threads = rayon::current_num_threads();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut workers = if threads > cpus { 0 } else { threads - 1 };
        for i in 0..workers {
            let spawned = std::thread::Builder::new()
                .name(format!("tinygptv-pool-{i}"))
                .spawn(move || worker(shared));
            if spawned.is_err() {
                // fewer workers than asked: the loops still complete (the caller takes the rest)
                workers = i;
                break;
            }
        }
        Pool {
            shared,
            workers,
            busy: AtomicBool::new(false),
        }
    })
}

/// Whether loops run on the pool's workers (starts the pool). `false` with one thread, or with
/// more threads than CPUs, where every loop runs on rayon.
pub fn has_workers() -> bool {
    pool().workers > 0
}

/// Takes indices of the current loop until none are left.
///
/// # Safety
/// Only between a loop's epoch bump and this thread's `active` decrement (or, for the owner,
/// before it sees `active == 0`).
unsafe fn take_indices(s: &Shared) {
    // SAFETY: the job is not written while a loop runs (see `Shared`)
    let job = unsafe { &*s.job.get() };
    // SAFETY: the owner keeps `f` alive until every worker has finished the loop
    let f = unsafe { &*job.f };
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= job.n {
            break;
        }
        if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
    }
}

fn worker(s: &'static Shared) {
    let mut seen = 0u64;
    loop {
        // wait for the next loop: poll, then park
        let start = Instant::now();
        let mut polls = 0u32;
        loop {
            if s.epoch.load(Ordering::SeqCst) != seen {
                break;
            }
            polls += 1;
            if polls.is_multiple_of(POLLS_PER_YIELD) {
                if start.elapsed() > SPIN {
                    let mut guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                    s.sleeping.fetch_add(1, Ordering::SeqCst);
                    while s.epoch.load(Ordering::SeqCst) == seen {
                        guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                    }
                    s.sleeping.fetch_sub(1, Ordering::SeqCst);
                    break;
                }
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        seen = s.epoch.load(Ordering::SeqCst);
        // SAFETY: a loop is published (epoch moved) and this worker has not finished it
        unsafe { take_indices(s) };
        s.active.fetch_sub(1, Ordering::Release);
    }
}

/// Runs `f(i)` for every `i` in `0..n`, in parallel, and returns when all have finished.
/// Panics (after the loop) if any `f(i)` panicked.
pub fn for_each_index(n: usize, f: impl Fn(usize) + Sync + Send) {
    if n == 0 {
        return;
    }
    let p = pool();
    if n == 1 {
        f(0);
        return;
    }
    if p.workers == 0 {
        // one thread: in order; oversubscribed: rayon
        if rayon::current_num_threads() > 1 {
            (0..n).into_par_iter().for_each(f);
        } else {
            (0..n).for_each(f);
        }
        return;
    }
    // inside a rayon task, or while another loop runs (another thread, or a task of this
    // one): rayon instead. (A rayon worker that waited here for the pool could be the thread
    // that a nested rayon loop of a pool task needs.)
    if rayon::current_thread_index().is_some()
        || p.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        (0..n).into_par_iter().for_each(f);
        return;
    }
    let s = p.shared;
    let f: &(dyn Fn(usize) + Sync) = &f;
    // SAFETY: no worker reads the job now (the last loop ended with `active == 0`); `f`
    // outlives the loop because this function waits for every worker before returning, so
    // erasing its lifetime is sound.
    unsafe {
        *s.job.get() = Job {
            f: std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f),
            n,
        };
    }
    s.next.store(0, Ordering::Relaxed);
    s.active.store(p.workers, Ordering::Relaxed);
    s.epoch.fetch_add(1, Ordering::SeqCst);
    if s.sleeping.load(Ordering::SeqCst) > 0 {
        let _guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
        s.wake.notify_all();
    }
    // SAFETY: the loop is published and not finished while this thread takes part in it
    unsafe { take_indices(s) };
    while s.active.load(Ordering::Acquire) != 0 {
        std::hint::spin_loop();
    }
    let panicked = s.panicked.swap(false, Ordering::Relaxed);
    p.busy.store(false, Ordering::Release);
    if panicked {
        panic!("a task of a parallel loop panicked");
    }
}

/// `f(i)` for every `i` in `0..n`, in parallel ([`for_each_index`]), collected in order.
pub fn map_collect<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    let slots: Vec<Mutex<Option<T>>> = (0..n).map(|_| Mutex::new(None)).collect();
    for_each_index(n, |i| {
        let v = f(i);
        // each task locks only its own slot
        *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
    });
    slots
        .into_iter()
        .map(|s| {
            s.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .expect("every index ran")
        })
        .collect()
}

/// A pointer into one buffer that the tasks of a loop share, each writing only its own
/// elements (the users' safety contract).
pub(crate) struct SharedPtr<T>(pub(crate) *mut T);
// SAFETY: the tasks sharing it write disjoint elements (every user's contract).
unsafe impl<T: Send> Sync for SharedPtr<T> {}
unsafe impl<T: Send> Send for SharedPtr<T> {}

impl<T> Clone for SharedPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedPtr<T> {}

impl<T> SharedPtr<T> {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper, not the field).
    pub(crate) fn get(&self) -> *mut T {
        self.0
    }
}

/// `f(i, piece)` for the `chunk`-sized pieces of `x` (the last may be shorter), in parallel.
pub fn for_each_chunk_mut<T: Send>(
    x: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    assert!(chunk > 0, "for_each_chunk_mut: chunk size 0");
    let len = x.len();
    let base = SharedPtr(x.as_mut_ptr());
    for_each_index(len.div_ceil(chunk), |i| {
        let start = i * chunk;
        let end = (start + chunk).min(len);
        // SAFETY: pieces of different indices are disjoint and inside `x`, which is borrowed
        // mutably for the whole loop.
        let piece = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
        f(i, piece);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn map_collect_and_chunks_cover_everything_in_order() {
        assert_eq!(map_collect(5, |i| i * i), vec![0, 1, 4, 9, 16]);
        let mut x: Vec<usize> = vec![0; 103];
        for_each_chunk_mut(&mut x, 10, |i, piece| {
            for (j, v) in piece.iter_mut().enumerate() {
                *v += 10 * i + j + 1;
            }
        });
        assert_eq!(x, (1..=103).collect::<Vec<_>>());
    }

    #[test]
    fn every_index_runs_once() {
        for n in [0, 1, 2, 3, 17, 1000] {
            let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
            for_each_index(n, |i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "n={n}");
        }
    }

    #[test]
    fn loops_from_many_threads_and_nested_loops_complete() {
        // concurrent callers and a loop inside a task fall back to rayon instead of waiting
        let total = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..4 {
                sc.spawn(|| {
                    for _ in 0..50 {
                        for_each_index(8, |_| {
                            for_each_index(3, |_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 4 * 50 * 8 * 3);
    }

    #[test]
    fn loops_inside_rayon_tasks_complete() {
        let total = AtomicUsize::new(0);
        (0..8).into_par_iter().for_each(|_| {
            for_each_index(5, |_| {
                total.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(total.load(Ordering::Relaxed), 40);
    }

    #[test]
    fn after_a_pause_the_parked_workers_take_part_again() {
        for_each_index(4, |_| {});
        std::thread::sleep(SPIN * 4);
        let hits: Vec<AtomicU32> = (0..64).map(|_| AtomicU32::new(0)).collect();
        for_each_index(64, |i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_the_pool_still_works() {
        let r = catch_unwind(|| for_each_index(16, |i| assert_ne!(i, 5, "task 5 fails")));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        for_each_index(16, |_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 16);
    }
}
