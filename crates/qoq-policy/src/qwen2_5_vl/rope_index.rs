//! Qwen2.5-VL's multimodal rope positions, as transformers 5.24's `get_rope_index`.
//!
//! Over a row's real tokens: a text token takes `cur` on all three axes and advances it by
//! one. A run of image (video) tokens takes the next image (video) grid `(t, h, w)` and
//! gives, over the merged `(t, h/m, w/m)` grid in raster order, `T = cur + trunc(i * dt)`,
//! `H = cur + row`, `W = cur + col`, where `dt` is 1 for images and
//! `tokens_per_second * second_per_grid_t` (in f32) for videos; then `cur += max(h, w) / m`
//! (the temporal extent does not advance it). `delta = max(position) + 1 - real tokens`.

use crate::layers::rope::{Grid, RopeIndex};
use crate::PolicyError;

/// The ids and media of a batch, for [`rope_index`].
#[derive(Debug, Clone, Copy)]
pub struct RopeInputs<'a> {
    pub image_grids: &'a [Grid],
    pub video_grids: &'a [Grid],
    /// Seconds per temporal patch of each video; 1 for every video when empty.
    pub seconds_per_grid: &'a [f64],
    pub image_token_id: i64,
    pub video_token_id: i64,
    pub merge: i64,
    pub tokens_per_second: f64,
}

/// Positions for a batch: `input_ids` and `attention_mask` rows (mask 0: padding, position 0).
pub fn rope_index(
    input_ids: &[Vec<i64>],
    attention_mask: &[Vec<i64>],
    m: &RopeInputs<'_>,
) -> Result<Vec<RopeIndex>, PolicyError> {
    let mut images = m.image_grids.iter().copied();
    let mut videos = m.video_grids.iter().copied().enumerate();
    let mut out = Vec::with_capacity(input_ids.len());
    for (row, (ids, mask)) in input_ids.iter().zip(attention_mask).enumerate() {
        let len = ids.len();
        let mut positions = [vec![0i64; len], vec![0i64; len], vec![0i64; len]];
        let kept: Vec<usize> = (0..len).filter(|&i| mask[i] != 0).collect();
        let mut cur = 0i64;
        let mut max_pos = -1i64;
        let mut k = 0;
        while k < kept.len() {
            let id = ids[kept[k]];
            let is_image = id == m.image_token_id;
            if !is_image && id != m.video_token_id {
                for axis in &mut positions {
                    axis[kept[k]] = cur;
                }
                max_pos = max_pos.max(cur);
                cur += 1;
                k += 1;
                continue;
            }
            let what = if is_image { "image" } else { "video" };
            let run_end = (k..kept.len()).find(|&j| ids[kept[j]] != id).unwrap_or(kept.len());
            while k < run_end {
                let (grid, interval) = if is_image {
                    (images.next(), 1.0f32)
                } else {
                    match videos.next() {
                        Some((v, g)) => (
                            Some(g),
                            m.tokens_per_second as f32 * m.seconds_per_grid.get(v).copied().unwrap_or(1.0) as f32,
                        ),
                        None => (None, 1.0),
                    }
                };
                let [t, h, w] = grid.ok_or_else(|| {
                    PolicyError::Input(format!("row {row}: more {what} placeholder tokens than {what} grids"))
                })?;
                let (gh, gw) = (h / m.merge, w / m.merge);
                if k + (t * gh * gw) as usize > run_end {
                    return Err(PolicyError::Input(format!(
                        "row {row}: a run of {} {what} placeholder tokens does not fill its {t}x{gh}x{gw} grid",
                        run_end - k
                    )));
                }
                for f in 0..t {
                    let temporal = cur + (f as f32 * interval) as i64;
                    for r in 0..gh {
                        for c in 0..gw {
                            let at = kept[k];
                            positions[0][at] = temporal;
                            positions[1][at] = cur + r;
                            positions[2][at] = cur + c;
                            max_pos = max_pos.max(temporal).max(cur + r).max(cur + c);
                            k += 1;
                        }
                    }
                }
                cur += gh.max(gw);
            }
        }
        out.push(RopeIndex { positions, delta: max_pos + 1 - kept.len() as i64 });
    }
    if images.next().is_some() || videos.next().is_some() {
        return Err(PolicyError::Input("more image / video grids than placeholder runs in the prompts".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(images: &'a [Grid], videos: &'a [Grid], spg: &'a [f64]) -> RopeInputs<'a> {
        RopeInputs {
            image_grids: images,
            video_grids: videos,
            seconds_per_grid: spg,
            image_token_id: 9,
            video_token_id: 10,
            merge: 2,
            tokens_per_second: 2.0,
        }
    }

    #[test]
    fn video_time_is_scaled_and_does_not_advance_the_text() {
        // text, a 2x4x4 video (2 frames of 2x2 merged tokens), text; 0.75 s per grid -> dt 1.5.
        let ids = vec![[vec![5], vec![10; 8], vec![6]].concat()];
        let mask = vec![vec![1; 10]];
        let r = rope_index(&ids, &mask, &inputs(&[], &[[2, 4, 4]], &[0.75])).unwrap();
        assert_eq!(r[0].positions[0], [0, 1, 1, 1, 1, 2, 2, 2, 2, 3]);
        assert_eq!(r[0].positions[1], [0, 1, 1, 2, 2, 1, 1, 2, 2, 3]);
        assert_eq!(r[0].positions[2], [0, 1, 2, 1, 2, 1, 2, 1, 2, 3]);
        assert_eq!(r[0].delta, 4 - 10);
    }

    #[test]
    fn missing_grids_are_named() {
        let ids = vec![vec![5, 9, 9, 9, 9]];
        let err = rope_index(&ids, &[vec![1; 5]], &inputs(&[], &[], &[])).unwrap_err().to_string();
        assert!(err.contains("more image placeholder tokens than image grids"), "{err}");
    }
}
