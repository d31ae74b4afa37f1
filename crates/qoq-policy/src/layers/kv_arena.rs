//! The rollout engine's KV cache: a fixed number of sequence slots, allocated once.
//!
//! Each layer holds keys and values `[slots, kv_heads, capacity, head_dim]`. A slot's
//! tokens sit at positions `0..len` with no padding (a prompt's rope positions travel with
//! its keys, so where they sit does not matter). The live slots are always `0..n`: the
//! engine moves a live slot into a finished one's place, so a decode step reads a view of
//! the arena, never a gathered copy.

use tch::{Device, Kind, Tensor};

use super::additive_mask;
use super::kv_cache::DecodeState;
use crate::PolicyError;

/// Every layer's keys and values for a fixed set of slots.
#[derive(Debug)]
pub struct SlotArena {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    lens: Vec<i64>,
    kv_heads: i64,
    capacity: i64,
}

/// The write positions and mask of one decode step over slots `0..n`.
#[derive(Debug)]
pub struct ArenaStep {
    slot_index: Tensor,
    head_index: Tensor,
    write_at: Tensor,
    /// Keys read: the longest live slot's length.
    read_len: i64,
    /// Additive `[n, 1, 1, read_len]`: each slot sees its own tokens only.
    pub mask: Tensor,
}

/// One layer of the arena during a step (what [`crate::layers::attention::Attention`] writes to
/// and reads from).
#[derive(Debug, Clone, Copy)]
pub struct SlotView<'a> {
    keys: &'a Tensor,
    values: &'a Tensor,
    step: &'a ArenaStep,
}

impl SlotView<'_> {
    /// Writes the step's keys and values `[n, kv, 1, D]`; returns every live slot's
    /// `[n, kv, read_len, D]` (a view of the arena).
    pub fn write(&self, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let s = self.step;
        let n = k.size()[0];
        let indices =
            [Some(s.slot_index.shallow_clone()), Some(s.head_index.shallow_clone()), Some(s.write_at.shallow_clone())];
        let put = |buffer: &Tensor, new: &Tensor| {
            let mut buffer = buffer.shallow_clone();
            let _ = buffer.index_put_(&indices, &new.squeeze_dim(2).to_kind(buffer.kind()), false);
            buffer.narrow(0, 0, n).narrow(2, 0, s.read_len)
        };
        (put(self.keys, k), put(self.values, v))
    }
}

impl SlotArena {
    /// Bytes one slot of `capacity` tokens takes over `layers` layers.
    pub fn bytes_per_slot(layers: usize, kv_heads: i64, head_dim: i64, capacity: i64, kind: Kind) -> u64 {
        2 * layers as u64 * (kv_heads * head_dim * capacity) as u64 * kind.elt_size_in_bytes() as u64
    }

    /// Zeroed buffers for `slots` sequences of up to `capacity` tokens.
    pub fn new(
        layers: usize,
        slots: usize,
        (kv_heads, head_dim): (i64, i64),
        capacity: i64,
        kind: Kind,
        device: Device,
    ) -> Result<Self, PolicyError> {
        let shape = [slots as i64, kv_heads, capacity, head_dim];
        let buffer = || Tensor::f_zeros(shape, (kind, device));
        Ok(Self {
            keys: (0..layers).map(|_| buffer()).collect::<Result<_, _>>()?,
            values: (0..layers).map(|_| buffer()).collect::<Result<_, _>>()?,
            lens: vec![0; slots],
            kv_heads,
            capacity,
        })
    }

    /// Slot `slot` := row `row` of a prefill's `state`, its last `len` (non-padding) keys.
    pub fn load(&mut self, slot: usize, state: &DecodeState, row: i64, len: i64) -> Result<(), PolicyError> {
        if len > self.capacity {
            return Err(PolicyError::Input(format!(
                "a prompt of {len} tokens does not fit the rollout slots' {} tokens",
                self.capacity
            )));
        }
        for (i, (keys, values)) in self.keys.iter().zip(&self.values).enumerate() {
            let (k, v) = state.caches[i].filled().ok_or_else(|| PolicyError::Input("prefill left no cache".into()))?;
            let total = k.size()[2];
            let take = |t: &Tensor| t.get(row).narrow(1, total - len, len);
            keys.get(slot as i64).narrow(1, 0, len).copy_(&take(&k));
            values.get(slot as i64).narrow(1, 0, len).copy_(&take(&v));
        }
        self.lens[slot] = len;
        Ok(())
    }

    /// Slot `to` := slot `from` (a live slot moved into a finished one's place).
    pub fn move_slot(&mut self, from: usize, to: usize) {
        let len = self.lens[from];
        for buffer in self.keys.iter().chain(&self.values) {
            buffer.get(to as i64).narrow(1, 0, len).copy_(&buffer.get(from as i64).narrow(1, 0, len));
        }
        self.lens[to] = len;
    }

    /// Marks slots `from..` empty.
    pub fn truncate(&mut self, from: usize) {
        self.lens[from..].fill(0);
    }

    /// The next decode step over slots `0..n`: one new token each, written at its length.
    pub fn step(&mut self, n: usize) -> Result<ArenaStep, PolicyError> {
        let device = self.keys.first().map_or(Device::Cpu, Tensor::device);
        let kind = self.keys.first().map_or(Kind::Float, Tensor::kind);
        let lens = &mut self.lens[..n];
        if let Some(full) = lens.iter().position(|&l| l >= self.capacity) {
            return Err(PolicyError::Input(format!("rollout slot {full} is full ({} tokens)", self.capacity)));
        }
        let write_at = Tensor::from_slice(lens).to_device(device).view([n as i64, 1]);
        for l in lens.iter_mut() {
            *l += 1;
        }
        let read_len = lens.iter().copied().max().unwrap_or(0);
        let filled = Tensor::from_slice(lens).to_device(device).view([n as i64, 1]);
        let allowed = Tensor::arange(read_len, (Kind::Int64, device)).view([1, read_len]).lt_tensor(&filled);
        Ok(ArenaStep {
            slot_index: Tensor::arange(n as i64, (Kind::Int64, device)).view([n as i64, 1]),
            head_index: Tensor::arange(self.kv_heads, (Kind::Int64, device)).view([1, self.kv_heads]),
            write_at,
            read_len,
            mask: additive_mask(&allowed.unsqueeze(1), kind),
        })
    }

    /// Layer `layer` during `step`.
    pub fn view<'a>(&'a self, layer: usize, step: &'a ArenaStep) -> SlotView<'a> {
        SlotView { keys: &self.keys[layer], values: &self.values[layer], step }
    }
}
