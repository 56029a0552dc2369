//! Robustness: truncated and bit-flipped pickles and checkpoint files must give Ok or Err,
//! never a panic (or an unbounded allocation).

use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use converter::safetensors::load_safetensors_bytes;
use converter::{pickle, TorchCheckpoint};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// The `data.pkl` of a torch zip fixture.
fn data_pkl(name: &str) -> Vec<u8> {
    let file = std::fs::File::open(data(name)).unwrap();
    let mut zip = zip::ZipArchive::new(file).unwrap();
    let pkl = zip
        .file_names()
        .find(|n| n.ends_with("/data.pkl"))
        .unwrap()
        .to_string();
    let mut bytes = Vec::new();
    zip.by_name(&pkl).unwrap().read_to_end(&mut bytes).unwrap();
    bytes
}

fn pickles() -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        ("small.pth:data.pkl".to_string(), data_pkl("small.pth")),
        (
            "small_p4.pth:data.pkl".to_string(),
            data_pkl("small_p4.pth"),
        ),
        (
            "tinygptv_like.pth:data.pkl".to_string(),
            data_pkl("tinygptv_like.pth"),
        ),
        (
            "hostile.pkl".to_string(),
            std::fs::read(data("hostile.pkl")).unwrap(),
        ),
    ];
    for proto in 0..=5 {
        let name = format!("plain_p{proto}.pkl");
        out.push((name.clone(), std::fs::read(data(&name)).unwrap()));
    }
    out
}

/// Parse and walk the whole value graph (to_json touches every reachable object).
fn exercise_pickle(bytes: &[u8]) {
    if let Ok((p, end)) = pickle::parse(bytes) {
        assert!(end <= bytes.len());
        let _ = p.to_json(p.root());
    }
}

fn flip(rng: &mut StdRng, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let flips = rng.random_range(1..=4);
    for _ in 0..flips {
        let i = rng.random_range(0..out.len());
        out[i] = if rng.random_bool(0.5) {
            out[i] ^ (1 << rng.random_range(0..8))
        } else {
            rng.random()
        };
    }
    out
}

#[test]
fn pickle_truncated_at_every_offset() {
    for (name, bytes) in pickles() {
        for cut in 0..bytes.len() {
            let r = catch_unwind(AssertUnwindSafe(|| pickle::parse(&bytes[..cut])));
            match r {
                Ok(result) => assert!(result.is_err(), "{name} cut at {cut} parsed"),
                Err(_) => panic!("{name}: panic when truncated at {cut}"),
            }
        }
        exercise_pickle(&bytes);
    }
}

#[test]
fn pickle_random_byte_flips() {
    let mut rng = StdRng::seed_from_u64(0x7157_6770);
    for (name, bytes) in pickles() {
        for round in 0..1500 {
            let mutated = flip(&mut rng, &bytes);
            if catch_unwind(AssertUnwindSafe(|| exercise_pickle(&mutated))).is_err() {
                panic!("{name}: panic on mutation round {round}: {mutated:?}");
            }
        }
    }
}

/// Open an in-memory checkpoint, walk its pickle and read every tensor; errors are fine.
fn exercise_file(name: &Path, bytes: Vec<u8>) {
    let state = if name.extension().is_some_and(|e| e == "safetensors") {
        load_safetensors_bytes(name, bytes)
    } else {
        TorchCheckpoint::from_bytes(name, bytes).and_then(|ckpt| {
            let _ = ckpt.pickle().to_json(ckpt.root());
            ckpt.state_dict()
        })
    };
    if let Ok(state) = state {
        for t in state.iter() {
            let _ = t.read_f32();
        }
    }
}

/// Truncate the fixture at every `truncation_step`-th offset, then apply `rounds` random
/// mutations of 1-4 bytes each.
fn fuzz_file(fixture: &str, rounds: usize, truncation_step: usize, seed: u64) {
    let bytes = std::fs::read(data(fixture)).unwrap();
    let name = data(fixture);
    let check = |content: &[u8], what: &str| {
        if catch_unwind(AssertUnwindSafe(|| exercise_file(&name, content.to_vec()))).is_err() {
            let keep = std::env::temp_dir().join("tinygptv_reader_fuzz_failure");
            let _ = std::fs::write(&keep, content);
            panic!(
                "{fixture}: panic on {what} (input kept at {})",
                keep.display()
            );
        }
    };
    for cut in (0..bytes.len()).step_by(truncation_step) {
        check(&bytes[..cut], &format!("truncation at {cut}"));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    for round in 0..rounds {
        let mutated = flip(&mut rng, &bytes);
        check(&mutated, &format!("mutation round {round}"));
    }
}

#[test]
fn torch_zip_file_fuzz() {
    fuzz_file("small.pth", 3000, 1, 1);
}

#[test]
fn torch_zip_deflated_fuzz() {
    fuzz_file("small_deflated.pth", 2000, 1, 5);
}

#[test]
fn torch_legacy_file_fuzz() {
    fuzz_file("small_legacy.pth", 3000, 1, 2);
}

#[test]
fn safetensors_file_fuzz() {
    fuzz_file("hf_single/model.safetensors", 3000, 1, 3);
}

#[test]
fn training_checkpoint_fuzz() {
    fuzz_file("tinygptv_like.pth", 2000, 1, 4);
}

/// Long run (about a minute): `cargo test -p tinygptv-converter --test readers_fuzz -- --ignored`.
#[test]
#[ignore]
fn heavy_fuzz() {
    for (i, fixture) in [
        "small.pth",
        "small_p4.pth",
        "small_deflated.pth",
        "small_legacy.pth",
        "tinygptv_like.pth",
        "params.pth",
    ]
    .into_iter()
    .enumerate()
    {
        fuzz_file(fixture, 40_000, 1, 100 + i as u64);
    }
    fuzz_file("hf_single/model.safetensors", 40_000, 1, 200);
}
