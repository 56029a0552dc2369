//! Checkpoint readers against the fixtures written by scripts/gen_reader_fixtures.py
//! (torch 2.x + safetensors): exact values for every format and dtype.

use std::path::{Path, PathBuf};

use converter::pickle::{Object, Value};
use converter::{
    detect_format, load_state_dict, CheckpointError, CheckpointFormat, DType, HfModelDir,
    HfWeights, StateDict, TorchCheckpoint, TorchFormat,
};
use serde_json::Value as Json;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn expected() -> Json {
    let text = std::fs::read_to_string(data("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn f32_bits(v: &Json) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn f64_bits(v: &Json) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| u64::from_str_radix(x.as_str().unwrap(), 16).unwrap())
        .collect()
}

/// Compare every tensor of `state` with the expected description (dtype, shape, exact values
/// as f32 and as f64). `check_order` also compares the name order.
fn check_state(state: &StateDict, want: &Json, check_order: bool) {
    let order: Vec<&str> = want["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    if check_order {
        assert_eq!(
            state.names().collect::<Vec<_>>(),
            order,
            "{}",
            state.path().display()
        );
    } else {
        let mut got: Vec<&str> = state.names().collect();
        let mut want_sorted = order.clone();
        got.sort();
        want_sorted.sort();
        assert_eq!(got, want_sorted);
    }
    for name in order {
        let t = state.get(name).unwrap();
        let w = &want["tensors"][name];
        assert_eq!(t.dtype.name(), w["dtype"].as_str().unwrap(), "{name}");
        let shape: Vec<usize> = w["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape, shape, "{name}");
        assert_eq!(t.numel(), shape.iter().product::<usize>());
        let got32: Vec<u32> = t.read_f32().unwrap().iter().map(|v| v.to_bits()).collect();
        assert_eq!(got32, f32_bits(&w["f32_bits"]), "{name} as f32");
        let got64: Vec<u64> = t.read_f64().unwrap().iter().map(|v| v.to_bits()).collect();
        assert_eq!(got64, f64_bits(&w["f64_bits"]), "{name} as f64");
        let bytes = t.read_bytes().unwrap();
        assert_eq!(
            bytes.len(),
            t.numel() * t.dtype.element_size().unwrap(),
            "{name}"
        );
    }
}

fn check_small(path: &Path) {
    let exp = expected();
    let state = load_state_dict(path).unwrap();
    check_state(&state, &exp["small"], true);
    // Views: the transposed tensor and the column are non-contiguous, the row slice is not.
    assert!(!state.get("transposed").unwrap().is_contiguous());
    assert!(!state.get("column").unwrap().is_contiguous());
    assert!(!state.get("f16_t").unwrap().is_contiguous());
    assert!(state.get("view_offset").unwrap().is_contiguous());
    assert!(state.get("big").unwrap().is_contiguous());
    // Shared storage: view_offset is rows 2..5 of big.
    let big = state.read_f32("big").unwrap();
    assert_eq!(state.read_f32("view_offset").unwrap(), big[8..20].to_vec());
    let column: Vec<f32> = (0..6).map(|r| big[r * 4 + 1]).collect();
    assert_eq!(state.read_f32("column").unwrap(), column);
    assert_eq!(
        state.read_f32("tied_a").unwrap(),
        state.read_f32("tied_b").unwrap()
    );
    assert_eq!(
        state.get("i64").unwrap().read_i64().unwrap(),
        vec![-3, -2, -1, 0, 1, 2, 3]
    );
    assert_eq!(state.get("scalar").unwrap().shape, Vec::<usize>::new());
    assert_eq!(state.read_f32("scalar").unwrap(), vec![3.25]);
    assert!(state.read_f32("empty").unwrap().is_empty());
    assert!(state.non_tensor_keys().is_empty());
}

#[test]
fn torch_zip_protocol2() {
    assert_eq!(
        detect_format(&data("small.pth")).unwrap(),
        CheckpointFormat::TorchZip
    );
    check_small(&data("small.pth"));
    let ckpt = TorchCheckpoint::open(data("small.pth")).unwrap();
    assert_eq!(
        ckpt.format(),
        &TorchFormat::Zip {
            prefix: "small/".into()
        }
    );
}

#[test]
fn torch_zip_protocol4() {
    check_small(&data("small_p4.pth"));
}

#[test]
fn torch_zip_deflated_entries() {
    check_small(&data("small_deflated.pth"));
    // Deflated storages are inflated into a buffer; stored ones are borrowed from the map.
    let state = load_state_dict(data("small_deflated.pth")).unwrap();
    assert!(matches!(
        state.get("big").unwrap().read_bytes().unwrap(),
        std::borrow::Cow::Owned(_)
    ));
    let state = load_state_dict(data("small.pth")).unwrap();
    assert!(matches!(
        state.get("big").unwrap().read_bytes().unwrap(),
        std::borrow::Cow::Borrowed(_)
    ));
}

#[test]
fn torch_legacy_format() {
    check_small(&data("small_legacy.pth"));
    let ckpt = TorchCheckpoint::open(data("small_legacy.pth")).unwrap();
    assert_eq!(ckpt.format(), &TorchFormat::Legacy);
}

#[test]
fn parameters_are_rebuilt_as_tensors() {
    let exp = expected();
    check_state(
        &load_state_dict(data("params.pth")).unwrap(),
        &exp["params"],
        true,
    );
}

#[test]
fn missing_tensor_error_names_file_and_key() {
    let state = load_state_dict(data("small.pth")).unwrap();
    let err = state.get("no.such.weight").unwrap_err();
    assert!(matches!(err, CheckpointError::MissingTensor { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("small.pth") && msg.contains("no.such.weight"),
        "{msg}"
    );
}

#[test]
fn blip2_like_model_key() {
    let exp = expected();
    let state = load_state_dict(data("blip2_like.pth")).unwrap();
    check_state(&state, &exp["blip2_like"], true);
    let ckpt = TorchCheckpoint::open(data("blip2_like.pth")).unwrap();
    assert_eq!(
        ckpt.get_json("note"),
        Some(Json::String("blip2-like".into()))
    );
}

#[test]
fn tinygptv_like_training_checkpoint() {
    let exp = expected();
    let want = &exp["tinygptv_like"];
    let state = load_state_dict(data("tinygptv_like.pth")).unwrap();
    check_state(&state, want, true);

    let ckpt = TorchCheckpoint::open(data("tinygptv_like.pth")).unwrap();
    assert_eq!(
        ckpt.top_level_keys(),
        ["model", "optimizer", "config", "scaler", "epoch"]
    );
    assert_eq!(ckpt.get("epoch"), Some(&Value::Int(3)));
    let config = ckpt.get_json("config").unwrap();
    assert!(
        json_eq(&config, &want["config"]),
        "{config} != {}",
        want["config"]
    );
    let scaler = ckpt.get_json("scaler").unwrap();
    assert_eq!(scaler["scale"], 65536.0);
    assert_eq!(scaler["growth_interval"], 2000);
    // The same dict explicitly.
    let model = ckpt.state_dict_at("model").unwrap();
    assert_eq!(
        model.names().collect::<Vec<_>>(),
        state.names().collect::<Vec<_>>()
    );

    // Optimizer state: {"state": {param_index: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [..]}.
    let pickle = ckpt.pickle();
    let optimizer = ckpt.get("optimizer").unwrap();
    let opt_state = pickle.dict_get(optimizer, "state").unwrap();
    let keys: Vec<i64> = pickle
        .dict_entries(opt_state)
        .unwrap()
        .iter()
        .map(|(k, _)| match k {
            Value::Int(i) => *i,
            other => panic!("{other:?}"),
        })
        .collect();
    let want_keys: Vec<i64> = want["optimizer_state_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(keys, want_keys);
    // Adam moments have the parameter's shape (param 0 = lora_A, [2, 5]).
    let (_, first) = &pickle.dict_entries(opt_state).unwrap()[0];
    let moments = ckpt.tensor_dict(first, "optimizer state 0").unwrap();
    assert_eq!(moments.get("exp_avg").unwrap().shape, vec![2, 5]);
    assert_eq!(
        moments.get("exp_avg_sq").unwrap().read_f32().unwrap().len(),
        10
    );
    let groups = pickle.dict_get(optimizer, "param_groups").unwrap();
    let group = &pickle.sequence(groups).unwrap()[0];
    assert_eq!(
        pickle.to_json(pickle.dict_get(group, "lr").unwrap()),
        serde_json::json!(1e-3)
    );
    assert!(matches!(
        pickle.object(pickle.dict_get(group, "betas").unwrap()),
        Some(Object::Tuple(_))
    ));
}

#[test]
fn safetensors_single_file_and_dir() {
    let exp = expected();
    let file = data("hf_single/model.safetensors");
    assert_eq!(detect_format(&file).unwrap(), CheckpointFormat::Safetensors);
    check_state(&load_state_dict(&file).unwrap(), &exp["safetensors"], true);

    let dir = HfModelDir::open(data("hf_single")).unwrap();
    assert_eq!(
        dir.weights,
        HfWeights::Safetensors(data("hf_single/model.safetensors"))
    );
    assert_eq!(dir.config, exp["hf_config"]);
    assert_eq!(dir.config_usize("hidden_size").unwrap(), 4);
    assert_eq!(dir.config_str("model_type"), Some("phi"));
    assert!(dir
        .config_usize("no_such_key")
        .unwrap_err()
        .to_string()
        .contains("config.json"));
    assert_eq!(
        dir.tokenizer.tokenizer_json,
        Some(data("hf_single/tokenizer.json"))
    );
    assert_eq!(dir.tokenizer.vocab_json, None);
    check_state(&dir.state_dict().unwrap(), &exp["safetensors"], true);
    check_state(
        &load_state_dict(data("hf_single")).unwrap(),
        &exp["safetensors"],
        true,
    );
    // Contiguous mapped tensors are borrowed, not copied.
    let state = load_state_dict(&file).unwrap();
    let t = state.get("lm_head.weight").unwrap();
    assert!(matches!(
        t.read_bytes().unwrap(),
        std::borrow::Cow::Borrowed(_)
    ));
    assert_eq!(t.file(), file.as_path());
}

#[test]
fn safetensors_sharded() {
    let exp = expected();
    let index = data("hf_sharded/model.safetensors.index.json");
    assert_eq!(
        detect_format(&index).unwrap(),
        CheckpointFormat::SafetensorsIndex
    );
    let state = load_state_dict(&index).unwrap();
    check_state(&state, &exp["safetensors"], false);
    // Each tensor remembers its shard.
    assert!(state
        .get("lm_head.weight")
        .unwrap()
        .file()
        .ends_with("model-00002-of-00002.safetensors"));
    assert!(state
        .get("model.embed_tokens.weight")
        .unwrap()
        .file()
        .ends_with("model-00001-of-00002.safetensors"));

    let dir = HfModelDir::open(data("hf_sharded")).unwrap();
    assert_eq!(dir.weights, HfWeights::SafetensorsIndex(index.clone()));
    check_state(&dir.state_dict().unwrap(), &exp["safetensors"], false);
}

#[test]
fn hf_pytorch_bin_single_and_sharded() {
    let exp = expected();
    let dir = HfModelDir::open(data("hf_bin")).unwrap();
    assert_eq!(
        dir.weights,
        HfWeights::TorchBin(data("hf_bin/pytorch_model.bin"))
    );
    assert_eq!(dir.tokenizer.merges_txt, Some(data("hf_bin/merges.txt")));
    check_state(&dir.state_dict().unwrap(), &exp["safetensors"], false);

    let dir = HfModelDir::open(data("hf_bin_sharded")).unwrap();
    assert!(matches!(dir.weights, HfWeights::TorchBinIndex(_)));
    check_state(&dir.state_dict().unwrap(), &exp["safetensors"], false);
    check_state(
        &load_state_dict(data("hf_bin_sharded")).unwrap(),
        &exp["safetensors"],
        false,
    );
}

#[test]
fn hf_dir_without_weights_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.json"), "{}").unwrap();
    let err = HfModelDir::open(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("no weights"), "{err}");
    std::fs::write(tmp.path().join("config.json"), "[1]").unwrap();
    assert!(HfModelDir::open(tmp.path()).is_err());
}

#[test]
fn shard_index_pointing_at_the_wrong_file_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    for name in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        std::fs::copy(data("hf_sharded").join(name), tmp.path().join(name)).unwrap();
    }
    let index = r#"{"weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors",
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}"#;
    std::fs::write(tmp.path().join("model.safetensors.index.json"), index).unwrap();
    let err = load_state_dict(tmp.path().join("model.safetensors.index.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("lm_head.weight"), "{err}");
    let index = r#"{"weight_map": {"x": "model-00003-of-00003.safetensors"}}"#;
    std::fs::write(tmp.path().join("model.safetensors.index.json"), index).unwrap();
    let err = load_state_dict(tmp.path().join("model.safetensors.index.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("model-00003-of-00003.safetensors"), "{err}");
    let index = r#"{"weight_map": {"x": "../evil.safetensors"}}"#;
    std::fs::write(tmp.path().join("model.safetensors.index.json"), index).unwrap();
    assert!(load_state_dict(tmp.path().join("model.safetensors.index.json")).is_err());
}

fn marker() -> PathBuf {
    PathBuf::from(expected()["hostile_marker"].as_str().unwrap())
}

#[test]
fn hostile_pickle_is_refused_and_nothing_runs() {
    let marker = marker();
    let _ = std::fs::remove_file(&marker);
    let path = data("hostile.pkl");
    let err = load_state_dict(&path).unwrap_err();
    match &err {
        CheckpointError::Refused { callable, .. } => assert_eq!(callable, "posix.system"),
        other => panic!("expected a refusal, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("refusing to call posix.system from"), "{msg}");
    assert!(msg.contains("hostile.pkl"), "{msg}");
    assert!(
        msg.contains("only torch tensor rebuild functions are allowed"),
        "{msg}"
    );

    // The value graph still shows what would have been called, inertly.
    let ckpt = TorchCheckpoint::open(&path).unwrap();
    assert_eq!(ckpt.format(), &TorchFormat::PlainPickle);
    let json = ckpt.pickle().to_json(ckpt.root());
    assert_eq!(json["$call"], "posix.system");
    assert_eq!(
        json["args"]["$tuple"][0],
        format!("touch {}", marker.display())
    );
    assert!(!marker.exists(), "the hostile command ran");
}

#[test]
fn hostile_objects_inside_torch_checkpoints_are_refused() {
    let marker = marker();
    let err = load_state_dict(data("hostile_model.pth")).unwrap_err();
    assert!(
        matches!(&err, CheckpointError::Refused { callable, location, .. }
        if callable == "posix.system" && location == "`model`"),
        "{err}"
    );
    assert!(err.to_string().contains("hostile_model.pth"));

    let err = load_state_dict(data("hostile_entry.pth")).unwrap_err();
    assert!(
        matches!(&err, CheckpointError::Refused { callable, location, .. }
        if callable == "posix.system" && location.contains("evil")),
        "{err}"
    );
    // Other parts of the same file are still readable by explicit navigation.
    let ckpt = TorchCheckpoint::open(data("hostile_model.pth")).unwrap();
    assert_eq!(ckpt.get("epoch"), Some(&Value::Int(1)));
    assert!(!marker.exists(), "the hostile command ran");
}

#[test]
fn plain_pickles_every_protocol() {
    let exp = expected();
    for proto in 0..=5 {
        let path = data(&format!("plain_p{proto}.pkl"));
        let ckpt = TorchCheckpoint::open(&path).unwrap();
        assert_eq!(
            ckpt.pickle().to_json(ckpt.root()),
            exp["plain"],
            "protocol {proto}"
        );
        // Not a state dict: a clear error, not a panic.
        let err = ckpt.state_dict().unwrap_err().to_string();
        assert!(err.contains(&format!("plain_p{proto}.pkl")), "{err}");
    }
}

#[test]
fn unsupported_dtype_error_names_the_tensor() {
    // A safetensors file with a complex tensor.
    let tmp = tempfile::tempdir().unwrap();
    let header = br#"{"z":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 8]);
    let path = tmp.path().join("c.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let state = load_state_dict(&path).unwrap();
    let err = state.read_f32("z").unwrap_err();
    assert!(matches!(
        err,
        CheckpointError::UnsupportedDtype {
            dtype: DType::Other("C64"),
            ..
        }
    ));
    let msg = err.to_string();
    assert!(
        msg.contains("c.safetensors") && msg.contains("`z`"),
        "{msg}"
    );
}

#[test]
fn tensors_can_be_read_from_several_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<StateDict>();
    assert_send_sync::<converter::CheckpointTensor>();
    assert_send_sync::<TorchCheckpoint>();
    let exp = expected();
    for file in ["small.pth", "small_deflated.pth"] {
        let state = load_state_dict(data(file)).unwrap();
        let results: Vec<(String, Vec<f32>)> = std::thread::scope(|s| {
            let handles: Vec<_> = state
                .iter()
                .map(|t| s.spawn(move || (t.name.clone(), t.read_f32().unwrap())))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (name, values) in results {
            let bits: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
            assert_eq!(
                bits,
                f32_bits(&exp["small"]["tensors"][&name]["f32_bits"]),
                "{file}: {name}"
            );
        }
    }
}

/// JSON equality with numbers compared by value: serde_json's `arbitrary_precision` feature
/// (switched on when the whole workspace is built together) keeps `0.00001` and `1e-05` apart.
fn json_eq(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    match (a, b) {
        (J::Number(x), J::Number(y)) => x.as_f64() == y.as_f64(),
        (J::Array(x), J::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (J::Object(x), J::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}
