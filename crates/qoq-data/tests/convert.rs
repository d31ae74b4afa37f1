//! JSONL -> parquet converters: every format on small inputs written here (PNG images,
//! frame directories, hand-written .npy files, masks), read back through the loader, and
//! the bad-input paths.

use std::path::{Path, PathBuf};

use qoq_data::convert::{convert_jsonl, ConvertOptions, ConvertReport, SourceFormat};
use qoq_data::{DataError, LabeledBox, Loader, LoaderConfig, Sample, ShardSet, Signal};
use serde_json::{json, Value};

/// Writes a `w` x `h` grey PNG of value `v` (creating folders) and returns its bytes.
fn png(path: &Path, w: u32, h: u32, v: u8) -> Vec<u8> {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_pixel(w, h, image::Luma([v])).save(path).unwrap();
    std::fs::read(path).unwrap()
}

/// Writes `rows` (JSON values, or raw text lines) one per line.
fn jsonl(path: &Path, rows: &[Value]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let text: String = rows
        .iter()
        .map(|r| match r {
            Value::String(raw) => format!("{raw}\n"),
            other => format!("{other}\n"),
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

/// A version-1 .npy file as numpy.save writes it.
fn npy(path: &Path, descr: &str, shape: &str, data: &[u8]) {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, out).unwrap();
}

fn read_all(dir: &Path) -> Vec<Sample> {
    Loader::open(dir, LoaderConfig::default()).unwrap().collect::<Result<Vec<_>, _>>().unwrap()
}

fn extra(s: &Sample) -> Value {
    serde_json::from_str(&s.extra).unwrap()
}

fn opts(format: SourceFormat) -> ConvertOptions {
    ConvertOptions { format, ..Default::default() }
}

fn human_gpt(question: &str, answer: &str) -> Value {
    json!([{"from": "human", "value": question}, {"from": "gpt", "value": answer}])
}

fn parquet_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn climb_images_take_domain_and_dataset_from_their_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let mammo = tmp.path().join("climb/mammo/vindr");
    let a = png(&mammo.join("jpegs/s1/a.png"), 32, 24, 10);
    let b = png(&mammo.join("jpegs/s1/b.png"), 16, 16, 20);
    let question = "<image>\nAbove is a mammogram. What is the BI-RADS category? Answer with one of the following:\nBIRAD 1\nBIRAD 2\nBIRAD 3";
    jsonl(
        &mammo.join("annotation_train.jsonl"),
        &[
            json!({"images": ["jpegs/s1/a.png"], "explanation": "", "age": ["036Y"], "sex": "F",
               "conversations": human_gpt(question, " BIRAD 2 \n")}),
            json!(""),
            json!({"images": ["jpegs/s1/a.png", "jpegs/s1/b.png"], "id": "cmmd-7",
               "conversations": human_gpt("<image>\n<image>\nTwo views. Benign or malignant?", "Malignant")}),
        ],
    );
    // The same dataset name in another domain.
    let cxr = tmp.path().join("climb/chest_xray/vindr");
    let c = png(&cxr.join("train/jpegs/x.png"), 8, 8, 30);
    jsonl(
        &cxr.join("annotation_test.jsonl"),
        &[json!({"images": ["train/jpegs/x.png"], "conversations": human_gpt("<image>\nFindings?", "No Finding")})],
    );

    let out = tmp.path().join("out");
    let report = convert_jsonl(&mammo.join("annotation_train.jsonl"), &out, &opts(SourceFormat::Climb)).unwrap();
    assert_eq!((report.rows_written, report.lines, report.bad_count), (2, 2, 0), "{:?}", report.bad);
    assert_eq!(report.files, vec![out.join("mammography-vindr-annotation_train-00000.parquet")]);
    let report = convert_jsonl(&cxr.join("annotation_test.jsonl"), &out, &opts(SourceFormat::Climb)).unwrap();
    assert_eq!(report.files, vec![out.join("chest_xray-vindr-annotation_test-00000.parquet")]);
    assert_eq!(ShardSet::open(&out).unwrap().shards.len(), 2);

    let samples = read_all(&out);
    assert_eq!(samples.len(), 3);
    let (x, s0, s1) = (&samples[0], &samples[1], &samples[2]); // shards sorted by name
    assert_eq!(s0.id, "mammography/vindr/train/1");
    assert_eq!((s0.domain.as_str(), s0.dataset.as_str(), s0.split.as_str()), ("mammography", "vindr", "train"));
    assert_eq!(s0.modality, "image");
    assert_eq!(
        s0.problem,
        "Above is a mammogram. What is the BI-RADS category? Answer with one of the following:\nBIRAD 1\nBIRAD 2\nBIRAD 3"
    );
    assert_eq!(s0.answer, "BIRAD 2");
    assert_eq!(s0.choices, ["BIRAD 1", "BIRAD 2", "BIRAD 3"]);
    assert_eq!(s0.images, vec![a.clone()]);
    assert_eq!(extra(s0), json!({"age": ["036Y"], "sex": "F"}));
    assert!(s0.videos.is_empty() && s0.ecg.is_none() && s0.boxes.is_empty() && s0.mask.is_none());

    assert_eq!(s1.id, "cmmd-7");
    assert_eq!(s1.problem, "Two views. Benign or malignant?");
    assert_eq!(s1.answer, "Malignant");
    assert!(s1.choices.is_empty());
    assert_eq!(s1.images, vec![a, b]);
    assert_eq!(extra(s1), json!({}));

    assert_eq!(x.id, "chest_xray/vindr/test/1");
    assert_eq!((x.domain.as_str(), x.dataset.as_str(), x.split.as_str()), ("chest_xray", "vindr", "test"));
    assert_eq!((x.problem.as_str(), x.answer.as_str()), ("Findings?", "No Finding"));
    assert_eq!(x.images, vec![c]);
}

#[test]
fn climb_videos_are_frame_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ct/kits23");
    // Written in reverse so the directory order is not the name order.
    let frames: Vec<Vec<u8>> = (0..6u8)
        .rev()
        .map(|i| png(&ds.join(format!("dataset/case_00001/imaging/{i:05}.png")), 12, 10, 40 * i))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    std::fs::write(ds.join("dataset/case_00001/imaging/notes.txt"), "not a frame").unwrap();
    // `X.mp4` with its frames extracted into `X/`: the directory is read.
    std::fs::create_dir_all(ds.join("dataset/case_00002")).unwrap();
    std::fs::write(ds.join("dataset/case_00002/imaging.mp4"), b"\0\0\0\x18ftypmp42").unwrap();
    let two: Vec<Vec<u8>> =
        (0..2u8).map(|i| png(&ds.join(format!("dataset/case_00002/imaging/{i}.png")), 6, 6, i)).collect();
    std::fs::create_dir_all(ds.join("videos")).unwrap();
    std::fs::write(ds.join("videos/x.mp4"), b"\0\0\0\x18ftypmp42").unwrap();
    std::fs::write(ds.join("videos/vol.nii.gz"), b"\x1f\x8b").unwrap();
    let q = "<video>\nAbove is a CT scan of a patient. Is the tumour benign or malignant? Answer with one of the following:\nBenign\nMalignant";
    let input = ds.join("annotation_valid.jsonl");
    jsonl(
        &input,
        &[
            json!({"videos": ["dataset/case_00001/imaging"], "conversations": human_gpt(q, "Malignant")}),
            json!({"video": "dataset/case_00002/imaging.mp4", "interval": [3, 9], "conversations": human_gpt(q, "Benign")}),
            json!({"videos": ["videos/x.mp4"], "conversations": human_gpt(q, "Benign")}),
            json!({"videos": ["videos/vol.nii.gz"], "conversations": human_gpt(q, "Benign")}),
        ],
    );
    let out = tmp.path().join("out");
    let report =
        convert_jsonl(&input, &out, &ConvertOptions { max_bad_fraction: 0.5, ..opts(SourceFormat::Climb) }).unwrap();
    assert_eq!((report.rows_written, report.lines, report.bad_count), (2, 4, 2));
    assert_eq!(report.bad[0].row, 3);
    assert_eq!(report.bad[0].id, "ct/kits23/val/3");
    assert_eq!(report.bad[0].file, input);
    let mp4 = ds.join("videos/x.mp4").display().to_string();
    let reason = &report.bad[0].reason;
    assert!(reason.starts_with("`videos[0]`") && reason.contains("ffmpeg -i") && reason.contains(&mp4), "{reason}");
    assert_eq!(report.bad[1].row, 4);
    assert!(
        report.bad[1].reason.contains("vol.nii.gz") && report.bad[1].reason.contains("slices"),
        "{}",
        report.bad[1].reason
    );

    let samples = read_all(&out);
    assert_eq!(samples.len(), 2);
    let s = &samples[0];
    assert_eq!((s.domain.as_str(), s.dataset.as_str(), s.split.as_str()), ("ct", "kits23", "val"));
    assert_eq!(s.modality, "volume");
    assert!(s.images.is_empty());
    assert_eq!(s.problem, &q["<video>\n".len()..]);
    assert_eq!(s.choices, ["Benign", "Malignant"]);
    // 4 of 6 frames, at the segment centres: 0, 2, 3, 5.
    assert_eq!(s.videos, vec![vec![frames[0].clone(), frames[2].clone(), frames[3].clone(), frames[5].clone()]]);
    assert_eq!(samples[1].videos, vec![two]);
    assert_eq!(extra(&samples[1]), json!({"interval": [3, 9]}));
}

#[test]
fn climb_overrides_when_the_path_names_no_domain() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("loose/annotation_train.jsonl");
    let img = png(&tmp.path().join("media/ISIC_1.png"), 10, 10, 5);
    jsonl(&input, &[json!({"images": ["ISIC_1.png"], "conversations": human_gpt("<image>\nLesion type?", "Nevus")})]);
    let out = tmp.path().join("out");

    let err = convert_jsonl(&input, &out, &opts(SourceFormat::Climb)).unwrap_err();
    assert!(matches!(&err, DataError::Invalid { path, .. } if path == &input), "{err}");
    assert!(err.to_string().contains("set `domain`"), "{err}");
    assert!(parquet_files(&out).is_empty());

    let o = ConvertOptions {
        domain: Some("derm".into()),
        dataset: Some("ham10000".into()),
        split: Some("valid".into()),
        media_root: Some(tmp.path().join("media")),
        ..opts(SourceFormat::Climb)
    };
    let report = convert_jsonl(&input, &out, &o).unwrap();
    assert_eq!(report.files, vec![out.join("dermoscopy-ham10000-annotation_train-00000.parquet")]);
    let s = &read_all(&out)[0];
    assert_eq!(
        (s.id.as_str(), s.domain.as_str(), s.dataset.as_str(), s.split.as_str()),
        ("dermoscopy/ham10000/val/1", "dermoscopy", "ham10000", "val")
    );
    assert_eq!(s.images, vec![img]);

    let bad = ConvertOptions { domain: Some("astronomy".into()), ..o };
    assert!(matches!(convert_jsonl(&input, &out, &bad), Err(DataError::Config(m)) if m.contains("astronomy")));
}

#[test]
fn qoq_med_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("high_modality");
    let b = png(&root.join("mammo/vindr/jpegs/a/b.png"), 40, 30, 100);
    let mask = png(&root.join("mammo/vindr/masks/b.png"), 40, 30, 255);
    let x = png(&root.join("chest_xray/vindr/train/x.png"), 20, 20, 50);
    let cxr = png(&root.join("chest_xray/mimic-cxr/files/p1.png"), 8, 8, 1);
    let derm = png(&root.join("derm_imgs/a.png"), 8, 8, 2);
    let frames: Vec<Vec<u8>> =
        (0..3u8).map(|i| png(&root.join(format!("ultrasound/covid_us/videos/v1/{i}.png")), 8, 8, i)).collect();
    let ecg: Vec<f32> = (0..10).map(|i| i as f32 * 0.5 - 1.0).collect();
    npy(
        &root.join("ecg/ptbxl/HR1.npy"),
        "<f4",
        "(2, 5)",
        &ecg.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>(),
    );
    std::fs::write(root.join("ecg/ptbxl/A1.csv"), "I,II,V1\n1,10,100\n2,20,200\n3,30,300\n4,40,400\n").unwrap();
    std::fs::write(root.join("ecg/ptbxl/G1.pt"), b"PK\x03\x04").unwrap();
    npy(
        &root.join("ecg/ptbxl/G1.npy"),
        "<f8",
        "(3,)",
        &[1.5f64, -2.0, 0.25].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>(),
    );
    let input = root.join("geom_valid_mini.jsonl");
    let mq = "<image>\nAbove is a mammogram. Answer with one of the following:\nBIRAD 1\nBIRAD 4";
    jsonl(
        &input,
        &[
            json!({"problem": mq, "answer": "BIRAD 4", "images": ["mammo/vindr/jpegs/a/b.png"], "videos": [],
               "data_source": "mammo", "dataset": "vindr", "bbox": [4, 5, 20.5, 25], "segmentation_path": "mammo/vindr/masks/b.png",
               "demo": "age: 45, race: Asian"}),
            json!({"problem": "<image>\nFindings?", "answer": "Nodule", "images": ["chest_xray/vindr/train/x.png"], "videos": [],
               "bbox": [[1, 1, 5, 5], [2, 3, 6, 7]]}),
            json!({"problem": "<image>\nFindings?", "answer": "No Finding", "images": ["chest_xray/vindr/train/x.png"], "videos": [],
               "bbox": [0, 0, 0, 0], "segmentation_path": null}),
            json!({"problem": "<ECG> Diagnosis?", "answer": "normal", "images": [], "videos": [], "time-series": ["ecg/ptbxl/HR1.npy"], "dataset": "ptbxl"}),
            json!({"problem": "Rhythm?", "answer": "afib", "images": [], "videos": [], "time-series": ["ecg/ptbxl/A1.csv"], "dataset": "CPSC", "sampling_rate": 500}),
            json!({"problem": "<image> How long will the patient stay in the hospital? Answer in days.", "answer": "3",
               "images": ["chest_xray/mimic-cxr/files/p1.png"], "videos": [], "data_source": "multimodal"}),
            json!({"problem": "Rhythm?", "answer": "sttc", "images": [], "videos": [], "time-series": ["ecg/ptbxl/G1.pt"], "dataset": "Ga"}),
            json!({"problem": "<image>\nBenign or malignant?", "answer": "Benign", "images": ["derm_imgs/a.png"], "videos": [],
               "data_source": "derm", "dataset": "isic2020"}),
            json!({"problem": "<video>\nCOVID?", "answer": "covid", "images": [], "videos": ["ultrasound/covid_us/videos/v1"], "id": 77}),
        ],
    );
    let out = tmp.path().join("out");
    let report = convert_jsonl(&input, &out, &opts(SourceFormat::QoqMed)).unwrap();
    assert_eq!((report.rows_written, report.bad_count), (9, 0), "{:?}", report.bad);
    assert_eq!(report.files, vec![out.join("geom_valid_mini-00000.parquet")]);
    let s = read_all(&out);

    assert_eq!(s[0].id, "geom_valid_mini/1");
    assert_eq!((s[0].domain.as_str(), s[0].dataset.as_str(), s[0].split.as_str()), ("mammography", "vindr", "val"));
    assert_eq!(s[0].problem, "Above is a mammogram. Answer with one of the following:\nBIRAD 1\nBIRAD 4");
    assert_eq!(s[0].answer, "BIRAD 4");
    assert_eq!(s[0].choices, ["BIRAD 1", "BIRAD 4"]);
    assert_eq!(s[0].images, vec![b]);
    assert_eq!(s[0].boxes, vec![LabeledBox { bbox: [4.0, 5.0, 20.5, 25.0], label: "BIRAD 4".into() }]);
    assert_eq!(s[0].mask.as_deref(), Some(mask.as_slice()));
    assert_eq!(extra(&s[0]), json!({"demo": "age: 45, race: Asian"}));

    assert_eq!((s[1].domain.as_str(), s[1].dataset.as_str()), ("chest_xray", "vindr"));
    assert_eq!(s[1].images, vec![x.clone()]);
    assert_eq!(s[1].boxes.iter().map(|b| b.bbox).collect::<Vec<_>>(), [[1., 1., 5., 5.], [2., 3., 6., 7.]]);
    assert!(s[1].boxes.iter().all(|b| b.label == "Nodule"));
    assert!(s[2].boxes.is_empty() && s[2].mask.is_none());

    assert_eq!((s[3].domain.as_str(), s[3].dataset.as_str(), s[3].modality.as_str()), ("ecg", "ptbxl", "ecg"));
    assert_eq!(s[3].problem, "<ECG> Diagnosis?");
    assert_eq!(s[3].ecg, Some(Signal { leads: 2, samples: 5, sampling_rate_hz: 250.0, values: ecg }));
    assert_eq!(
        s[4].ecg,
        Some(Signal {
            leads: 3,
            samples: 4,
            sampling_rate_hz: 500.0,
            values: vec![1., 2., 3., 4., 10., 20., 30., 40., 100., 200., 300., 400.]
        })
    );
    assert_eq!(s[4].dataset, "CPSC");
    assert_eq!(extra(&s[4]), json!({}));

    assert_eq!((s[5].domain.as_str(), s[5].dataset.as_str(), s[5].modality.as_str()), ("ehr", "los_prediction", "ehr"));
    assert_eq!(s[5].problem, "How long will the patient stay in the hospital? Answer in days.");
    assert_eq!(s[5].images, vec![cxr]);
    // The .npy next to the .pt is used.
    assert_eq!(s[6].ecg, Some(Signal { leads: 1, samples: 3, sampling_rate_hz: 250.0, values: vec![1.5, -2.0, 0.25] }));
    assert_eq!((s[6].domain.as_str(), s[6].dataset.as_str()), ("ecg", "Ga"));
    assert_eq!((s[7].domain.as_str(), s[7].dataset.as_str()), ("dermoscopy", "isic2020"));
    assert_eq!(s[7].images, vec![derm]);
    assert_eq!(
        (s[8].id.as_str(), s[8].domain.as_str(), s[8].dataset.as_str(), s[8].modality.as_str()),
        ("77", "ultrasound", "covid_us", "video")
    );
    assert_eq!(s[8].videos, vec![frames]);
}

/// QoQ-Med ECG rows pointing at `torch.save` files and WFDB records; the preprocessed
/// encoder input of each comes out 8 x 2500.
#[test]
fn qoq_med_ecg_from_torch_files_and_wfdb_records() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/torch_file");
    std::fs::create_dir_all(root.join("ecg/ptbxl")).unwrap();
    std::fs::copy(fixtures.join("ecg_bf16.pt"), root.join("ecg/ptbxl/1.pt")).unwrap();
    std::fs::copy(fixtures.join("jepa_epoch100.pth"), root.join("ecg/ptbxl/ckpt.pth")).unwrap();
    // A 12-lead WFDB record, 10 s at 500 Hz, format 16: lead l, sample t = l * 10 + t % 7.
    let digital = |l: usize, t: usize| (l * 10 + t % 7) as i16;
    let dat: Vec<u8> = (0..5000).flat_map(|t| (0..12).flat_map(move |l| digital(l, t).to_le_bytes())).collect();
    std::fs::write(root.join("ecg/ptbxl/00001_hr.dat"), dat).unwrap();
    let mut hea = "00001_hr 12 500 5000\n".to_string();
    for name in ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"] {
        hea.push_str(&format!("00001_hr.dat 16 1000.0(0)/mV 16 0 0 0 0 {name}\n"));
    }
    std::fs::write(root.join("ecg/ptbxl/00001_hr.hea"), hea).unwrap();
    let row = |path: &str| json!({"problem": "<ECG> Rhythm?", "answer": "normal", "images": [], "videos": [], "time-series": [path], "dataset": "ptbxl", "sampling_rate": 100});
    let input = root.join("ecg_train.jsonl");
    jsonl(&input, &[row("ecg/ptbxl/1.pt"), row("ecg/ptbxl/00001_hr"), row("ecg/ptbxl/ckpt.pth")]);
    let o = ConvertOptions { max_bad_fraction: 0.5, ..opts(SourceFormat::QoqMed) };
    let report = convert_jsonl(&input, &root.join("out"), &o).unwrap();
    assert_eq!((report.rows_written, report.bad_count), (2, 1));
    let reason = &report.bad[0].reason;
    assert!(reason.contains("ckpt.pth") && reason.contains("encoder.W_P.weight"), "{reason}");
    let s = read_all(&root.join("out"));

    let bf16 = s[0].ecg.as_ref().unwrap();
    // The .pt carries no rate: the row's sampling_rate is kept.
    assert_eq!((bf16.leads, bf16.samples, bf16.sampling_rate_hz), (8, 2500, 100.0));
    assert_eq!(bf16.values[..3], [-128.0 * 0.25, -127.0 * 0.25, -126.0 * 0.25]);
    let wfdb = s[1].ecg.as_ref().unwrap();
    // The header's 500 Hz overrides the row's 100 Hz.
    assert_eq!((wfdb.leads, wfdb.samples, wfdb.sampling_rate_hz), (12, 5000, 500.0));
    assert_eq!(wfdb.values[6 * 5000 + 3], (60.0 + 3.0) / 1000.0);

    let x = qoq_data::preprocess::preprocess_ecg(wfdb).unwrap();
    assert_eq!(x.len(), 8 * 2500);
    assert!(x.iter().all(|v| v.is_finite()));
}

#[test]
fn mimic_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("multimodal/mimiciv");
    let img = png(&dir.join("files/p10/s1/a.png"), 16, 12, 9);
    npy(
        &dir.join("resampled/1.npy"),
        "<f4",
        "(1, 2)",
        &[1f32, 2.].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>(),
    );
    std::fs::write(dir.join("resampled/2.mat"), b"MATLAB 5.0").unwrap();
    let q = "<image> Patient is a 67-year-old F admitted with fever. Which is the most likely primary diagnosis?\nA. Sepsis\nB. Acute kidney failureInclude the answer in \\boxed{} with a single letter";
    let input = dir.join("qa_train.jsonl");
    jsonl(
        &input,
        &[
            json!({"question": q, "problem": q, "choices": ["A. Sepsis", "B. Acute kidney failure"], "correct_choice": "B", "answer": "B",
               "images": ["files/p10/s1/a.png"], "time-series": [], "data_source": "mimic_qa", "dataset": "qa_type_3", "insurance_type": "Medicare"}),
            json!({"problem": "How many diagnoses were coded?", "answer": 3, "choices": [""], "images": [], "dataset": "qa_type_5"}),
            json!({"question": "Which rhythm?", "correct_choice": "C", "choices": ["A", "B", "C"], "dataset": "qa_type_6",
               "time-series": ["resampled/1.npy", "resampled/9.npy"], "sampling_rate": 500.0}),
            json!({"question": "q", "answer": true, "dataset": "qa_type_3"}),
            json!({"question": "q", "answer": "A", "time-series": ["resampled/2.mat"], "dataset": "qa_type_3"}),
        ],
    );
    let out = tmp.path().join("out");
    let report =
        convert_jsonl(&input, &out, &ConvertOptions { max_bad_fraction: 0.5, ..opts(SourceFormat::Mimic) }).unwrap();
    assert_eq!((report.rows_written, report.lines, report.bad_count), (3, 5, 2));
    assert_eq!((report.bad[0].row, report.bad[0].id.as_str()), (4, "qa_train/4"));
    assert_eq!(report.bad[0].reason, "`answer` must be a string, found a boolean");
    let mat = &report.bad[1].reason;
    assert_eq!(report.bad[1].row, 5);
    assert!(
        mat.contains("2.mat") && mat.contains(".npy") && mat.contains("python -c") && mat.contains("scipy.io.loadmat"),
        "{mat}"
    );

    let s = read_all(&out);
    assert_eq!(s[0].id, "qa_train/1");
    assert_eq!(
        (s[0].domain.as_str(), s[0].dataset.as_str(), s[0].modality.as_str(), s[0].split.as_str()),
        ("ehr", "qa_type_3", "ehr", "train")
    );
    assert_eq!(s[0].problem, &q["<image> ".len()..]);
    assert_eq!(s[0].answer, "B");
    assert_eq!(s[0].choices, ["A. Sepsis", "B. Acute kidney failure"]);
    assert_eq!(s[0].images, vec![img]);
    assert!(s[0].ecg.is_none());
    assert_eq!(extra(&s[0]), json!({"correct_choice": "B", "insurance_type": "Medicare"}));

    assert_eq!(
        (s[1].problem.as_str(), s[1].answer.as_str(), s[1].dataset.as_str()),
        ("How many diagnoses were coded?", "3", "qa_type_5")
    );
    assert!(s[1].choices.is_empty());
    assert_eq!(extra(&s[1]), json!({}));

    assert_eq!(s[2].answer, "C");
    assert_eq!(s[2].choices, ["A", "B", "C"]);
    assert_eq!(s[2].ecg, Some(Signal { leads: 1, samples: 2, sampling_rate_hz: 500.0, values: vec![1., 2.] }));
    assert_eq!(extra(&s[2]), json!({"correct_choice": "C", "unused_time_series": ["resampled/9.npy"]}));
}

#[test]
fn bad_rows_are_reported_with_line_numbers_and_reasons() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    png(&root.join("mammo/vindr/a.png"), 40, 30, 1);
    std::fs::write(root.join("mammo/vindr/notes.png"), "not an image").unwrap();
    std::fs::write(root.join("mammo/vindr/tiny.gif"), b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").unwrap();
    let good = json!({"problem": "<image>\nq", "answer": "a", "images": ["mammo/vindr/a.png"]});
    let input = root.join("geom_train.jsonl");
    jsonl(
        &input,
        &[
            good.clone(),                                                                                           // 1
            json!("   "),                                                                  // 2: blank
            json!(r#"{"problem": "q", "answer": "#),                                       // 3
            json!({"problem": "q", "answer": "a", "images": ["mammo/vindr/missing.png"]}), // 4
            json!({"problem": "q", "answer": 5, "images": ["mammo/vindr/a.png"]}),         // 5
            json!({"problem": "q", "answer": "a", "images": "mammo/vindr/a.png"}),         // 6
            json!({"problem": "q", "answer": "  ", "images": ["mammo/vindr/a.png"]}),      // 7
            json!({"problem": "q", "answer": "a", "images": ["mammo/vindr/a.png"], "bbox": [0, 0, 41, 10]}), // 8
            json!({"answer": "a", "images": ["mammo/vindr/a.png"]}),                       // 9
            json!("[1, 2]"),                                                               // 10
            json!({"problem": "q", "answer": "a", "images": ["mammo/vindr/notes.png"]}),   // 11
            json!({"problem": "q", "answer": "a", "images": ["mammo/vindr/tiny.gif"]}),    // 12
            json!({"problem": "q", "answer": "a", "images": ["mammo/vindr/a.png", 3]}),    // 13
            json!({"problem": "q", "answer": "a", "images": [], "time-series": ["ecg/x.npy"], "dataset": "ptbxl"}), // 14
            good, // 15
        ],
    );
    let out = root.join("out");
    let report: ConvertReport =
        convert_jsonl(&input, &out, &ConvertOptions { max_bad_fraction: 1.0, ..opts(SourceFormat::QoqMed) }).unwrap();
    assert_eq!((report.lines, report.rows_written, report.bad_count), (14, 2, 12));
    assert!(report.bad.iter().all(|b| b.file == input));
    let rows: Vec<u64> = report.bad.iter().map(|b| b.row).collect();
    assert_eq!(rows, [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
    assert!(report.bad.iter().all(|b| b.id == format!("geom_train/{}", b.row)));
    let reason = |row: u64| report.bad.iter().find(|b| b.row == row).unwrap().reason.clone();
    assert!(reason(3).starts_with("not valid JSON"), "{}", reason(3));
    let missing = root.join("mammo/vindr/missing.png").display().to_string();
    assert_eq!(reason(4), format!("`images[0]`: `{missing}` not found"));
    assert_eq!(reason(5), "`answer` must be a string, found a number");
    assert_eq!(reason(6), "`images` must be a list of strings, found a string");
    assert_eq!(reason(7), "empty `answer`");
    assert!(reason(8).contains("outside the 40x30 image"), "{}", reason(8));
    assert_eq!(reason(9), "missing key `problem`");
    assert_eq!(reason(10), "expected a JSON object, found a list");
    assert!(reason(11).contains("notes.png") && reason(11).contains("not a PNG or JPEG"), "{}", reason(11));
    assert!(reason(12).contains("tiny.gif") && reason(12).contains("Gif images are not supported"), "{}", reason(12));
    assert!(reason(13).contains("item 1 is a number"), "{}", reason(13));
    assert!(reason(14).starts_with("`time-series[0]`") && reason(14).contains("x.npy` not found"), "{}", reason(14));

    let s = read_all(&out);
    assert_eq!(s.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["geom_train/1", "geom_train/15"]);

    // Climb conversation errors.
    let ds = root.join("derm/isic2020");
    let climb = ds.join("annotation_train.jsonl");
    jsonl(
        &climb,
        &[
            json!({"conversations": [{"from": "human", "value": "q"}]}),
            json!({"conversations": "q"}),
            json!({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": 1}]}),
            json!({"images": []}),
            json!({"conversations": human_gpt("<image>\n", "a")}),
            json!({"conversations": human_gpt("q", "a")}),
        ],
    );
    let report =
        convert_jsonl(&climb, &out, &ConvertOptions { max_bad_fraction: 1.0, ..opts(SourceFormat::Climb) }).unwrap();
    let reasons: Vec<&str> = report.bad.iter().map(|b| b.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "`conversations` has no `gpt` turn (the answer)",
            "`conversations` must be a list of turns, found a string",
            "`conversations[1].value` must be a string, found a number",
            "missing key `conversations`",
            "empty question (the `human` turn of `conversations`)",
        ]
    );
    assert_eq!(report.bad[0].id, "dermoscopy/isic2020/train/1");
    assert_eq!(report.rows_written, 1);
}

#[test]
fn too_many_bad_rows_fail_and_leave_no_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    png(&root.join("fundus/aptos/train_images/a.png"), 8, 8, 1);
    let good = json!({"problem": "<image>\nGrade?", "answer": "No DR", "images": ["fundus/aptos/train_images/a.png"]});
    let bad = json!("{not json");
    // 300 good rows (several row groups, so shards are written before the verdict).
    let mut rows = vec![good; 300];
    rows.extend(std::iter::repeat_n(bad, 3));
    let input = root.join("geom_train.jsonl");
    jsonl(&input, &rows);
    let o = opts(SourceFormat::QoqMed);

    // 3 of 303 (0.99 %) is within the default 1 %.
    let ok_dir = root.join("ok");
    let report = convert_jsonl(&input, &ok_dir, &o).unwrap();
    assert_eq!((report.rows_written, report.bad_count), (300, 3));
    assert_eq!(parquet_files(&ok_dir), ["geom_train-00000.parquet"]);

    // 4 of 304 (1.3 %) is not.
    rows.push(json!("{}"));
    jsonl(&input, &rows);
    let out = root.join("out");
    match convert_jsonl(&input, &out, &o) {
        Err(DataError::TooManyBadRows { bad, seen, max_fraction, first, .. }) => {
            assert_eq!((bad, seen, max_fraction), (4, 304, 0.01));
            assert!(first.contains("row 301") && first.contains("not valid JSON"), "{first}");
        }
        other => panic!("expected TooManyBadRows, got {:?}", other.map(|r| r.rows_written)),
    }
    assert!(!out.exists(), "out_dir created by the failed run is removed: {:?}", parquet_files(&out));

    // An existing out_dir keeps its other files and gets no shard (nor staging folder).
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "x").unwrap();
    assert!(matches!(convert_jsonl(&input, &out, &o), Err(DataError::TooManyBadRows { .. })));
    assert_eq!(parquet_files(&out), ["keep.txt"]);
    assert!(matches!(ShardSet::open(&out), Err(DataError::NoShards { .. })));
}

#[test]
fn reconversion_replaces_its_own_shards_only() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    png(&root.join("mri/brain_tumor/a.png"), 8, 8, 1);
    let input = root.join("geom_train.jsonl");
    jsonl(&input, &[json!({"problem": "q", "answer": "No Tumor", "images": ["mri/brain_tumor/a.png"]})]);
    let out = root.join("out");
    let o = opts(SourceFormat::QoqMed);
    convert_jsonl(&input, &out, &o).unwrap();
    // A stale later shard of the same prefix, and another input's shard.
    std::fs::copy(out.join("geom_train-00000.parquet"), out.join("geom_train-00001.parquet")).unwrap();
    std::fs::copy(out.join("geom_train-00000.parquet"), out.join("geom_train_upsampled-00000.parquet")).unwrap();
    let report = convert_jsonl(&input, &out, &o).unwrap();
    assert_eq!(report.files, vec![out.join("geom_train-00000.parquet")]);
    assert_eq!(parquet_files(&out), ["geom_train-00000.parquet", "geom_train_upsampled-00000.parquet"]);
}

#[test]
fn missing_input_file_is_an_io_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let input: PathBuf = tmp.path().join("nope/annotation_train.jsonl");
    let out = tmp.path().join("out");
    for format in [SourceFormat::Climb, SourceFormat::QoqMed, SourceFormat::Mimic] {
        let err = convert_jsonl(&input, &out, &opts(format)).unwrap_err();
        match &err {
            DataError::Io { path, source } => {
                assert_eq!(path, &input);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected Io, got {other}"),
        }
        assert!(err.to_string().contains("nope/annotation_train.jsonl"), "{err}");
        assert!(!out.exists());
    }
}

#[test]
fn options_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("geom_train.jsonl");
    std::fs::write(&input, "").unwrap();
    let out = tmp.path().join("out");
    let o = ConvertOptions { frames_per_video: 0, ..opts(SourceFormat::QoqMed) };
    assert!(matches!(convert_jsonl(&input, &out, &o), Err(DataError::Config(m)) if m.contains("frames_per_video")));
    let o = ConvertOptions { max_bad_fraction: 1.5, ..opts(SourceFormat::QoqMed) };
    assert!(matches!(convert_jsonl(&input, &out, &o), Err(DataError::Config(m)) if m.contains("max_bad_fraction")));
    // An empty file converts to nothing.
    let report = convert_jsonl(&input, &out, &opts(SourceFormat::QoqMed)).unwrap();
    assert_eq!((report.lines, report.rows_written), (0, 0));
    assert!(report.files.is_empty());
    let err = "jsonl".parse::<SourceFormat>().unwrap_err().to_string();
    assert!(err.contains("climb, qoq-med, mimic"), "{err}");
    let d = ConvertOptions::default();
    assert_eq!(
        (d.format, d.frames_per_video, d.max_bad_fraction, d.split.as_deref()),
        (SourceFormat::Climb, 4, 0.01, None)
    );
}
