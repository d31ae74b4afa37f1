//! Clinical domains and how a sample's domain and dataset follow from its media path.
//!
//! CLIMB and the QoQ-Med training files lay media out as `<domain folder>/<dataset>/...`
//! relative to the data root (e.g. `chest_xray/vindr/train/jpegs/x.jpg`, and
//! `mammo/vindr/...`: the bare dataset name is not unique, the pair is). The original
//! code took path components 0 and 1; we do the same and map the folder to a canonical
//! domain name through [`DOMAIN_FOLDERS`], the one table for it.

/// Canonical domain names used in shards, configs and per-domain metrics.
pub const DOMAINS: [&str; 15] = [
    "chest_xray",
    "mammography",
    "dermoscopy",
    "ct",
    "mri",
    "ultrasound",
    "fundus",
    "pathology",
    "ecg",
    "eeg",
    "ehr",
    "endoscopy",
    "genomics",
    "molecular",
    "imu",
];

/// CLIMB / QoQ-Med folder name (first path component) -> canonical domain.
pub const DOMAIN_FOLDERS: [(&str, &str); 19] = [
    ("chest_xray", "chest_xray"),
    ("cxr", "chest_xray"),
    ("mammo", "mammography"),
    ("mammography", "mammography"),
    ("derm", "dermoscopy"),
    ("dermatology", "dermoscopy"),
    ("dermoscopy", "dermoscopy"),
    ("ct", "ct"),
    ("mri", "mri"),
    ("ultrasound", "ultrasound"),
    ("fundus", "fundus"),
    ("pathology", "pathology"),
    ("ecg", "ecg"),
    ("eeg", "eeg"),
    ("multimodal", "ehr"),
    ("mimic_qa", "ehr"),
    ("endoscopic", "endoscopy"),
    ("genom", "genomics"),
    ("molecule", "molecular"),
];

/// The canonical domain for a folder name (case-insensitive), if known.
pub fn domain_of_folder(folder: &str) -> Option<&'static str> {
    let folder = folder.to_ascii_lowercase();
    DOMAIN_FOLDERS
        .iter()
        .find(|(f, _)| *f == folder)
        .map(|(_, d)| *d)
        .or_else(|| DOMAINS.iter().find(|d| **d == folder).copied())
}

/// `(domain, dataset)` from a media path relative to the data root, e.g.
/// `chest_xray/vindr/train/x.jpg` -> `("chest_xray", "vindr")`. A leading `./` or
/// `high_modality/` (the original root folder) is ignored.
pub fn domain_and_dataset_from_path(path: &str) -> Option<(&'static str, String)> {
    let mut parts = path.split('/').filter(|p| !p.is_empty() && *p != ".").skip_while(|p| *p == "high_modality");
    let folder = parts.next()?;
    let dataset = parts.next()?;
    // A path with only two components is `<domain>/<file>`: no dataset folder.
    parts.next()?;
    Some((domain_of_folder(folder)?, dataset.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_map_to_canonical_domains() {
        assert_eq!(domain_and_dataset_from_path("mammo/vindr/jpegs/a/b.jpg"), Some(("mammography", "vindr".into())));
        assert_eq!(
            domain_and_dataset_from_path("chest_xray/vindr/train/jpegs/x.jpg"),
            Some(("chest_xray", "vindr".into()))
        );
        assert_eq!(
            domain_and_dataset_from_path("high_modality/derm/ham10000/x.jpg"),
            Some(("dermoscopy", "ham10000".into()))
        );
        assert_eq!(
            domain_and_dataset_from_path("./fundus/Messidor-2/IMAGES/x.png"),
            Some(("fundus", "Messidor-2".into()))
        );
        assert_eq!(domain_and_dataset_from_path("CT/kits23/dataset/case/imaging"), Some(("ct", "kits23".into())));
    }

    #[test]
    fn unknown_or_short_paths_give_none() {
        assert_eq!(domain_and_dataset_from_path("images/x.jpg"), None);
        assert_eq!(domain_and_dataset_from_path("chest_xray/x.jpg"), None);
        assert_eq!(domain_and_dataset_from_path(""), None);
    }

    #[test]
    fn every_folder_maps_into_domains() {
        for (_, d) in DOMAIN_FOLDERS {
            assert!(DOMAINS.contains(&d), "{d}");
        }
    }
}
