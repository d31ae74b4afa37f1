//! Hooks for a trainer that keeps parameters sharded: the update's forward and backward
//! ([`crate::forward_for_update_gated`]) walk the model one [`Unit`] at a time and tell a
//! [`ParamGate`] when a unit's parameters must be whole, when they may go, and when its
//! gradients of the micro-batch are complete.
//!
//! In order, with recomputation: the forward gathers and releases Input, Layer(0), ...,
//! Layer(n - 1), Head; the backward gathers Head, Layer(n - 1), ..., Layer(0), Input, and
//! after each unit's backward calls [`ParamGate::reduce`]. Without recomputation the whole
//! graph lives through the backward, so every unit is gathered before the forward and
//! reduced after the backward.

use crate::PolicyError;

/// A part of the model whose parameters are gathered and reduced together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    /// Token embeddings, the vision tower and its mergers.
    Input,
    /// Decoder layer `i` (`model.language_model.layers.i.*`).
    Layer(usize),
    /// The final norm and `lm_head` (with tied embeddings the head also needs Input's
    /// `embed_tokens`: a gate resolves that).
    Head,
}

/// The unit a parameter belongs to, from its name (the same in both families).
pub fn unit_of(name: &str) -> Unit {
    if let Some(rest) = name.strip_prefix("model.language_model.layers.") {
        if let Some(Ok(i)) = rest.split('.').next().map(str::parse::<usize>) {
            return Unit::Layer(i);
        }
    }
    if name.starts_with("model.language_model.norm.") || name.starts_with("lm_head.") {
        return Unit::Head;
    }
    Unit::Input
}

/// What a sharding trainer does around each unit of an update. Every call of one
/// micro-batch happens on every rank in the same order, so a gate may run collectives.
pub trait ParamGate {
    /// Before the unit's forward or recomputation: its parameters must be whole.
    /// `backward`: a backward through them follows, so their gradients must be ready to
    /// accumulate into.
    fn gather(&self, unit: Unit, backward: bool) -> Result<(), PolicyError>;
    /// After a forward without autograd: its parameters may be freed.
    fn release(&self, unit: Unit) -> Result<(), PolicyError>;
    /// After the unit's backward: its parameters' gradients of this micro-batch are
    /// complete (a tied embedding gets a second part later, from Input); they may be
    /// reduced and freed, and the parameters with them.
    fn reduce(&self, unit: Unit) -> Result<(), PolicyError>;
}

/// The gate of a model kept whole: does nothing.
pub struct WholeModel;

impl ParamGate for WholeModel {
    fn gather(&self, _: Unit, _: bool) -> Result<(), PolicyError> {
        Ok(())
    }
    fn release(&self, _: Unit) -> Result<(), PolicyError> {
        Ok(())
    }
    fn reduce(&self, _: Unit) -> Result<(), PolicyError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_of_both_families_names() {
        assert_eq!(unit_of("model.language_model.layers.12.mlp.up_proj.weight"), Unit::Layer(12));
        assert_eq!(unit_of("model.language_model.layers.0.input_layernorm.weight"), Unit::Layer(0));
        assert_eq!(unit_of("model.language_model.norm.weight"), Unit::Head);
        assert_eq!(unit_of("lm_head.weight"), Unit::Head);
        assert_eq!(unit_of("model.language_model.embed_tokens.weight"), Unit::Input);
        assert_eq!(unit_of("model.visual.blocks.3.attn.qkv.weight"), Unit::Input);
        assert_eq!(unit_of("model.visual.merger.norm.weight"), Unit::Input);
    }
}
