# The throwaway script behind gpu-grid-mix.jsonl and cpu-mix.jsonl (stop 12), kept as a record, not part of the package.
# It ran at commit ecb8b98, where replication._curation_data gave the 57/43 test set the records were measured on;
# later commits change that data. Usage: see run.sh beside it (BASE = a saved base model folder).
"""Curation design grid 2 (throwaway pilot): pool mix of the new skill x round length, premem vs iid, per-template test accuracy."""
import dataclasses, json, os, random, sys, time, traceback
from collections import Counter
from pathlib import Path

import torch

torch.set_num_threads(1)
from lightning_premem import acquisition as acq
from lightning_premem import replication as rep
from lightning_premem.acquisition import CurationConfig
from lightning_premem.answers import grade
from lightning_premem.curation import select_for_acquisition
from lightning_premem.demo import demo_threshold
from lightning_premem.probes import HFSampler
from lightning_premem.synthetic import ArithmeticTask
from lightning_premem.tokenization import char_tokenizer

TINY = os.environ.get("TINY") == "1"
NEW, KNOWN = "a-b*c", "a+b*c"
# name: (share of the new skill in train/pool, ("steps", n) or ("epochs", e), lr)
VARIANTS = {
    "Z_mix43_s1024": (None, ("steps", 1024), 1e-3),
    "A_mix25_s1024": (0.25, ("steps", 1024), 1e-3),
    "B_mix25_e8": (0.25, ("epochs", 8), 1e-3),
    "C_mix43_e8": (None, ("epochs", 8), 1e-3),
    "D_mix25_e16": (0.25, ("epochs", 16), 1e-3),
    "E_mix15_s1024": (0.15, ("steps", 1024), 1e-3),
    "F_mix25_e8_lr2e-3": (0.25, ("epochs", 8), 2e-3),
    "G_mix25_n512": (0.25, ("steps", 1024), 1e-3, 512),
    "H_mix25_t25": (0.25, ("steps", 1024), 1e-3, 1024, 0.25),
    "I_mix25_n512_t25": (0.25, ("steps", 1024), 1e-3, 512, 0.25),
    "J_mix33_n512": (0.33, ("steps", 1024), 1e-3, 512),
    "K_mix25_n512_a768": (0.25, ("steps", 1024), 1e-3, 512, 0.5, 768),
    "L_mix25_a1536": (0.25, ("steps", 1024), 1e-3, 1024, 0.5, 1536),
}
N0, ACQ, POOL = (16, 8, 60) if TINY else (1024, 1024, 5000)


def per_template(model, test):
    model = model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    s = HFSampler(model, char_tokenizer(), num_samples=4, temperature=0.8, max_new_tokens=48, batch_size=128)
    out = {}
    for t in (KNOWN, NEW):
        rows = [r for r in test if r["template"] == t]
        comps = s.sample([r["question"] + "\nAnswer:" for r in rows], [r["id"] for r in rows])
        out[t] = sum(grade(c, r["solution"]) == "correct" for r, cs in zip(rows, comps) for c in cs) / (4 * len(rows))
    return out


def data(config, mix):
    train0, pool, test = rep._curation_data(config)
    if mix is None:
        return train0[:N0], pool[:POOL], test
    total = N0 + POOL
    n_new = round(mix * total)
    new = ArithmeticTask(templates=(NEW,), trace_diversity=3).generate(n_new, seed=21, start_id=400_000, exclude=test, unique=True)
    known = ArithmeticTask(templates=(KNOWN,), trace_diversity=3).generate(total - n_new, seed=22, start_id=500_000, exclude=test, unique=True)
    rows = new + known
    random.Random(0).shuffle(rows)
    return rows[:N0], rows[N0:], test


def main(name, seed, res_dir):
    mix, (mode, length), lr, n0, t, acq_n = (VARIANTS[name] + (N0, 0.5, ACQ)[len(VARIANTS[name]) - 3:])
    if TINY:
        n0, acq_n = N0, ACQ
    out = open(Path(res_dir) / f"{name}-{seed}.jsonl", "a")
    config = rep.QUICK if TINY else rep.ReplicationConfig()
    train0, pool, test = data(config, mix)
    train0, pool = train0[:n0], train0[n0:] + pool
    base = os.environ.get("BASE", "runs/replicate-v5/curation/base")
    p = demo_threshold(ArithmeticTask(templates=(KNOWN, NEW), trace_diversity=3), train0, char_tokenizer())
    extra = dict(steps_per_round=length) if mode == "steps" else dict(steps_per_round=None, epochs=length, probe_every_n_epochs=max(1, length // 4))
    cfg = dataclasses.replace(config.curation, initial_size=n0, acquire_per_round=acq_n, threshold=t, learning_rate=lr, model=base,
                              memorization_threshold=p, **extra)
    kept = {}
    real = acq._quiet_trainer
    def spy(epochs, callbacks, accelerator="auto"):
        kept["t"] = real(epochs, callbacks, accelerator)
        return kept["t"]
    acq._quiet_trainer = spy
    group = {r["id"]: r["template"] for r in pool}

    def do_round(strategy, current, index):
        t0 = time.time()
        cb = acq._train_round(cfg, current, test, seed, Path(f"/tmp/rounds2/{name}-{seed}-{strategy}-{index}"))
        scores = acq._scores(cb)
        acc = per_template(kept["t"].lightning_module.model, test)
        rec = {"variant": name, "seed": seed, "strategy": strategy, "round": index, "n": len(current), "mix": mix,
               "test": cb.history[-1]["test_accuracy"], "per_template": acc, "seconds": time.time() - t0,
               "steps": int(kept["t"].global_step), "train_mix": Counter(r["template"] for r in current)}
        return scores, rec

    scores0, rec0 = do_round("first", train0, 0)
    out.write(json.dumps(rec0) + "\n"); out.flush()
    for strategy in os.environ.get("STRATS", "premem,iid").split(","):
        current, scores = list(train0), scores0
        for index in (1, 2):
            taken = {r["id"] for r in current}
            cands = [r for r in pool if r["id"] not in taken]
            chosen = select_for_acquisition(strategy, current, cands, acq_n, scores={int(i): s for i, s in scores.items()},
                                            threshold=cfg.threshold, seed=seed * 1000 + index - 1)
            current = current + list(chosen)
            scores, rec = do_round(strategy, current, index)
            rec["acquired_mix"] = Counter(group[r["id"]] for r in chosen)
            out.write(json.dumps(rec) + "\n"); out.flush()


if __name__ == "__main__":
    name, seed, res = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    try:
        main(name, seed, res)
    except Exception:
        traceback.print_exc()
        (Path(res) / f"{name}-{seed}.err").write_text(traceback.format_exc())
