//! `tinygptv chat` driven through a pipe (rustyline reads plain lines when stdin is not a
//! terminal), and `run --draw-boxes`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

#[test]
fn chat_session_with_image_commands_and_eof() {
    let dir = tempfile::tempdir().unwrap();
    let lm = dir.path().join("lm.gguf");
    let vision = dir.path().join("vision.gguf");
    convert_lm("phi2-safetensors", "f16", Some(3), &lm);
    convert_vision(3, "f16", &vision);
    let image = fixtures().join("images/rgb_37x23.png");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tinygptv"))
        .args([
            "chat",
            "--model",
            lm.to_str().unwrap(),
            "--mmproj",
            vision.to_str().unwrap(),
        ])
        .args([
            "--image",
            image.to_str().unwrap(),
            "-n",
            "4",
            "--temp",
            "0",
            "--seed",
            "1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let script = format!(
        "/help\nWhere is the red square?\nAnd the circle?\n/image {}\nWhat is this?\n/image /nonexistent.png\n/reset\nHello\n/bogus\n",
        fixtures().join("images/gray_19x25.png").display()
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap(); // then EOF = Ctrl-D
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("/image PATH"), "help text: {stderr}");
    // one image encode at start, one for /image; the failing path is reported, not fatal
    assert_eq!(stderr.matches("encoded in").count(), 2, "{stderr}");
    assert!(stderr.contains("nonexistent.png"), "{stderr}");
    assert!(stderr.contains("[new conversation]"), "{stderr}");
    assert!(stderr.contains("unknown command /bogus"), "{stderr}");
    // four answers, each with a timing line; the second turn reuses the cache, so its prompt
    // is only the new text (fewer tokens than the first turn's prompt with the image)
    let prompts: Vec<usize> = stderr
        .lines()
        .filter_map(|l| {
            l.strip_prefix("[prompt ")
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse().ok())
        })
        .collect();
    assert_eq!(prompts.len(), 4, "{stderr}");
    assert!(
        prompts[1] < prompts[0],
        "second turn re-processed the whole conversation: {prompts:?}"
    );
}

#[test]
fn run_draw_boxes_writes_an_image() {
    // With random weights the answer rarely holds a box, so draw through the library with a
    // real-looking answer and check the CLI flag writes a readable PNG.
    let img = runtime::image::load_rgb(&fixtures().join("images/rgb_37x23.png"), 1 << 20).unwrap();
    let answer = "<p>red square</p> {<10><20><40><60>} and <p>circle</p> {<50><50><90><95>}";
    let boxes = runtime::boxes::parse_boxes(answer, img.width, img.height);
    assert_eq!(boxes.len(), 2);
    assert_eq!(boxes[0].phrase, "red square");
    assert!((boxes[0].x1 - 3.7).abs() < 1e-4 && (boxes[0].y2 - 13.8).abs() < 1e-4);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("boxes.png");
    runtime::draw::draw_boxes(&img, &boxes, &out).unwrap();
    let drawn = runtime::image::load_rgb(&out, 1 << 20).unwrap();
    assert_eq!((drawn.width, drawn.height), (img.width, img.height));
    assert_ne!(drawn.data, img.data, "nothing was drawn");

    let lm = dir.path().join("lm.gguf");
    let vision = dir.path().join("vision.gguf");
    convert_lm("phi2-safetensors", "q8_0", Some(4), &lm);
    convert_vision(4, "q8_0", &vision);
    let cli_out = dir.path().join("cli.png");
    let o = Command::new(env!("CARGO_BIN_EXE_tinygptv"))
        .args([
            "run",
            "--model",
            lm.to_str().unwrap(),
            "--mmproj",
            vision.to_str().unwrap(),
        ])
        .args([
            "--image",
            fixtures().join("images/rgb_37x23.png").to_str().unwrap(),
        ])
        .args([
            "--task",
            "refer",
            "--prompt",
            "give me the location of the square",
            "-n",
            "6",
            "--seed",
            "3",
            "--json",
        ])
        .args(["--draw-boxes", cli_out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["text"].is_string()
            && v["tokens"].is_array()
            && v["boxes"].is_array()
            && v["timings"].is_object()
    );
    assert!(runtime::image::load_rgb(&cli_out, 1 << 20).is_ok());
}

#[test]
fn unreadable_images_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let vision = dir.path().join("vision.gguf");
    convert_vision(3, "f16", &vision);
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\n truncated").unwrap();
    let txt = dir.path().join("notes.txt");
    std::fs::write(&txt, b"hello").unwrap();
    for (img, needle) in [
        (bad.clone(), "bad.png"),
        (txt.clone(), "notes.txt"),
        (dir.path().join("missing.png"), "missing.png"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_tinygptv"))
            .args([
                "embed-image",
                "--mmproj",
                vision.to_str().unwrap(),
                "--image",
                img.to_str().unwrap(),
            ])
            .args(["--out", dir.path().join("t.npy").to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle) && !err.contains("panicked"), "{err}");
    }
    // the pixel limit guards against decompression bombs
    let o = Command::new(env!("CARGO_BIN_EXE_tinygptv"))
        .args([
            "embed-image",
            "--mmproj",
            vision.to_str().unwrap(),
            "--max-pixels",
            "100",
        ])
        .args([
            "--image",
            fixtures().join("images/rgb_37x23.png").to_str().unwrap(),
        ])
        .args(["--out", dir.path().join("t.npy").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("limit"));
    assert!(!dir.path().join("t.npy").exists());
}
