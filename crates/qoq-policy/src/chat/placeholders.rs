//! The processor's placeholder expansion: each image or video placeholder becomes as many
//! pads as the media give merged tokens (videos laid out per family).

use std::fmt::Write as _;

use super::messages::Message;
use super::template::{render_with, RenderOptions};
use super::tokenizer::Tokenizer;
use super::{input, IMAGE_PAD, VIDEO_PAD, VISION_END, VISION_START};
use crate::PolicyError;

/// How the processor lays out one video: Qwen3-VL writes one block per temporal patch (two
/// frames), each preceded by its time stamp; Qwen2.5-VL one run of pads for the whole video.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoLayout {
    /// Seconds of each block (its `grid_t` entries); written as `<{t:.1} seconds>`.
    pub timestamps: Vec<f64>,
    /// Merged tokens per block: `grid_h * grid_w / merge_size²`.
    pub tokens_per_frame: usize,
    /// Blocks with time stamps (Qwen3-VL) or one contiguous run (Qwen2-VL, Qwen2.5-VL).
    pub timestamped: bool,
}

impl VideoLayout {
    /// The layout of a video whose frames were taken at `frame_indices` of a source running at
    /// `fps` frames per second, as `Qwen3VLProcessor` computes it: the indices are padded to a
    /// multiple of `temporal_patch_size` with the last one, and each block's time is the mean
    /// of its first and last frame's `index / fps`. (transformers uses fps 24 when a video
    /// comes without metadata.)
    pub fn from_frame_indices(
        frame_indices: &[usize],
        fps: f64,
        temporal_patch_size: usize,
        tokens_per_frame: usize,
    ) -> Result<Self, PolicyError> {
        if frame_indices.is_empty() {
            return Err(input("a video needs at least one frame"));
        }
        if !(fps.is_finite() && fps > 0.0) {
            return Err(input(format!("video fps must be positive, got {fps}")));
        }
        if temporal_patch_size == 0 {
            return Err(input("temporal_patch_size must be at least 1"));
        }
        let mut idx = frame_indices.to_vec();
        let last = idx[idx.len() - 1];
        while !idx.len().is_multiple_of(temporal_patch_size) {
            idx.push(last);
        }
        let timestamps =
            idx.chunks(temporal_patch_size).map(|g| (g[0] as f64 / fps + g[g.len() - 1] as f64 / fps) / 2.0).collect();
        Ok(Self { timestamps, tokens_per_frame, timestamped: true })
    }

    /// Qwen2.5-VL's layout: `grid_t` blocks of `tokens_per_frame` pads in one run, no time
    /// stamps (time enters through the rope positions instead).
    pub fn contiguous(grid_t: usize, tokens_per_frame: usize) -> Self {
        Self { timestamps: vec![0.0; grid_t], tokens_per_frame, timestamped: false }
    }

    /// Number of blocks (`grid_t`).
    pub fn frames(&self) -> usize {
        self.timestamps.len()
    }

    /// Total `<|video_pad|>` tokens after expansion.
    pub fn tokens(&self) -> usize {
        self.frames() * self.tokens_per_frame
    }

    /// The time stamp text of block `i`, e.g. `<1.6 seconds>` (Python's `f"<{t:.1f} seconds>"`).
    pub fn timestamp_text(&self, i: usize) -> Option<String> {
        self.timestamps.get(i).map(|t| format!("<{t:.1} seconds>"))
    }
}

/// Merged tokens of an image (or one video block) of `grid_thw` patches.
pub fn merged_tokens(grid_thw: [u32; 3], merge_size: u32) -> usize {
    let merge = (merge_size.max(1) as usize).pow(2);
    grid_thw.iter().map(|&v| v as usize).product::<usize>() / merge
}

fn check_counts(
    found_images: usize,
    found_videos: usize,
    images: &[usize],
    videos: &[VideoLayout],
) -> Result<(), PolicyError> {
    if found_images != images.len() {
        return Err(input(format!(
            "the prompt has {found_images} {IMAGE_PAD} placeholders but {} images were given",
            images.len()
        )));
    }
    if found_videos != videos.len() {
        return Err(input(format!(
            "the prompt has {found_videos} {VIDEO_PAD} placeholders but {} videos were given",
            videos.len()
        )));
    }
    if let Some(i) = videos.iter().position(|v| v.timestamps.is_empty()) {
        return Err(input(format!("video {i} has no frames")));
    }
    Ok(())
}

/// The processor's text: each `<|image_pad|>` of `text` repeated `images[i]` times (the i-th
/// image's merged tokens), each `<|video_pad|>` replaced by the blocks of `videos[j]`.
/// Errors unless the numbers of placeholders and of media agree.
pub fn expand_text(text: &str, images: &[usize], videos: &[VideoLayout]) -> Result<String, PolicyError> {
    check_counts(text.matches(IMAGE_PAD).count(), text.matches(VIDEO_PAD).count(), images, videos)?;
    let extra: usize = images.iter().sum::<usize>() * IMAGE_PAD.len()
        + videos.iter().map(|v| v.tokens() * VIDEO_PAD.len() + v.frames() * 48).sum::<usize>();
    let mut out = String::with_capacity(text.len() + extra);
    let (mut img, mut vid) = (images.iter(), videos.iter());
    let mut rest = text;
    loop {
        let next_img = rest.find(IMAGE_PAD);
        let next_vid = rest.find(VIDEO_PAD);
        let (at, is_image) = match (next_img, next_vid) {
            (None, None) => break,
            (Some(a), None) => (a, true),
            (None, Some(b)) => (b, false),
            (Some(a), Some(b)) => {
                if a < b {
                    (a, true)
                } else {
                    (b, false)
                }
            }
        };
        out.push_str(&rest[..at]);
        if is_image {
            let n = *img.next().expect("counted");
            for _ in 0..n {
                out.push_str(IMAGE_PAD);
            }
            rest = &rest[at + IMAGE_PAD.len()..];
        } else {
            let v = vid.next().expect("counted");
            if !v.timestamped {
                for _ in 0..v.tokens() {
                    out.push_str(VIDEO_PAD);
                }
                rest = &rest[at + VIDEO_PAD.len()..];
                continue;
            }
            for t in &v.timestamps {
                let _ = write!(out, "<{t:.1} seconds>");
                out.push_str(VISION_START);
                for _ in 0..v.tokens_per_frame {
                    out.push_str(VIDEO_PAD);
                }
                out.push_str(VISION_END);
            }
            rest = &rest[at + VIDEO_PAD.len()..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The processor's ids from the rendered prompt's ids: each `<|image_pad|>` id repeated
/// `images[i]` times, each `<|video_pad|>` id replaced by the ids of `videos[j]`'s blocks
/// (time stamp text, `<|vision_start|>`, pads, `<|vision_end|>`). Equal to tokenizing
/// [`expand_text`]'s output, without tokenizing thousands of pads. Errors unless the numbers
/// of placeholders and of media agree, or if a `<|video_pad|>` follows ordinary text (the
/// time stamp would then tokenize together with it; the templates always put
/// `<|vision_start|>` there, and [`expand_text`] handles any text).
pub fn expand_placeholders(
    tok: &Tokenizer,
    ids: &[u32],
    images: &[usize],
    videos: &[VideoLayout],
) -> Result<Vec<u32>, PolicyError> {
    let found_images = ids.iter().filter(|&&t| t == tok.image_pad).count();
    let found_videos = ids.iter().filter(|&&t| t == tok.video_pad).count();
    check_counts(found_images, found_videos, images, videos)?;
    let extra = images.iter().sum::<usize>() + videos.iter().map(|v| v.tokens() + v.frames() * 10).sum::<usize>();
    let mut out = Vec::with_capacity(ids.len() + extra);
    let (mut img, mut vid) = (images.iter(), videos.iter());
    for (k, &t) in ids.iter().enumerate() {
        if t == tok.image_pad {
            let n = *img.next().expect("counted");
            out.extend(std::iter::repeat_n(tok.image_pad, n));
        } else if t == tok.video_pad {
            let v = vid.next().expect("counted");
            if !v.timestamped {
                out.extend(std::iter::repeat_n(tok.video_pad, v.tokens()));
                continue;
            }
            if k > 0 && !tok.is_added(ids[k - 1]) {
                return Err(input(format!(
                    "the {VIDEO_PAD} at position {k} follows ordinary text, not {VISION_START}; expand the text with expand_text and tokenize it"
                )));
            }
            for i in 0..v.frames() {
                let stamp = v.timestamp_text(i).expect("in range");
                out.extend(tok.encode(&stamp)?);
                out.push(tok.vision_start);
                out.extend(std::iter::repeat_n(tok.video_pad, v.tokens_per_frame));
                out.push(tok.vision_end);
            }
        } else {
            out.push(t);
        }
    }
    Ok(out)
}

/// Renders, tokenizes and expands in one go: the model's input ids for `messages` with the
/// given images (merged tokens each) and videos, in the order they appear.
pub fn encode_conversation(
    tok: &Tokenizer,
    messages: &[Message],
    opts: &RenderOptions,
    images: &[usize],
    videos: &[VideoLayout],
) -> Result<Vec<u32>, PolicyError> {
    let text = render_with(messages, opts)?;
    let ids = tok.encode(&text)?;
    expand_placeholders(tok, &ids, images, videos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_layout_timestamps() {
        let v = VideoLayout::from_frame_indices(&[0, 1, 2, 3, 4, 5, 6], 4.0, 2, 4).unwrap();
        assert_eq!(v.timestamps, vec![0.125, 0.625, 1.125, 1.5]);
        assert_eq!(v.timestamp_text(0).unwrap(), "<0.1 seconds>");
        assert_eq!(v.timestamp_text(1).unwrap(), "<0.6 seconds>");
        assert_eq!(v.timestamp_text(3).unwrap(), "<1.5 seconds>");
        assert!(VideoLayout::from_frame_indices(&[], 4.0, 2, 4).is_err());
        assert!(VideoLayout::from_frame_indices(&[0], 0.0, 2, 4).is_err());
        assert!(VideoLayout::from_frame_indices(&[0], f64::NAN, 2, 4).is_err());
        assert!(VideoLayout::from_frame_indices(&[0], 1.0, 0, 4).is_err());
    }

    #[test]
    fn expand_text_layout_and_counts() {
        let v = VideoLayout { timestamps: vec![0.3, 1.6], tokens_per_frame: 2, timestamped: true };
        let got = expand_text(
            "a<|image_pad|>b<|vision_start|><|video_pad|><|vision_end|>c<|image_pad|>",
            &[1, 3],
            std::slice::from_ref(&v),
        )
        .unwrap();
        assert_eq!(
            got,
            "a<|image_pad|>b<|vision_start|><0.3 seconds><|vision_start|><|video_pad|><|video_pad|><|vision_end|>\
             <1.6 seconds><|vision_start|><|video_pad|><|video_pad|><|vision_end|><|vision_end|>c<|image_pad|><|image_pad|><|image_pad|>"
        );
        assert!(expand_text("<|image_pad|>", &[], &[]).is_err());
        assert!(expand_text("x", &[4], &[]).is_err());
        assert!(expand_text("<|video_pad|>", &[], &[]).is_err());
        assert!(expand_text(
            "<|video_pad|>",
            &[],
            &[VideoLayout { timestamps: vec![], tokens_per_frame: 1, timestamped: true }]
        )
        .is_err());
        assert_eq!(expand_text("plain", &[], &[]).unwrap(), "plain");
    }
}
