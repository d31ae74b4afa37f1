//! One training / evaluation example, as the loader hands it out. The parquet columns
//! (see [`crate::schema`] and data/FORMAT.md) map one-to-one onto these fields.

use serde::{Deserialize, Serialize};

/// A clinical question with its media and ground truth.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Unique within the set.
    pub id: String,
    /// Source dataset name, e.g. `vindr_cxr`.
    pub dataset: String,
    /// Clinical domain, e.g. `chest_xray` (see [`crate::domain::DOMAINS`]).
    pub domain: String,
    /// What the media are: `image`, `video`, `volume`, `ecg`, `ehr`, `text`.
    pub modality: String,
    /// `train`, `val` or `test`.
    pub split: String,
    /// The question shown to the model (without the chat template).
    pub problem: String,
    /// Ground-truth answer; several labels are joined by ", ".
    pub answer: String,
    /// Answer options for multiple-choice questions (empty otherwise).
    pub choices: Vec<String>,
    /// Encoded PNG or JPEG images, in prompt order.
    pub images: Vec<Vec<u8>>,
    /// Videos and 3-D volumes: each one a list of encoded frames / slices.
    pub videos: Vec<Vec<Vec<u8>>>,
    /// ECG or other time series.
    pub ecg: Option<Signal>,
    /// Ground-truth boxes in ORIGINAL pixels of the first image (or first frame).
    pub boxes: Vec<LabeledBox>,
    /// Segmentation mask of the first image as PNG bytes; non-zero pixels are the region.
    pub mask: Option<Vec<u8>>,
    /// Free-form fields (EHR tables, difficulty, provenance) as a JSON object text.
    pub extra: String,
}

/// A multichannel signal stored lead-major: `values[lead * samples + t]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Signal {
    pub leads: u32,
    pub samples: u32,
    pub sampling_rate_hz: f32,
    pub values: Vec<f32>,
}

/// An axis-aligned box `[x1, y1, x2, y2]` with its finding label.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LabeledBox {
    pub bbox: [f32; 4],
    pub label: String,
}

impl Sample {
    /// The answer as a label list, split on ", " as the answers are written.
    pub fn answer_labels(&self) -> Vec<&str> {
        self.answer.split(", ").map(str::trim).filter(|s| !s.is_empty()).collect()
    }

    /// Bytes of media carried by this sample (for memory accounting).
    pub fn media_bytes(&self) -> usize {
        self.images.iter().map(Vec::len).sum::<usize>()
            + self.videos.iter().flatten().map(Vec::len).sum::<usize>()
            + self.mask.as_ref().map_or(0, Vec::len)
            + self.ecg.as_ref().map_or(0, |s| s.values.len() * 4)
    }
}
