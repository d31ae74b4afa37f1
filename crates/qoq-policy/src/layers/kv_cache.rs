//! The decoding state: per-layer key/value caches in growing buffers, which keys are real,
//! and each row's next rope position.

use tch::Tensor;

/// One layer's cached keys and values: buffers `[B, kv_heads, capacity, head_dim]` of
/// which the first `len` positions are filled. Capacity doubles when full, so appending a
/// token costs amortised O(1) copies instead of re-concatenating the whole cache.
#[derive(Debug, Default)]
pub struct LayerCache {
    keys: Option<Tensor>,
    values: Option<Tensor>,
    len: i64,
    /// Keeps nothing: a training forward needs no cache, only the layer's keys and values.
    discard: bool,
}

impl LayerCache {
    /// A cache that keeps nothing: `append` hands back the new keys and values as they are.
    pub fn discarding() -> Self {
        Self { discard: true, ..Self::default() }
    }

    /// Append `k`, `v` `[B, kv, l, D]`; returns the filled keys and values.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        if self.discard {
            return (k.shallow_clone(), v.shallow_clone());
        }
        let l = k.size()[2];
        let needed = self.len + l;
        if k.requires_grad() || v.requires_grad() {
            // With autograd on (scoring for the policy gradient) the graph must see the
            // keys: concatenate instead of copying into the buffer in place.
            let join = |old: &Option<Tensor>, new: &Tensor| match old {
                Some(old) => Tensor::cat(&[&old.narrow(2, 0, self.len), new], 2),
                None => new.shallow_clone(),
            };
            let (keys, values) = (join(&self.keys, k), join(&self.values, v));
            self.keys = Some(keys.shallow_clone());
            self.values = Some(values.shallow_clone());
            self.len = needed;
            return (keys, values);
        }
        let capacity = self.keys.as_ref().map_or(0, |t| t.size()[2]);
        if needed > capacity {
            let new_capacity = needed.max(2 * capacity).max(needed + 64);
            let grow = |old: &Option<Tensor>, like: &Tensor| {
                let mut shape = like.size();
                shape[2] = new_capacity;
                let buffer = Tensor::zeros(shape.as_slice(), (like.kind(), like.device()));
                if let Some(old) = old {
                    buffer.narrow(2, 0, self.len).copy_(&old.narrow(2, 0, self.len));
                }
                buffer
            };
            self.keys = Some(grow(&self.keys, k));
            self.values = Some(grow(&self.values, v));
        }
        let (keys, values) =
            (self.keys.as_ref().expect("allocated above"), self.values.as_ref().expect("allocated above"));
        keys.narrow(2, self.len, l).copy_(k);
        values.narrow(2, self.len, l).copy_(v);
        self.len = needed;
        (keys.narrow(2, 0, needed), values.narrow(2, 0, needed))
    }

    /// The filled keys and values `[B, kv, len, D]`, if any.
    pub(crate) fn filled(&self) -> Option<(Tensor, Tensor)> {
        let (k, v) = (self.keys.as_ref()?, self.values.as_ref()?);
        Some((k.narrow(2, 0, self.len), v.narrow(2, 0, self.len)))
    }

    /// Rows `index` of the cache (for G samples per prompt).
    pub fn select_rows(&self, index: &Tensor) -> LayerCache {
        let pick = |t: &Option<Tensor>| t.as_ref().map(|t| t.index_select(0, index));
        LayerCache { keys: pick(&self.keys), values: pick(&self.values), len: self.len, discard: self.discard }
    }
}

/// Decoding state after a prefill: the KV cache, which keys are real (not padding), and
/// each row's next rope position.
#[derive(Debug)]
pub struct DecodeState {
    pub(crate) caches: Vec<LayerCache>,
    /// `[B, T]` true for real tokens.
    pub(crate) key_valid: Tensor,
    /// Next position per row (all three rope axes are equal after the prompt).
    pub(crate) next_position: Vec<i64>,
}

impl DecodeState {
    /// A state with empty caches for `layers` decoder layers.
    pub fn new(layers: usize, key_valid: Tensor, next_position: Vec<i64>) -> Self {
        Self { caches: (0..layers).map(|_| LayerCache::default()).collect(), key_valid, next_position }
    }

    /// Rows `index` of the state (e.g. each prompt's row repeated G times for G samples),
    /// so a prompt is encoded once however many responses are sampled from it.
    pub fn select_rows(&self, index: &[i64]) -> DecodeState {
        let device = self.key_valid.device();
        let idx = Tensor::from_slice(index).to_device(device);
        DecodeState {
            caches: self.caches.iter().map(|c| c.select_rows(&idx)).collect(),
            key_valid: self.key_valid.index_select(0, &idx),
            next_position: index.iter().map(|&i| self.next_position[i as usize]).collect(),
        }
    }

    /// Cached positions (prompt plus generated tokens, padding included).
    pub fn len(&self) -> i64 {
        self.key_valid.size()[1]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each row's next rope position.
    pub fn next_positions(&self) -> &[i64] {
        &self.next_position
    }

    /// Layer `i`'s cache.
    pub fn layer(&mut self, i: usize) -> &mut LayerCache {
        &mut self.caches[i]
    }
}
