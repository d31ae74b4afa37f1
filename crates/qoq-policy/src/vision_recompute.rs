//! The vision tower of an update, recomputed block by block (`update.rs`, with
//! `recompute`): the forward runs without autograd and keeps each block's input (`[N, C]`
//! patches, small next to a block's attention and MLP activations); the backward goes
//! merger, then blocks last to first, recomputing each from its input and backpropagating
//! its output's gradient plus, at a DeepStack block, its tapped feature's; then the patch
//! embedding. Only one block's graph is alive at a time.

use tch::{Kind, Tensor};

use crate::layers::rope::Grid;
use crate::policy::{VisionPass, VisionTower};

/// One media's vision pass, as the backward needs it.
pub(crate) struct VisionTape {
    pixels: Tensor,
    grids: Vec<Grid>,
    pass: VisionPass,
    /// Each block's input.
    inputs: Vec<Tensor>,
    /// The last block's output (the merger's input).
    last: Tensor,
    /// The merged tokens and tapped features the forward gave (no graph).
    pub merged: Tensor,
    pub taps: Vec<Tensor>,
    /// The block each tap comes from.
    tap_blocks: Vec<usize>,
}

/// The tower's forward without a graph, keeping what [`backward`] recomputes from.
pub(crate) fn forward(tower: &dyn VisionTower, pixels: &Tensor, grids: &[Grid]) -> VisionTape {
    tch::no_grad(|| {
        let pass = tower.prepare(pixels, grids);
        let mut x = pass.x.shallow_clone();
        let (mut inputs, mut taps, mut tap_blocks) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..tower.num_blocks() {
            let (y, tap) = tower.block(i, &x, &pass);
            inputs.push(x);
            if let Some(t) = tap {
                taps.push(t);
                tap_blocks.push(i);
            }
            x = y;
        }
        let merged = tower.merge(&x, &pass);
        VisionTape {
            pixels: pixels.shallow_clone(),
            grids: grids.to_vec(),
            pass,
            inputs,
            last: x,
            merged,
            taps,
            tap_blocks,
        }
    })
}

/// Accumulates the tower's parameter gradients for gradients `merged_grad` of the merged
/// tokens and `tap_grads[k]` of tap k (None: no gradient reached it).
pub(crate) fn backward(
    tower: &dyn VisionTower,
    tape: VisionTape,
    merged_grad: Option<&Tensor>,
    tap_grads: &[Option<Tensor>],
) {
    let VisionTape { pixels, grids, pass, mut inputs, last, tap_blocks, .. } = tape;
    let last = last.detach().set_requires_grad(true);
    match merged_grad {
        Some(g) => (tower.merge(&last, &pass) * g).sum(Kind::Float).backward(),
        None => return,
    }
    let mut grad = last.grad();
    for i in (0..inputs.len()).rev() {
        // Popped: each input is freed once its block is done.
        let x = inputs.pop().expect("one input per block").detach().set_requires_grad(true);
        let (y, tap) = tower.block(i, &x, &pass);
        let out = (y * &grad).sum(Kind::Float);
        let tap_grad = tap_blocks.iter().position(|&b| b == i).and_then(|k| tap_grads.get(k)).and_then(Option::as_ref);
        let loss = match (tap, tap_grad) {
            (Some(t), Some(tg)) => out + (t * tg).sum(Kind::Float),
            _ => out,
        };
        loss.backward();
        grad = x.grad();
    }
    // The patch embedding (and learned positions), recomputed with autograd.
    let again = tower.prepare(&pixels, &grids);
    if again.x.requires_grad() {
        (again.x * grad).sum(Kind::Float).backward();
    }
}
