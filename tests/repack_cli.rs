//! `tinygptv repack`: a language model's matrices stored in the ×16 layouts and read in place
//! from the map give the same logits, bit for bit, as the plain file (the kernels on both
//! layouts return the scalar reference's exact sums), at the detected CPU level and at the
//! scalar level (which unpacks them at load time), and copied into memory where the repack
//! policy keeps weights there; bad inputs are refused with nothing written.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use kernels::gguf::GgufFile;
use kernels::repack::RepackLayout;
use runtime::kv_cache::CacheType;
use runtime::linear::{set_repack_policy, RepackPolicy};
use runtime::llm::load_language_model;

fn tinygptv(args: &[&str], cpu: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tinygptv"));
    c.args(args);
    if let Some(level) = cpu {
        c.env("TINYGPTV_CPU", level);
    }
    c.output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Logits of a 9-token prompt (the prompt GEMMs) and then of one more token (decode's GEMV).
fn logits(gguf: &Path) -> (Vec<f32>, usize) {
    let lm = load_language_model(gguf).unwrap();
    let prompt = [3u32, 141, 592, 77, 1000, 12, 5, 1199, 640];
    let mut kv = lm.model.new_cache(CacheType::F16, prompt.len() + 1);
    let mut out = lm
        .model
        .forward(lm.model.embed_tokens(&prompt).unwrap(), &mut kv, true)
        .unwrap();
    out.extend(
        lm.model
            .forward(lm.model.embed_tokens(&[400]).unwrap(), &mut kv, false)
            .unwrap(),
    );
    (out, lm.model.interleaved_in_place())
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn repacked_files_give_the_plain_files_logits() {
    // the plain files run on their own layout (no load-time repacking)
    set_repack_policy(RepackPolicy::Off);
    let tmp = tempfile::tempdir().unwrap();
    for (ty, layouts) in [
        ("q4_0", &[RepackLayout::Q4_0x16][..]),
        ("q8_0", &[RepackLayout::Q8_0x16][..]),
        (
            "q4_k_m",
            &[RepackLayout::Q4_Kx16, RepackLayout::Q6_Kx16][..],
        ),
    ] {
        let plain = tmp.path().join(format!("{ty}.gguf"));
        let x16 = tmp.path().join(format!("{ty}-x16.gguf"));
        convert_lm("phi2-safetensors", ty, Some(3), &plain);
        let o = tinygptv(&["repack", s(&plain), s(&x16)], None);
        assert!(o.status.success(), "{ty}: {}", stderr(&o));

        // 2 layers × (QKV, attention output, up, down) + the LM head, in the layouts expected
        let f = GgufFile::open(&x16).unwrap();
        let interleaved: Vec<_> = f.tensors().iter().filter_map(|t| t.layout).collect();
        assert_eq!(interleaved.len(), 9, "{ty}: {interleaved:?}");
        for l in layouts {
            assert!(interleaved.contains(l), "{ty}: no {l:?} in {interleaved:?}");
        }
        assert!(f.tensor_info("token_embd.weight").unwrap().layout.is_none());
        assert_eq!(
            f.get_str("tinygptv.interleaved_from").unwrap(),
            format!("{ty}.gguf")
        );

        let (want, none) = logits(&plain);
        let (got, in_place) = logits(&x16);
        assert_eq!(none, 0);
        let level = kernels::simd::kernels();
        if layouts.iter().all(|l| level.has_repacked_gemm(*l)) {
            assert_eq!(in_place, 9, "{ty}: matrices not read in place");
        }
        assert!(same_bits(&got, &want), "{ty}: logits differ");

        // where the policy keeps repacked weights in memory, the ×16 matrices are copied there
        set_repack_policy(RepackPolicy::On);
        let (copied, in_place) = logits(&x16);
        set_repack_policy(RepackPolicy::Off);
        assert_eq!(in_place, 0, "{ty}: matrices still read from the map");
        assert!(
            same_bits(&copied, &want),
            "{ty}: logits differ after the copy"
        );

        // the scalar level has no ×16 kernels: it unpacks the rows at load time
        let (a, b) = (tmp.path().join("a.npy"), tmp.path().join("b.npy"));
        for (model, out) in [(&plain, &a), (&x16, &b)] {
            let o = tinygptv(
                &[
                    "logits",
                    "-m",
                    s(model),
                    "--tokens",
                    "3,141,592,77,1000",
                    "--out",
                    s(out),
                ],
                Some("scalar"),
            );
            assert!(o.status.success(), "{ty}: {}", stderr(&o));
        }
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "{ty}: scalar-level logits differ"
        );
    }
}

#[test]
fn repack_refuses_what_it_cannot_repack() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("q4_0.gguf");
    let x16 = tmp.path().join("x16.gguf");
    convert_lm("phi2-safetensors", "q4_0", None, &plain);
    assert!(tinygptv(&["repack", s(&plain), s(&x16)], None)
        .status
        .success());
    // `info` shows the layouts and their type ids
    let o = tinygptv(&["info", s(&x16), "--json"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let q = j["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "blk.0.attn_q.weight")
        .unwrap();
    assert_eq!(
        (q["type"].as_str(), q["type_id"].as_u64()),
        (Some("Q4_0x16"), Some(1002))
    );
    let again = tmp.path().join("again.gguf");
    let vision = fixtures().join("../../models/tiny/tinygptv-stage3-vision-f16.gguf");
    let f16 = fixtures().join("../../models/tiny/tinygptv-stage3-f16.gguf");
    for (input, want) in [
        (x16.as_path(), "already stored interleaved"),
        (vision.as_path(), "vision (mmproj) file"),
        (f16.as_path(), "there is nothing to repack"),
        (plain.as_path(), "replace the input"),
    ] {
        let out = if input == plain.as_path() {
            plain.as_path()
        } else {
            again.as_path()
        };
        let o = tinygptv(&["repack", s(input), s(out)], None);
        assert!(!o.status.success(), "{}", input.display());
        assert!(
            stderr(&o).contains(want),
            "{}: {}",
            input.display(),
            stderr(&o)
        );
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
        assert!(!again.exists(), "{}: output left behind", input.display());
    }
    // the vision tower refuses a ×16 file with a clear error
    let o = tinygptv(
        &[
            "embed-image",
            "--mmproj",
            s(&x16),
            "--image",
            "none.png",
            "--out",
            s(&again),
        ],
        None,
    );
    assert!(!o.status.success());
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}
