//! From a data sample to what the trainer needs of it: the prompt's token ids and vision
//! inputs, the reward target in the resized image's pixels, the reference answer for SFT;
//! and batches of prompts as model inputs (left padding, media in placeholder order).

use qoq_data::preprocess::{preprocess_ecg, ImageProcessor, VisionInput, ECG_LEADS, ECG_SAMPLES};
use qoq_data::Sample;
use qoq_policy::chat::{encode_conversation, merged_tokens, Content, Message, RenderOptions, Tokenizer, VideoLayout};
use qoq_policy::{Inputs, PromptFormat};
use qoq_rewards::grounding::{BBox, Mask};
use tch::{Device, Kind, Tensor};

use crate::TrainError;

/// The instruction appended to every question (our wording of the QoQ-Med training suffix).
pub const DEFAULT_SUFFIX: &str = "First think about the question as an internal monologue inside <think> </think>. \
Before the analysis, list the regions of the image that matter for the diagnosis as a ```json list of \
{\"bbox_2d\": [x1, y1, x2, y2], \"label\": \"...\"}. Give the final answer in \\boxed{}.";

/// Which sample field DRPO groups questions by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainKey {
    Domain,
    Dataset,
}

/// One prepared prompt.
#[derive(Debug)]
pub struct Prompt {
    pub sample_id: String,
    pub domain: String,
    pub dataset: String,
    /// The DRPO grouping key (domain or dataset).
    pub group: String,
    pub ids: Vec<i64>,
    pub images: Vec<VisionInput>,
    pub videos: Vec<VisionInput>,
    /// Seconds per temporal patch of each video (Qwen2.5-VL's rope time).
    pub video_seconds_per_grid: Vec<f64>,
    pub answer: String,
    /// Ground-truth boxes in the resized image's pixels (what the model sees).
    pub boxes: Vec<BBox>,
    pub mask: Option<Mask>,
    /// The SFT target: empty reasoning, the boxes as JSON, the answer boxed.
    pub reference: String,
    /// The first image's encoded bytes, for image summaries.
    pub image_bytes: Option<Vec<u8>>,
    /// The ECG, preprocessed (8 x 2500 lead-major), when the policy has an ECG path.
    pub ecg: Option<Vec<f32>>,
}

/// The reference response of a sample: what SFT teaches and what a perfect policy emits.
pub fn reference_response(answer: &str, boxes: &[(BBox, &str)]) -> String {
    let items: Vec<String> = boxes
        .iter()
        .map(|(b, label)| {
            let label = serde_json::to_string(label).unwrap_or_else(|_| "\"\"".into());
            format!(
                "{{\"bbox_2d\": [{}, {}, {}, {}], \"label\": {label}}}",
                b[0].round(),
                b[1].round(),
                b[2].round(),
                b[3].round()
            )
        })
        .collect();
    format!("<think>\n</think>\n```json\n[{}]\n```\n\\boxed{{{answer}}}", items.join(", "))
}

/// Frame rate assumed for sampled frames without timing metadata (transformers' default).
pub const VIDEO_FPS: f64 = 24.0;

/// Prepares `sample`: preprocesses its media, renders the user turn (the ECG placeholder
/// first when `with_ecg` and the sample has one, then images and videos, then the question
/// and `suffix`) with the family's generation prompt, and checks placeholder counts.
/// Without `with_ecg` (a policy without an ECG path) a sample's ECG signal is not used.
pub fn prepare(
    sample: &Sample,
    processor: &ImageProcessor,
    tokenizer: &Tokenizer,
    suffix: &str,
    key: DomainKey,
    format: PromptFormat,
    with_ecg: bool,
) -> Result<Prompt, TrainError> {
    let bad = |what: String| TrainError::Sample { id: sample.id.clone(), message: what };
    let media = processor.prepare(sample).map_err(|e| bad(e.to_string()))?;
    let merge = processor.config.merge_size;
    let ecg = match (&sample.ecg, with_ecg) {
        (Some(signal), true) => Some(preprocess_ecg(signal).map_err(|e| bad(format!("ecg: {e}")))?),
        _ => None,
    };
    let mut content: Vec<Content> = Vec::new();
    content.extend(ecg.iter().map(|_| Content::TimeSeries));
    content.extend(media.images.iter().map(|_| Content::Image));
    content.extend(media.videos.iter().map(|_| Content::Video));
    let question = if suffix.is_empty() { sample.problem.clone() } else { format!("{}\n{}", sample.problem, suffix) };
    content.push(Content::text(question));
    let image_tokens: Vec<usize> = media.images.iter().map(|v| merged_tokens(v.grid_thw, merge)).collect();
    let videos: Vec<VideoLayout> = media
        .videos
        .iter()
        .map(|v| {
            let frames = (v.grid_thw[0] * processor.config.temporal_patch_size) as usize;
            let per_block = (v.grid_thw[1] * v.grid_thw[2] / (merge * merge)) as usize;
            if !format.timestamped_video {
                return Ok(VideoLayout::contiguous(v.grid_thw[0] as usize, per_block));
            }
            // Frames are sampled uniformly; without timing metadata transformers assumes 24 fps.
            VideoLayout::from_frame_indices(
                &(0..frames).collect::<Vec<_>>(),
                VIDEO_FPS,
                processor.config.temporal_patch_size as usize,
                per_block,
            )
        })
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let options = RenderOptions { add_generation_prompt: true, template: format.template, ..Default::default() };
    let ids = encode_conversation(tokenizer, &[Message::user(content)], &options, &image_tokens, &videos)
        .map_err(|e| bad(e.to_string()))?;
    let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();

    let boxes: Vec<BBox> = media.boxes.iter().map(|b| b.bbox.map(f64::from)).collect();
    let labelled: Vec<(BBox, &str)> = boxes.iter().copied().zip(media.boxes.iter().map(|b| b.label.as_str())).collect();
    let mask = match &media.mask {
        Some(m) if m.pixels().any(|p| p.0[0] != 0) => Some(
            Mask::from_fn(m.width(), m.height(), |x, y| m.get_pixel(x, y).0[0] != 0)
                .map_err(|e| bad(format!("mask: {e}")))?,
        ),
        _ => None,
    };
    Ok(Prompt {
        sample_id: sample.id.clone(),
        domain: sample.domain.clone(),
        dataset: sample.dataset.clone(),
        group: match key {
            DomainKey::Domain => sample.domain.clone(),
            DomainKey::Dataset => sample.dataset.clone(),
        },
        ids,
        reference: reference_response(&sample.answer, &labelled),
        answer: sample.answer.clone(),
        boxes,
        mask,
        video_seconds_per_grid: vec![processor.config.temporal_patch_size as f64 / VIDEO_FPS; media.videos.len()],
        images: media.images,
        videos: media.videos,
        image_bytes: sample.images.first().cloned(),
        ecg,
    })
}

/// A batch of prompt rows as tensors.
#[derive(Debug)]
pub struct PromptBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub pixel_values: Option<Tensor>,
    pub image_grids: Vec<[i64; 3]>,
    pub pixel_values_videos: Option<Tensor>,
    pub video_grids: Vec<[i64; 3]>,
    pub video_seconds_per_grid: Vec<f64>,
    /// `[n, 8, 2500]`: the rows' ECGs in order, when any row has one.
    pub ecg_signals: Option<Tensor>,
}

impl PromptBatch {
    /// Rows `rows` of `prompts` (a prompt may appear several times), left-padded with `pad_id`.
    pub fn new(prompts: &[&Prompt], pad_id: i64, device: Device) -> Result<Self, TrainError> {
        let width = prompts.iter().map(|p| p.ids.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(prompts.len() * width);
        let mut mask = Vec::with_capacity(prompts.len() * width);
        for p in prompts {
            let pad = width - p.ids.len();
            ids.extend(std::iter::repeat_n(pad_id, pad).chain(p.ids.iter().copied()));
            mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1i64, p.ids.len())));
        }
        let shape = [prompts.len() as i64, width as i64];
        let stack = |inputs: Vec<&VisionInput>| -> (Option<Tensor>, Vec<[i64; 3]>) {
            if inputs.is_empty() {
                return (None, Vec::new());
            }
            let cols = inputs[0].pixel_values.len() / inputs[0].rows().max(1);
            let values: Vec<f32> = inputs.iter().flat_map(|v| v.pixel_values.iter().copied()).collect();
            let rows = (values.len() / cols.max(1)) as i64;
            let t = Tensor::from_slice(&values).view([rows, cols as i64]).to_device(device);
            (Some(t), inputs.iter().map(|v| v.grid_thw.map(i64::from)).collect())
        };
        let (pixel_values, image_grids) = stack(prompts.iter().flat_map(|p| &p.images).collect());
        let (pixel_values_videos, video_grids) = stack(prompts.iter().flat_map(|p| &p.videos).collect());
        Ok(Self {
            input_ids: Tensor::from_slice(&ids).view(shape).to_device(device),
            attention_mask: Tensor::from_slice(&mask).view(shape).to_device(device),
            pixel_values,
            image_grids,
            pixel_values_videos,
            video_grids,
            video_seconds_per_grid: prompts.iter().flat_map(|p| p.video_seconds_per_grid.iter().copied()).collect(),
            ecg_signals: ecg_signals(prompts, device),
        })
    }

    pub fn inputs(&self) -> Inputs<'_> {
        Inputs {
            input_ids: Some(&self.input_ids),
            attention_mask: Some(&self.attention_mask),
            pixel_values: self.pixel_values.as_ref(),
            image_grids: self.image_grids.clone(),
            pixel_values_videos: self.pixel_values_videos.as_ref(),
            video_grids: self.video_grids.clone(),
            video_seconds_per_grid: self.video_seconds_per_grid.clone(),
            ecg_signals: self.ecg_signals.as_ref(),
        }
    }
}

/// The ECGs of `prompts`, stacked in row order: `[n, 8, 2500]`.
fn ecg_signals(prompts: &[&Prompt], device: Device) -> Option<Tensor> {
    let signals: Vec<&Vec<f32>> = prompts.iter().filter_map(|p| p.ecg.as_ref()).collect();
    if signals.is_empty() {
        return None;
    }
    let values: Vec<f32> = signals.iter().flat_map(|s| s.iter().copied()).collect();
    let shape = [signals.len() as i64, ECG_LEADS as i64, ECG_SAMPLES as i64];
    Some(Tensor::from_slice(&values).view(shape).to_device(device))
}

/// `[B, T]` float mask, 1 on the first `len` tokens of each row.
pub fn response_mask(lengths: &[usize], device: Device) -> Tensor {
    let t = lengths.iter().copied().max().unwrap_or(0);
    let mut m = vec![0f32; lengths.len() * t];
    for (i, &l) in lengths.iter().enumerate() {
        m[i * t..i * t + l].fill(1.0);
    }
    Tensor::from_slice(&m).view([lengths.len() as i64, t as i64]).to_kind(Kind::Float).to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_response_scores_full_marks() {
        let r = reference_response("nodule, pleural effusion", &[([10.2, 20.0, 30.7, 40.0], "nodule")]);
        assert_eq!(r, "<think>\n</think>\n```json\n[{\"bbox_2d\": [10, 20, 31, 40], \"label\": \"nodule\"}]\n```\n\\boxed{nodule, pleural effusion}");
        let scorer = qoq_rewards::combine::Scorer::new(&Default::default()).unwrap();
        let boxes = [[10.0, 20.0, 31.0, 40.0]];
        let s = scorer
            .score(&r, &qoq_rewards::combine::Target { answer: "nodule, pleural effusion", boxes: &boxes, mask: None });
        assert_eq!((s.f1, s.iou, s.format), (1.0, 1.0, 1.0));
    }

    #[test]
    fn masks_cover_each_rows_length() {
        let m = response_mask(&[2, 0, 3], Device::Cpu);
        assert_eq!(Vec::<f32>::try_from(m.view([-1])).unwrap(), vec![1., 1., 0., 0., 0., 0., 1., 1., 1.]);
    }
}
