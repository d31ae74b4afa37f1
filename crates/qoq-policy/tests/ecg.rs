//! The ECG path against `tests/fixtures/ecg` (tools/make_ecg_fixtures.py: a PyTorch
//! re-implementation of ECG-JEPA's `representation()` plus QoQ-Med's projection, checked
//! there against ECG-JEPA's own code, and transformers 5.24 for the LLM): the encoder's
//! embeddings within 1e-5, the prompt's logits with the ECG at its placeholder within 1e-4
//! on a tiny checkpoint of each family, an ECG-JEPA release `.pth`, and bad checkpoints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use qoq_policy::ecg::{load_jepa_checkpoint, sincos_2d};
use qoq_policy::{load_policy, EcgConfig, EcgEncoderConfig, EcgInit, Inputs, Policy, TimeSeriesEmbedding};
use tch::{nn, Device, Kind, Tensor};

/// libtorch's random generator is one per process: a test that checks that a seed gives
/// the same initialisation takes it alone (`seeded`); the others, which draw from it
/// while building models, share it (`drawing`).
static GENERATOR: RwLock<()> = RwLock::new(());

fn drawing() -> RwLockReadGuard<'static, ()> {
    GENERATOR.read().unwrap_or_else(|e| e.into_inner())
}

fn seeded() -> RwLockWriteGuard<'static, ()> {
    GENERATOR.write().unwrap_or_else(|e| e.into_inner())
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/ecg")
}

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// The fixture's tiny encoder (E 64, depth 2, 16 heads, MLP 256) and projection 64 -> 32.
fn tiny_config() -> EcgConfig {
    EcgConfig {
        token_id: 0,
        encoder: EcgEncoderConfig { embed_dim: 64, depth: 2, num_heads: 16, mlp_dim: 256, ..Default::default() },
    }
}

#[test]
fn the_encoder_and_projection_match_the_reference() {
    let _generator = drawing();
    let vs = nn::VarStore::new(Device::Cpu);
    let ts = TimeSeriesEmbedding::new(&vs.root(), &tiny_config(), 32);
    let weights = read(&fixtures().join("encoder/weights.safetensors"));
    let vars = vs.variables();
    assert_eq!(vars.len(), weights.len(), "one variable per checkpoint tensor");
    tch::no_grad(|| {
        for (name, var) in &vars {
            let w = weights.get(name).unwrap_or_else(|| panic!("`{name}` is not a QoQ-Med weight name"));
            var.shallow_clone().copy_(w);
        }
    });
    let cases = read(&fixtures().join("encoder/cases.safetensors"));
    let _guard = tch::no_grad_guard();
    let repr = ts.encoder().representation(&cases["signals"]).unwrap();
    let d = max_diff(&repr, &cases["representation"]);
    assert!(d < 1e-5, "representation differs by {d:e}");
    let emb = ts.forward(&cases["signals"]).unwrap();
    let d = max_diff(&emb, &cases["embeddings"]);
    assert!(d < 1e-5, "embeddings differ by {d:e}");
}

#[test]
fn a_fresh_encoder_starts_from_the_sincos_code() {
    let _generator = drawing();
    let cases = read(&fixtures().join("encoder/cases.safetensors"));
    for dim in [64, 768] {
        let d = max_diff(&sincos_2d(dim, 8, 50), &cases[&format!("sincos_{dim}")]);
        assert!(d < 1e-6, "sincos_{dim} differs by {d:e}");
    }
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = TimeSeriesEmbedding::new(&vs.root(), &tiny_config(), 32);
    let pos = &vs.variables()["time_series_embedding.encoder.pos_embed"];
    assert!(max_diff(pos, &cases["sincos_64"]) < 1e-6);
}

#[test]
fn an_ecg_jepa_release_checkpoint_loads_into_the_encoder() {
    let _generator = drawing();
    let vs = nn::VarStore::new(Device::Cpu);
    let ts = TimeSeriesEmbedding::new(&vs.root(), &tiny_config(), 32);
    load_jepa_checkpoint(&vs.variables(), &fixtures().join("encoder/jepa_release.pth")).unwrap();
    let cases = read(&fixtures().join("encoder/cases.safetensors"));
    let _guard = tch::no_grad_guard();
    let d = max_diff(&ts.encoder().representation(&cases["signals"]).unwrap(), &cases["representation"]);
    assert!(d < 1e-5, "representation after loading the .pth differs by {d:e}");

    // Sizes that disagree with the file: an error naming the tensor.
    let vs = nn::VarStore::new(Device::Cpu);
    let mut wrong = tiny_config();
    wrong.encoder.mlp_dim = 128;
    let _ = TimeSeriesEmbedding::new(&vs.root(), &wrong, 32);
    let err = load_jepa_checkpoint(&vs.variables(), &fixtures().join("encoder/jepa_release.pth")).unwrap_err();
    assert!(err.to_string().contains("encoder.encoder_blocks.blocks.0.mlp.fc1.bias` has shape [256]"), "{err}");
    // Not an ECG-JEPA file.
    let err = load_jepa_checkpoint(&vs.variables(), &fixtures().join("tiny-qwen3_vl/config.json")).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
}

/// The prompt's logits with the ECG embedding at its placeholder, as transformers gives them.
fn check_family(folder: &str) {
    let dir = fixtures().join(folder);
    let policy = load_policy(&dir, Device::Cpu).unwrap();
    let cases = read(&dir.join("cases.safetensors"));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let ts = policy.ecg().expect("the checkpoint carries time_series_embedding.*");
    assert_eq!(ts.token_id(), meta["time_series_token_id"].as_i64().unwrap());
    assert!(policy.special_tokens().banned.contains(&ts.token_id()));
    let _guard = tch::no_grad_guard();
    let d = max_diff(&ts.forward(&cases["signals"]).unwrap(), &cases["ecg_embeddings"]);
    assert!(d < 1e-5, "{folder}: ECG embeddings differ by {d:e}");
    let inputs =
        Inputs { input_ids: Some(&cases["input_ids"]), ecg_signals: Some(&cases["signals"]), ..Default::default() };
    let (logits, _) = policy.prefill(&inputs).unwrap();
    let d = max_diff(&logits, &cases["logits"]);
    assert!(d < 1e-4, "{folder}: prompt logits differ by {d:e}");
}

#[test]
fn qwen2_5_vl_prompt_logits_match_transformers_with_the_ecg_spliced_in() {
    let _generator = drawing();
    check_family("tiny-qwen2_5_vl");
}

#[test]
fn qwen3_vl_prompt_logits_match_transformers_with_the_ecg_spliced_in() {
    let _generator = drawing();
    check_family("tiny-qwen3_vl");
}

fn copy_checkpoint(from: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(from.join(name), tmp.path().join(name)).unwrap();
    }
    tmp
}

/// Rewrites the checkpoint's weights through `edit`.
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = Tensor::read_safetensors(&path).unwrap();
    edit(&mut tensors);
    let refs: Vec<(&str, Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t.shallow_clone())).collect();
    Tensor::write_safetensors(&refs, &path).unwrap();
}

#[test]
fn missing_or_misshapen_ecg_weights_are_named() {
    let _generator = drawing();
    let src = fixtures().join("tiny-qwen2_5_vl");
    let missing = copy_checkpoint(&src);
    edit_weights(missing.path(), |t| t.retain(|(n, _)| n != "time_series_embedding.encoder.norm.bias"));
    let err = load_policy(missing.path(), Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("missing") && err.contains("time_series_embedding.encoder.norm.bias"), "{err}");

    let misshapen = copy_checkpoint(&src);
    edit_weights(misshapen.path(), |t| {
        for (n, v) in t.iter_mut() {
            if n == "time_series_embedding.linear.weight" {
                *v = Tensor::zeros([16, 64], (Kind::Float, Device::Cpu));
            }
        }
    });
    let err = load_policy(misshapen.path(), Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("time_series_embedding.linear.weight") && err.contains("[16, 64]"), "{err}");

    // The key without any ECG weights.
    let bare = copy_checkpoint(&src);
    edit_weights(bare.path(), |t| t.retain(|(n, _)| !n.starts_with("time_series_embedding.")));
    let err = load_policy(bare.path(), Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("time_series_token_id") && err.contains("no `time_series_embedding.*`"), "{err}");
}

/// The diagnose fixture's tiny Qwen2.5-VL (full vocabulary) without its ECG weights and key.
fn diagnose_model_without_ecg() -> tempfile::TempDir {
    let src = fixtures().join("diagnose/model");
    let tmp = copy_checkpoint(&src);
    edit_weights(tmp.path(), |t| t.retain(|(n, _)| !n.starts_with("time_series_embedding.")));
    let config_path = tmp.path().join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove("time_series_token_id");
    std::fs::write(&config_path, config.to_string()).unwrap();
    tmp
}

#[test]
fn a_full_vocabulary_model_is_given_an_encoder_from_an_ecg_jepa_release() {
    let _generator = seeded();
    let tmp = diagnose_model_without_ecg();

    let mut policy = load_policy(tmp.path(), Device::Cpu).unwrap();
    assert!(policy.ecg().is_none());
    let init = EcgInit::JepaCheckpoint { path: fixtures().join("encoder/jepa_release.pth"), seed: 1 };
    policy.add_ecg(&init, None).unwrap();
    let ts = policy.ecg().unwrap();
    assert_eq!(ts.token_id(), 151_665, "QoQ-Med's id for Qwen2.5-VL");
    assert_eq!(ts.config().encoder.embed_dim, 64, "sizes read from the .pth");
    let cases = read(&fixtures().join("encoder/cases.safetensors"));
    let _guard = tch::no_grad_guard();
    let d = max_diff(&ts.encoder().representation(&cases["signals"]).unwrap(), &cases["representation"]);
    assert!(d < 1e-5, "{d:e}");
    let embedded = ts.forward(&cases["signals"]).unwrap();
    // A second one is refused; the same seed gives the same projection.
    let err = policy.add_ecg(&init, None).unwrap_err().to_string();
    assert!(err.contains("already has an ECG encoder"), "{err}");
    let mut again = load_policy(tmp.path(), Device::Cpu).unwrap();
    again.add_ecg(&init, None).unwrap();
    let w = |p: &dyn Policy| p.var_store().variables()["time_series_embedding.linear.weight"].copy();
    assert!(w(policy.as_ref()).equal(&w(again.as_ref())));
    // Saved, the config carries the id; the encoder's sizes are written since they are not ECG-JEPA's.
    let out = tempfile::tempdir().unwrap();
    policy.save_pretrained(out.path(), u64::MAX).unwrap();
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["time_series_token_id"], 151_665);
    assert_eq!(saved["time_series_encoder"]["embed_dim"], 64);
    let reloaded = load_policy(out.path(), Device::Cpu).unwrap();
    let d = max_diff(&reloaded.ecg().unwrap().forward(&cases["signals"]).unwrap(), &embedded);
    assert_eq!(d, 0.0);
}

/// The ECG-JEPA release fixture's tensors as safetensors, under `prefix` (`encoder.` as in
/// the release, none, or QoQ-Med's full one), through `edit`.
fn release_as_safetensors(dir: &Path, prefix: &str, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> PathBuf {
    let release = qoq_data::torch_file::read_tensors(&fixtures().join("encoder/jepa_release.pth")).unwrap();
    let mut tensors: Vec<(String, Tensor)> = release
        .into_iter()
        .filter_map(|(name, t)| {
            let bare = name.strip_prefix("encoder.")?.to_string();
            let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
            Some((format!("{prefix}{bare}"), Tensor::from_slice(&t.to_f32()).view(shape.as_slice())))
        })
        .collect();
    edit(&mut tensors);
    let path = dir.join(format!("encoder-{}.safetensors", prefix.replace('.', "_")));
    Tensor::write_safetensors(&tensors, &path).unwrap();
    path
}

#[test]
fn an_encoder_in_safetensors_loads_as_the_release_does_under_any_of_the_three_prefixes() {
    let _generator = drawing();
    let tmp = diagnose_model_without_ecg();
    let cases = read(&fixtures().join("encoder/cases.safetensors"));
    let files = tempfile::tempdir().unwrap();
    for prefix in ["", "encoder.", "time_series_embedding.encoder."] {
        let path = release_as_safetensors(files.path(), prefix, |_| {});
        // The memory plan reads the sizes from the header alone.
        let sizes = qoq_policy::ecg::encoder_sizes(&path).unwrap().unwrap();
        assert_eq!((sizes.embed_dim, sizes.num_heads), (64, 16), "{prefix:?}");
        let mut policy = load_policy(tmp.path(), Device::Cpu).unwrap();
        policy.add_ecg(&EcgInit::JepaCheckpoint { path, seed: 1 }, None).unwrap();
        let ts = policy.ecg().unwrap();
        assert_eq!(ts.config().encoder.embed_dim, 64, "sizes read from the shapes ({prefix:?})");
        let d = tch::no_grad(|| {
            max_diff(&ts.encoder().representation(&cases["signals"]).unwrap(), &cases["representation"])
        });
        assert!(d < 1e-5, "{prefix:?}: {d:e}");
    }
    assert_eq!(qoq_policy::ecg::encoder_sizes(&fixtures().join("encoder/jepa_release.pth")).unwrap(), None);
    // A misshapen tensor is named with both shapes; a file without `W_P` is not an encoder.
    let misshapen = release_as_safetensors(files.path(), "encoder.", |t| {
        for (n, v) in t.iter_mut() {
            if n == "encoder.encoder_blocks.blocks.0.attn.proj.weight" {
                *v = Tensor::zeros([64, 32], (Kind::Float, Device::Cpu));
            }
        }
    });
    let mut policy = load_policy(tmp.path(), Device::Cpu).unwrap();
    let err = policy.add_ecg(&EcgInit::JepaCheckpoint { path: misshapen, seed: 1 }, None).unwrap_err().to_string();
    assert!(err.contains("encoder.encoder_blocks.blocks.0.attn.proj.weight") && err.contains("[64, 32]"), "{err}");
    let headless = release_as_safetensors(files.path(), "", |t| t.retain(|(n, _)| !n.starts_with("W_P")));
    let err = policy.add_ecg(&EcgInit::JepaCheckpoint { path: headless, seed: 1 }, None).unwrap_err().to_string();
    assert!(err.contains("W_P.weight") && err.contains("not an ECG-JEPA checkpoint"), "{err}");
    let garbage = files.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file").unwrap();
    let err =
        policy.add_ecg(&EcgInit::JepaCheckpoint { path: garbage.clone(), seed: 1 }, None).unwrap_err().to_string();
    assert!(err.contains(&garbage.display().to_string()) && err.contains("safetensors"), "{err}");
}

#[test]
fn the_placeholder_joins_each_family_tokenizer_at_its_id_and_renders_first_and_bare() {
    let _generator = drawing();
    use qoq_policy::chat::{render_with, Content, Message, RenderOptions, Template, Tokenizer};
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (dir, id, template) in
        [(".qwen-tokenizer", 151_669, Template::Instruct), (".qwen2.5-tokenizer", 151_665, Template::Qwen2Vl)]
    {
        let path = root.join(dir).join("tokenizer.json");
        assert!(path.is_file(), "run `bash tools/setup.sh` first ({dir})");
        let plain = Tokenizer::from_file(&path).unwrap();
        assert_eq!(plain.token_id("<|time_series_pad|>"), None, "{dir} lacks it, as released");
        // A wrong id is refused with the fix; the family's id is where the token lands.
        let err = Tokenizer::from_file(&path).unwrap().with_time_series_token(id + 1).unwrap_err().to_string();
        assert!(err.contains(&format!("at id {id}")) && err.contains("time_series_token_id"), "{err}");
        let tok = Tokenizer::from_file(&path).unwrap().with_time_series_token(id).unwrap();
        assert_eq!(tok.token_id("<|time_series_pad|>"), Some(id as u32));
        let messages = [Message::user(vec![Content::TimeSeries, Content::Image, Content::text("Rhythm?")])];
        let options = RenderOptions { add_generation_prompt: true, template, ..Default::default() };
        let text = render_with(&messages, &options).unwrap();
        assert!(text.contains("user\n<|time_series_pad|><|vision_start|><|image_pad|><|vision_end|>Rhythm?"), "{text}");
        let ids = tok.encode(&text).unwrap();
        assert_eq!(ids.iter().filter(|&&t| t == id as u32).count(), 1, "one bare placeholder token");
        // Qwen3-VL's template drops media outside user turns: an ECG there is refused, as
        // images are (the Qwen2-VL template renders media in any turn).
        if template == Template::Instruct {
            let bad = [Message::new("system", vec![Content::TimeSeries]), Message::user(vec![Content::text("q")])];
            assert!(render_with(&bad, &options).unwrap_err().to_string().contains("an ECG"));
        }
    }
}
