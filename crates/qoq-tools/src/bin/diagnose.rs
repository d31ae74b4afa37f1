//! Ask a checkpoint (Qwen3-VL or Qwen2.5-VL, by its config.json) about one image and / or
//! one ECG, the way the trainer prompts it.
//!
//!     cargo run --release --bin diagnose -- --model DIR [--image PATH] [--ecg SIGNAL.npy [--ecg-rate HZ]] \
//!         --prompt TEXT [--max-new-tokens N] [--greedy | --temperature T --top-p P --seed S] [--dump OUT.safetensors]
//!
//! Builds one user turn (the ECG placeholder, the image, then the prompt) with the
//! generation prompt, generates, prints the response. An ECG needs a checkpoint with an ECG
//! path (`time_series_embedding.*`); it is a `.npy` array [leads, samples] (float32 or
//! float64, 8 or 12 leads, `--ecg-rate` Hz, default 250), preprocessed as the trainer does
//! (8 leads, 250 Hz, 2,500 samples, per-lead z-score). Boxes in the response's ```json block
//! (pixels of the resized image) are drawn on the original image, written next to `--dump`
//! (or `./diagnose-boxes.png`). `--dump` also writes input_ids [L], pixel_values
//! [N, 3 * 2 * patch²] and image_grid_thw [1, 3] (with an image), ecg_embeddings
//! [n_ecg, hidden] (with an ECG: the projection's output), prefill_logits [L, vocab] and
//! gen_tokens [generated].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use qoq_data::preprocess::{preprocess_ecg, ImageProcessor, ECG_LEADS, ECG_SAMPLES};
use qoq_data::Signal;
use qoq_policy::chat::{encode_conversation, merged_tokens, Content, Message, RenderOptions, Tokenizer};
use qoq_policy::{load_policy, EngineConfig, Inputs, OnePrompt, RolloutEngine, SamplingConfig};
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
#[command(about = "Generate a diagnosis for one image with a Qwen3-VL or Qwen2.5-VL checkpoint")]
struct Args {
    /// Hugging Face checkpoint folder: config.json, weights, tokenizer.json, preprocessor_config.json.
    #[arg(long)]
    model: PathBuf,
    #[arg(long, required_unless_present = "ecg")]
    image: Option<PathBuf>,
    /// An ECG: a `.npy` array [leads, samples], float32 or float64, 8 or 12 leads.
    #[arg(long)]
    ecg: Option<PathBuf>,
    /// The ECG's sampling rate in Hz.
    #[arg(long, default_value_t = 250.0, requires = "ecg")]
    ecg_rate: f32,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// Deterministic: always the most likely token.
    #[arg(long, conflicts_with_all = ["temperature", "top_p"])]
    greedy: bool,
    #[arg(long, default_value_t = 0.7)]
    temperature: f64,
    #[arg(long, default_value_t = 0.8)]
    top_p: f64,
    #[arg(long, default_value_t = 20)]
    top_k: i64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the model inputs, prefill logits and generated ids here (safetensors).
    #[arg(long)]
    dump: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = &args.model;
    let model = load_policy(dir, Device::Cpu).with_context(|| format!("loading the checkpoint {}", dir.display()))?;
    let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
        .with_context(|| format!("{}: the checkpoint's tokenizer", dir.display()))?;
    let processor_config = model.family().processor_config(dir)?;
    let merge = processor_config.merge_size;
    let processor = ImageProcessor::new(processor_config)?;
    let image = match &args.image {
        Some(path) => {
            Some(image::open(path).with_context(|| format!("cannot read the image {}", path.display()))?.to_rgb8())
        }
        None => None,
    };
    let vision = image.as_ref().map(|img| processor.preprocess_image(img)).transpose()?;
    let signals = match &args.ecg {
        Some(path) => {
            let Some(ts) = model.ecg() else {
                bail!(
                    "{}: this checkpoint has no ECG path (no time_series_embedding.* weights / time_series_token_id); \
                     train one with model.ecg_encoder (configs/stage1.toml)",
                    dir.display()
                );
            };
            tokenizer = tokenizer.with_time_series_token(ts.token_id())?;
            Some(read_ecg(path, args.ecg_rate)?)
        }
        None => None,
    };

    let mut content = Vec::new();
    content.extend(signals.iter().map(|_| Content::TimeSeries));
    content.extend(vision.iter().map(|_| Content::Image));
    content.push(Content::text(args.prompt.clone()));
    let messages = [Message::user(content)];
    let options =
        RenderOptions { add_generation_prompt: true, template: model.prompt_format().template, ..Default::default() };
    let image_tokens: Vec<usize> = vision.iter().map(|v| merged_tokens(v.grid_thw, merge)).collect();
    let ids = encode_conversation(&tokenizer, &messages, &options, &image_tokens, &[])?;
    let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
    let input_ids = Tensor::from_slice(&ids).view([1, -1]);
    let grid = vision.as_ref().map(|v| v.grid_thw.map(i64::from));
    let pixels = vision.as_ref().map(|v| Tensor::from_slice(&v.pixel_values).view([v.rows() as i64, -1]));
    let inputs = Inputs {
        input_ids: Some(&input_ids),
        pixel_values: pixels.as_ref(),
        image_grids: grid.into_iter().collect(),
        ecg_signals: signals.as_ref(),
        ..Default::default()
    };

    let tokens = model.special_tokens().clone().with_tokenizer(&tokenizer);
    let mut config = SamplingConfig::qwen_default(&tokens);
    config.max_new_tokens = args.max_new_tokens;
    config.seed = args.seed;
    if args.greedy {
        config.temperature = 0.0;
        config.top_k = None;
        config.top_p = None;
    } else {
        config.temperature = args.temperature;
        config.top_p = Some(args.top_p);
        config.top_k = Some(args.top_k);
    }
    // The trainer's rollout engine, with the one prompt's one sample in one slot.
    let prompt = OnePrompt { inputs, key: 0 };
    let engine = RolloutEngine::new(model.as_ref(), EngineConfig { slots: 1, prefill_prompts: 1 });
    let (rollouts, _) = engine.run(&prompt, &config)?;
    let inputs = prompt.inputs;
    let tokens = &rollouts.tokens[0];
    let response = rollouts.texts(&tokenizer, &config.stop_tokens)?.remove(0);
    println!("{response}");

    let boxes_path = match &args.dump {
        Some(dump) => dump.with_extension("boxes.png"),
        None => PathBuf::from("diagnose-boxes.png"),
    };
    if let (Some(image), Some(vision)) = (&image, &vision) {
        draw_boxes(&response, image, vision.resized_size, &boxes_path)?;
    }

    if let Some(dump) = &args.dump {
        let _guard = tch::no_grad_guard();
        let logits = model.prefill(&inputs)?.0.squeeze_dim(0).to_kind(Kind::Float);
        let mut tensors = vec![("input_ids", input_ids.squeeze_dim(0))];
        if let (Some(pixels), Some(grid)) = (&pixels, grid) {
            tensors.push(("pixel_values", pixels.shallow_clone()));
            tensors.push(("image_grid_thw", Tensor::from_slice(&grid).view([1, 3])));
        }
        if let (Some(signals), Some(ts)) = (&signals, model.ecg()) {
            tensors.push(("ecg_embeddings", ts.forward(signals)?.to_kind(Kind::Float)));
        }
        tensors.push(("prefill_logits", logits));
        tensors.push(("gen_tokens", Tensor::from_slice(tokens)));
        Tensor::write_safetensors(&tensors, dump).with_context(|| format!("writing {}", dump.display()))?;
        eprintln!("wrote {}", dump.display());
    }
    Ok(())
}

/// The ECG at `path` (`.npy`, [leads, samples]), preprocessed for the encoder: [1, 8, 2500].
fn read_ecg(path: &Path, rate_hz: f32) -> Result<Tensor> {
    let array =
        Tensor::read_npy(path).with_context(|| format!("cannot read the ECG {} (a .npy array)", path.display()))?;
    let size = array.size();
    let &[leads, samples] = size.as_slice() else {
        bail!("{}: the ECG has shape {size:?}; save it as [leads, samples] (8 or 12 leads)", path.display());
    };
    if !matches!(array.kind(), Kind::Float | Kind::Double) {
        bail!("{}: the ECG is {:?}; save it as float32 or float64", path.display(), array.kind());
    }
    let values = Vec::<f32>::try_from(array.to_kind(Kind::Float).flatten(0, -1))?;
    let signal = Signal { leads: leads as u32, samples: samples as u32, sampling_rate_hz: rate_hz, values };
    let ready = preprocess_ecg(&signal).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(Tensor::from_slice(&ready).view([1, ECG_LEADS as i64, ECG_SAMPLES as i64]))
}

/// Draw the response's boxes (resized-image pixels) on the original image, if it has any.
fn draw_boxes(response: &str, image: &image::RgbImage, resized: (u32, u32), path: &Path) -> Result<()> {
    let blocks = qoq_rewards::json_block::fenced_blocks(response);
    let boxes: Vec<_> = qoq_rewards::grounding::predicted_boxes(&blocks, true).into_iter().flatten().collect();
    if boxes.is_empty() {
        return Ok(());
    }
    let (w, h) = image.dimensions();
    if resized.0 == 0 || resized.1 == 0 {
        bail!("the preprocessed image has no size");
    }
    let (sx, sy) = (w as f64 / resized.0 as f64, h as f64 / resized.1 as f64);
    let mut out = image.clone();
    let colour = image::Rgb([255, 40, 40]);
    for b in &boxes {
        let clamp = |v: f64, max: u32| (v.max(0.0) as u32).min(max.saturating_sub(1));
        let (x1, x2) = (clamp(b[0].min(b[2]) * sx, w), clamp(b[0].max(b[2]) * sx, w));
        let (y1, y2) = (clamp(b[1].min(b[3]) * sy, h), clamp(b[1].max(b[3]) * sy, h));
        for x in x1..=x2 {
            for y in [y1, y2] {
                out.put_pixel(x, y, colour);
            }
        }
        for y in y1..=y2 {
            for x in [x1, x2] {
                out.put_pixel(x, y, colour);
            }
        }
    }
    out.save(path).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("{} box(es) drawn: {}", boxes.len(), path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_are_scaled_back_to_the_original_image() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("boxes.png");
        let image = image::RgbImage::new(200, 100);
        // The model saw a 100x50 resize: the box [10, 10, 40, 30] is [20, 20, 80, 60] here.
        let response = "```json\n[{\"bbox_2d\": [10, 10, 40, 30], \"label\": \"nodule\"}]\n```\n\\boxed{nodule}";
        draw_boxes(response, &image, (100, 50), &path).unwrap();
        let drawn = image::open(&path).unwrap().to_rgb8();
        for (x, y) in [(20, 20), (80, 60), (50, 20), (20, 40), (80, 40)] {
            assert_eq!(drawn.get_pixel(x, y).0, [255, 40, 40], "({x}, {y})");
        }
        assert_eq!(drawn.get_pixel(50, 40).0, [0, 0, 0], "inside stays untouched");
        assert_eq!(drawn.get_pixel(19, 20).0, [0, 0, 0]);
        // No boxes: no file.
        let none = tmp.path().join("none.png");
        draw_boxes("\\boxed{normal}", &image, (100, 50), &none).unwrap();
        assert!(!none.exists());
    }
}
