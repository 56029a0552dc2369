//! Memory behaviour, measured with a counting global allocator (per thread, so tests may run
//! in parallel): lying counts never cause an allocation larger than the file, opening a 2 GiB
//! file allocates little and takes milliseconds, and writing streams the tensor data.

mod gguf_util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::time::Instant;

use kernels::gguf::{GgufFile, GgufWriter, Value};
use kernels::GgmlType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use gguf_util::{rust_sample_bytes, Raw};

struct Counting;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn record(alloc: usize, free: usize) {
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            LARGEST.with(|m| m.set(m.get().max(alloc)));
            LIVE.with(|l| {
                l.set(l.get() + alloc as isize - free as isize);
                PEAK.with(|p| p.set(p.get().max(l.get())));
            });
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size(), 0);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(0, layout.size());
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size(), 0);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size, layout.size());
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

struct Usage {
    largest: usize,
    peak_live: isize,
}

/// Runs `f` and reports the largest single allocation and the peak of live bytes it made.
fn measure<T>(f: impl FnOnce() -> T) -> (T, Usage) {
    LARGEST.with(|m| m.set(0));
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    TRACKING.with(|t| t.set(true));
    let out = f();
    TRACKING.with(|t| t.set(false));
    let usage = Usage {
        largest: LARGEST.with(Cell::get),
        peak_live: PEAK.with(Cell::get),
    };
    (out, usage)
}

/// Parses a copy of `bytes` (the copy itself is made outside the measurement).
fn parse_measured(bytes: &[u8]) -> (bool, Usage) {
    let copy = bytes.to_vec();
    measure(move || GgufFile::from_bytes(copy, "x.gguf").is_ok())
}

fn kib(mut r: Raw) -> Vec<u8> {
    r.zeros(1024 - r.buf.len().min(1024));
    r.build()
}

#[test]
fn lying_counts_allocate_at_most_the_file_size() {
    let mut cases = vec![
        kib(Raw::header(3, 0, 1 << 60)),
        kib(Raw::header(3, u64::MAX, 0)),
        kib(Raw::header(3, 1024 / 24, 0)),
        kib(Raw::header(3, 0, 1024 / 13)),
    ];
    for elem in [0u32, 4, 8, 10] {
        for count in [1_000_000_000_000_000u64, 1 << 62, 1000, 2000] {
            let mut r = Raw::header(3, 0, 1);
            r.string(b"arr").u32(9).u32(elem).u64(count);
            cases.push(kib(r));
        }
    }
    let mut r = Raw::header(3, 0, 1);
    r.u64(1 << 50);
    cases.push(kib(r));
    let mut r = Raw::header(3, 0, 1);
    r.string(b"s").u32(8).u64(1000);
    cases.push(kib(r));
    for (i, bytes) in cases.iter().enumerate() {
        let (ok, usage) = parse_measured(bytes);
        assert!(!ok, "case {i} parsed");
        assert!(
            usage.largest <= bytes.len(),
            "case {i}: allocation of {} bytes for a {}-byte file",
            usage.largest,
            bytes.len()
        );
    }
}

/// Random corruption of a real file: allocations stay within the bound documented in
/// `gguf::value` (a decoded array element takes `size_of::<Value>()` bytes).
#[test]
fn random_mutations_allocate_boundedly() {
    let base = rust_sample_bytes();
    let bound = std::mem::size_of::<Value>() * base.len() * 2;
    let mut rng = StdRng::seed_from_u64(7);
    let mut worst = 0;
    for _ in 0..1000 {
        let mut bytes = base.clone();
        let at = rng.random_range(0..bytes.len() - 8);
        if rng.random_bool(0.5) {
            bytes[at] = rng.random();
        } else {
            let v: u64 = [1 << 20, 1 << 40, u64::MAX, 3000][rng.random_range(0..4)];
            bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        let (_, usage) = parse_measured(&bytes);
        worst = worst.max(usage.largest);
    }
    eprintln!(
        "random mutations: largest allocation {worst} B for a {}-byte file",
        base.len()
    );
    assert!(worst <= bound, "largest allocation {worst} > {bound}");
}

/// A 2 GiB file (sparse: its data is never written) opens in milliseconds without reading or
/// copying the data.
#[test]
fn opening_a_2gib_file_reads_only_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.gguf");
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", Value::from("phi2"))
        .unwrap();
    w.add_kv(
        "tokens",
        Value::string_array((0..1000).map(|i| format!("tok{i}"))),
    )
    .unwrap();
    w.add_tensor("huge", GgmlType::F32, &[1 << 14, 1 << 15])
        .unwrap(); // 2 GiB
    w.add_tensor("tail", GgmlType::Q8_0, &[64, 4]).unwrap();
    let header = w.header_bytes().unwrap();
    let total = header.len() as u64 + w.data_size().unwrap();
    assert!(total > 2 << 30);
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&header).unwrap();
    f.set_len(total).unwrap();
    drop(f);

    let start = Instant::now();
    let (file, usage) = measure(|| GgufFile::open(&path).unwrap());
    let elapsed = start.elapsed();
    eprintln!(
        "open 2 GiB: {elapsed:?}, largest allocation {} B, peak live {} B",
        usage.largest, usage.peak_live
    );
    assert!(elapsed.as_millis() < 500, "open took {elapsed:?}");
    assert!(
        usage.peak_live < 1 << 20,
        "opening allocated {} bytes",
        usage.peak_live
    );
    assert_eq!(file.file_size(), total);
    let huge = file.tensor("huge").unwrap();
    assert_eq!(huge.data.len() as u64, 2 << 30);
    assert_eq!(file.tensor("tail").unwrap().data.len(), 4 * 2 * 34);
    // Zero-copy: the view points into the map.
    let base = file.bytes().as_ptr() as usize;
    assert_eq!(
        huge.data.as_ptr() as usize - base,
        file.data_offset() as usize
    );
}

/// Writing 64 MiB of tensor data keeps well under 4 MiB live: data is streamed, not buffered.
#[test]
fn writing_streams_tensor_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stream.gguf");
    let mut w = GgufWriter::new();
    for i in 0..64 {
        w.add_tensor(&format!("t{i}"), GgmlType::F32, &[1 << 18])
            .unwrap(); // 1 MiB each
    }
    let chunk = vec![0xABu8; 64 << 10];
    let (result, usage) = measure(|| {
        w.write_to_path(&path, |i, t, out| {
            let mut left = t.n_bytes as usize;
            while left > 0 {
                let n = left.min(chunk.len());
                out.write_all(&chunk[..n])?;
                left -= n;
            }
            out.write_all(&[]).map(|_| assert!(i < 64))
        })
    });
    result.unwrap();
    eprintln!("write 64 MiB: peak live {} B", usage.peak_live);
    assert!(
        usage.peak_live < 4 << 20,
        "writing kept {} bytes live",
        usage.peak_live
    );
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensors().len(), 64);
    let last = f.tensor("t63").unwrap().data;
    assert!(last.len() == 1 << 20 && last.iter().all(|&b| b == 0xAB));
}
