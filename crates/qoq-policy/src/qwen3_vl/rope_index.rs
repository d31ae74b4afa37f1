//! Qwen3-VL's multimodal rope positions (transformers' `Qwen3VLModel.get_rope_index`).

use crate::layers::rope::{Grid, RopeIndex};
use crate::PolicyError;

/// Positions for a batch, as transformers' `get_rope_index`: runs of image (video) tokens
/// take the next image (video frame) grid and get 3-D positions `(cur, cur + row, cur + col)`
/// over the merged grid; the running position then advances by `max(h, w) / merge`. Text
/// tokens advance it by one. Videos are split into their frames; a run of video tokens takes
/// as many frames as it holds.
pub fn rope_index(
    input_ids: &[Vec<i64>],
    attention_mask: &[Vec<i64>],
    image_grids: &[Grid],
    video_grids: &[Grid],
    image_token_id: i64,
    video_token_id: i64,
    merge: i64,
) -> Result<Vec<RopeIndex>, PolicyError> {
    let mut images = image_grids.iter().copied();
    let mut frames = video_grids.iter().flat_map(|g| std::iter::repeat_n([1, g[1], g[2]], g[0].max(0) as usize));
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
            let modality = if id == image_token_id {
                1
            } else if id == video_token_id {
                2
            } else {
                0
            };
            if modality == 0 {
                for axis in &mut positions {
                    axis[kept[k]] = cur;
                }
                max_pos = max_pos.max(cur);
                cur += 1;
                k += 1;
                continue;
            }
            let run_end = (k..kept.len()).find(|&j| ids[kept[j]] != id).unwrap_or(kept.len());
            while k < run_end {
                let grid = if modality == 1 { images.next() } else { frames.next() };
                let [_, h, w] = grid.ok_or_else(|| {
                    PolicyError::Input(format!(
                        "row {row}: more {} placeholder tokens than {} grids",
                        if modality == 1 { "image" } else { "video" },
                        if modality == 1 { "image" } else { "video frame" }
                    ))
                })?;
                let (gh, gw) = (h / merge, w / merge);
                if k + (gh * gw) as usize > run_end {
                    return Err(PolicyError::Input(format!(
                        "row {row}: a run of {} placeholder tokens does not fill its {gh}x{gw} grid",
                        run_end - k
                    )));
                }
                for r in 0..gh {
                    for c in 0..gw {
                        let at = kept[k];
                        positions[0][at] = cur;
                        positions[1][at] = cur + r;
                        positions[2][at] = cur + c;
                        k += 1;
                    }
                }
                max_pos = max_pos.max(cur + (gh - 1).max(gw - 1).max(0));
                cur += gh.max(gw);
            }
        }
        out.push(RopeIndex { positions, delta: max_pos + 1 - kept.len() as i64 });
    }
    if images.next().is_some() || frames.next().is_some() {
        return Err(PolicyError::Input("more image / video grids than placeholder runs in the prompts".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_index_follows_the_reference_rules() {
        // text(2) + image 4x4 patches (2x2 merged) + text(1); one left pad.
        let ids = vec![vec![0, 5, 6, 9, 9, 9, 9, 7]];
        let mask = vec![vec![0, 1, 1, 1, 1, 1, 1, 1]];
        let r = rope_index(&ids, &mask, &[[1, 4, 4]], &[], 9, 10, 2).unwrap();
        assert_eq!(r[0].positions[0], [0, 0, 1, 2, 2, 2, 2, 4]);
        assert_eq!(r[0].positions[1], [0, 0, 1, 2, 2, 3, 3, 4]);
        assert_eq!(r[0].positions[2], [0, 0, 1, 2, 3, 2, 3, 4]);
        assert_eq!(r[0].delta, 5 - 7);
        let err = rope_index(&ids, &mask, &[], &[], 9, 10, 2).unwrap_err().to_string();
        assert!(err.contains("more image placeholder tokens than image grids"), "{err}");
    }
}
