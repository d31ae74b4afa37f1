"""Mean seconds per SFT step and per RL step of a run, from its TensorBoard events
(timing_s/step), skipping the first step of each phase (warm-up)."""
import glob
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

acc = EventAccumulator(glob.glob(sys.argv[1] + "/tensorboard/*")[0], size_guidance={"scalars": 0})
acc.Reload()
steps = {e.step: e.value for e in acc.Scalars("timing_s/step")}
rl = {e.step for e in acc.Scalars("reward/overall")} if "reward/overall" in acc.Tags()["scalars"] else set()
sft = sorted(s for s in steps if s not in rl)[1:]
rl = sorted(rl)[1:]
mean = lambda xs: sum(steps[s] for s in xs) / max(len(xs), 1)
print(f"sft_step_s {mean(sft):.3f} rl_step_s {mean(rl):.3f} (over {len(sft)} SFT, {len(rl)} RL steps)")
