//! QoQ-Med RL rows (`geom_train.jsonl` and friends):
//!
//! ```json
//! {"problem": "<image>\nAbove is ...", "answer": "BIRAD 2", "images": ["mammo/vindr/jpegs/a/b.jpg"],
//!  "videos": [], "data_source": "mammo", "dataset": "vindr", "demo": "age: 45",
//!  "bbox": [10, 20, 110, 220], "segmentation_path": "mammo/vindr/masks/b.png"}
//! ```
//!
//! Paths are relative to the data root and start with `<domain folder>/<dataset>/`, from
//! which domain and dataset follow, as in the original loader.

use serde_json::Value;

use super::fields::{
    extra_map, optional_str, parse_choices, required_str, str_list, strip_placeholders, type_name, Reason, Row,
};
use super::{media, FileContext};
use crate::domain::{domain_and_dataset_from_path, domain_of_folder, DOMAIN_FOLDERS};
use crate::sample::{LabeledBox, Sample};

/// Prompts of the MIMIC-IV length-of-stay and 48 h mortality rows, which carry no path
/// to derive the domain from (the original loader matches the same substrings).
const LOS_PROMPT: &str = "How long will the patient stay in the hospital?";
const IHM_PROMPT: &str = "Will the patient survive for at least 48 hours?";

/// Keys turned into sample fields; the rest (`demo`, ...) go into `extra`.
const CONSUMED: [&str; 12] = [
    "problem",
    "answer",
    "images",
    "videos",
    "time-series",
    "time_series",
    "dataset",
    "data_source",
    "bbox",
    "segmentation_path",
    "sampling_rate",
    "id",
];

pub(super) fn convert_row(row: &Row, id: String, ctx: &FileContext) -> Result<Sample, Reason> {
    let raw_problem = required_str(row, "problem")?;
    let answer = required_str(row, "answer")?.trim();
    if answer.is_empty() {
        return Err("empty `answer`".into());
    }
    let problem = strip_placeholders(raw_problem);
    if problem.is_empty() {
        return Err("empty `problem`".into());
    }
    let image_paths = str_list(row, "images")?;
    let video_paths = str_list(row, "videos")?;
    // The files use `time-series`; EasyR1 read `time_series`: accept both.
    let series_key = if row.contains_key("time-series") { "time-series" } else { "time_series" };
    let series_paths = str_list(row, series_key)?;
    let (domain, dataset) = domain_and_dataset(
        raw_problem,
        &image_paths,
        &video_paths,
        &series_paths,
        optional_str(row, "data_source")?,
        optional_str(row, "dataset")?,
    )?;
    let boxes = parse_boxes(row.get("bbox"), answer)?;
    let mask = match optional_str(row, "segmentation_path")? {
        Some(p) if !p.trim().is_empty() => {
            Some(media::read_mask(&ctx.media_root, p).map_err(|e| format!("`segmentation_path`: {e}"))?)
        }
        _ => None,
    };
    let rate = super::sampling_rate(row)?;
    let images = ctx.read_images(&image_paths)?;
    let videos = ctx.read_videos(&video_paths)?;
    let (ecg, unused) = ctx.read_time_series(series_key, &series_paths, rate)?;

    let mut extra = extra_map(row, &CONSUMED);
    if !unused.is_empty() {
        extra.insert("unused_time_series".into(), unused.into());
    }
    let mut sample = Sample {
        id,
        dataset,
        domain: domain.to_string(),
        split: ctx.split.clone(),
        choices: parse_choices(&problem),
        problem,
        answer: answer.to_string(),
        images,
        videos,
        ecg,
        boxes,
        mask,
        extra: Value::Object(extra).to_string(),
        ..Default::default()
    };
    sample.modality = crate::schema::infer_modality(&sample).into();
    Ok(sample)
}

/// Domain and dataset as the original loader derived them: the MIMIC prompts first, then
/// the first image (else video) path, then -- for time-series-only rows -- `ecg` and the
/// row's `dataset`. The row's `data_source` / `dataset` fields are the fallback for paths
/// without a `<domain folder>/<dataset>/` prefix.
fn domain_and_dataset(
    problem: &str,
    images: &[String],
    videos: &[String],
    series: &[String],
    data_source: Option<&str>,
    dataset: Option<&str>,
) -> Result<(&'static str, String), Reason> {
    if problem.contains(LOS_PROMPT) {
        return Ok(("ehr", "los_prediction".into()));
    }
    if problem.contains(IHM_PROMPT) {
        return Ok(("ehr", "48_ihm".into()));
    }
    let dataset = dataset.map(str::trim).filter(|d| !d.is_empty());
    let from_fields = || {
        let folder = data_source?.trim();
        Some((domain_of_folder(folder)?, dataset.unwrap_or(folder).to_string()))
    };
    let known = || DOMAIN_FOLDERS.iter().map(|(f, _)| *f).collect::<Vec<_>>().join(", ");
    if let Some(path) = images.first().or(videos.first()) {
        return domain_and_dataset_from_path(path).or_else(from_fields).ok_or_else(|| {
            format!(
                "cannot derive the domain: `{path}` does not start with <domain folder>/<dataset>/ and \
                 `data_source` ({data_source:?}) is not a domain folder either (known: {})",
                known()
            )
        });
    }
    if let Some(path) = series.first() {
        let dataset = dataset
            .map(str::to_string)
            .or_else(|| domain_and_dataset_from_path(path).map(|(_, d)| d))
            .or_else(|| {
                let mut parts = path.split('/').filter(|p| !p.is_empty() && *p != ".");
                let first = parts.next()?;
                parts.next().map(|_| first.to_string())
            })
            .ok_or_else(|| format!("time-series-only row without `dataset` (path `{path}` names none)"))?;
        return Ok(("ecg", dataset));
    }
    from_fields().ok_or_else(|| {
        format!(
            "no images, videos or time-series, and `data_source` ({data_source:?}) is not a domain folder \
             (known: {})",
            known()
        )
    })
}

/// `bbox`: one flat `[x1, y1, x2, y2]` in pixels of the first image, or a list of them;
/// `[0, 0, 0, 0]` (the original's "no box") and `[]` give none. Each box is labelled with
/// the answer text.
fn parse_boxes(value: Option<&Value>, label: &str) -> Result<Vec<LabeledBox>, Reason> {
    const SHAPE: &str = "`bbox` must be [x1, y1, x2, y2] or a list of such boxes";
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(v) => return Err(format!("{SHAPE}, found {}", type_name(v))),
    };
    let boxes: Vec<&Vec<Value>> = if items.iter().all(Value::is_number) {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        vec![items]
    } else {
        items
            .iter()
            .map(|b| b.as_array().ok_or_else(|| format!("{SHAPE}, found an item that is {}", type_name(b))))
            .collect::<Result<_, _>>()?
    };
    let mut out = Vec::new();
    for b in boxes {
        let coords: Vec<f32> = b.iter().filter_map(Value::as_f64).map(|v| v as f32).collect();
        let Ok(bbox) = <[f32; 4]>::try_from(coords) else {
            return Err(format!("{SHAPE}; found {}", Value::Array(b.clone())));
        };
        if bbox != [0.0; 4] {
            out.push(LabeledBox { bbox, label: label.to_string() });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn domain_follows_the_original_loader() {
        let d =
            |p: &str, i: &[&str], v: &[&str], t: &[&str], src, ds| domain_and_dataset(p, &s(i), &s(v), &s(t), src, ds);
        assert_eq!(
            d("q", &["mammo/vindr/a.png"], &[], &[], Some("chest_xray"), Some("x")).unwrap(),
            ("mammography", "vindr".into())
        );
        assert_eq!(d("q", &[], &["ct/kits23/v/c1"], &[], None, None).unwrap(), ("ct", "kits23".into()));
        assert_eq!(
            d("How long will the patient stay in the hospital?", &["chest_xray/mimic-cxr/a.jpg"], &[], &[], None, None)
                .unwrap(),
            ("ehr", "los_prediction".into())
        );
        assert_eq!(
            d("x Will the patient survive for at least 48 hours? y", &[], &[], &[], None, None).unwrap(),
            ("ehr", "48_ihm".into())
        );
        assert_eq!(d("q", &[], &[], &["ptbxl/HR1.npy"], None, Some("PTB-XL")).unwrap(), ("ecg", "PTB-XL".into()));
        assert_eq!(d("q", &[], &[], &["ptbxl/HR1.npy"], None, None).unwrap(), ("ecg", "ptbxl".into()));
        assert!(d("q", &[], &[], &["HR1.npy"], None, None).unwrap_err().contains("`dataset`"));
        assert_eq!(
            d("q", &["img/a.png"], &[], &[], Some("derm"), Some("isic2020")).unwrap(),
            ("dermoscopy", "isic2020".into())
        );
        assert!(d("q", &["img/a.png"], &[], &[], Some("nope"), None).unwrap_err().contains("img/a.png"));
        assert!(d("q", &[], &[], &[], None, None).unwrap_err().contains("no images"));
    }

    #[test]
    fn boxes_flat_nested_and_empty() {
        let b = |v: Value| parse_boxes(Some(&v), "Mass");
        assert_eq!(
            b(json!([1, 2, 3.5, 4])).unwrap(),
            vec![LabeledBox { bbox: [1., 2., 3.5, 4.], label: "Mass".into() }]
        );
        assert_eq!(b(json!([[1, 2, 3, 4], [0, 0, 0, 0], [5, 6, 7, 8]])).unwrap().len(), 2);
        assert!(b(json!([0, 0, 0, 0])).unwrap().is_empty());
        assert!(b(json!([])).unwrap().is_empty());
        assert!(parse_boxes(None, "x").unwrap().is_empty());
        assert!(b(json!([1, 2, 3])).unwrap_err().contains("`bbox`"));
        assert!(b(json!("1,2,3,4")).unwrap_err().contains("`bbox`"));
        assert!(b(json!([[1, 2, 3, "4"]])).unwrap_err().contains("`bbox`"));
    }
}
