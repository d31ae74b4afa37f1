//! The parquet / Arrow schema of a sample shard and the conversions between Arrow record
//! batches and [`Sample`]s. data/FORMAT.md documents the same table for users.
//!
//! Readers accept the canonical types and their obvious relatives written by other tools
//! (large strings and lists, string views, f64 instead of f32, i64 instead of i32): those
//! are cast to the canonical type. Anything else is a [`DataError::ColumnType`] naming the
//! file and column.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use arrow_array::builder::{BinaryBuilder, Float32Builder, Int32Builder, ListBuilder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::error::{DataError, Result};
use crate::sample::{LabeledBox, Sample, Signal};

/// Column names, in file order.
pub mod col {
    pub const ID: &str = "id";
    pub const DATASET: &str = "dataset";
    pub const DOMAIN: &str = "domain";
    pub const MODALITY: &str = "modality";
    pub const SPLIT: &str = "split";
    pub const PROBLEM: &str = "problem";
    pub const ANSWER: &str = "answer";
    pub const CHOICES: &str = "choices";
    pub const IMAGES: &str = "images";
    pub const VIDEOS: &str = "videos";
    pub const ECG_VALUES: &str = "ecg_values";
    pub const ECG_LEADS: &str = "ecg_leads";
    pub const ECG_SAMPLING_RATE: &str = "ecg_sampling_rate";
    pub const BOXES: &str = "boxes";
    pub const BOX_LABELS: &str = "box_labels";
    pub const MASK: &str = "mask";
    pub const EXTRA: &str = "extra";

    pub const ALL: [&str; 17] = [
        ID,
        DATASET,
        DOMAIN,
        MODALITY,
        SPLIT,
        PROBLEM,
        ANSWER,
        CHOICES,
        IMAGES,
        VIDEOS,
        ECG_VALUES,
        ECG_LEADS,
        ECG_SAMPLING_RATE,
        BOXES,
        BOX_LABELS,
        MASK,
        EXTRA,
    ];
    /// A shard without one of these cannot be trained on.
    pub const REQUIRED: [&str; 4] = [ID, DOMAIN, PROBLEM, ANSWER];
}

/// The canonical schema of a shard, as [`samples_to_batch`] writes it.
pub fn sample_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA.get_or_init(|| samples_to_batch(&[]).expect("empty batch always builds").schema()).clone()
}

/// Encode samples as one Arrow record batch with the canonical schema.
pub fn samples_to_batch(samples: &[Sample]) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
    let strings = |f: &dyn Fn(&Sample) -> &str| -> ArrayRef {
        let mut b = StringBuilder::new();
        for s in samples {
            b.append_value(f(s));
        }
        Arc::new(b.finish())
    };
    let mut choices = ListBuilder::new(StringBuilder::new());
    let mut images = ListBuilder::new(BinaryBuilder::new());
    let mut videos = ListBuilder::new(ListBuilder::new(BinaryBuilder::new()));
    let mut ecg_values = ListBuilder::new(Float32Builder::new());
    let mut ecg_leads = Int32Builder::new();
    let mut ecg_rate = Float32Builder::new();
    let mut boxes = ListBuilder::new(ListBuilder::new(Float32Builder::new()));
    let mut box_labels = ListBuilder::new(StringBuilder::new());
    let mut mask = BinaryBuilder::new();
    for s in samples {
        for c in &s.choices {
            choices.values().append_value(c);
        }
        choices.append(true);
        for img in &s.images {
            images.values().append_value(img);
        }
        images.append(true);
        for video in &s.videos {
            for frame in video {
                videos.values().values().append_value(frame);
            }
            videos.values().append(true);
        }
        videos.append(true);
        match &s.ecg {
            Some(sig) => {
                ecg_values.values().append_slice(&sig.values);
                ecg_leads.append_value(sig.leads as i32);
                ecg_rate.append_value(sig.sampling_rate_hz);
            }
            None => {
                ecg_leads.append_null();
                ecg_rate.append_null();
            }
        }
        ecg_values.append(true);
        for b in &s.boxes {
            boxes.values().values().append_slice(&b.bbox);
            boxes.values().append(true);
            box_labels.values().append_value(&b.label);
        }
        boxes.append(true);
        box_labels.append(true);
        match &s.mask {
            Some(m) => mask.append_value(m),
            None => mask.append_null(),
        }
    }
    let columns: Vec<(&str, ArrayRef, bool)> = vec![
        (col::ID, strings(&|s| &s.id), false),
        (col::DATASET, strings(&|s| &s.dataset), false),
        (col::DOMAIN, strings(&|s| &s.domain), false),
        (col::MODALITY, strings(&|s| &s.modality), false),
        (col::SPLIT, strings(&|s| &s.split), false),
        (col::PROBLEM, strings(&|s| &s.problem), false),
        (col::ANSWER, strings(&|s| &s.answer), false),
        (col::CHOICES, Arc::new(choices.finish()), false),
        (col::IMAGES, Arc::new(images.finish()), false),
        (col::VIDEOS, Arc::new(videos.finish()), false),
        (col::ECG_VALUES, Arc::new(ecg_values.finish()), false),
        (col::ECG_LEADS, Arc::new(ecg_leads.finish()), true),
        (col::ECG_SAMPLING_RATE, Arc::new(ecg_rate.finish()), true),
        (col::BOXES, Arc::new(boxes.finish()), false),
        (col::BOX_LABELS, Arc::new(box_labels.finish()), false),
        (col::MASK, Arc::new(mask.finish()), true),
        (col::EXTRA, strings(&|s| &s.extra), false),
    ];
    let schema = Schema::new(
        columns
            .iter()
            .map(|(name, array, nullable)| Field::new(*name, array.data_type().clone(), *nullable))
            .collect::<Vec<_>>(),
    );
    RecordBatch::try_new(Arc::new(schema), columns.into_iter().map(|(_, a, _)| a).collect())
}

/// The type family of a column, with the variants other writers use folded together.
fn normalized(dt: &DataType) -> String {
    match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "binary".into(),
        DataType::Float32 | DataType::Float64 | DataType::Float16 => "float".into(),
        DataType::Int32 | DataType::Int64 | DataType::Int16 | DataType::Int8 => "int".into(),
        DataType::List(f) | DataType::LargeList(f) | DataType::ListView(f) | DataType::LargeListView(f) => {
            format!("list<{}>", normalized(f.data_type()))
        }
        DataType::FixedSizeList(f, _) => format!("list<{}>", normalized(f.data_type())),
        other => format!("{other}"),
    }
}

/// Checks and casts `array` (column `name` of `path`) to the canonical type.
pub(crate) fn conform(path: &Path, name: &str, array: &ArrayRef) -> Result<ArrayRef> {
    let schema = sample_schema();
    let expected = schema.field_with_name(name).expect("known column").data_type();
    if array.data_type() == expected {
        return Ok(array.clone());
    }
    let type_error = || DataError::ColumnType {
        path: path.to_path_buf(),
        column: name.to_string(),
        expected: normalized(expected),
        found: format!("{}", array.data_type()),
    };
    if normalized(array.data_type()) != normalized(expected) {
        return Err(type_error());
    }
    // Unsafe (checked) casts: a value that does not fit (an i64 above i32::MAX) is an
    // error, not a silent null.
    let options = arrow_cast::CastOptions { safe: false, ..Default::default() };
    arrow_cast::cast_with_options(array, expected, &options).map_err(|e| DataError::ColumnType {
        path: path.to_path_buf(),
        column: name.to_string(),
        expected: normalized(expected),
        found: format!("{} ({e})", array.data_type()),
    })
}

/// Decodes the rows of a conformed batch. Columns absent from the batch (optional ones,
/// or ones not projected) take their defaults.
pub(crate) fn batch_to_samples(batch: &RecordBatch) -> Vec<Sample> {
    let n = batch.num_rows();
    let get = |name: &str| batch.column_by_name(name);
    let text = |name: &str, row: usize| -> Option<String> {
        get(name).and_then(|a| {
            let a = a.as_string::<i32>();
            a.is_valid(row).then(|| a.value(row).to_string())
        })
    };
    let string_list = |name: &str, row: usize| -> Vec<String> {
        get(name)
            .map(|a| {
                let l = a.as_list::<i32>();
                if l.is_null(row) {
                    return Vec::new();
                }
                let v = l.value(row);
                let v = v.as_string::<i32>();
                (0..v.len()).map(|i| v.value(i).to_string()).collect()
            })
            .unwrap_or_default()
    };
    let binary_list = |a: &dyn Array| -> Vec<Vec<u8>> {
        let v = a.as_binary::<i32>();
        (0..v.len()).filter(|&i| v.is_valid(i)).map(|i| v.value(i).to_vec()).collect()
    };
    (0..n)
        .map(|row| {
            let images = get(col::IMAGES)
                .map(|a| {
                    let l = a.as_list::<i32>();
                    if l.is_null(row) {
                        Vec::new()
                    } else {
                        binary_list(l.value(row).as_ref())
                    }
                })
                .unwrap_or_default();
            let videos = get(col::VIDEOS)
                .map(|a| {
                    let l = a.as_list::<i32>();
                    if l.is_null(row) {
                        return Vec::new();
                    }
                    let inner = l.value(row);
                    let inner = inner.as_list::<i32>();
                    (0..inner.len()).map(|i| binary_list(inner.value(i).as_ref())).collect()
                })
                .unwrap_or_default();
            let ecg = match (get(col::ECG_LEADS), get(col::ECG_VALUES)) {
                (Some(leads), Some(values)) if leads.is_valid(row) => {
                    let leads = leads.as_primitive::<Int32Type>().value(row).max(0) as u32;
                    let l = values.as_list::<i32>();
                    let values: Vec<f32> = if l.is_null(row) {
                        Vec::new()
                    } else {
                        let v = l.value(row);
                        let v = v.as_primitive::<Float32Type>();
                        (0..v.len()).map(|i| if v.is_valid(i) { v.value(i) } else { f32::NAN }).collect()
                    };
                    let rate = get(col::ECG_SAMPLING_RATE)
                        .filter(|a| a.is_valid(row))
                        .map(|a| a.as_primitive::<Float32Type>().value(row))
                        .unwrap_or(0.0);
                    let samples = if leads == 0 { 0 } else { (values.len() / leads as usize) as u32 };
                    Some(Signal { leads, samples, sampling_rate_hz: rate, values })
                }
                _ => None,
            };
            let labels = string_list(col::BOX_LABELS, row);
            let boxes = get(col::BOXES)
                .map(|a| {
                    let l = a.as_list::<i32>();
                    if l.is_null(row) {
                        return Vec::new();
                    }
                    let inner = l.value(row);
                    let inner = inner.as_list::<i32>();
                    (0..inner.len())
                        .map(|i| {
                            let v = inner.value(i);
                            let v = v.as_primitive::<Float32Type>();
                            // A box that is not 4 finite numbers is kept as NaNs so that
                            // validation reports the row instead of silently fixing it.
                            let bbox = if v.len() == 4 && v.null_count() == 0 {
                                [v.value(0), v.value(1), v.value(2), v.value(3)]
                            } else {
                                [f32::NAN; 4]
                            };
                            LabeledBox { bbox, label: labels.get(i).cloned().unwrap_or_default() }
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mask = get(col::MASK).and_then(|a| {
                let a = a.as_binary::<i32>();
                a.is_valid(row).then(|| a.value(row).to_vec())
            });
            let domain = text(col::DOMAIN, row).unwrap_or_default();
            let mut sample = Sample {
                id: text(col::ID, row).unwrap_or_default(),
                dataset: text(col::DATASET, row).unwrap_or_else(|| domain.clone()),
                domain,
                modality: text(col::MODALITY, row).unwrap_or_default(),
                split: text(col::SPLIT, row).unwrap_or_else(|| "train".into()),
                problem: text(col::PROBLEM, row).unwrap_or_default(),
                answer: text(col::ANSWER, row).unwrap_or_default(),
                choices: string_list(col::CHOICES, row),
                images,
                videos,
                ecg,
                boxes,
                mask,
                extra: text(col::EXTRA, row).unwrap_or_else(|| "{}".into()),
            };
            if sample.modality.is_empty() {
                sample.modality = infer_modality(&sample).into();
            }
            sample
        })
        .collect()
}

/// The modality a sample's domain and media imply (CT / MRI frame stacks are volumes),
/// for converters and for shards written without that column.
pub fn infer_modality(s: &Sample) -> &'static str {
    if s.domain == "ehr" {
        "ehr"
    } else if !s.videos.is_empty() {
        if matches!(s.domain.as_str(), "ct" | "mri") {
            "volume"
        } else {
            "video"
        }
    } else if !s.images.is_empty() {
        "image"
    } else if s.ecg.is_some() {
        "ecg"
    } else {
        "text"
    }
}
