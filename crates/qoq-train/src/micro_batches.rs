//! Which sequences share a forward pass: by count (`micro_batch` rows, in order), or under
//! a token budget (`micro_batch_tokens`): sorted longest first and packed greedily, each
//! micro-batch costing rows x (longest prompt + longest response), padding included. A
//! sequence longer than the budget goes alone. The loss normaliser is the optimizer batch's
//! (known before packing), so how sequences are packed changes nothing but float rounding.

/// A packing: micro-batches as indices into the sequences, and the token counts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Packing {
    pub batches: Vec<Vec<usize>>,
    /// Positions the forwards compute, padding included.
    pub padded_tokens: usize,
    /// Real (prompt + response) tokens.
    pub real_tokens: usize,
}

impl Packing {
    /// Sequences `(prompt tokens, response tokens)` into micro-batches of at most
    /// `max_rows` rows and, with a budget, at most `budget` padded tokens.
    pub fn new(lengths: &[(usize, usize)], max_rows: usize, budget: Option<usize>) -> Self {
        let max_rows = max_rows.max(1);
        let batches: Vec<Vec<usize>> = match budget {
            None => (0..lengths.len()).collect::<Vec<_>>().chunks(max_rows).map(<[usize]>::to_vec).collect(),
            Some(budget) => {
                let mut order: Vec<usize> = (0..lengths.len()).collect();
                // Longest first (stable): a batch's padded width is set by its first row.
                order.sort_by_key(|&i| std::cmp::Reverse(lengths[i].0 + lengths[i].1));
                let mut batches: Vec<Vec<usize>> = Vec::new();
                let mut current: Vec<usize> = Vec::new();
                for i in order {
                    let mut trial = current.clone();
                    trial.push(i);
                    if !current.is_empty() && (trial.len() > max_rows || cost(lengths, &trial) > budget) {
                        batches.push(std::mem::take(&mut current));
                        current.push(i);
                    } else {
                        current = trial;
                    }
                }
                if !current.is_empty() {
                    batches.push(current);
                }
                batches
            }
        };
        let padded_tokens = batches.iter().map(|b| cost(lengths, b)).sum();
        let real_tokens = lengths.iter().map(|(p, r)| p + r).sum();
        Self { batches, padded_tokens, real_tokens }
    }

    /// The share of computed positions that are padding.
    #[cfg(test)]
    fn padding_fraction(&self) -> f64 {
        padding_fraction(self.padded_tokens as f64, self.real_tokens as f64)
    }
}

/// The share of `padded` computed positions that are not `real` tokens (0 when none ran);
/// the trainer applies it to token counts summed over the ranks.
pub(crate) fn padding_fraction(padded: f64, real: f64) -> f64 {
    if padded > 0.0 {
        1.0 - real / padded
    } else {
        0.0
    }
}

/// Padded positions of one micro-batch: rows x (longest prompt + longest response), as the
/// prompt batch pads prompts on the left and responses on the right.
fn cost(lengths: &[(usize, usize)], batch: &[usize]) -> usize {
    let prompt = batch.iter().map(|&i| lengths[i].0).max().unwrap_or(0);
    let response = batch.iter().map(|&i| lengths[i].1).max().unwrap_or(0);
    batch.len() * (prompt + response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_count_keeps_the_order() {
        let p = Packing::new(&[(1, 1); 5], 2, None);
        assert_eq!(p.batches, vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert_eq!(p.padding_fraction(), 0.0);
    }

    #[test]
    fn a_budget_packs_longest_first_and_counts_padding() {
        // Totals 10, 3, 8, 2, 9; budget 20 tokens.
        let lengths = [(4, 6), (2, 1), (4, 4), (1, 1), (5, 4)];
        let p = Packing::new(&lengths, 8, Some(20));
        // [0, 4] would cost 2 x (5 + 6) = 22: 0 alone; [4, 2] 2 x 9; [4, 2, 1] 27: 1 starts anew.
        assert_eq!(p.batches, vec![vec![0], vec![4, 2], vec![1, 3]]);
        for b in &p.batches {
            assert!(cost(&lengths, b) <= 20);
        }
        let mut seen: Vec<usize> = p.batches.concat();
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2, 3, 4], "every sequence exactly once");
        assert_eq!((p.real_tokens, p.padded_tokens), (32, 10 + 18 + 6));
        assert!((p.padding_fraction() - (1.0 - 32.0 / 34.0)).abs() < 1e-12);
    }

    #[test]
    fn a_sequence_over_the_budget_goes_alone_and_rows_are_capped() {
        let p = Packing::new(&[(50, 50), (1, 1), (1, 1), (1, 1)], 2, Some(10));
        assert_eq!(p.batches, vec![vec![0], vec![1, 2], vec![3]]);
    }
}
