//! Vision inputs as tensors: `pixel_values` [sum of rows, 1536] f32 and `image_grid_thw`
//! [n, 3] i64, in the order the placeholders appear in the prompt.

use qoq_data::preprocess::VisionInput;
use tch::{Device, Kind, Tensor};

use crate::PolicyError;

/// The vision tower's inputs for a batch of images (or of videos).
#[derive(Debug)]
pub struct VisionBatch {
    pub pixel_values: Tensor,
    pub grid_thw: Tensor,
    /// Merged tokens each input occupies in the prompt.
    pub tokens_per_input: Vec<usize>,
}

impl VisionBatch {
    /// Concatenates `inputs` (merge size 2) onto `device`.
    pub fn new(inputs: &[VisionInput], device: Device) -> Result<Self, PolicyError> {
        let rows: usize = inputs.iter().map(VisionInput::rows).sum();
        let width = match inputs.first() {
            Some(i) => i.pixel_values.len() / i.rows().max(1),
            None => 0,
        };
        let mut values = Vec::with_capacity(rows * width);
        let mut grid = Vec::with_capacity(inputs.len() * 3);
        for input in inputs {
            let w = input.pixel_values.len() / input.rows().max(1);
            if w != width {
                return Err(PolicyError::RowWidth(width, w));
            }
            values.extend_from_slice(&input.pixel_values);
            grid.extend(input.grid_thw.iter().map(|&v| v as i64));
        }
        let pixel_values = Tensor::f_from_slice(&values)?.f_view([rows as i64, width as i64])?.f_to_device(device)?;
        let grid_thw = Tensor::f_from_slice(&grid)?
            .f_view([inputs.len() as i64, 3])?
            .f_to_kind(Kind::Int64)?
            .f_to_device(device)?;
        Ok(Self { pixel_values, grid_thw, tokens_per_input: inputs.iter().map(|i| i.num_tokens(2)).collect() })
    }

    /// Errors unless `input_ids` holds exactly as many `token_id` tokens as this batch fills.
    pub fn check_placeholders(
        &self,
        sample: &str,
        input_ids: &[i64],
        token_id: i64,
        token: &str,
    ) -> Result<(), PolicyError> {
        let found = count_placeholders(input_ids, token_id);
        let expected: usize = self.tokens_per_input.iter().sum();
        if found != expected {
            return Err(PolicyError::PlaceholderMismatch {
                sample: sample.into(),
                token: token.into(),
                found,
                expected,
            });
        }
        Ok(())
    }
}

/// Occurrences of `token_id` in `input_ids`.
pub fn count_placeholders(input_ids: &[i64], token_id: i64) -> usize {
    input_ids.iter().filter(|&&t| t == token_id).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use qoq_data::preprocess::{ImageProcessor, ImageProcessorConfig};

    fn inputs() -> Vec<VisionInput> {
        let proc = ImageProcessor::new(ImageProcessorConfig { min_pixels: 0, ..Default::default() }).unwrap();
        let a = image::RgbImage::from_fn(64, 32, |x, y| image::Rgb([x as u8, y as u8, 200]));
        let b = image::RgbImage::from_pixel(32, 96, image::Rgb([255, 0, 9]));
        vec![proc.preprocess_image(&a).unwrap(), proc.preprocess_image(&b).unwrap()]
    }

    #[test]
    fn tensors_hold_the_preprocessed_values_in_order() {
        let inputs = inputs();
        let batch = VisionBatch::new(&inputs, Device::Cpu).unwrap();
        assert_eq!(batch.pixel_values.size(), vec![8 + 12, 1536]);
        assert_eq!(batch.pixel_values.kind(), Kind::Float);
        assert_eq!(Vec::<i64>::try_from(batch.grid_thw.flatten(0, 1)).unwrap(), vec![1, 2, 4, 1, 6, 2]);
        let flat = Vec::<f32>::try_from(batch.pixel_values.flatten(0, 1)).unwrap();
        assert_eq!(flat, [inputs[0].pixel_values.clone(), inputs[1].pixel_values.clone()].concat());
        assert_eq!(batch.tokens_per_input, vec![2, 3]);
    }

    #[test]
    fn placeholder_count_must_match_the_media() {
        let batch = VisionBatch::new(&inputs(), Device::Cpu).unwrap();
        let pad = 151655;
        let ok: Vec<i64> = [vec![1, 2], vec![pad; 5], vec![3]].concat();
        batch.check_placeholders("s1", &ok, pad, "<|image_pad|>").unwrap();
        let short: Vec<i64> = [vec![1], vec![pad; 4]].concat();
        let err = batch.check_placeholders("s1", &short, pad, "<|image_pad|>").unwrap_err();
        assert!(err.to_string().contains("sample s1: the prompt has 4"), "{err}");
    }
}
