//! Malformed and hostile files: each must give a clean error naming the file, the problem and
//! the byte offset — never a panic. Also truncation at every byte and seeded random mutations.

mod gguf_util;

use std::panic::{catch_unwind, AssertUnwindSafe};

use kernels::gguf::{GgufError, GgufErrorKind, GgufFile};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use gguf_util::{fixture, rust_sample_bytes, Raw};

const F32: u32 = 0;
const Q8_0: u32 = 8;

fn open_err(bytes: Vec<u8>) -> GgufError {
    match GgufFile::from_bytes(bytes, "bad.gguf") {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("bad.gguf: "), "{msg}");
            assert!(!msg.contains('\n'), "multi-line message: {msg}");
            e
        }
    }
}

/// Pads a hand-made header to 1 KiB so that "huge count in a small file" is exactly that.
fn kib(mut r: Raw) -> Vec<u8> {
    r.zeros(1024 - r.buf.len().min(1024));
    r.build()
}

#[test]
fn bad_magic_and_versions() {
    let e = open_err(b"GGML\x03\0\0\0".iter().copied().chain([0; 16]).collect());
    assert!(matches!(e.kind, GgufErrorKind::BadMagic { .. }));
    assert_eq!(e.at, Some(0));
    let legacy = 0x67676a74u32.to_le_bytes(); // "ggjt" as llama.cpp wrote it
    let e = open_err(legacy.iter().copied().chain([0; 20]).collect());
    assert!(e.to_string().contains("legacy GGML/GGJT"), "{e}");

    let e = open_err(Raw::header(1, 0, 0).build());
    assert!(matches!(e.kind, GgufErrorKind::UnsupportedVersion(1)));
    assert_eq!(e.at, Some(4));
    let e = open_err(Raw::header(4, 0, 0).build());
    assert!(matches!(e.kind, GgufErrorKind::UnsupportedVersion(4)));
    assert_eq!(
        e.to_string(),
        "bad.gguf: unsupported GGUF version 4 (versions 2 and 3 are supported) (at byte 4)"
    );
    // Version 2 has the v3 layout and is accepted (as by ggml).
    assert_eq!(
        GgufFile::from_bytes(Raw::header(2, 0, 0).build(), "v2")
            .unwrap()
            .version(),
        2
    );

    // A big-endian file: everything byte-swapped, the magic stays "GGUF".
    let mut be = b"GGUF".to_vec();
    be.extend_from_slice(&3u32.to_be_bytes());
    be.extend_from_slice(&0u64.to_be_bytes());
    be.extend_from_slice(&0u64.to_be_bytes());
    let e = open_err(be);
    assert!(matches!(e.kind, GgufErrorKind::BigEndian(0x0300_0000)));
    assert!(e.to_string().contains("big-endian"), "{e}");

    for n in 0..24 {
        let e = open_err(Raw::header(3, 0, 0).build()[..n].to_vec());
        assert!(
            matches!(e.kind, GgufErrorKind::Truncated { .. }),
            "{n}: {e}"
        );
    }
}

#[test]
fn huge_counts_and_lengths() {
    let e = open_err(kib(Raw::header(3, 0, 1 << 60)));
    assert!(matches!(e.kind, GgufErrorKind::CountTooLarge { count, .. } if count == 1 << 60));
    assert_eq!(e.at, Some(16));
    let e = open_err(kib(Raw::header(3, u64::MAX, 0)));
    assert!(matches!(e.kind, GgufErrorKind::CountTooLarge { .. }), "{e}");
    assert_eq!(e.at, Some(8));
    // Each count fits alone, both together do not.
    let e = open_err(kib(Raw::header(3, 1000 / 24, 1000 / 13)));
    assert!(matches!(e.kind, GgufErrorKind::CountTooLarge { .. }), "{e}");

    // The tensor count fits the file but not what the metadata leaves of it.
    let mut r = Raw::header(3, 30, 1);
    r.string(b"s").u32(8).string(&[b'x'; 900]);
    let e = open_err(kib(r));
    assert!(
        matches!(
            e.kind,
            GgufErrorKind::CountTooLarge {
                count: 30,
                available: 79,
                ..
            }
        ),
        "{e}"
    );

    // A key of 10^15 bytes.
    let mut r = Raw::header(3, 0, 1);
    r.u64(1_000_000_000_000_000).bytes(b"key");
    let e = open_err(kib(r));
    assert!(
        matches!(&e.kind, GgufErrorKind::Truncated { needed, .. } if *needed == 1_000_000_000_000_000),
        "{e}"
    );
    assert_eq!(e.at, Some(32));

    // A string value of 2^63 bytes.
    let mut r = Raw::header(3, 0, 1);
    r.string(b"k").u32(8).u64(1 << 63);
    let e = open_err(kib(r));
    assert!(matches!(e.kind, GgufErrorKind::Truncated { .. }), "{e}");

    // An array of 10^15 u8 in a 1 KiB file.
    let mut r = Raw::header(3, 0, 1);
    r.string(b"arr").u32(9).u32(0).u64(1_000_000_000_000_000);
    let e = open_err(kib(r));
    assert!(matches!(e.kind, GgufErrorKind::CountTooLarge { .. }), "{e}");
    assert!(e.to_string().contains("metadata key 'arr'"), "{e}");
    assert_eq!(e.at, Some(24 + 11 + 8));

    // An array of 2^61 strings (min 8 bytes each).
    let mut r = Raw::header(3, 0, 1);
    r.string(b"arr").u32(9).u32(8).u64(1 << 61);
    assert!(matches!(
        open_err(kib(r)).kind,
        GgufErrorKind::CountTooLarge { .. }
    ));

    // An array that fits the file but exceeds the per-file element budget.
    let n = (1u64 << 24) + 1;
    let mut r = Raw::header(3, 0, 1);
    r.string(b"big").u32(9).u32(0).u64(n).zeros(n as usize);
    let e = open_err(r.build());
    assert!(e.to_string().contains("exceeds the limit"), "{e}");
}

#[test]
fn bad_metadata() {
    // Unknown value type id.
    let mut r = Raw::header(3, 0, 1);
    r.string(b"k").u32(13).u32(0);
    let e = open_err(r.build());
    assert!(
        matches!(e.kind, GgufErrorKind::UnknownValueType { id: 13, .. }),
        "{e}"
    );
    assert_eq!(e.at, Some(24 + 9));
    // Unknown array element type.
    let mut r = Raw::header(3, 0, 1);
    r.string(b"k").u32(9).u32(0xFFFF_FFFF).u64(0);
    assert!(matches!(
        open_err(r.build()).kind,
        GgufErrorKind::UnknownValueType { .. }
    ));
    // Nested array.
    let mut r = Raw::header(3, 0, 1);
    r.string(b"nest").u32(9).u32(9).u64(1).u32(4).u64(1).u32(7);
    let e = open_err(r.build());
    assert!(
        matches!(e.kind, GgufErrorKind::NestedArray(ref k) if k == "nest"),
        "{e}"
    );
    // Duplicate key.
    let mut r = Raw::header(3, 0, 2);
    r.kv_u32("dup", 1).kv_u32("dup", 2);
    let e = open_err(r.build());
    assert!(
        matches!(e.kind, GgufErrorKind::DuplicateKey(ref k) if k == "dup"),
        "{e}"
    );
    assert_eq!(e.at, Some(24 + 19));
    // Keys and names from the file are escaped and shortened in messages.
    let mut r = Raw::header(3, 0, 2);
    let key = format!("a\nb{}", "x".repeat(200));
    r.kv_u32(&key, 1).kv_u32(&key, 2);
    let msg = open_err(r.build()).to_string();
    assert!(
        msg.contains("'a\\nbxxx") && msg.contains("x…'") && msg.len() < 200,
        "{msg}"
    );
    // Empty key.
    let mut r = Raw::header(3, 0, 1);
    r.kv_u32("", 1);
    assert!(matches!(
        open_err(r.build()).kind,
        GgufErrorKind::InvalidKey { .. }
    ));
    // Invalid UTF-8 in a key and in a string value.
    let mut r = Raw::header(3, 0, 1);
    r.string(b"k\xff").u32(4).u32(0);
    assert!(matches!(
        open_err(r.build()).kind,
        GgufErrorKind::InvalidUtf8 { .. }
    ));
    let mut r = Raw::header(3, 0, 1);
    r.string(b"k").u32(8).string(b"\xc3\x28");
    let e = open_err(r.build());
    assert!(
        e.to_string()
            .contains("value of metadata key 'k' is not valid UTF-8"),
        "{e}"
    );
    // general.alignment: wrong type, zero, not a power of two.
    let mut r = Raw::header(3, 0, 1);
    r.string(b"general.alignment").u32(10).u64(32);
    let e = open_err(r.build());
    assert!(
        e.to_string().contains("must be of type u32, found u64"),
        "{e}"
    );
    assert_eq!(e.at, Some(24));
    for a in [0, 24, 3] {
        let mut r = Raw::header(3, 0, 1);
        r.kv_u32("general.alignment", a);
        let e = open_err(r.build());
        assert!(
            e.to_string().contains("not a non-zero power of two"),
            "{a}: {e}"
        );
    }
}

/// One F32 tensor info record after a header with one tensor and no KVs.
fn one_tensor(name: &str, dims: &[u64], ty: u32, offset: u64) -> Raw {
    let mut r = Raw::header(3, 1, 0);
    r.tensor_info(name, dims, ty, offset);
    r
}

#[test]
fn bad_tensor_infos() {
    let e = open_err(one_tensor("t", &[1, 1, 1, 1, 1], F32, 0).build());
    assert!(
        e.to_string().contains("tensor 't': has 5 dimensions"),
        "{e}"
    );
    assert_eq!(e.at, Some(24 + 9));
    // Overflow of the element count, a "negative" dim, and a byte size beyond int64.
    let e = open_err(one_tensor("t", &[1 << 32, 1 << 31], F32, 0).build());
    assert!(
        e.to_string().contains("overflows the int64 element count"),
        "{e}"
    );
    let e = open_err(one_tensor("t", &[u64::MAX], F32, 0).build());
    assert!(e.to_string().contains("negative as int64"), "{e}");
    let e = open_err(one_tensor("t", &[1 << 62], F32, 0).build());
    assert!(
        e.to_string().contains("overflows the int64 byte size"),
        "{e}"
    );
    // Zero-size dims cannot hide an overflow of the rest.
    let e = open_err(one_tensor("t", &[0, 1 << 40, 1 << 40], F32, 0).build());
    assert!(e.to_string().contains("overflows"), "{e}");
    // Block size.
    let e = open_err(one_tensor("t", &[48], Q8_0, 0).build());
    assert!(
        e.to_string()
            .contains("not a multiple of the Q8_0 block size 32"),
        "{e}"
    );
    // Unknown / unsupported ggml types (4 was removed, 10 = Q2_K is not implemented, 1000).
    for id in [4, 10, 1000] {
        let e = open_err(one_tensor("t", &[32], id, 0).build());
        assert!(e.to_string().contains(&format!("ggml type id {id}")), "{e}");
        assert_eq!(e.at, Some(24 + 9 + 4 + 8));
    }
    // Name of 64 bytes (63 is fine).
    let long = "n".repeat(64);
    let e = open_err(one_tensor(&long, &[1], F32, 0).build());
    assert!(e.to_string().contains("64 bytes long"), "{e}");
    let mut ok = one_tensor(&"n".repeat(63), &[1], F32, 0);
    ok.pad_to(32).zeros(4);
    GgufFile::from_bytes(ok.build(), "ok").unwrap();
    // Duplicate names.
    let mut r = Raw::header(3, 2, 0);
    r.tensor_info("t", &[1], F32, 0)
        .tensor_info("t", &[1], F32, 32);
    let e = open_err(r.build());
    assert!(
        matches!(e.kind, GgufErrorKind::DuplicateTensor(ref n) if n == "t"),
        "{e}"
    );
}

#[test]
fn bad_offsets_and_data_ranges() {
    // Two F32[8] tensors (32 bytes each): valid offsets are 0 and 32.
    let file = |o0: u64, o1: u64, data: usize| {
        let mut r = Raw::header(3, 2, 0);
        r.tensor_info("a", &[8], F32, o0)
            .tensor_info("b", &[8], F32, o1);
        r.pad_to(32).zeros(data);
        r.build()
    };
    GgufFile::from_bytes(file(0, 32, 64), "ok").unwrap();
    // The last tensor's padding may be missing (ggml reads only n_bytes), its data may not.
    let mut short = Raw::header(3, 2, 0);
    short
        .tensor_info("a", &[8], F32, 0)
        .tensor_info("b", &[7], F32, 32)
        .pad_to(32)
        .zeros(60);
    GgufFile::from_bytes(short.build(), "ok").unwrap();

    let e = open_err(file(0, 16, 64));
    assert!(
        e.to_string().contains("not a multiple of the alignment 32"),
        "{e}"
    );
    let e = open_err(file(0, 0, 64));
    assert!(
        e.to_string().contains("overlaps the data of tensor 'a'"),
        "{e}"
    );
    let e = open_err(file(0, 64, 96));
    assert!(e.to_string().contains("without gaps"), "{e}");
    assert!(matches!(
        e.kind,
        GgufErrorKind::TensorOffset {
            offset: 64,
            expected: 32,
            ..
        }
    ));
    let e = open_err(file(32, 64, 96));
    assert!(
        e.to_string().contains("has data offset 32, expected 0"),
        "{e}"
    );
    let e = open_err(file(0, 1 << 62, 64));
    assert!(matches!(e.kind, GgufErrorKind::TensorOffset { .. }), "{e}");
    // Data past the end of the file.
    let e = open_err(file(0, 32, 63));
    assert_eq!(
        e.to_string(),
        "bad.gguf: tensor 'b' data [128..160] exceeds file size 159 (at byte 57)"
    );
    // With a custom alignment the strict rule uses it.
    let mut r = Raw::header(3, 2, 1);
    r.kv_u32("general.alignment", 64);
    r.tensor_info("a", &[8], F32, 0)
        .tensor_info("b", &[8], F32, 32);
    r.pad_to(64).zeros(128);
    let e = open_err(r.build());
    assert!(
        e.to_string().contains("not a multiple of the alignment 64"),
        "{e}"
    );
}

/// The length a prefix needs to be valid: up to the end of the last tensor's data.
fn required_len(bytes: &[u8]) -> usize {
    let f = GgufFile::from_bytes(bytes.to_vec(), "full").unwrap();
    let end = f
        .tensors()
        .iter()
        .map(|t| t.offset + t.n_bytes)
        .max()
        .unwrap_or(0);
    (f.data_offset() + end) as usize
}

#[test]
fn truncation_at_every_byte() {
    for bytes in [
        rust_sample_bytes(),
        std::fs::read(fixture("python_written.gguf")).unwrap(),
    ] {
        let need = required_len(&bytes);
        for n in 0..bytes.len() {
            let r = catch_unwind(|| GgufFile::from_bytes(bytes[..n].to_vec(), "cut.gguf"));
            match r {
                Err(_) => panic!("panic on a file truncated to {n} bytes"),
                Ok(Ok(_)) => assert!(n >= need, "truncated to {n} < {need} bytes but accepted"),
                Ok(Err(e)) => {
                    assert!(n < need, "{n}: {e}");
                    assert!(e.to_string().starts_with("cut.gguf: "), "{e}");
                }
            }
        }
    }
}

/// Exercises every accessor of an accepted file (must not panic either).
fn touch(f: &GgufFile) {
    for (k, v) in f.metadata() {
        assert!(f.get(k).is_some());
        let _ = (
            v.as_u32(),
            v.as_i64(),
            v.as_f32(),
            v.as_str(),
            v.as_string_array(),
        );
        let _ = (
            v.as_f32_array(),
            v.as_i32_array(),
            f.get_u32(k),
            f.get_str(k),
        );
    }
    for t in f.tensors() {
        assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
        let _ = (
            t.n_elements(),
            t.rows(),
            t.row_bytes(),
            f.tensor(&t.name).unwrap().as_f32(),
        );
    }
}

/// Seeded random corruption: byte flips anywhere, and extreme values written over 8-byte
/// windows (to hit counts and lengths). Every outcome must be `Ok` or a clean `Err`.
#[test]
fn random_mutations_never_panic() {
    let bases = [
        rust_sample_bytes(),
        std::fs::read(fixture("python_written.gguf")).unwrap(),
    ];
    let extremes: [u64; 8] = [0, 1, 0xFF, 1 << 31, 1 << 32, 1 << 62, 1 << 63, u64::MAX];
    let mut rng = StdRng::seed_from_u64(0x6767_7566);
    let (mut n_ok, mut n_err) = (0, 0);
    for iter in 0..4000 {
        let base = &bases[iter % 2];
        let mut bytes = base.clone();
        if iter % 4 == 3 {
            let at = rng.random_range(0..bytes.len() - 8);
            let v = extremes[rng.random_range(0..extremes.len())];
            let width = [1usize, 4, 8][rng.random_range(0..3)];
            bytes[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
        } else {
            // Mostly the header (where the structure is), sometimes anywhere.
            let limit = if iter % 3 == 0 {
                bytes.len()
            } else {
                1408.min(bytes.len())
            };
            for _ in 0..rng.random_range(1..=4) {
                let at = rng.random_range(0..limit);
                bytes[at] = rng.random();
            }
        }
        let result = catch_unwind(AssertUnwindSafe(|| {
            match GgufFile::from_bytes(bytes.clone(), "fuzz.gguf") {
                Ok(f) => {
                    touch(&f);
                    true
                }
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        msg.starts_with("fuzz.gguf: ") && !msg.contains('\n'),
                        "{msg}"
                    );
                    false
                }
            }
        }));
        match result {
            Ok(true) => n_ok += 1,
            Ok(false) => n_err += 1,
            Err(_) => panic!("panic in iteration {iter}"),
        }
    }
    // Both outcomes must occur, or the mutations are not reaching the parser.
    assert!(n_ok > 100 && n_err > 1000, "ok {n_ok}, err {n_err}");
}
