//! The update's sharding hooks (`qoq_policy::gate`): a gate that really takes each unit's
//! parameters away outside its gather window, and each gradient away at its reduce, still
//! gets the plain update's gradients, so no parameter is used outside its window (tied
//! head, DeepStack, vision tower included); and a micro-batch makes exactly the calls of
//! an idle pass, so ranks with fewer micro-batches make the same collectives.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;

use common::{case, fixtures, inputs};

use qoq_policy::gate::{unit_of, ParamGate, Unit};
use qoq_policy::{
    forward_for_update, forward_for_update_gated, idle_update, load_policy, Policy, PolicyError, UpdateOptions,
};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Gather(Unit, bool),
    Release(Unit),
    Reduce(Unit),
}

/// Keeps each unit's values aside and its parameters empty unless gathered; collects the
/// gradients at each reduce.
struct TakingGate {
    params: Vec<(String, Unit, Tensor, Tensor)>,
    tied: bool,
    grads: RefCell<BTreeMap<String, Tensor>>,
    calls: RefCell<Vec<Call>>,
}

impl TakingGate {
    fn new(policy: &dyn Policy) -> Self {
        let vars = policy.var_store().variables();
        let tied = !vars.contains_key("lm_head.weight");
        let params = vars
            .into_iter()
            .map(|(n, t)| {
                let saved = t.detach().copy();
                let unit = unit_of(&n);
                t.shallow_clone().set_data(&Tensor::empty([0], (t.kind(), Device::Cpu)));
                (n, unit, t, saved)
            })
            .collect();
        Self { params, tied, grads: RefCell::default(), calls: RefCell::default() }
    }

    fn members(&self, unit: Unit) -> impl Iterator<Item = &(String, Unit, Tensor, Tensor)> {
        let with_input = unit == Unit::Head && self.tied;
        self.params.iter().filter(move |(_, u, _, _)| *u == unit || (with_input && *u == Unit::Input))
    }
}

impl ParamGate for TakingGate {
    fn gather(&self, unit: Unit, backward: bool) -> Result<(), PolicyError> {
        self.calls.borrow_mut().push(Call::Gather(unit, backward));
        for (_, _, t, saved) in self.members(unit) {
            t.shallow_clone().set_data(saved);
            let g = t.grad();
            if backward && g.defined() && g.numel() == 0 {
                g.shallow_clone().set_data(&saved.zeros_like());
            }
        }
        Ok(())
    }

    fn release(&self, unit: Unit) -> Result<(), PolicyError> {
        self.calls.borrow_mut().push(Call::Release(unit));
        self.take(unit);
        Ok(())
    }

    fn reduce(&self, unit: Unit) -> Result<(), PolicyError> {
        self.calls.borrow_mut().push(Call::Reduce(unit));
        for (name, _, t, _) in self.members(unit) {
            let g = t.grad();
            if g.defined() && g.numel() > 0 {
                let mut grads = self.grads.borrow_mut();
                let sum = match grads.remove(name) {
                    Some(s) => s + &g,
                    None => g.copy(),
                };
                grads.insert(name.clone(), sum);
                g.shallow_clone().set_data(&Tensor::empty([0], (g.kind(), Device::Cpu)));
            }
        }
        self.take(unit);
        Ok(())
    }
}

impl TakingGate {
    fn take(&self, unit: Unit) {
        for (_, _, t, _) in self.members(unit) {
            t.shallow_clone().set_data(&Tensor::empty([0], (t.kind(), Device::Cpu)));
        }
    }
}

/// Records the calls only.
#[derive(Default)]
struct RecordingGate(RefCell<Vec<Call>>);

impl ParamGate for RecordingGate {
    fn gather(&self, unit: Unit, backward: bool) -> Result<(), PolicyError> {
        self.0.borrow_mut().push(Call::Gather(unit, backward));
        Ok(())
    }
    fn release(&self, unit: Unit) -> Result<(), PolicyError> {
        self.0.borrow_mut().push(Call::Release(unit));
        Ok(())
    }
    fn reduce(&self, unit: Unit) -> Result<(), PolicyError> {
        self.0.borrow_mut().push(Call::Reduce(unit));
        Ok(())
    }
}

fn check(family: &str, checkpoint: &str, case_name: &str) {
    let dir = fixtures(family);
    let tensors = case(family, case_name);
    let inputs = inputs(&tensors);
    let rows = inputs.input_ids.unwrap().size()[0];
    let responses: Vec<Vec<i64>> =
        (0..rows).map(|i| (0..(4 + 3 * i)).map(|j| (7 * j + 11 * i + 3) % 97).collect()).collect();
    for recompute in [true, false] {
        let options = UpdateOptions { chunk_tokens: 4, recompute };
        let what = format!("{family}/{case_name}, recompute {recompute}");
        // The plain update's gradients.
        let policy = load_policy(&dir.join(checkpoint), Device::Cpu).unwrap();
        let forward = forward_for_update(policy.as_ref(), &inputs, &responses, 0.8, &options).unwrap();
        let weights = Tensor::linspace(0.5, 1.5, forward.logp.numel() as i64, (Kind::Float, Device::Cpu));
        let grad_logp = weights.view(forward.logp.size().as_slice());
        forward.backward(policy.as_ref(), &inputs, &grad_logp).unwrap();
        let plain: BTreeMap<String, Tensor> = policy
            .var_store()
            .variables()
            .into_iter()
            .filter(|(_, t)| t.grad().defined())
            .map(|(n, t)| (n, t.grad().copy()))
            .collect();
        // The same through a gate that takes the parameters away.
        let policy = load_policy(&dir.join(checkpoint), Device::Cpu).unwrap();
        let gate = TakingGate::new(policy.as_ref());
        let forward = forward_for_update_gated(policy.as_ref(), &inputs, &responses, 0.8, &options, &gate).unwrap();
        forward.backward_gated(policy.as_ref(), &inputs, &grad_logp, &gate).unwrap();
        let gated = gate.grads.borrow();
        assert_eq!(gated.keys().collect::<Vec<_>>(), plain.keys().collect::<Vec<_>>(), "{what}");
        for (name, g) in &plain {
            let d = (&gated[name] - g).abs().max().double_value(&[]);
            assert!(d <= 1e-6 * g.abs().max().double_value(&[]).max(1e-6), "{what}: {name} differs by {d}");
        }
        assert!(gate.params.iter().all(|(_, _, t, _)| t.numel() == 0), "{what}: parameters left gathered");
        // The calls of an idle pass are the micro-batch's.
        let idle = RecordingGate::default();
        idle_update(policy.text_model().layers.len(), &options, &idle).unwrap();
        assert_eq!(*idle.0.borrow(), *gate.calls.borrow(), "{what}");
    }
}

#[test]
fn qwen3_vl_deepstack_images() {
    check("policy", "tiny-untied", "two_images");
}

#[test]
fn qwen3_vl_tied_head() {
    check("policy", "tiny-tied", "batch_left_padded");
}

#[test]
fn qwen2_5_vl_video_tied() {
    check("qwen2_5_vl", "tiny-tied", "video");
}
