"""Side by side, two demo runs' per-step lines (`train`'s stdout: `step N: sft loss X` and
`step N: reward Y`): SFT loss and RL reward at a few steps, the RL reward's first and last
10%, and each run's final `RL reward`, `validation` and `peak RSS` lines.
    python3 compare.py FP32_STDOUT BF16_STDOUT"""
import re
import sys


def read(path):
    sft, rl, tail = {}, {}, []
    for line in open(path):
        m = re.match(r"step (\d+): sft loss ([-\d.]+)", line)
        if m:
            sft[int(m[1])] = float(m[2])
        m = re.match(r"step (\d+): reward ([-\d.]+)", line)
        if m:
            rl[int(m[1])] = float(m[2])
        if line.startswith(("RL reward", "validation at step", "wall time")):
            tail.append(line.strip())
    return sft, rl, tail


(a_sft, a_rl, a_tail), (b_sft, b_rl, b_tail) = read(sys.argv[1]), read(sys.argv[2])
print("| step | fp32 | bf16 |\n|---|---|---|")
for s in [1, 10, 30, 60, 100]:
    if s in a_sft and s in b_sft:
        print(f"| {s} (SFT loss) | {a_sft[s]:.3f} | {b_sft[s]:.3f} |")
rel = [abs(a_sft[s] - b_sft[s]) / abs(a_sft[s]) for s in a_sft if s in b_sft]
print(f"SFT loss: largest relative difference over {len(rel)} steps {max(rel):.3f}")
for name, rl in [("fp32", a_rl), ("bf16", b_rl)]:
    steps = sorted(rl)
    k = max(1, len(steps) // 10)
    first = sum(rl[s] for s in steps[:k]) / k
    last = sum(rl[s] for s in steps[-k:]) / k
    print(f"{name}: RL reward first 10% {first:.3f}, last 10% {last:.3f}, mean {sum(rl.values()) / len(rl):.3f}")
for name, tail in [("fp32", a_tail), ("bf16", b_tail)]:
    for line in tail:
        print(f"{name}: {line}")
